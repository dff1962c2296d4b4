"""SIGKILL of the etcd leader (one member of three) under write load: every write etcd
acknowledged is still there afterwards, and the mesh keeps converging to the API's truth."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import fault_helpers as f
from conftest import StartLab

from coordinator import etcd as etcd_mod

ITEM = "shop/item:8890"


async def test_killing_the_etcd_leader_loses_no_acknowledged_write(start_lab: StartLab) -> None:
    lab = await start_lab()
    web = f.sidecar(lab, "web", "east")
    members = [p for p in lab.procs if p.role == "etcd"]
    statuses = {
        m.name: await etcd_mod.member_status(m.extra["url"], tls=lab.etcd_tls) for m in members
    }
    leader = next(m for m in members if statuses[m.name].is_leader)
    acked: dict[str, bytes] = {}
    failures = 0
    stop = asyncio.Event()

    async def load(etcd: etcd_mod.Etcd, writer: int) -> None:
        nonlocal failures
        n = 0
        while not stop.is_set():
            key, value = f"/test/acked/{writer}/{n}", f"{writer}-{n}".encode()
            try:
                await etcd.put(key, value)
            except etcd_mod.EtcdError:
                failures += 1
                continue
            acked[key] = value  # NOTE: only what etcd acknowledged counts
            n += 1

    ips = await f.endpoint_ips(lab, "west", "shop", "item")
    async with f.etcd_of(lab) as etcd:
        writers = [asyncio.create_task(load(etcd, w)) for w in range(4)]
        try:
            await f.until(lambda: _at_least(acked, 200), within=20, what="writes before the kill")
            os.kill(leader.popen.pid, signal.SIGKILL)
            before_kill = len(acked)
            # The mesh keeps working meanwhile: a change of west's pods reaches the sidecar.
            final = [ips[0], ips[0].rsplit(".", 1)[0] + ".77"]
            await f.set_endpoint_ips(lab, "west", "shop", "item", final)

            async def converged() -> bool:
                hosts = await f.envoy_hosts(web["admin"], ITEM)
                return {f"{ip}:8080" for ip in final} <= hosts and f"{ips[1]}:8080" not in hosts

            await f.until(converged, within=30, what="the change through the new etcd leader")
            await f.until(
                lambda: _at_least(acked, before_kill + 200), within=30, what="writes after"
            )
        finally:
            stop.set()
            for w in writers:
                with contextlib.suppress(asyncio.CancelledError):
                    await w
        survivors = [m for m in members if m is not leader]
        new_leaders = [
            s
            for m in survivors
            if (s := await etcd_mod.member_status(m.extra["url"], tls=lab.etcd_tls)).is_leader
        ]
        assert len(new_leaders) == 1
        stored = await etcd.get_prefix("/test/acked/")
        lost = [k for k, v in acked.items() if k not in stored.items or stored.items[k].value != v]
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
        assert len(acked) >= 400


async def _at_least(acked: dict[str, bytes], n: int) -> bool:
    return len(acked) >= n
