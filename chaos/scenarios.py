"""The scenarios: each a fault injected into a running lab, held, and healed.

A body gets a ``chaos.run.Run`` whose lab is up, whose recorders run and whose sidecars hold
the API's endpoints; it injects the fault, keeps the mesh changing meanwhile (churn of
``shop/item``'s endpoints through the Kubernetes API), heals, and leaves figures. Convergence
and the invariants are judged after it returns (``chaos.run.execute``). Every wait has a
deadline; a scenario that cannot do its part is an error, not a pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from chaos import faultproxy
from chaos.run import Run, ScenarioError
from coordinator import etcd as etcd_mod
from navigator import keys, model, proxy, snapshot
from navigator.lab import main as lab_main

Body = Callable[[Run], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    explain: str
    body: Body
    shape: dict[str, Any] = dataclasses.field(default_factory=dict)
    bound: float = 30.0
    """I2: seconds from healing to every sidecar holding the truth."""
    allowed_failures: int = 0
    """I1: failed probes the scenario expects (none: sidecars serve on their last config)."""
    quick: bool = False
    """Part of the short subset CI runs."""


async def _hold(run: Run, seconds: float) -> None:
    """Keeps the fault on for ``seconds`` (the mesh keeps changing meanwhile)."""
    await asyncio.sleep(run.hold(seconds))


def _signal(proc: lab_main.Proc, sig: signal.Signals) -> None:
    # NOTE: only a process the lab started, by its PID.
    os.kill(proc.popen.pid, sig)


async def _control(run: Run, cluster: str, hook: str) -> None:
    """A local API server's fault hook (``/_navigator/...``)."""
    url = f"{run.lab.control_urls[cluster]}/_navigator/{hook}"
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.post(url) as resp:
        if resp.status != 200:
            raise ScenarioError(f"{url} answered {resp.status}: {await resp.text()}")


async def _failover(
    run: Run, check: Callable[[], Awaitable[Any]], since: float, what: str, within: float = 30
) -> Any:
    got = await run.until(check, within=within, what=what)
    run.figures["failover_s"] = round(time.monotonic() - since, 3)
    run.mark(f"{what}: {got}")
    return got


# -- etcd ---------------------------------------------------------------------------------------


async def etcd_leader_killed(run: Run) -> None:
    leader = await run.etcd_leader()
    run.churn(rate=5.0)
    await asyncio.sleep(1.0)
    since = run.inject(f"SIGKILL {leader.name} (the etcd leader)")
    _signal(leader, signal.SIGKILL)
    await _failover(run, lambda: run.new_etcd_leader(leader), since, "a new etcd leader")
    await _hold(run, 10.0)
    await asyncio.to_thread(run.lab.restart, leader.name)
    run.heal(f"{leader.name} restarted on its data")


async def etcd_member_partitioned(run: Run) -> None:
    leader = await run.etcd_leader()
    cut = leader.popen.pid
    run.churn(rate=3.0)
    await asyncio.sleep(1.0)
    since = run.inject(f"{leader.name} (the leader) cut off from its peers")
    for name, p in run.lab.etcd_peer_proxies.items():
        if name == leader.name:
            p.set_mode(faultproxy.Mode.BLACKHOLE)
        else:
            p.set_mode(faultproxy.Mode.BLACKHOLE, only_from=[cut])
    await _failover(run, lambda: run.new_etcd_leader(leader), since, "a leader among the others")
    # The cut-off member still answers clients (it is not down, only alone).
    status = await etcd_mod.member_status(leader.extra["url"], within=2.0, tls=run.lab.etcd_tls)
    run.figures["partitioned_member_answers_clients"] = True
    run.figures["partitioned_member_term"] = status.raft_term
    await _hold(run, 15.0)
    for p in run.lab.etcd_peer_proxies.values():
        p.set_mode(faultproxy.Mode.PASS)
    run.heal(f"{leader.name} reconnected to its peers")


async def etcd_quorum_lost(run: Run) -> None:
    leader = await run.etcd_leader()
    others = [p for p in run.lab.procs if p.role == "etcd" and p is not leader]
    run.churn(rate=2.0)
    await asyncio.sleep(1.0)
    run.inject(f"SIGKILL {', '.join(p.name for p in others)}: 1 member of 3 left, no quorum")
    for p in others:
        _signal(p, signal.SIGKILL)
    await _hold(run, 60.0)
    restarted = time.monotonic()
    for p in others:
        await asyncio.to_thread(run.lab.restart, p.name)
    run.heal("both members restarted on their data")

    async def writable() -> bool:
        await run.etcd.put(keys.ROOT + "ping/chaos", b"1")
        return True

    await run.until(writable, within=60, what="etcd to take writes again")
    run.figures["quorum_back_s"] = round(time.monotonic() - restarted, 3)


async def etcd_compaction(run: Run) -> None:
    xds = run.lab.proc("xds-1")
    proxies = run.lab.etcd_client_proxies["xds"]
    run.churn(rate=3.0)
    await asyncio.sleep(1.0)
    run.inject("xds-1 cut off from etcd (black hole)")
    for p in proxies:
        p.set_mode(faultproxy.Mode.BLACKHOLE, only_from=[xds.popen.pid])
    await _hold(run, 8.0)
    revision = (await run.etcd.get_prefix(keys.ROOT + "ping/")).revision
    await run.etcd.compact(revision)
    run.mark(f"etcd compacted at revision {revision}, past xds-1's watch")
    run.figures["compacted_revision"] = revision
    # NOTE: reset, then pass: its connections must be opened again (a black hole healed in
    # place would deliver the held bytes on the old stream, and no watch would resume).
    for p in proxies:
        p.set_mode(faultproxy.Mode.RESET, only_from=[xds.popen.pid])
    for p in proxies:
        p.set_mode(faultproxy.Mode.PASS)
    run.heal("xds-1 reconnected to etcd")
    log_file = run.lab.logs / f"{xds.name}.log"

    async def relisted() -> bool:
        return "snapshot watch compacted, relisting" in log_file.read_text(errors="replace")

    await run.until(relisted, within=30, what="xds-1 to relist after the compaction")
    run.figures["relisted_after_compaction"] = True


# -- translators and watchers ------------------------------------------------------------------


def _item_shard(run: Run) -> int:
    return keys.service_shard(*("shop", "item"), run.lab.shape.shards)


async def translator_paused(run: Run) -> None:
    key = keys.shard_leader_key(_item_shard(run))
    leader = run.lab.proc(await run.until(lambda: run.holder(key), within=20, what="a leader"))
    run.churn(rate=3.0)
    await asyncio.sleep(1.0)
    since = run.inject(f"SIGSTOP {leader.name} (leads shop/item's shard)")
    _signal(leader, signal.SIGSTOP)
    try:

        async def taken() -> str | None:
            holder = await run.holder(key)
            return holder if holder and holder != leader.name else None

        await _failover(run, taken, since, "the shard taken over")
        await _hold(run, float(run.lab.shape.lease_ttl + 3))
    finally:
        _signal(leader, signal.SIGCONT)
    run.heal(f"SIGCONT {leader.name}")
    await asyncio.sleep(3.0)  # NOTE: what it had pending is tried now, and must be refused


async def translator_killed_mid_publish(run: Run) -> None:
    key = keys.shard_leader_key(_item_shard(run))
    leader = run.lab.proc(await run.until(lambda: run.holder(key), within=20, what="a leader"))
    run.churn(rate=10.0)
    # NOTE: killed right after a state change reaches etcd: its publication is under way.
    state_prefix = keys.STATE + "east/"
    seen = len(run.etcd_log.changes)

    async def state_written() -> bool:
        return any(c.key.startswith(state_prefix) for c in run.etcd_log.changes[seen:])

    await run.until(state_written, within=10, what="a state change to publish")
    since = run.inject(f"SIGKILL {leader.name} while it publishes")
    _signal(leader, signal.SIGKILL)

    async def taken() -> str | None:
        holder = await run.holder(key)
        return holder if holder and holder != leader.name else None

    await _failover(run, taken, since, "the shard taken over")
    await _hold(run, 5.0)
    await asyncio.to_thread(run.lab.restart, leader.name)
    run.heal(f"{leader.name} restarted")


async def watcher_leader_killed(run: Run) -> None:
    key = keys.watcher_leader_key(model.ClusterName("east"))
    leader = run.lab.proc(
        await run.until(lambda: run.holder(key), within=20, what="east's watcher leader")
    )
    pool = run.pools["east"]
    current = sorted(run.truth.latest("shop/item", "east"))
    fresh = [ip for ip in pool if ip not in current]
    run.mark(f"roll-out of shop/item in east: {len(current)} pods replaced one by one")
    steps: list[list[str]] = []
    live = list(current)
    for new in fresh:
        live = [*live, new]
        steps.append(sorted(live))
        live = live[1:]
        steps.append(sorted(live))
    killed_at = len(steps) // 2
    since = 0.0
    for i, ips in enumerate(steps):
        if i == killed_at:
            since = run.inject(f"SIGKILL {leader.name} (east's watcher leader) mid roll-out")
            _signal(leader, signal.SIGKILL)
        await run.set_endpoints("east", "shop", "item", ips)
        await asyncio.sleep(0.5)

    async def taken() -> str | None:
        holder = await run.holder(key)
        return holder if holder and holder != leader.name else None

    await _failover(run, taken, since, "east taken over by the other watcher")
    await asyncio.to_thread(run.lab.restart, leader.name)
    run.heal(f"{leader.name} restarted")


# -- the Kubernetes API ------------------------------------------------------------------------


async def api_unreachable(run: Run) -> None:
    run.churn("west", rate=2.0)
    await asyncio.sleep(1.0)
    since = run.inject("east's API server unreachable")
    await _control(run, "east", "unreachable?value=true")

    async def marked() -> bool:
        return await run.etcd.get(keys.STALE + "east") is not None

    await run.until(marked, within=60, what="east marked stale")
    run.figures["stale_marked_s"] = round(time.monotonic() - since, 3)
    run.mark("east marked stale in etcd; its state is kept")
    await _hold(run, 120.0)
    await _control(run, "east", "unreachable?value=false")
    run.heal("east's API server reachable again")
    # A change in east right after: its watchers must be watching again, not only relisted.
    await asyncio.sleep(1.0)
    await run.churn_once("east")


async def api_watch_faults(run: Run) -> None:
    run.churn(rate=3.0)
    await asyncio.sleep(1.0)
    run.inject("east's watches dropped, then answered 410, several times")
    rounds = max(1, int(run.hold(12.0) / 3))
    for i in range(rounds):
        if i % 2:
            await _control(run, "east", "compact")
            await _control(run, "east", "drop-watches")
            run.mark("history compacted and watches dropped: a resume gets 410")
        else:
            await _control(run, "east", "drop-watches")
            run.mark("watches dropped")
        await asyncio.sleep(3.0)
    run.heal("no more watch faults")


# -- front-ends and balancers ------------------------------------------------------------------


async def _served_by(run: Run) -> dict[str, str]:
    """Sidecar node → the front-end whose status record it has (the latest)."""
    listing = await run.etcd.get_prefix(keys.SIDECARS)
    out: dict[str, str] = {}
    for key in sorted(listing.items, key=lambda k: listing.items[k].mod_revision):
        frontend, _, node = key[len(keys.SIDECARS) :].partition("/")
        out[node] = frontend
    return out


async def frontend_killed(run: Run) -> None:
    served = await _served_by(run)
    busiest = max(
        (fe["name"] for fe in run.lab.frontends),
        key=lambda n: sum(1 for f in served.values() if f == n),
    )
    victim = run.lab.proc(busiest)
    nodes = {s["node_id"] for s in run.lab.sidecars}
    run.churn(rate=3.0)
    await asyncio.sleep(1.0)
    since = run.inject(
        f"SIGKILL {victim.name} (serves {sum(f == busiest for f in served.values())})"
    )
    _signal(victim, signal.SIGKILL)

    async def moved() -> bool:
        now = await _served_by(run)
        return (
            all(any(k == n and f != busiest for k, f in now.items()) for n in nodes)
            and await run.converged()
        )

    await _failover(run, moved, since, "every sidecar served by the other front-end", 60)
    await _hold(run, 5.0)
    await asyncio.to_thread(run.lab.restart, victim.name)
    run.heal(f"{victim.name} restarted")


async def frontend_blackholed(run: Run) -> None:
    victim = run.lab.frontends[0]["name"]
    run.churn(rate=3.0)
    await asyncio.sleep(1.0)
    since = run.inject(f"{victim} black-holed (its gRPC and health ports swallow everything)")
    for p in run.lab.proxies[victim]:
        p.set_mode(faultproxy.Mode.BLACKHOLE)

    async def others_serve() -> bool:
        return await run.converged()

    await _failover(run, others_serve, since, "sidecars converged through the other front-end")
    await _hold(run, 20.0)
    for p in run.lab.proxies[victim]:
        p.set_mode(faultproxy.Mode.PASS)
    run.heal(f"{victim} reachable again")


async def balancer_restarted(run: Run) -> None:
    victim = run.lab.proc("balancer-east")
    run.churn(rate=3.0)
    await asyncio.sleep(1.0)
    run.inject("SIGKILL balancer-east (east's node-local balancer)")
    _signal(victim, signal.SIGKILL)
    await asyncio.to_thread(victim.popen.wait, 10)
    await _hold(run, 5.0)
    await asyncio.to_thread(run.lab.restart, victim.name)
    await run.lab.wait_ready([victim], limit=30)
    run.heal("balancer-east restarted on the same address")


# -- a bad snapshot ----------------------------------------------------------------------------


async def bad_snapshot(run: Run) -> None:
    from envoy.config.cluster.v3 import cluster_pb2

    key = keys.app_snapshot_key(model.AppName("web"), model.ClusterName("east"))
    good = await run.etcd.get(key)
    if good is None or snapshot.head_chunks(good.value) is not None:
        raise ScenarioError(f"{key}: no whole snapshot to spoil")
    snap = snapshot.decode_app(good.value)
    clusters = list(snap.resources[snapshot.CLUSTER])
    first = cluster_pb2.Cluster.FromString(clusters[0].body)
    # NOTE: Envoy refuses CLUSTER_PROVIDED for an EDS cluster; our validation never makes it.
    first.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
    clusters[0] = snapshot.Resource(clusters[0].name, first.SerializeToString(deterministic=True))
    bad = dataclasses.replace(snap, resources={**snap.resources, snapshot.CLUSTER: tuple(clusters)})
    run.churn(rate=2.0)
    await asyncio.sleep(1.0)
    run.inject(f"a snapshot Envoy rejects written to {key} (cluster {clusters[0].name})")
    run.exempt.append(await run.etcd.put(key, snapshot.encode_app(bad)))

    async def nacked() -> int:
        rows = await proxy.status(run.etcd)
        return sum(
            1
            for r in rows
            if r["app"] == "web"
            and r["cluster"] == "east"
            and any(t["status"] == proxy.NACKED for t in r["types"].values())
        )

    run.figures["nacked_sidecars"] = await run.until(
        nacked, within=20, what="web's east sidecars to reject it"
    )
    run.mark(f"{run.figures['nacked_sidecars']} sidecars rejected it and kept their config")
    await _hold(run, 8.0)
    run.exempt.append(await run.etcd.put(key, good.value))
    run.heal("the good snapshot written back")


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "etcd-leader-killed",
        "SIGKILL of the etcd leader under churn; restarted on its data 10 s later",
        "The leader of the 3-member etcd is killed while shop/item's endpoints change 5 times a "
        "second. The other two elect a leader; every component's client fails over to them "
        "(failover_s: until a new leader answers). The killed member rejoins.",
        etcd_leader_killed,
        quick=True,
    ),
    Scenario(
        "etcd-member-partitioned",
        "the etcd leader cut off from its peers (clients still reach it) for 15 s",
        "Fault proxies in front of every member's peer port swallow the leader's traffic both "
        "ways, while its client port still answers. It loses its leadership; the others elect "
        "one; clients that read from it must fail over (reads need a leader).",
        etcd_member_partitioned,
        shape={"etcd_peer_proxies": True},
    ),
    Scenario(
        "etcd-quorum-lost",
        "two of three etcd members killed for a minute, then restarted",
        "Without quorum nothing can be written or read linearizably: watchers keep the API's "
        "changes, sidecars keep their configuration and traffic keeps flowing. After the restart "
        "the mesh catches up (quorum_back_s: until etcd takes writes again).",
        etcd_quorum_lost,
        bound=45.0,
    ),
    Scenario(
        "etcd-compaction",
        "a front-end cut off from etcd while etcd compacts past its watch",
        "xds-1's connections to etcd are black-holed for 8 s while endpoints change; etcd "
        "is compacted at the current revision; its connections are reset and it reconnects: "
        "its watch resumes below the compaction and it must relist (checked in its log) "
        "rather than stall or serve a stale view.",
        etcd_compaction,
        shape={"etcd_client_proxies": ("xds",)},
    ),
    Scenario(
        "translator-paused",
        "SIGSTOP of the translator leading shop/item's shard past its lease, then SIGCONT",
        "The paused leader's lease expires and the other translator takes its shards "
        "(failover_s). Woken, it still holds a publication it computed: its fenced write must "
        "be refused (stale_writes_rejected), and I3 checks no write of its old term landed.",
        translator_paused,
        shape={"translator_debounce": 0.5},
        quick=True,
    ),
    Scenario(
        "translator-killed-mid-publish",
        "SIGKILL of shop/item's shard leader right after a state change reached etcd",
        "Endpoints change 10 times a second; the leader is killed while it publishes. The other "
        "translator takes the shard after the lease and publishes the truth; no sidecar sees a "
        "torn or older snapshot (I4, I5).",
        translator_killed_mid_publish,
    ),
    Scenario(
        "watcher-leader-killed",
        "SIGKILL of east's watcher leader in the middle of a roll-out of shop/item",
        "The pods of shop/item in east are replaced one by one (a new pod in, an old one out). "
        "Half way, the watcher writing east is killed; the standby takes over, relists, and the "
        "roll-out's end state reaches every sidecar with no endpoint lost or invented.",
        watcher_leader_killed,
        quick=True,
    ),
    Scenario(
        "api-unreachable",
        "east's Kubernetes API server unreachable for two minutes",
        "East's watchers cannot list or watch. East is marked stale and its last state kept "
        "(no endpoint of east dropped while west's keep changing); once the API is back a "
        "change made in east arrives as usual.",
        api_unreachable,
    ),
    Scenario(
        "api-watch-faults",
        "east's API server drops every watch, and answers 410 after compacting its history",
        "The watchers must resume dropped watches from their resourceVersion and, on 410, "
        "relist and diff so that changes made in the gap (deletions included) are not lost.",
        api_watch_faults,
    ),
    Scenario(
        "frontend-killed",
        "SIGKILL of the front-end serving most sidecars; restarted 5 s later",
        "The balancers' health checks and the sidecars' streams move to the other front-end "
        "(failover_s: until every sidecar has a status record there and holds the truth); "
        "sidecars keep serving on their configuration meanwhile.",
        frontend_killed,
        quick=True,
    ),
    Scenario(
        "frontend-blackholed",
        "a front-end's ports swallow every byte for 20 s (a silent partition)",
        "No reset, no error: the balancers must notice by their keepalives and health checks "
        "and move the streams to the other front-end.",
        frontend_blackholed,
        shape={"frontend_proxies": True},
    ),
    Scenario(
        "balancer-restarted",
        "east's node-local balancer killed and restarted on the same address",
        "East's sidecars lose their xDS connection and keep serving; when the balancer is back "
        "they reconnect and catch up with the changes made meanwhile.",
        balancer_restarted,
        quick=True,
    ),
    Scenario(
        "bad-snapshot",
        "a snapshot Envoy rejects written for web in east, then the good one written back",
        "The sidecars NACK it (nacked_sidecars) and keep serving on their last accepted "
        "configuration; proxy-status shows them NACKED; after the good snapshot is back they "
        "converge. The two writes are the scenario's own and exempt from I3.",
        bad_snapshot,
        quick=True,
    ),
)

BY_NAME = {s.name: s for s in SCENARIOS}
