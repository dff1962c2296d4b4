"""What the operators' read-only tools cost at mesh scale: ``navigator state`` and
``proxy-status`` against a real etcd holding a whole mesh.

Run: ``.venv/bin/python benchmarks/bench_inspect.py --size L [--repeat 5] [--out FILE]``
(about 70 s at L on a 2-core machine; ``--hold S`` keeps the seeded etcd S seconds more, to
profile a command against it)

``--size S`` (200 services, 100 apps, 500 sidecars: a quick run) or ``L`` (the mesh the
project designs for: 2,000 services x 20 endpoints over 2 clusters and 4 zones, 1,000 apps
whose Nexus lists 20 services each, 5,000 sidecars).

How the etcd is filled (one etcd member on loopback, ``navigator.lab.procs.start_etcd``, stopped
at exit by its PID):

- the normalized state a watcher writes: the mesh of ``bench_translate.py`` (Services,
  Endpoints, Nodes, Nexus objects) with a little bad input so that diagnostics exist (1% of
  services carry an invalid annotation, 2% of apps name a missing service, 1% of services
  have a not-ready endpoint), under ``keys.state_key`` as ``model.encode``; one synced marker
  per cluster (the watcher's layout) and its watcher leader key (under a lease);
- what the translators write: the translator itself (``shards.runner.Translator``, 8 shards,
  standalone so unfenced) lists that state back from etcd and runs its ``flush()``: every app
  snapshot (and its parts), every shared endpoint assignment and every diagnostics key, in its
  own batches (``Etcd.apply``, at most 128 ops and 1 MiB per transaction); plus the shard
  count and one leader key per shard (under a lease);
- what the front-ends write: one status record per sidecar under
  ``keys.sidecar_key(front-end, node)``, made by ``navigator.xds.status.encode`` (the
  front-end's own code) from a stand-in for its stream, under one lease per front-end (4
  front-ends). Every type's version is what ``xds.resources.expected`` computes from the
  snapshots just written (the cache ``proxy-status`` itself loads), except for every 33rd
  sidecar, where one type (cds, lds, eds, rds in turn) holds an older version: about 3%
  STALE. Every run of ``proxy-status -o json`` (and every in-process ``proxy.status``) is
  checked against that: a wrong count of SYNCED or STALE rows fails the benchmark (exit 1).

What is measured, each ``--repeat`` times (commands interleaved round by round):

- as an operator runs them, real subprocesses ``python -m navigator ...``: wall time from
  spawn to exit, and peak RSS of that child (``ru_maxrss`` of ``os.wait4`` on its PID);
  stdout goes to a file, so rendering is included and the terminal is not. The floor,
  ``python -m navigator --version`` (interpreter start and the CLI's import, no etcd), is
  measured the same way;
- in this process, the reader coroutines the commands run (``state.clusters``,
  ``state.services``, ``state.apps``, ``state.snapshot_of``, ``state.diagnostics``,
  ``proxy.status``) on one connected client, and, apart, the rendering of their rows (table,
  YAML or JSON as the command prints them): what a command costs without start-up;
- etcd bytes read per command: keys plus values of every Range answer its reader gets (the
  prefixes it lists), counted by a thin subclass of the client around ``get`` and
  ``get_prefix``, with the time spent inside those calls. At size L ``snapshots/`` is about
  64 MiB, more than one gRPC answer may carry: the client reads every listing in pages.

A command that fails (non-zero exit, or an etcd error in-process) is shown FAILED with its
error under the table, the other commands are still measured, and the run exits 1.

Reading the figures: p99 is nearest-rank; with few repeats (5 by default) it is the max.
Subprocess wall time = start-up (the floor) + connecting + reading + decoding + rendering;
the in-process rows split the last three from the rest. The machine's cores are shared with
etcd, which serves the listing while the command decodes it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import bench_translate

from coordinator import election
from coordinator import etcd as etcd_mod
from navigator import keys, model, proxy, snapshot, state
from navigator.lab import procs
from navigator.xds import resources, status, streams
from shards import runner, translate

SIZES = {
    "S": {"services": 200, "apps": 100, "sidecars": 500},
    "L": {"services": 2000, "apps": 1000, "sidecars": 5000},
}
ENDPOINTS = 20
"""Per service, over both clusters."""
PER_APP = 20
"""Services per app's Nexus."""
SHARDS = 8
FRONTENDS = ("xds-0", "xds-1", "xds-2", "xds-3")
STALE_EVERY = 33
"""Every 33rd sidecar holds an old version of one type: about 3% STALE."""
LEASE_TTL = 3600
"""Leases of the seeded leader keys and status records: they outlive any run."""
BAD_ANNOTATION = ("navigator.avito.ru/lb-policy", "fastest")


class BenchError(Exception):
    """The benchmark could not run, or a command answered wrong."""


# --- etcd: the client that counts what it reads -----------------------------------------------


class CountingEtcd(etcd_mod.Etcd):
    """The project's client, counting the keys and bytes (key + value) of every read."""

    def __init__(self, endpoints: str, **kwargs: Any) -> None:
        super().__init__(endpoints, **kwargs)
        self.read_keys = 0
        self.read_bytes = 0
        self.ranges = 0
        self.range_seconds = 0.0
        self.apply_seconds = 0.0
        self.txns = 0

    def reset(self) -> None:
        self.read_keys = self.read_bytes = self.ranges = 0
        self.range_seconds = 0.0

    async def get(self, key: str) -> etcd_mod.KeyValue | None:
        started = time.perf_counter()
        kv = await super().get(key)
        self.range_seconds += time.perf_counter() - started
        self.ranges += 1
        if kv is not None:
            self.read_keys += 1
            self.read_bytes += len(kv.key.encode()) + len(kv.value)
        return kv

    async def get_prefix(self, prefix: str, *, keys_only: bool = False) -> etcd_mod.Listing:
        started = time.perf_counter()
        listing = await super().get_prefix(prefix, keys_only=keys_only)
        self.range_seconds += time.perf_counter() - started
        self.ranges += 1
        self.read_keys += len(listing.items)
        self.read_bytes += sum(len(k.encode()) + len(kv.value) for k, kv in listing.items.items())
        return listing

    async def _txn(self, ops: list[Any], fence: etcd_mod.Fence | None) -> int:
        started = time.perf_counter()
        try:
            return await super()._txn(ops, fence)
        finally:
            self.apply_seconds += time.perf_counter() - started
            self.txns += 1


# --- the mesh -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Sidecar:
    node: resources.NodeInfo
    frontend: str
    variant: str
    stale_type: str | None
    """The type holding an old version, or None: every type is SYNCED."""


def mesh(services: int, apps: int) -> list[model.Object]:
    """``bench_translate.mesh`` with a little bad input, so that diagnostics exist."""
    objs = bench_translate.mesh(services, ENDPOINTS, apps, PER_APP)
    out: list[model.Object] = []
    for original in objs:
        obj = original
        if isinstance(obj, model.Service) and int(obj.name[3:]) % 100 == 7:
            obj = dataclasses.replace(obj, annotations=(BAD_ANNOTATION,))
        elif isinstance(obj, model.Endpoints) and int(obj.name[3:]) % 100 == 3:
            last = dataclasses.replace(obj.endpoints[-1], ready=False)
            obj = dataclasses.replace(obj, endpoints=(*obj.endpoints[:-1], last))
        elif isinstance(obj, model.Nexus) and int(obj.name[3:]) % 50 == 1:
            missing = model.ServiceRef(obj.services[0].namespace, f"gone{obj.name}")
            obj = dataclasses.replace(obj, services=(*obj.services, missing))
        out.append(obj)
    return out


def region_of(cluster: str) -> str:
    """The region ``bench_translate.mesh`` gives the Nodes of a cluster."""
    return cluster + "-r"


def sidecars(count: int, apps: int) -> list[Sidecar]:
    """Sidecar j: app j % apps, spread over the clusters, zones, front-ends and variants."""
    out = []
    for j in range(count):
        cluster = bench_translate.CLUSTERS[(j // apps) % len(bench_translate.CLUSTERS)]
        zones = bench_translate.ZONES[cluster]
        zone = zones[(j // (apps * len(bench_translate.CLUSTERS))) % len(zones)]
        app = f"app{j % apps}"
        node = resources.NodeInfo(
            id=f"{cluster}-{app}-{j}",
            app=app,
            k8s_cluster=cluster,
            region=region_of(cluster),
            zone=zone,
            admin=f"127.0.0.1:{19000 + j % 1000}",
        )
        stale = proxy.TYPES[(j // STALE_EVERY) % len(proxy.TYPES)] if j % STALE_EVERY == 5 else None
        out.append(Sidecar(node, FRONTENDS[j % len(FRONTENDS)], ("sotw", "delta")[j % 2], stale))
    return out


@dataclasses.dataclass
class SeededStream:
    """What ``status.encode`` reads of a front-end's stream: identity, variant, per-type status."""

    node: resources.NodeInfo
    variant: str
    connected_at: float
    types: dict[str, dict[str, str]]
    only_type: str | None = None

    def record(self) -> dict[str, Any]:
        return self.types


def status_record(
    sidecar: Sidecar, cache: Any, connected_at: float
) -> tuple[bytes, dict[str, str]]:
    """The record a front-end writes for ``sidecar``, and the version each type should show."""
    types: dict[str, dict[str, str]] = {}
    expected: dict[str, str] = {}
    for short in proxy.TYPES:
        found = resources.expected(cache, sidecar.node, state.SHORT_TYPES[short])
        if found is None:
            raise BenchError("the snapshot cache is not loaded")
        expected[short] = found[0]
        held = streams.TypeStatus()
        held.sent = held.acked = found[0]
        if short == sidecar.stale_type:
            # NOTE: sent the latest, ACK not back yet: the sidecar still holds an older one.
            held.acked = snapshot.version_of([("older", sidecar.node.id)])
        types[short] = {**held.as_dict(), "variant": sidecar.variant}
    stream = SeededStream(sidecar.node, sidecar.variant, connected_at, types)
    body = status.encode(sidecar.frontend, [cast("streams.Stream[Any]", stream)])
    return body, expected


# --- seeding ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Seeded:
    app: str
    cluster: str
    zone: str
    synced_rows: int
    stale_rows: int
    stale_by_type: dict[str, int]
    phases: dict[str, float]
    keys_written: dict[str, int]


@contextlib.contextmanager
def phase(phases: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = time.perf_counter() - started
        print(f"  seed: {name:<48} {phases[name]:7.2f} s", flush=True)


async def seed(etcd: CountingEtcd, size: dict[str, int]) -> Seeded:
    phases: dict[str, float] = {}
    written: dict[str, int] = {}
    with phase(phases, "mesh objects (bench_translate.mesh)"):
        objs = mesh(size["services"], size["apps"])
    lease, _ = await etcd.grant(LEASE_TTL)

    with phase(phases, f"state: {len(objs)} objects (Etcd.apply)"):
        revision = await etcd.apply(puts={keys.state_key(o): model.encode(o) for o in objs})
        written["state"] = len(objs)
        now = int(time.time())
        for cluster in bench_translate.CLUSTERS:
            leader = f"watcher-{cluster}-0"
            marker = json.dumps(
                {"cluster": cluster, "time": now, "revision": revision, "leader": leader},
                sort_keys=True,
                separators=(",", ":"),
            ).encode()
            await etcd.put(keys.synced_key(cluster), marker)
            await etcd.put(
                keys.watcher_leader_key(cluster), election.leader_value(leader), lease=lease
            )
        await etcd.put(keys.SHARD_COUNT, json.dumps({"shards": SHARDS}).encode())
        await etcd.apply(
            puts={
                keys.shard_leader_key(n): election.leader_value(f"translator-{n % 2}")
                for n in range(SHARDS)
            },
            lease=lease,
        )

    etcd.apply_seconds, etcd.txns = 0.0, 0
    # NOTE: the translator logs each diagnostic once; they are counted by `state diagnostics`.
    runner_log = logging.getLogger(runner.__name__)
    level = runner_log.level
    runner_log.setLevel(logging.CRITICAL)
    with phase(phases, "translator: list state + flush (compute + write)"):
        tr = runner.Translator(etcd, options=translate.Options(), shards=SHARDS)
        listed = await etcd.get_prefix(keys.STATE)
        tr.load(listed)
        tr.load(await etcd.get_prefix(keys.SYNCED))
        tr.state_seen(listed.revision)
        await tr.flush()
    runner_log.setLevel(level)
    phases["translator: of which writing (Etcd txns)"] = etcd.apply_seconds
    print(
        f"  seed: {'translator: of which writing (' + str(etcd.txns) + ' txns)':<48} "
        f"{etcd.apply_seconds:7.2f} s",
        flush=True,
    )

    with phase(phases, "snapshots: load into SnapshotCache"):
        cache = await state.load_snapshots(etcd)
    records: dict[str, dict[str, bytes]] = collections.defaultdict(dict)
    seeded = sidecars(size["sidecars"], size["apps"])
    stale_by_type = dict.fromkeys(proxy.TYPES, 0)
    with phase(phases, f"sidecars: {len(seeded)} status records (encode)"):
        connected = time.time() - 300
        for s in seeded:
            body, _ = status_record(s, cache, connected)
            records[s.frontend][keys.sidecar_key(s.frontend, s.node.id)] = body
            if s.stale_type is not None:
                stale_by_type[s.stale_type] += 1
    with phase(phases, "sidecars: write, one lease per front-end"):
        for frontend in FRONTENDS:
            fe_lease, _ = await etcd.grant(LEASE_TTL)
            await etcd.apply(puts=records[frontend], lease=fe_lease)
    for prefix, name in (
        (keys.APP_SNAPSHOTS, "app snapshots"),
        (keys.CHUNKS, "snapshot chunks"),
        (keys.EDS_SNAPSHOTS, "endpoint assignments"),
        (keys.DIAGNOSTICS, "diagnostics"),
        (keys.SIDECARS, "sidecar records"),
    ):
        written[name] = len((await etcd.get_prefix(prefix, keys_only=True)).items)
    stale_rows = sum(stale_by_type.values())
    first = seeded[0].node
    return Seeded(
        app=first.app,
        cluster=first.k8s_cluster,
        zone=first.zone,
        synced_rows=len(seeded) - stale_rows,
        stale_rows=stale_rows,
        stale_by_type=stale_by_type,
        phases=phases,
        keys_written=written,
    )


async def prefix_sizes(etcd: CountingEtcd) -> list[dict[str, Any]]:
    out = []
    for prefix in (
        keys.STATE,
        keys.SYNCED,
        keys.WATCHERS,
        keys.SHARDS,
        keys.APP_SNAPSHOTS,
        keys.CHUNKS,
        keys.EDS_SNAPSHOTS,
        keys.DIAGNOSTICS,
        keys.SIDECARS,
    ):
        etcd.reset()
        await etcd.get_prefix(prefix)
        out.append({"prefix": prefix, "keys": etcd.read_keys, "bytes": etcd.read_bytes})
    etcd.reset()
    return out


# --- checks ---------------------------------------------------------------------------------


def check_status(rows: list[dict[str, Any]], seeded: Seeded, where: str) -> dict[str, int]:
    """The rows' SYNCED and STALE counts must be the seeded ones; returns the counts."""
    by_row: collections.Counter[str] = collections.Counter()
    by_type: collections.Counter[tuple[str, str]] = collections.Counter()
    for row in rows:
        found = {short: row["types"][short]["status"] for short in proxy.TYPES}
        for short, value in found.items():
            by_type[(short, value)] += 1
        values = set(found.values())
        by_row[values.pop() if len(values) == 1 else "+".join(sorted(values))] += 1
    counts = {
        "rows": len(rows),
        "synced": by_row[proxy.SYNCED],
        "stale": sum(n for k, n in by_row.items() if proxy.STALE in k.split("+")),
    }
    problems = []
    if counts["synced"] != seeded.synced_rows:
        problems.append(f"{counts['synced']} SYNCED rows, seeded {seeded.synced_rows}")
    if counts["stale"] != seeded.stale_rows:
        problems.append(f"{counts['stale']} STALE rows, seeded {seeded.stale_rows}")
    if counts["rows"] != seeded.synced_rows + seeded.stale_rows:
        problems.append(f"{counts['rows']} rows, seeded {seeded.synced_rows + seeded.stale_rows}")
    for short, n in seeded.stale_by_type.items():
        if by_type[(short, proxy.STALE)] != n:
            problems.append(f"{by_type[(short, proxy.STALE)]} {short} STALE, seeded {n}")
    if problems:
        raise BenchError(f"{where}: proxy-status counts wrong: {'; '.join(problems)}")
    return counts


# --- measuring --------------------------------------------------------------------------------


@dataclasses.dataclass
class Command:
    name: str
    argv: list[str]
    """``python -m navigator`` arguments."""
    reader: Callable[[CountingEtcd], Awaitable[Any]] | None
    render: Callable[[Any], str] | None


def commands(seeded: Seeded, url: str) -> list[Command]:
    etcd_arg = ["--etcd", url]

    def table(kind: str) -> Callable[[Any], str]:
        return lambda rows: state.table(rows, state.columns(kind, time.time()))

    def snapshot_of(etcd: CountingEtcd) -> Awaitable[Any]:
        return state.snapshot_of(
            etcd, seeded.app, cluster=seeded.cluster, zone=seeded.zone, region="", types=proxy.TYPES
        )

    snap = f"state snapshot {seeded.app} --cluster {seeded.cluster} --zone {seeded.zone}"
    return [
        Command("navigator --version (floor)", ["--version"], None, None),
        Command(
            "state clusters",
            ["state", "clusters", *etcd_arg],
            state.clusters,
            table("clusters"),
        ),
        Command(
            "state services",
            ["state", "services", *etcd_arg],
            state.services,
            table("services"),
        ),
        Command("state apps", ["state", "apps", *etcd_arg], state.apps, table("apps")),
        Command(
            snap,
            [
                *("state", "snapshot", seeded.app),
                *("--cluster", seeded.cluster, "--zone", seeded.zone),
                *etcd_arg,
            ],
            snapshot_of,
            lambda doc: state.dump(doc, "yaml"),
        ),
        Command(
            "state diagnostics",
            ["state", "diagnostics", *etcd_arg],
            state.diagnostics,
            table("diagnostics"),
        ),
        Command(
            "proxy-status -o json",
            ["proxy-status", "-o", "json", *etcd_arg],
            proxy.status,
            lambda rows: state.dump(rows, "json"),
        ),
    ]


@dataclasses.dataclass
class Samples:
    wall: list[float] = dataclasses.field(default_factory=list)
    """Spawn to exit, failed runs included (then: the time an operator waits for the error)."""
    rss_kib: list[int] = dataclasses.field(default_factory=list)
    stdout_bytes: int = 0
    cli_error: str = ""
    read: list[float] = dataclasses.field(default_factory=list)
    render: list[float] = dataclasses.field(default_factory=list)
    in_ranges: list[float] = dataclasses.field(default_factory=list)
    """Of ``read``: the time spent in the client's Range calls (etcd, gRPC, ``KeyValue``s)."""
    read_keys: int = 0
    read_bytes: int = 0
    ranges: int = 0
    read_error: str = ""
    counts: dict[str, int] | None = None


GNU_TIME = Path("/usr/bin/time")


def run_cli(cmd: Command, out_dir: Path, seeded: Seeded, samples: Samples) -> None:
    """One run of ``python -m navigator ...``: wall time, peak RSS, checks.

    NOTE: the child's own ``ru_maxrss`` (``os.wait4``) cannot be used: Linux carries the RSS
    high-water mark of the process that forked over ``exec``, so every child of this process
    would report at least this process's RSS. GNU time forks the command from its own small
    process and reports its ``%M``; without it, ``wait4``'s figure is an upper bound.

    A command that exits non-zero is recorded (its last stderr line), not raised: the table
    shows it FAILED and the run exits 1 at the end.
    """
    stdout_path = out_dir / "stdout"
    stderr_path = out_dir / "stderr"
    rss_path = out_dir / "maxrss"
    argv = [sys.executable, "-m", "navigator", *cmd.argv]
    if GNU_TIME.exists():
        argv = [str(GNU_TIME), "-f", "%M", "-o", str(rss_path), *argv]
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        started = time.perf_counter()
        child = subprocess.Popen(argv, stdout=out, stderr=err)
        try:
            _, wait_status, usage = os.wait4(child.pid, 0)
        except BaseException:
            child.kill()
            child.wait()
            raise
        wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(wait_status)
    samples.wall.append(wall)
    if GNU_TIME.exists():
        # NOTE: GNU time writes "Command exited with non-zero status N" first, then %M.
        samples.rss_kib.append(int(rss_path.read_text().split()[-1]))
    else:
        samples.rss_kib.append(int(usage.ru_maxrss))
    samples.stdout_bytes = stdout_path.stat().st_size
    if child.returncode != 0:
        lines = stderr_path.read_text().strip().splitlines() or [""]
        samples.cli_error = f"exit {child.returncode}: {lines[-1]}"
        return
    if cmd.argv[0] == "proxy-status":
        rows = json.loads(stdout_path.read_bytes())
        samples.counts = check_status(rows, seeded, f"navigator {' '.join(cmd.argv[:3])}")


async def run_in_process(
    cmd: Command, etcd: CountingEtcd, seeded: Seeded, samples: Samples
) -> None:
    """One call of the command's reader on a connected client, then its rendering, apart.

    An etcd error is recorded as the command's would be (the table shows it FAILED)."""
    assert cmd.reader is not None and cmd.render is not None
    etcd.reset()
    started = time.perf_counter()
    try:
        rows = await cmd.reader(etcd)
    except etcd_mod.EtcdError as exc:
        samples.read_error = state.one_line(exc)
        return
    samples.read.append(time.perf_counter() - started)
    samples.in_ranges.append(etcd.range_seconds)
    samples.read_keys, samples.read_bytes, samples.ranges = (
        etcd.read_keys,
        etcd.read_bytes,
        etcd.ranges,
    )
    started = time.perf_counter()
    cmd.render(rows)
    samples.render.append(time.perf_counter() - started)
    if cmd.reader is proxy.status:
        samples.counts = check_status(rows, seeded, f"{cmd.name.strip()} (in-process)")


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def figures(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "median_ms": statistics.median(values) * 1e3,
        "p99_ms": nearest_rank(values, 0.99) * 1e3,
        "max_ms": max(values) * 1e3,
    }


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def fmt_mib(n: float) -> str:
    return f"{n / 2**20:,.2f}"


def print_table(results: dict[str, Samples], cmds: list[Command], repeat: int) -> None:
    head = (
        f"{'command (python -m navigator ...)':<50} {'result':>6} {'median':>7} {'p99':>7} "
        f"{'max':>7} {'peak RSS':>8} | {'read':>7} {'render':>7} | {'etcd read':>17} "
        f"{'stdout':>7}"
    )
    units = (
        f"{'':<50} {'':>6} {'ms':>7} {'ms':>7} {'ms':>7} {'MiB':>8} | {'ms':>7} {'ms':>7} | "
        f"{'keys / MiB':>17} {'MiB':>7}"
    )
    print(head)
    print(units)
    print("-" * len(head))
    for cmd in cmds:
        s = results[cmd.name]
        wall, read, render = figures(s.wall), figures(s.read), figures(s.render)
        cli = (
            f"{'FAILED' if s.cli_error else 'ok':>6} {fmt_ms(wall['median_ms']):>7} "
            f"{fmt_ms(wall['p99_ms']):>7} {fmt_ms(wall['max_ms']):>7} "
            f"{max(s.rss_kib) / 1024:>8,.0f}"
        )
        if cmd.reader is None:
            inproc, etcd_read = f"{'-':>7} {'-':>7}", "-"
        elif s.read_error:
            inproc, etcd_read = f"{'FAILED':>7} {'-':>7}", "-"
        else:
            inproc = f"{fmt_ms(read.get('median_ms')):>7} {fmt_ms(render.get('median_ms')):>7}"
            etcd_read = f"{s.read_keys:,} / {fmt_mib(s.read_bytes)}"
        stdout = fmt_mib(s.stdout_bytes)
        print(f"{cmd.name:<50} {cli} | {inproc} | {etcd_read:>17} {stdout:>7}")
    print(
        f"n={repeat} per command, rounds interleaved; p99 is nearest-rank: with {repeat} "
        "repeats it is the max. median/p99/max: wall time of the subprocess, spawn to exit "
        "(to the error when it FAILED); peak RSS: the child's maximum resident set (GNU time's "
        "%M, max over runs)"
        + ("" if GNU_TIME.exists() else " (NO /usr/bin/time: an upper bound)")
        + ". read, render: median of the in-process reader on a connected client and of the "
        "rendering of its rows (table, YAML or JSON, as the command prints them). etcd read: "
        "keys and bytes (key + value) of every Range answer the reader gets."
    )
    print()
    print(
        f"{'in-process reader (ms)':<50} {'median':>7} {'p99':>7} {'max':>7} | "
        f"{'in Range':>8} {'decode+':>7} | {'render':>7} {'p99':>7} | {'Ranges':>6}"
    )
    for cmd in cmds:
        s = results[cmd.name]
        if cmd.reader is None:
            continue
        if s.read_error:
            print(f"{cmd.name:<50} {'FAILED':>7}")
            continue
        read, render = figures(s.read), figures(s.render)
        in_ranges = statistics.median(s.in_ranges) * 1e3
        print(
            f"{cmd.name:<50} {fmt_ms(read['median_ms']):>7} {fmt_ms(read['p99_ms']):>7} "
            f"{fmt_ms(read['max_ms']):>7} | {fmt_ms(in_ranges):>8} "
            f"{fmt_ms(max(0.0, read['median_ms'] - in_ranges)):>7} | "
            f"{fmt_ms(render['median_ms']):>7} "
            f"{fmt_ms(render['p99_ms']):>7} | {s.ranges:>6}"
        )
    print(
        "in Range: median time inside the client's Range calls (etcd answering, gRPC "
        "receiving, the client building its KeyValues), summed over calls, which may run "
        "at once (state snapshot reads its endpoint assignments concurrently); decode+: the "
        "rest of the reader (decoding values, building rows), 0 when the calls overlapped."
    )
    errors = [
        (cmd.name.strip(), where, error)
        for cmd in cmds
        for where, error in (
            ("python -m navigator", results[cmd.name].cli_error),
            ("in-process", results[cmd.name].read_error),
        )
        if error
    ]
    if errors:
        print()
        for name, where, error in errors:
            print(f"FAILED {name} ({where}): {error}")


async def measure(
    url: str, size_name: str, repeat: int, work: Path
) -> tuple[dict[str, Any], list[str]]:
    """Seeds etcd, measures; returns the figures and what failed."""
    size = SIZES[size_name]
    print(
        f"mesh {size_name}: {size['services']} services x {ENDPOINTS} endpoints over "
        f"{len(bench_translate.CLUSTERS)} clusters and "
        f"{sum(len(z) for z in bench_translate.ZONES.values())} zones, {size['apps']} apps x "
        f"{PER_APP} services, {size['sidecars']} sidecars on {len(FRONTENDS)} front-ends; "
        f"etcd at {url}",
        flush=True,
    )
    seeder = CountingEtcd(url, timeout=30.0, retry_for=30.0)
    async with seeder:
        seeded = await seed(seeder, size)
        sizes = await prefix_sizes(seeder)
    print()
    print(f"{'etcd prefix':<40} {'keys':>8} {'MiB':>9}")
    for p in sizes:
        print(f"{p['prefix']:<40} {p['keys']:>8,} {fmt_mib(p['bytes']):>9}")
    total = sum(p["bytes"] for p in sizes)
    print(f"{'total':<40} {sum(p['keys'] for p in sizes):>8,} {fmt_mib(total):>9}")
    snapshots = sum(p["bytes"] for p in sizes if p["prefix"].startswith(keys.SNAPSHOTS))
    print(
        f"snapshots/: about {fmt_mib(snapshots)} MiB of keys and values (one gRPC answer "
        f"carries at most 64 MiB: listings are paged)"
    )
    print(
        f"seeded sidecars: {seeded.synced_rows} SYNCED, {seeded.stale_rows} STALE "
        f"({', '.join(f'{k} {v}' for k, v in seeded.stale_by_type.items())})"
    )
    print(flush=True)

    cmds = commands(seeded, url)
    results = {c.name: Samples() for c in cmds}
    # NOTE: the inspection commands' own client settings (``state.connect``).
    etcd = CountingEtcd(url, timeout=2.0, retry_for=3.0)
    async with etcd:
        await etcd.ping()
        for r in range(repeat):
            started = time.perf_counter()
            for cmd in cmds:
                run_cli(cmd, work, seeded, results[cmd.name])
                if cmd.reader is not None:
                    await run_in_process(cmd, etcd, seeded, results[cmd.name])
            print(
                f"  round {r + 1}/{repeat} done ({time.perf_counter() - started:.1f} s)",
                flush=True,
            )
    print()
    print_table(results, cmds, repeat)
    print()
    for cmd in cmds:
        counts = results[cmd.name].counts
        if cmd.reader is proxy.status and counts is not None:
            print(
                f"{cmd.name.strip()}: {counts['synced']} SYNCED, {counts['stale']} STALE rows of "
                f"{counts['rows']}, as seeded ({seeded.synced_rows} / {seeded.stale_rows}), "
                "checked on every run"
            )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this benchmark process (seeding + in-process readers): {rss:,.0f} MiB")

    failures = [
        f"{cmd.name.strip()}: {error}"
        for cmd in cmds
        for error in (results[cmd.name].cli_error, results[cmd.name].read_error)
        if error
    ]
    doc: dict[str, Any] = {
        "size": size_name,
        "mesh": {
            **size,
            "endpoints_per_service": ENDPOINTS,
            "services_per_app": PER_APP,
            "clusters": list(bench_translate.CLUSTERS),
            "zones": {k: list(v) for k, v in bench_translate.ZONES.items()},
            "frontends": list(FRONTENDS),
            "shards": SHARDS,
        },
        "repeat": repeat,
        "seeding": {
            "phases_s": seeded.phases,
            "keys_written": seeded.keys_written,
            "synced_rows": seeded.synced_rows,
            "stale_rows": seeded.stale_rows,
            "stale_by_type": seeded.stale_by_type,
        },
        "etcd_prefixes": sizes,
        "commands": {
            cmd.name.strip(): {
                "argv": ["python", "-m", "navigator", *cmd.argv],
                "wall_s": results[cmd.name].wall,
                "wall": figures(results[cmd.name].wall),
                "peak_rss_kib": results[cmd.name].rss_kib,
                "stdout_bytes": results[cmd.name].stdout_bytes,
                "cli_error": results[cmd.name].cli_error,
                "in_process_read_s": results[cmd.name].read,
                "in_process_read": figures(results[cmd.name].read),
                "in_process_error": results[cmd.name].read_error,
                "in_process_range_s": results[cmd.name].in_ranges,
                "render_s": results[cmd.name].render,
                "render": figures(results[cmd.name].render),
                "etcd_read": {
                    "keys": results[cmd.name].read_keys,
                    "bytes": results[cmd.name].read_bytes,
                    "ranges": results[cmd.name].ranges,
                },
                "proxy_status_counts": results[cmd.name].counts,
            }
            for cmd in cmds
        },
        "failures": failures,
        "bench_peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    return doc, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="L")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument(
        "--hold",
        type=float,
        default=0.0,
        metavar="S",
        help="keep etcd (seeded) S seconds after measuring, e.g. to profile a command",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-inspect-") as tmp:
        work = Path(tmp)
        etcd_proc, url = procs.start_etcd(work / "etcd", log_file=work / "etcd.log")
        try:
            doc, failures = asyncio.run(measure(url, args.size, args.repeat, work))
            if args.out is not None:
                args.out.write_text(json.dumps(doc, indent=2) + "\n")
                print(f"figures written to {args.out}")
            if args.hold > 0:
                print(f"holding etcd at {url} for {args.hold:.0f} s", flush=True)
                time.sleep(args.hold)
        except BenchError as exc:
            print(f"bench_inspect: FAILED: {exc}", file=sys.stderr)
            return 1
        finally:
            procs.stop(etcd_proc)
    print(f"total {time.perf_counter() - started:.0f} s")
    if failures:
        print(
            f"bench_inspect: FAILED: {len(failures)} measurement(s) failed: " + "; ".join(failures),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
