"""SIGKILL of a cluster's leading watcher: a warm standby takes over within the lease TTL plus
a second, no Envoy loses an endpoint meanwhile, and a change made during the gap arrives."""

from __future__ import annotations

import os
import signal
import time

import fault_helpers as f
from conftest import StartLab

from navigator import keys, model

EAST = model.ClusterName("east")
ITEM = "shop/item:8890"


async def test_a_killed_watcher_leader_is_replaced_and_no_endpoint_is_dropped(
    start_lab: StartLab,
) -> None:
    lab = await start_lab()
    web = f.sidecar(lab, "web", "east")
    async with f.etcd_of(lab) as etcd:
        ips = await f.endpoint_ips(lab, "east", "shop", "item")
        before = await f.until(
            lambda: _hosts_if(web["admin"], 4), within=20, what="web's four item endpoints"
        )
        old = await f.leader(etcd, keys.watcher_leader_key(EAST))
        standby = next(
            p.name
            for p in lab.procs
            if p.role == "watcher" and p.cluster == "east" and p.name != old
        )
        state_before = set((await etcd.get_prefix(keys.state_prefix(EAST))).items)

        async with f.sampling(lambda: f.envoy_hosts(web["admin"], ITEM)) as samples:
            killed_at = time.monotonic()
            os.kill(lab.proc(old).popen.pid, signal.SIGKILL)
            # A change made while no watcher writes east: a new pod of shop/item.
            new_ip = ips[0].rsplit(".", 1)[0] + ".99"
            await f.set_endpoint_ips(lab, "east", "shop", "item", [*ips, new_ip])

            async def taken_over() -> str | None:
                holder = await f.leader(etcd, keys.watcher_leader_key(EAST))
                return holder if holder and holder != old else None

            new_leader = await f.until(taken_over, within=10, what="a new watcher leader")
            took = time.monotonic() - killed_at
            after = await f.until(
                lambda: _hosts_if(web["admin"], 5), within=10, what="the pod added in the gap"
            )

        assert new_leader == standby
        assert took <= lab.shape.lease_ttl + 1.0, f"take-over took {took:.2f}s"
        assert f"{new_ip}:8080" in after
        assert samples.values, "the Envoy was sampled"
        dropped = [(t - killed_at, before - hosts) for t, hosts in samples.values if before - hosts]
        assert not dropped, f"endpoints left the Envoy during the take-over: {dropped}"
        # The new leader reconciled against etcd and deleted nothing the API still has.
        state_after = set((await etcd.get_prefix(keys.state_prefix(EAST))).items)
        assert state_before <= state_after


async def _hosts_if(admin: str, count: int) -> set[str] | None:
    hosts = await f.envoy_hosts(admin, ITEM)
    return hosts if len(hosts) == count else None
