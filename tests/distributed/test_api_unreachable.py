"""A cluster's API server unreachable for a minute: its endpoints stay served and the cluster
is marked stale (with its age in metrics and in ``navigator state``), the other cluster keeps
updating, and once the API answers again the state converges."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import fault_helpers as f
from conftest import StartLab

from navigator import keys, model
from navigator.lab import main as lab_main

EAST = model.ClusterName("east")
ITEM = "shop/item:8890"
OUTAGE = 60.0


async def test_an_unreachable_api_server_keeps_its_endpoints_served_and_marked_stale(
    start_lab: StartLab,
) -> None:
    lab = await start_lab()
    web = f.sidecar(lab, "web", "east")
    east_ips = await f.endpoint_ips(lab, "east", "shop", "item")
    west_ips = await f.endpoint_ips(lab, "west", "shop", "item")
    east_hosts = {f"{ip}:8080" for ip in east_ips}
    async with f.etcd_of(lab) as etcd:
        await f.until(lambda: _holds(web["admin"], east_hosts), within=20, what="east's pods")
        async with f.sampling(lambda: f.envoy_hosts(web["admin"], ITEM), every=0.1) as samples:
            await f.set_reachable(lab, "east", False)
            cut_at = time.monotonic()
            marker = await f.until(
                lambda: etcd.get(keys.stale_key(EAST)), within=15, what="the stale marker"
            )
            since = f.stale_since(marker.value)
            assert since is not None and since <= time.time()

            # West keeps updating: one of its pods goes.
            await f.set_endpoint_ips(lab, "west", "shop", "item", west_ips[:1])
            gone = f"{west_ips[1]}:8080"
            await f.until(
                lambda: _lacks(web["admin"], gone), within=15, what="west's change at the sidecar"
            )

            leader = lab.proc(await f.leader(etcd, keys.watcher_leader_key(EAST)))
            age = await f.metric(
                leader.extra["http"], "navigator_watcher_stale_seconds", cluster="east"
            )
            assert age > 0

            async def outage_lasted() -> bool:
                return time.monotonic() - cut_at >= OUTAGE

            # NOTE: the scenario is a minute of outage; the sidecar is sampled meanwhile.
            await f.until(outage_lasted, within=OUTAGE + 5, what="a minute without east's API")
            shown = await asyncio.to_thread(_state_clusters, lab.etcd_args())
            east = next(c for c in shown if c["cluster"] == "east")
            assert east["synced"] and east["stale_since"] == since
            assert time.time() - east["stale_since"] >= OUTAGE - 1
            age = await f.metric(
                leader.extra["http"], "navigator_watcher_stale_seconds", cluster="east"
            )
            assert age >= OUTAGE - 1
            assert await etcd.get(keys.stale_key(EAST)) is not None

            await f.set_reachable(lab, "east", True)
            # A change made once it is back converges; the marker goes.
            new_ip = east_ips[0].rsplit(".", 1)[0] + ".55"
            await f.until(
                lambda: _set_when_reachable(lab, [*east_ips, new_ip]),
                within=15,
                what="the API server to answer again",
            )
            await f.until(
                lambda: _holds(web["admin"], {f"{new_ip}:8080"}), within=20, what="east's change"
            )

            async def marker_gone() -> bool:
                return await etcd.get(keys.stale_key(EAST)) is None

            await f.until(marker_gone, within=10, what="the stale marker to go")
        missing = [
            (round(t - cut_at, 1), east_hosts - h) for t, h in samples.values if east_hosts - h
        ]
        assert not missing, f"east's endpoints left the sidecar while its API was away: {missing}"
        assert len(samples.values) > OUTAGE * 5


async def _holds(admin: str, hosts: set[str]) -> bool:
    return hosts <= await f.envoy_hosts(admin, ITEM)


async def _lacks(admin: str, host: str) -> bool:
    return host not in await f.envoy_hosts(admin, ITEM)


async def _set_when_reachable(lab: lab_main.Lab, ips: list[str]) -> bool:
    try:
        await f.set_endpoint_ips(lab, "east", "shop", "item", ips)
    except Exception:  # NOTE: the client's own errors (urllib3): not up yet.
        return False
    return True


def _state_clusters(etcd_args: list[str]) -> list[dict[str, object]]:
    """``navigator state clusters -o json``, run as an operator runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "navigator", "state", "clusters", *etcd_args, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    rows: list[dict[str, object]] = json.loads(out.stdout)
    return rows
