"""The operators' tools against a running lab: ``navigator state``, ``proxy-status`` and
``proxy-diff``, each checked for content; a difference injected between a sidecar and etcd is
found; and with every control-plane process stopped, ``navigator state`` still answers.

The commands run in-process through ``navigator.cli.main`` (one of them as a subprocess, as an
operator runs it), in a thread so that the lab's event loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import StartLab
from fault_helpers import until

from navigator import cli, keys

BROKEN_NEXUS = """\
apiVersion: navigator.avito.ru/v1
kind: Nexus
metadata: {name: reports, namespace: web}
spec:
  appName: reports
  services:
  - {namespace: shop, name: item}
  - {namespace: shop, name: nope}
"""


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


async def run(*argv: str) -> tuple[int, str, str]:
    return await asyncio.to_thread(_cli, *argv)


async def run_json(*argv: str) -> Any:
    rc, out, err = await run(*argv, "-o", "json")
    assert rc == 0, err
    return json.loads(out)


async def test_state_proxy_status_and_proxy_diff_against_the_lab(
    start_lab: StartLab, examples: Path
) -> None:
    (examples / "east" / "reports.yaml").write_text(BROKEN_NEXUS)
    # NOTE: network namespaces where they work: SotW and Delta sidecars, a gateway.
    lab = await start_lab(examples=examples, network="auto")
    etcd = tuple(lab.etcd_args())
    sidecars = {s["node_id"]: s for s in lab.sidecars}
    described = json.loads((lab.state_dir / "lab.json").read_text())
    zones = {c["name"]: c["zone"] for c in described["clusters"]}
    item_ips = next(s for s in described["services"] if s["name"] == "item")["cluster_ips"]

    # -- clusters, shards, members -------------------------------------------------------
    clusters = await run_json("state", "clusters", *etcd)
    assert {c["cluster"]: c["synced"] for c in clusters} == {"east": True, "west": True}
    assert all(c["leader"].startswith(f"watcher-{c['cluster']}-") for c in clusters)
    members = await run_json("state", "members", *etcd)
    roles = sorted(m["role"] for m in members)
    assert roles == ["translator"] * 2 + ["watcher"] * 4 + ["xds"] * 2
    shards = await run_json("state", "shards", *etcd)
    assert len(shards) == 8
    assert {s["leader"] for s in shards} == {"translator-0", "translator-1"}

    # -- services: per cluster, ClusterIP and endpoints by zone ----------------------------
    services = await run_json("state", "services", "-n", "shop", *etcd)
    item = {s["cluster"]: s for s in services if s["name"] == "item"}
    assert set(item) == {"east", "west"}
    for cluster, row in item.items():
        assert row["cluster_ip"] == item_ips[cluster]
        assert [(x["zone"], x["ready"], x["not_ready"]) for x in row["localities"]] == [
            (zones[cluster], 2, 0)
        ]
        assert len(row["endpoints"]) == 2
    assert {s["namespace"] for s in services} == {"shop"}
    rc, table, _ = await run("state", "services", *etcd)
    assert rc == 0
    assert table.splitlines()[0].split()[:3] == ["NAMESPACE", "NAME", "CLUSTER"]

    # -- apps: shard, leader, Nexus services, snapshots ------------------------------------
    apps = {a["app"]: a for a in await run_json("state", "apps", *etcd)}
    leaders = {s["shard"]: s["leader"] for s in shards}
    web = apps["web"]
    assert web["shard"] == keys.shard_of("web", 8)
    assert web["leader"] == leaders[web["shard"]]
    assert web["services"] == ["shop/echo", "shop/item"]
    assert set(web["snapshots"]) == {"east", "west"}
    assert apps["reports"]["diagnostics"] == 1
    only = await run_json("state", "apps", "web", *etcd)
    assert [a["app"] for a in only] == ["web"]
    one = await run_json("state", "services", "-n", "shop", "item", *etcd)
    assert one == [s for s in services if s["name"] == "item"]

    # -- diagnostics: the Nexus naming a missing service -------------------------------------
    diags = await run_json("state", "diagnostics", "reports", *etcd)
    assert [(d["reason"], d["object"]) for d in diags] == [
        ("MissingService", "nexuses/web/reports@east")
    ]

    # -- snapshot: what a sidecar of an app receives ---------------------------------------
    east = next(s for s in lab.sidecars if s["cluster"] == "east")
    snap = await run_json(
        "state", "snapshot", east["app"], "--cluster", "east", "--zone", east["zone"], *etcd
    )
    names = {
        t: {r.get("name") or r.get("cluster_name") for r in v["resources"]}
        for t, v in snap["types"].items()
    }
    assert "shop/item:8890" in names["cds"] and "shop/item:8890" in names["eds"]
    item_eds = next(
        r for r in snap["types"]["eds"]["resources"] if r["cluster_name"] == "shop/item:8890"
    )
    addresses = {
        lb["endpoint"]["address"]["socket_address"]["address"]
        for loc in item_eds["endpoints"]
        for lb in loc["lb_endpoints"]
    }
    assert addresses == {e["ip"] for row in item.values() for e in row["endpoints"]}

    # -- proxy-status: every sidecar SYNCED, with the versions the snapshot shows ----------
    async def all_synced() -> list[dict[str, Any]] | None:
        rows = await run_json("proxy-status", *etcd)
        synced = {
            r["node"] for r in rows if all(t["status"] == "SYNCED" for t in r["types"].values())
        }
        return rows if synced >= set(sidecars) else None

    status = await until(all_synced, within=30, what="every sidecar SYNCED", every=0.5)
    apps = {a["app"]: a for a in await run_json("state", "apps", *etcd)}
    assert apps["web"]["sidecars"] == sum(1 for s in lab.sidecars if s["app"] == "web")
    # Sidecars that name their node instead of their zone (the Delta ones) are placed in it.
    assert {r["node"]: r["zone"] for r in status if r["node"] in sidecars} == {
        n: zones[s["cluster"]] for n, s in sidecars.items()
    }
    # NOTE: with network namespaces the lab runs Delta sidecars in both clusters.
    netns = described["network"]["mode"] == "netns"
    assert any(s["node_name"] for s in sidecars.values()) or not netns
    row = next(r for r in status if r["node"] == east["node_id"])
    assert (row["app"], row["cluster"], row["zone"]) == (east["app"], "east", east["zone"])
    assert row["types"]["eds"]["acked"] == snap["types"]["eds"]["version"]
    assert row["frontend"] in {f["name"] for f in lab.frontends}

    # -- proxy-diff: the live config equals etcd's, for every sidecar ----------------------
    for node in sidecars:
        rc, out, err = await run("proxy-diff", node, *etcd)
        assert rc == 0, out + err
        assert "DIFFERENT" not in out

    # -- a difference injected: front-ends paused, then a cluster drained ------------------
    paused = [p.popen.pid for p in lab.procs if p.role == "xds"]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        rc, _, err = await run("weight", *etcd, "west", "0")
        assert rc == 0, err

        async def stale() -> dict[str, Any] | None:
            rows = await run_json("proxy-status", east["node_id"], *etcd)
            return rows[0] if rows[0]["types"]["eds"]["status"] == "STALE" else None

        await until(stale, within=20, what="the east sidecar's EDS STALE", every=0.3)
        # As a script waits for convergence: not by the deadline, one line, exit 1.
        rc, _, err = await run("proxy-status", *etcd, "--wait", "1")
        assert rc == 1
        assert err.strip().endswith("sidecars not SYNCED after 1 s"), err
        rc, out, _ = await run("proxy-diff", east["node_id"], *etcd, "-o", "json")
        assert rc == 1
        doc = json.loads(out)
        assert not doc["same"]
        assert "shop/item:8890" in doc["types"]["eds"]["differ"]
        west_ips = {e["ip"] for e in item["west"]["endpoints"]}
        text = doc["types"]["eds"]["differ"]["shop/item:8890"]
        # NOTE: the sidecar still holds the drained cluster's endpoints; etcd no longer does.
        assert all(f"+          address: {ip}" in text for ip in west_ips), text
        assert doc["types"]["cds"]["same"] and doc["types"]["lds"]["same"]
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
    rc, out, err = await run("proxy-status", *etcd, "--wait", "30")
    assert rc == 0, err
    assert out.count("SYNCED") >= 4 * len(sidecars) - out.count("NOT SENT")
    await until(all_synced, within=30, what="every sidecar SYNCED again", every=0.5)
    rc, out, err = await run("proxy-diff", east["node_id"], *etcd)
    assert rc == 0, out + err

    # -- every control-plane process stopped: state still answers from etcd ---------------
    for proc in lab.procs:
        if proc.role in ("watcher", "translator", "xds", "balancer"):
            proc.popen.send_signal(signal.SIGTERM)
    for proc in lab.procs:
        if proc.role in ("watcher", "translator", "xds", "balancer"):
            await asyncio.to_thread(proc.popen.wait, 20)
    assert await run_json("state", "members", *etcd) == []
    assert {s["leader"] for s in await run_json("state", "shards", *etcd)} == {""}
    after = await run_json("state", "services", "-n", "shop", *etcd)
    assert after == services
    again = await run_json(
        "state", "snapshot", east["app"], "--cluster", "east", "--zone", east["zone"], *etcd
    )
    assert again["types"]["cds"] == snap["types"]["cds"]
    assert await run_json("state", "diagnostics", "reports", *etcd) == diags
    assert await run_json("proxy-status", *etcd) == []
    # NOTE: as an operator runs it, in its own process.
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "navigator", "state", "apps", *etcd, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert {a["app"] for a in json.loads(done.stdout)} == set(apps)
    # The sidecar kept its config, and it is still what etcd says it should have.
    rc, out, err = await run("proxy-diff", east["node_id"], *etcd, "--admin", east["admin"])
    assert rc == 0, out + err
