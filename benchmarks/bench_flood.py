"""Does one flooding client starve the other sidecars of a front-end? Convergence of well-behaved
sidecars alone, then while one client floods the same ``navigator xds`` process (the limits of
``navigator.xds.limits``, at their defaults).

Run: ``.venv/bin/python benchmarks/bench_flood.py [--sidecars 1000] [--apps 100]
[--changes 15] [--no-limits] [--out FILE]`` (about 40 s on a 2-core machine). Target: the
flood raises the sidecars' convergence by at most 2x. ``--no-limits`` runs the same with every
limit out of reach, to show what they buy (use ``--changes 5``: it is slow).

What runs (each its own process on 127.0.0.1, every one stopped by its PID at the end, on
errors and on Ctrl-C too):

- one etcd, seeded as ``bench_floor.py`` seeds it: ``--apps`` apps that all see the target
  service; the snapshots are written by the real translator in this process
  (``shards.runner.Translator``), and each endpoint change goes through it (``Mesh.change``);
- one front-end, ``navigator xds`` with its default limits;
- ``--sidecars`` well-behaved simulated sidecars (``ads_client.py``, SotW ADS, real gRPC, in
  ``--client-procs`` processes; sidecar ``j`` is of app ``j % apps``), which ACK every response
  and report when they hold the target's new endpoints;
- in the flood phase, one flooding client: this file run as ``bench_flood.py flood``, its own
  process, ONE client (one node id, of app ``app-0``, so whatever is admitted is served real
  pushes). On ``--flood-channels`` connections, until it is stopped, all at once:
  - storm: ``--storm-concurrency`` loops that open stream after stream (``--flood-attempts``
    at most); each sends its first request and, if it is served, requests as fast as it can
    write them (the same ACK again and again) until it is ended;
  - oversized: ``--oversized-streams`` loops sending a first request 1.25x the message limit
    (refused and counted by the front-end) or 3x it (refused by gRPC itself);
  - big: ``--big-streams`` loops sending a first request just under the message limit, all of
    it resource names (145,000): parsed, then refused (``resource_names``);
  - silent: ``--silent-streams`` streams that never send a request (ended by the front-end's
    first-request timeout, then opened again).

Phases: ``baseline`` (the sidecars alone), then ``flood`` (the flooder is started and, once
the front-end refuses its streams, the same changes are made). Each change flips the target's
endpoints (10 <-> 11 addresses) through the translator; its convergence runs from just before
the translator's etcd write of the EDS keys to the moment the LAST sidecar reports the new set
(reports carry the sidecars' receipt time, same clock); "each sidecar" is the same for every
sidecar and change. Between changes the driver waits for ``--quiet`` s without reports or
snapshot writes (sidecar status records are not waited for: the flooder's served streams keep
writing them). The flooder is stopped once its silent streams were ended.

Also per phase: the front-end's CPU and RSS (``/proc``), its peak RSS (VmHWM), the streams it
served at most (sampled every 0.2 s), ``navigator_xds_limited_total`` by reason over the phase,
the sidecars' stream failures; for the flood, the flooder's own counts and CPU. The flooder
shares the machine's two cores with the front-end and the sidecars, which a real flooder (on
another node) would not: its CPU is shown.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import bench_endpoint_change as bec
import bench_floor as bfl
import bench_frontend as bfe
import grpc
import grpc.aio
from envoy.service.discovery.v3 import discovery_pb2

from navigator.bench import sidecars
from navigator.lab import procs
from navigator.xds import limits as limits_mod

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
FLOOD_NODE = "flood-0"
FLOOD_APP = "app-0"
LIMITED_METRIC = "navigator_xds_limited_total"
REASONS = (
    "message_size",
    "resource_names",
    "streams",
    "streams_per_client",
    "request_rate",
    "first_request",
)
SAMPLE_EVERY = 0.2


# --- the flooder (its own process) ------------------------------------------------------------


@dataclasses.dataclass
class FloodStats:
    attempts: int = 0
    """Streams the storm opened."""
    storm_s: float = float("nan")
    """When (s after the start) the storm opened its last stream."""
    refused: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    """Storm streams ended before a response, by status."""
    served: int = 0
    """Storm streams that got a response (admitted), then flooded requests."""
    rapid_requests: int = 0
    served_ended: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    oversized_sent: int = 0
    oversized_bytes: int = 0
    oversized_ended: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    silent_streams: int = 0
    big_sent: int = 0
    """First requests just under the size limit (parsed, then refused or served)."""
    big_ended: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    silent_ended: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "EOF"
    if isinstance(exc, grpc.aio.AioRpcError):
        return str(exc.code().name)
    return type(exc).__name__


async def flood(args: argparse.Namespace) -> dict[str, Any]:
    """Floods until SIGTERM; what it did."""
    node = sidecars.make_node(
        node_id=args.node_id, app=args.app, k8s_cluster="east", region="r1", zone="r1-a"
    )
    request = discovery_pb2.DiscoveryRequest
    first = request(node=node, type_url=sidecars.CDS).SerializeToString()
    # NOTE: a stale ACK: read, parsed and compared by the front-end, answered with nothing.
    ack = request(type_url=sidecars.CDS, version_info="0", response_nonce="0").SerializeToString()

    def sized(size: int) -> bytes:
        """A request of ``size`` bytes or a few more, naming resources (28 bytes each)."""
        head = len(request(node=node, type_url=sidecars.EDS).SerializeToString())
        names = [f"flood/service-{i:07d}:8080" for i in range((size - head) // 28 + 1)]
        req = request(node=node, type_url=sidecars.EDS, resource_names=names)
        return bytes(req.SerializeToString())

    oversized = [sized(int(args.message_limit * 1.25)), sized(args.message_limit * 3)]
    big = sized(args.message_limit - 64 * 1024)
    channels = [
        grpc.aio.insecure_channel(
            args.xds,
            options=[*sidecars.CHANNEL_OPTIONS, ("grpc.max_send_message_length", -1)],
        )
        for _ in range(args.channels)
    ]
    stats = FloodStats()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def open_call(i: int) -> Any:
        return channels[i % len(channels)].stream_stream(
            ADS_METHOD, request_serializer=None, response_deserializer=None
        )()

    async def until_end(call: Any) -> None:
        while await call.read() is not grpc.aio.EOF:
            pass

    async def storm(i: int) -> None:
        while not stop.is_set() and stats.attempts < args.attempts:
            stats.attempts += 1
            if stats.attempts == args.attempts:
                stats.storm_s = round(time.monotonic() - started, 2)
            call, error, served = open_call(i), None, False
            try:
                await call.write(first)
                if await call.read() is not grpc.aio.EOF:
                    served = True
                    stats.served += 1
                    # Served: requests as fast as it can write them, until it is ended.
                    drain = asyncio.create_task(until_end(call))
                    try:
                        while not stop.is_set() and not drain.done():
                            await call.write(ack)
                            stats.rapid_requests += 1
                    finally:
                        drain.cancel()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                error = exc
            finally:
                call.cancel()
            (stats.served_ended if served else stats.refused)[_outcome(error)] += 1

    async def oversize(i: int) -> None:
        k = 0
        while not stop.is_set():
            payload = oversized[k % 2]
            k += 1
            call, error = open_call(i), None
            try:
                await call.write(payload)
                stats.oversized_sent += 1
                stats.oversized_bytes += len(payload)
                await until_end(call)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                error = exc
            finally:
                call.cancel()
            stats.oversized_ended[_outcome(error)] += 1

    async def big_first(i: int) -> None:
        while not stop.is_set():
            call, error = open_call(i), None
            try:
                await call.write(big)
                stats.big_sent += 1
                # NOTE: one response (or the refusal), then the next stream: the front-end
                # parses each one before it knows whose it is.
                await call.read()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                error = exc
            finally:
                call.cancel()
            stats.big_ended[_outcome(error)] += 1

    async def silent(i: int) -> None:
        while not stop.is_set():
            stats.silent_streams += 1
            call, error = open_call(i), None
            try:
                await until_end(call)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                error = exc
            finally:
                call.cancel()
            stats.silent_ended[_outcome(error)] += 1

    workers = [
        *(storm(i) for i in range(args.storm_concurrency)),
        *(oversize(i) for i in range(args.oversized_streams)),
        *(silent(i) for i in range(args.silent_streams)),
        *(big_first(i) for i in range(args.big_streams)),
    ]
    started = time.monotonic()
    tasks = [asyncio.create_task(w) for w in workers]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close(grace=None)
    doc = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    return {
        **{k: dict(v) if isinstance(v, collections.Counter) else v for k, v in doc.items()},
        "seconds": round(time.monotonic() - started, 2),
    }


def flood_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_flood.py flood", description="The flooder.")
    parser.add_argument("--xds", required=True)
    parser.add_argument("--out", required=True, help="its counts, as JSON, when it stops")
    parser.add_argument("--node-id", default=FLOOD_NODE)
    parser.add_argument("--app", default=FLOOD_APP)
    parser.add_argument("--message-limit", type=int, required=True)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--attempts", type=int, default=5000)
    parser.add_argument("--storm-concurrency", type=int, default=200)
    parser.add_argument("--oversized-streams", type=int, default=4)
    parser.add_argument("--silent-streams", type=int, default=500)
    parser.add_argument("--big-streams", type=int, default=0)
    return parser.parse_args(argv)


# --- the driver -------------------------------------------------------------------------------


@dataclasses.dataclass
class Change:
    index: int
    converged: bool
    last_ms: float
    """From the EDS write to the last sidecar holding the new set."""
    each_ms: list[float]
    """From the EDS write to each sidecar holding it."""


@dataclasses.dataclass
class Phase:
    name: str
    changes: list[Change]
    wall_s: float
    frontend_cpu_s: float
    rss_start_kib: int
    rss_end_kib: int
    hwm_kib: int
    streams_max: int
    limited: dict[str, int]
    sidecar_errors: list[str]
    quiet_timeouts: int
    flooder: dict[str, Any] | None = None
    flooder_cpu_s: float = float("nan")
    flooder_wall_s: float = 0.0
    """From the flooder's start to its stop."""


class Sampler:
    """The front-end's served streams and RSS, every ``SAMPLE_EVERY`` s (the maximum)."""

    def __init__(self, server: bfl.Server) -> None:
        self.server = server
        self.streams_max = 0
        self.rss_max_kib = 0

    async def run(self) -> None:
        while True:
            with contextlib.suppress(bec.BenchError):
                streams, _ = await self.server.counters()
                self.streams_max = max(self.streams_max, streams)
            rss = bec.status_kib(self.server.proc.popen.pid, "VmRSS") or 0
            self.rss_max_kib = max(self.rss_max_kib, rss)
            await asyncio.sleep(SAMPLE_EVERY)


async def limited_counts(server: bfl.Server) -> dict[str, int]:
    samples = await bfe.scrape(server.session, f"{server.http}/metrics")
    found = samples.get(LIMITED_METRIC, {})
    return {r: int(found.get(f"reason={r}", 0)) for r in REASONS}


NO_LIMITS = (
    "--max-message-bytes",
    str(2**30 - 1),
    "--max-resource-names",
    str(10**9),
    "--max-streams",
    str(10**9),
    "--max-streams-per-client",
    str(10**9),
    "--max-requests-per-second",
    "1e12",
    "--request-burst",
    "1e12",
)
"""``--no-limits``: what the front-end would do without them (for comparison)."""


def start_frontend(
    system: bec.System, url: str, session: aiohttp.ClientSession, *, no_limits: bool
) -> bfl.Server:
    xds_port, http = procs.free_port(), f"127.0.0.1:{procs.free_port()}"
    proc = system.navigator(
        "xds",
        "xds",
        "--listen",
        f"127.0.0.1:{xds_port}",
        "--etcd",
        url,
        "--http",
        http,
        "--id",
        "xds-flood",
        *(NO_LIMITS if no_limits else ()),
        tier=bec.TIER_CONTROL_PLANE,
        role="xds",
    )
    return bfl.Server("ours", proc, xds_port, f"http://{http}", session)


def start_flooder(system: bec.System, args: argparse.Namespace, xds_port: int, out: Path) -> Any:
    return system.spawn(
        "flooder",
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "flood",
            "--xds",
            f"127.0.0.1:{xds_port}",
            "--out",
            str(out),
            "--message-limit",
            str(limits_mod.DEFAULT_MAX_MESSAGE_BYTES),
            "--channels",
            str(args.flood_channels),
            "--attempts",
            str(args.flood_attempts),
            "--storm-concurrency",
            str(args.storm_concurrency),
            "--oversized-streams",
            str(args.oversized_streams),
            "--silent-streams",
            str(args.silent_streams),
            "--big-streams",
            str(args.big_streams),
        ],
        tier=bec.TIER_CLIENT,
        role="flooder",
    )


async def changes(
    *,
    name: str,
    args: argparse.Namespace,
    system: bec.System,
    observer: bec.Observer,
    mesh_: bfl.Mesh,
    tasks: Sequence[asyncio.Task[None]],
) -> tuple[list[Change], int]:
    out: list[Change] = []
    quiet_timeouts = 0
    for k in range(args.changes):
        expected = bec.expected_set(e.ip for e in bfl.target_endpoints(not mesh_.extra).endpoints)
        observer.begin(expected, guard=time.time(), fresh=True)
        t0, _, _ = await mesh_.change()
        ok = await bec.wait_converged(system, observer, tasks, args.change_timeout, f"change {k}")
        reached = sorted(observer.reached.values())
        out.append(
            Change(
                index=k,
                converged=ok,
                last_ms=(reached[-1] - t0) * 1e3 if ok else float("nan"),
                each_ms=[round((t - t0) * 1e3, 3) for t in reached],
            )
        )
        if not ok:
            print(
                f"  [{name}] change {k} did not converge: {len(observer.pending)} sidecars "
                "without the new set",
                file=sys.stderr,
            )
        if not await observer.quiet(args.quiet, limit=10.0):
            quiet_timeouts += 1
    return out, quiet_timeouts


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    main_task = asyncio.current_task()
    if main_task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    system = bec.System(work)
    phases: list[Phase] = []
    try:
        url = system.start_etcd(bec.SHAPES["single"], work / "etcd")[0]
        etcd = bfl.TimedEtcd(url, timeout=30.0, retry_for=30.0)
        async with etcd, aiohttp.ClientSession() as session:
            tr, seeded = await bfl.seed(etcd, args.apps)
            print(
                f"seeded: {seeded['snapshot_keys']} snapshot keys by the translator "
                f"({seeded['seconds']}s)",
                file=sys.stderr,
            )
            mesh_ = bfl.Mesh(etcd, tr)
            layout = bfe.Layout(streams=args.sidecars, apps=args.apps, envoys=0)
            # NOTE: the flooder's served streams write status records all the time: a quiet
            # period cannot wait for those.
            observer = bec.Observer(layout.simulated_names(), quiet_ignores=(bec.STATUS_PREFIX,))
            server = start_frontend(system, url, session, no_limits=args.no_limits)
            async with bec.serve_reports(observer) as report_port:
                follow = asyncio.create_task(
                    bec.follow_etcd(etcd, await etcd.ping() + 1, observer), name="etcd-watch"
                )
                sampler = Sampler(server)
                sampling = asyncio.create_task(sampler.run(), name="sampler")
                tasks = [follow]
                try:
                    await bfl.wait_until(system, "front-end ready", server.ready, 60.0)
                    rss_empty = bfl.kib(server.proc, "VmRSS")
                    opened = time.monotonic()
                    bfe.spawn_clients(
                        system,
                        args,
                        layout=layout,
                        variant="sotw",
                        xds_port=server.xds_port,
                        report_port=report_port,
                    )
                    observer.begin(mesh_.held(), guard=0.0, fresh=False)
                    await bec.wait_converged(system, observer, tasks, 60.0, "initial sync")
                    print(
                        f"  {args.sidecars:,} sidecars synced in {time.monotonic() - opened:.1f}s",
                        file=sys.stderr,
                    )
                    await observer.quiet(args.quiet, limit=10.0)
                    for name in ("baseline", "flood"):
                        phases.append(
                            await run_phase(
                                name,
                                args=args,
                                system=system,
                                server=server,
                                observer=observer,
                                mesh_=mesh_,
                                tasks=tasks,
                                sampler=sampler,
                                work=work,
                            )
                        )
                finally:
                    for task in (follow, sampling):
                        task.cancel()
                    await asyncio.gather(follow, sampling, return_exceptions=True)
    finally:
        system.stop()
    return {
        "benchmark": "flood",
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
        },
        "cpus": os.cpu_count(),
        "rss_no_streams_kib": rss_empty,
        "summaries": [summary(p) for p in phases],
        "phases": [dataclasses.asdict(p) for p in phases],
    }


async def run_phase(
    name: str,
    *,
    args: argparse.Namespace,
    system: bec.System,
    server: bfl.Server,
    observer: bec.Observer,
    mesh_: bfl.Mesh,
    tasks: Sequence[asyncio.Task[None]],
    sampler: Sampler,
    work: Path,
) -> Phase:
    began = time.monotonic()
    errors_before = len(observer.errors)
    flooder = None
    flooder_cpu0 = flooder_at = flooder_wall = 0.0
    out = work / "flooder.json"
    before = await limited_counts(server)
    if name == "flood":
        flooder = start_flooder(system, args, server.xds_port, out)
        flooder_cpu0, flooder_at = bfl.cpu(flooder), time.monotonic()

        # NOTE: the silent streams are not waited for (ended after the first-request timeout).
        wanted = [
            *(["request_rate"] if args.storm_concurrency else []),
            *(["resource_names"] if args.big_streams else []),
            *(["message_size"] if args.oversized_streams else []),
        ]

        async def flooding() -> bool:
            if args.no_limits:
                # NOTE: nothing is refused: the storm's streams are all served.
                return bool((await server.counters())[0] > args.sidecars + 16)
            now = await limited_counts(server)
            return all(now[r] > before[r] for r in wanted)

        await bfl.wait_until(system, "the flood under way", flooding, 30.0)
        print(f"  [flood] under way: {await limited_counts(server)}", file=sys.stderr)
    sampler.streams_max = 0
    rss0 = bfl.kib(server.proc, "VmRSS")
    cpu0 = bfl.cpu(server.proc)
    wall0 = time.monotonic()
    done, quiet_timeouts = await changes(
        name=name, args=args, system=system, observer=observer, mesh_=mesh_, tasks=tasks
    )
    wall = time.monotonic() - wall0
    cpu = bfl.cpu(server.proc) - cpu0
    flood_doc: dict[str, Any] | None = None
    flooder_cpu = float("nan")
    if flooder is not None and args.silent_streams:

        async def silent_ended() -> bool:
            return (await limited_counts(server))["first_request"] > before["first_request"]

        # NOTE: the silent streams are ended by the first-request timeout: seen once.
        await bfl.wait_until(
            system, "the silent streams ended", silent_ended, limits_mod.FIRST_REQUEST_TIMEOUT + 5
        )
    if flooder is not None:
        flooder_cpu = bfl.cpu(flooder) - flooder_cpu0
        flooder_wall = time.monotonic() - flooder_at
        bfl.stop_procs(system, [flooder])
        with contextlib.suppress(OSError, ValueError):
            flood_doc = json.loads(out.read_text())
    # NOTE: the whole phase: from before the flooder started to after it stopped.
    after = await limited_counts(server)
    phase = Phase(
        name=name,
        changes=done,
        wall_s=round(wall, 3),
        frontend_cpu_s=round(cpu, 3),
        rss_start_kib=rss0,
        rss_end_kib=bfl.kib(server.proc, "VmRSS"),
        hwm_kib=bfl.kib(server.proc, "VmHWM"),
        streams_max=sampler.streams_max,
        limited={r: after[r] - before[r] for r in REASONS},
        sidecar_errors=observer.errors[errors_before:],
        quiet_timeouts=quiet_timeouts,
        flooder=flood_doc,
        flooder_cpu_s=round(flooder_cpu, 3),
        flooder_wall_s=round(flooder_wall, 3),
    )
    print(f"  [{name}] done in {time.monotonic() - began:.0f}s", file=sys.stderr)
    return phase


# --- figures ------------------------------------------------------------------------------


def summary(p: Phase) -> dict[str, Any]:
    each = [v for c in p.changes for v in c.each_ms]
    return {
        "phase": p.name,
        "changes": len(p.changes),
        "not_converged": sum(1 for c in p.changes if not c.converged),
        "last_ms": bec.spread([c.last_ms for c in p.changes]),
        "each_ms": bec.spread(each),
        "frontend_cpu_pct": round(p.frontend_cpu_s / p.wall_s * 100, 1) if p.wall_s else None,
        "rss_mib": round(p.rss_end_kib / 1024, 1),
        "hwm_mib": round(p.hwm_kib / 1024, 1),
        "streams_max": p.streams_max,
        "limited": p.limited,
        "sidecar_errors": len(p.sidecar_errors),
        "flooder_cpu_pct": round(p.flooder_cpu_s / p.flooder_wall_s * 100, 1)
        if p.flooder is not None and p.flooder_wall_s
        else None,
    }


def ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}x"


def table(base: dict[str, Any], flood_: dict[str, Any]) -> str:
    rows: list[tuple[str, float, float, bool]] = []
    for key, label in (("last_ms", "convergence, last sidecar"), ("each_ms", "each sidecar")):
        for stat, name in (("median", "p50"), ("p99", "p99"), ("max", "max")):
            rows.append((f"{label}: {name} ms", base[key][stat], flood_[key][stat], True))
    rows += [
        ("front-end CPU % of a core", base["frontend_cpu_pct"], flood_["frontend_cpu_pct"], False),
        ("front-end RSS at the end MiB", base["rss_mib"], flood_["rss_mib"], False),
        ("front-end peak RSS (VmHWM) MiB", base["hwm_mib"], flood_["hwm_mib"], False),
        ("streams served at most", base["streams_max"], flood_["streams_max"], False),
        ("sidecars' stream failures", base["sidecar_errors"], flood_["sidecar_errors"], False),
    ]
    width = 12
    label_width = max(len(r[0]) for r in rows)
    head = " " * label_width + "".join(h.rjust(width) for h in ("baseline", "flood", "ratio"))
    lines = [head, "-" * len(head)]
    for label, a, b, show in rows:
        cells = [f"{a:,.1f}", f"{b:,.1f}", ratio(b, a) if show else ""]
        lines.append(label.ljust(label_width) + "".join(c.rjust(width) for c in cells))
    return "\n".join(lines)


def flood_lines(phase: dict[str, Any], s: dict[str, Any]) -> list[str]:
    f = phase.get("flooder") or {}
    lim = s["limited"]
    out = [
        "refused or ended by the front-end during the flood phase "
        "(navigator_xds_limited_total): " + ", ".join(f"{r} {lim[r]:,}" for r in REASONS),
    ]
    if f:
        storm_end = "" if math.isnan(f["storm_s"]) else f", all by {f['storm_s']}s"
        out += [
            f"flooder: one client (node {FLOOD_NODE}), {f['seconds']:.0f}s, "
            f"{s['flooder_cpu_pct']}% of a core",
            f"  storm: {f['attempts']:,} stream attempts{storm_end}; refused {f['refused']}; "
            f"{f['served']:,} served, which sent {f['rapid_requests']:,} requests as fast as "
            f"they could: ended {f['served_ended']}",
            f"  oversized requests: {f['oversized_sent']:,} "
            f"({f['oversized_bytes'] / 2**20:,.0f} MiB): ended {f['oversized_ended']}",
            f"  first requests just under the size limit (all names): {f['big_sent']:,}: "
            f"ended {f['big_ended']}",
            f"  silent streams: {f['silent_streams']:,}: ended {f['silent_ended']}",
        ]
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sidecars", type=int, default=1000, help="well-behaved sidecars")
    parser.add_argument("--apps", type=int, default=100, help="apps (default 100)")
    parser.add_argument("--changes", type=int, default=15, help="changes per phase")
    parser.add_argument("--client-procs", type=int, default=2, help="sidecar processes")
    parser.add_argument("--streams-per-channel", type=int, default=100)
    parser.add_argument("--quiet", type=float, default=0.5, help="between changes, s")
    parser.add_argument("--change-timeout", type=float, default=15.0, help="per change, s")
    parser.add_argument("--flood-channels", type=int, default=4, help="flooder connections")
    parser.add_argument("--flood-attempts", type=int, default=50_000, help="storm streams at most")
    parser.add_argument("--storm-concurrency", type=int, default=200)
    parser.add_argument("--oversized-streams", type=int, default=4)
    parser.add_argument("--silent-streams", type=int, default=500)
    parser.add_argument("--big-streams", type=int, default=4)
    parser.add_argument(
        "--no-limits",
        action="store_true",
        help="run the front-end with every limit out of reach, to see what they buy",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep every process's log")
    args = parser.parse_args(argv)
    if args.sidecars < 1 or args.apps < 1 or args.changes < 1 or args.client_procs < 1:
        parser.error("--sidecars, --apps, --changes and --client-procs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nv-bench-flood-") as tmp:
        work = Path(tmp)
        if args.log_dir is not None:
            work = args.log_dir
            work.mkdir(parents=True, exist_ok=True)
        try:
            doc = asyncio.run(run(args, work))
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("interrupted; every process stopped", file=sys.stderr)
            return 130
        except (bec.BenchError, procs.ProcError) as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    base, flood_ = doc["summaries"]
    print(
        f"One flooding client against {args.sidecars:,} sidecars of one front-end "
        f"({args.apps} apps all seeing the target, SotW ADS, {args.client_procs} sidecar "
        f"processes); {args.changes} endpoint changes per phase; {os.cpu_count()} CPUs; wall "
        f"time {time.monotonic() - began:.0f}s"
    )
    print(table(base, flood_))
    for line in flood_lines(doc["phases"][1], flood_):
        print(line)
    worst = max(
        flood_["last_ms"][k] / base["last_ms"][k] for k in ("median", "p99") if base["last_ms"][k]
    )
    print(
        f"front-end RSS with no streams {doc['rss_no_streams_kib'] / 1024:,.1f} MiB. "
        f"Target: flood / baseline <= 2x (p50 and p99 of the last sidecar): {worst:.2f}x"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(bec.no_nan(doc), indent=2, allow_nan=False) + "\n")
        print(f"figures written to {args.out}")
    if any(s["not_converged"] for s in doc["summaries"]):
        print("some changes did not converge", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["flood"]:
        flood_opts = flood_args(sys.argv[2:])
        counts = asyncio.run(flood(flood_opts))
        Path(flood_opts.out).write_text(json.dumps(counts, indent=2) + "\n")
        sys.exit(0)
    sys.exit(main())
