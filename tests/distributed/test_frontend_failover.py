"""A front-end's death is invisible to traffic: sidecars reach front-ends through their node's
balancer (``navigator balancer-config``), which moves their streams to a healthy one.

- SIGKILL of the front-end serving a sidecar, under steady traffic through every sidecar:
  each sidecar is back on the other front-end with the current versions acknowledged within
  3 s, no request fails, and (Delta) the new front-end sends no resource the sidecar had;
- a front-end black-holed (its ports swallow packets, nothing is closed): sidecars move
  within the balancer's keepalive bound.

Where each sidecar is, and what it acknowledged, is read from the front-ends' status records
in etcd (``navigator.xds.status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import fault_helpers as f
from conftest import StartLab

from chaos import faultproxy
from coordinator import etcd as etcd_mod
from navigator.lab import main as lab_main
from navigator.lab import netns
from navigator.xds import status as status_mod

TYPES = ("cds", "eds", "lds", "rds")


async def records(etcd: etcd_mod.Etcd) -> dict[str, list[dict[str, Any]]]:
    """Node id → its status records (one per front-end that has it)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in await status_mod.read(etcd):
        out.setdefault(doc["node"], []).append(doc)
    return out


def acked(doc: dict[str, Any]) -> dict[str, str]:
    return {t: doc["types"].get(t, {}).get("acked", "") for t in TYPES}


async def settled(etcd: etcd_mod.Etcd, lab: lab_main.Lab) -> dict[str, dict[str, Any]]:
    """Every sidecar on exactly one front-end with every type acknowledged: node → record."""
    found = await records(etcd)
    out = {}
    for s in lab.sidecars:
        docs = found.get(s["node_id"], [])
        if len(docs) != 1 or not all(acked(docs[0]).values()):
            return {}
        out[s["node_id"]] = docs[0]
    return out


@dataclasses.dataclass
class Traffic:
    sent: int = 0
    failed: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)


def service_urls(lab: lab_main.Lab) -> dict[str, str]:
    """Node id → a URL of a service in its Nexus, at its cluster's ClusterIP."""
    doc = json.loads((lab.state_dir / "lab.json").read_text())
    item = next(s for s in doc["services"] if s["namespace"] == "shop" and s["name"] == "item")
    return {s["node_id"]: f"http://{item['cluster_ips'][s['cluster']]}:8890/" for s in lab.sidecars}


@contextlib.asynccontextmanager
async def steady_traffic(lab: lab_main.Lab, duration: float) -> AsyncIterator[Traffic]:
    """A request every 20 ms through every sidecar, from its pod, for ``duration`` s; the
    figures are filled in when the block ends (after the clients finish)."""
    out = Traffic()
    urls = service_urls(lab)
    clients = [
        await asyncio.create_subprocess_exec(
            *s["exec"],
            sys.executable,
            "-m",
            "navigator.lab.client",
            "http",
            urls[s["node_id"]],
            "--duration",
            str(duration),
            "--interval",
            "0.02",
            stdout=asyncio.subprocess.PIPE,
        )
        for s in lab.sidecars
    ]
    try:
        yield out
    finally:
        for client in clients:
            stdout, _ = await client.communicate()
            result = json.loads(stdout)
            out.sent += result["sent"]
            out.failed += result["failed"]
            out.errors += result["errors"]


async def served_requests(admin: str) -> int:
    """Requests an Envoy has sent to the mesh's services (its own control-plane ones aside)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
        session.get(f"{admin}/stats?format=json&filter=upstream_rq_total$") as resp,
    ):
        doc = await resp.json(content_type=None)
    return sum(
        int(st.get("value", 0)) for st in doc.get("stats", []) if "navigator" not in st["name"]
    )


async def resources_sent(lab: lab_main.Lab, frontend: str) -> float:
    http = lab.proc(frontend).extra["http"]
    return sum([await f.metric(http, "navigator_xds_resources_sent_total", type=t) for t in TYPES])


async def test_killing_the_serving_front_end_moves_its_sidecars_without_a_failed_request(
    start_lab: StartLab,
) -> None:
    # NOTE: with network namespaces every sidecar of lab.yaml runs, SotW and Delta; on the
    # host network one per cluster, made Delta here.
    netns_ok, _ = netns.available()
    lab = await start_lab(network="auto", sidecar_xds="sotw" if netns_ok else "delta")
    assert "delta" in {s["xds"] for s in lab.sidecars}
    async with f.etcd_of(lab) as etcd:
        before = await f.until(
            lambda: settled(etcd, lab), within=20, what="every sidecar on one front-end, ACKed"
        )
        victim = before[lab.sidecars[0]["node_id"]]["frontend"]
        survivor = next(fe["name"] for fe in lab.frontends if fe["name"] != victim)
        moved = [n for n, doc in before.items() if doc["frontend"] == victim]
        sent_before = await resources_sent(lab, survivor)

        async with steady_traffic(lab, duration=5.0) as traffic:

            async def flowing() -> bool:
                counts = [await served_requests(s["admin"]) for s in lab.sidecars]
                return min(counts) >= 10

            await f.until(flowing, within=5, what="traffic through every sidecar before the kill")
            os.kill(lab.proc(victim).popen.pid, signal.SIGKILL)
            killed_at = time.monotonic()

            async def back() -> bool:
                now = await records(etcd)
                return all(
                    any(
                        d["frontend"] == survivor and acked(d) == acked(before[n])
                        for d in now.get(n, [])
                    )
                    for n in moved
                )

            await f.until(back, within=10, what="the moved sidecars ACKed on the survivor")
            moved_after = time.monotonic() - killed_at

        print(f"moved {moved} in {moved_after:.2f}s; {traffic.sent} requests")
        assert moved, "the killed front-end served no sidecar"
        assert moved_after <= 3.0, f"sidecars back after {moved_after:.2f}s"
        assert traffic.sent >= 25 * len(lab.sidecars)
        assert traffic.failed == 0, f"{traffic.failed} of {traffic.sent} failed: {traffic.errors}"
        # Versions are content hashes and Delta resumes from initial_resource_versions: the
        # survivor sends nothing the moved sidecars had.
        assert await resources_sent(lab, survivor) == sent_before


async def test_a_black_holed_front_end_loses_its_sidecars_within_the_keepalive_bound(
    start_lab: StartLab,
) -> None:
    keepalive = 1.0
    lab = await start_lab(frontend_proxies=True, balancer_keepalive=keepalive)
    async with f.etcd_of(lab) as etcd:
        before = await f.until(
            lambda: settled(etcd, lab), within=20, what="every sidecar on one front-end, ACKed"
        )
        victim = before[lab.sidecars[0]["node_id"]]["frontend"]
        moved = [n for n, doc in before.items() if doc["frontend"] == victim]
        for proxy in lab.proxies[victim]:
            proxy.set_mode(faultproxy.Mode.BLACKHOLE)
        holed_at = time.monotonic()

        async def elsewhere() -> bool:
            now = await records(etcd)
            return all(
                any(d["frontend"] != victim and all(acked(d).values()) for d in now.get(n, []))
                for n in moved
            )

        # NOTE: the bound: one keepalive interval and timeout to notice, the sidecar's
        # reconnect backoff and one status write (0.5 s) to see it.
        bound = 2 * keepalive + 1.5
        await f.until(elsewhere, within=10, what="the sidecars on another front-end")
        took = time.monotonic() - holed_at
        print(f"moved {moved} in {took:.2f}s after the black hole")
        assert moved
        assert took <= bound, f"moved after {took:.2f}s, bound {bound}s"


async def _async(value: bool) -> bool:
    return value
