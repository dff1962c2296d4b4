"""Many simulated Envoy sidecars in one process, for the mesh benchmark (``navigator bench``).

Why it exists: the mesh benchmark needs thousands of sidecars subscribed to the xDS
front-ends, and one real Envoy per sidecar would not fit on a small machine (5,000 sidecars
over a handful of processes on two cores). Each simulated sidecar opens its own ADS stream
(real gRPC through ``grpc.aio`` and the generated ``xds-protos`` stubs), identifies itself as
Envoy does (node id, ``cluster`` = app, metadata ``app`` / ``k8s_cluster``, locality),
subscribes to CDS, then to EDS for the EDS clusters it received, and ACKs every response. LDS
and RDS are not requested. This generalizes ``benchmarks/ads_client.py`` (which watches one
cluster per sidecar and now imports its shared pieces from here): every sidecar here holds the
whole CDS/EDS config it is sent, and reports when it is complete and what each change added.

Two protocol variants, one per process (``"delta"`` of the spec):

- State of the World: ``StreamAggregatedResources``; an EDS resource missing from a SotW EDS
  response is left as it was (Envoy keeps it);
- incremental: ``DeltaAggregatedResources``; CDS is a wildcard subscription, EDS is subscribed
  and unsubscribed by name as CDS changes, ``removed_resources`` removes what it names (a
  removed EDS resource the sidecar still watches is held as an assignment with no endpoints).

A failed stream is reported and re-opened after ``RECONNECT_DELAY``; the sidecar keeps what
it held meanwhile (as Envoy does) and resumes as Envoy does: SotW requests carry the last
accepted versions, Delta requests carry ``initial_resource_versions``.

Run (normally started by the driver)::

    python -m navigator.bench.sidecars --spec sidecars.json --report 127.0.0.1:9000

The spec (JSON, written by the driver)::

    {"xds": "127.0.0.1:18000", "delta": false, "streams_per_channel": 100,
     "sidecars": [{"id": "sc-0", "app": "app0", "cluster": "east",
                   "region": "east-r", "zone": "r1-a"}, ...]}

Every sidecar connects to ``xds``; streams are spread over channels of
``streams_per_channel`` streams, each channel its own TCP connection.

Report protocol: newline-terminated JSON over one TCP connection to ``--report``. The first
line is ``{"hello": N, "token": T}`` (N sidecars, T the spec's ``token``). Then every flush
(at most one per event-loop iteration) is ONE line holding a JSON array of events, each
event an array (``idx`` is the sidecar's index in the spec's ``sidecars``, ``t`` the
``time.time()`` at which the response was read):

- ``["r", idx, t, n]``: the sidecar now holds a complete config (it has CDS, and an
  assignment for each of the ``n`` EDS names its CDS gives); sent when it goes from incomplete
  to complete, and when it is complete and ``n`` changes;
- ``["a", idx, t, resource, ["ip:port", ...]]``: the addresses newly present in EDS resource
  ``resource`` compared with what the sidecar held for it; only once the sidecar has been
  ready at least once (no flood during start-up);
- ``["e", idx, t, "CODE: details"]``: a stream failure (``OK: ...`` if the server ended it).

Commands from the driver, one per line on the same connection:

- ``dump`` -> ``{"dump": [[id, cds_digest, {eds_name: eds_digest, ...}], ...]}`` in spec
  order, ``digest()`` of the cluster names held and of each held resource's ``ip:port``
  (only the EDS names its CDS gives, and only those it holds an assignment for);
- ``stats`` -> ``{"stats": {"responses": N, "errors": N, "ready": N}}``.

The process exits when the driver closes the connection, or on SIGTERM / SIGINT.

Efficiency: one event loop; each distinct resource decoded once per process (sidecars of one
app receive the same bytes; caches keyed by the bytes), per-sidecar state is a dict
name -> shared tuple of addresses, and events are JSON-encoded once per flush.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import signal
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import grpc.aio
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
RECONNECT_DELAY = 0.5
# NOTE: a bound on the decoded-bytes caches, well above the distinct resources a mesh
# benchmark has in flight (an LRU smaller than its working set would miss every time).
DECODE_CACHE = 8192

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # NOTE: without a local subchannel pool every channel to the same target would share one
    # TCP connection, and "a few channels" would be one.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
]

_EMPTY: frozenset[str] = frozenset()


def _encode(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class Reporter:
    """JSON lines to the driver, batched: at most one socket write per loop iteration.

    ``send`` queues one line (an object); ``event`` queues an event, and the events queued
    in one loop iteration go out as ONE line, a JSON array encoded once. Order is kept: a line
    sent after some events follows them.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._lines: list[bytes] = []
        self._events: list[Sequence[Any]] = []
        self._scheduled = False

    def send(self, message: dict[str, Any]) -> None:
        self._close_batch()
        self._lines.append(_encode(message))
        self._schedule()

    def event(self, event: Sequence[Any]) -> None:
        self._events.append(event)
        self._schedule()

    def _close_batch(self) -> None:
        if self._events:
            events, self._events = self._events, []
            self._lines.append(_encode(events))

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        self._close_batch()
        lines, self._lines = self._lines, []
        if lines and not self._writer.is_closing():
            self._writer.write(b"".join(lines))

    async def drain(self) -> None:
        self._flush()
        if not self._writer.is_closing():
            await self._writer.drain()


def make_node(*, node_id: str, app: str, k8s_cluster: str, region: str, zone: str) -> base_pb2.Node:
    metadata = struct_pb2.Struct()
    metadata.update({"app": app, "k8s_cluster": k8s_cluster})
    return base_pb2.Node(
        id=node_id,
        cluster=app,
        metadata=metadata,
        locality=base_pb2.Locality(region=region, zone=zone),
    )


@functools.lru_cache(maxsize=DECODE_CACHE)
def cluster_of(value: bytes) -> tuple[str, str | None]:
    """The name and EDS resource name (None: not an EDS cluster) of a serialized Cluster.

    NOTE: cached by the bytes: every sidecar of an app receives the same ones, and decoding
    them once per process keeps the simulated sidecars from being the bottleneck.
    """
    cluster = cluster_pb2.Cluster.FromString(value)
    name = str(cluster.name)
    if cluster.WhichOneof("cluster_discovery_type") != "type":
        return name, None
    if cluster.type != cluster_pb2.Cluster.EDS:
        return name, None
    return name, str(cluster.eds_cluster_config.service_name or name)


def eds_name_of(value: bytes) -> str | None:
    """The EDS resource name of a serialized Cluster, None if it is not an EDS cluster."""
    return cluster_of(value)[1]


@functools.lru_cache(maxsize=DECODE_CACHE)
def assignment_of(value: bytes) -> tuple[str, tuple[str, ...]]:
    """The cluster name and sorted ``ip:port`` of a serialized ClusterLoadAssignment, over
    every locality and priority.

    NOTE: cached by the bytes, so equal assignments are the same tuple object in every
    sidecar: an unchanged resource is recognised by identity, and held once in memory.
    """
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(value)
    out: set[str] = set()
    for locality in cla.endpoints:
        for lb in locality.lb_endpoints:
            sock = lb.endpoint.address.socket_address
            out.add(f"{sock.address}:{sock.port_value}")
    return str(cla.cluster_name), tuple(sorted(out))


class CdsView(NamedTuple):
    """What a sidecar's CDS config amounts to, shared between sidecars holding the same."""

    clusters: tuple[str, ...]
    """Names of the clusters held, sorted."""
    eds: frozenset[str]
    """EDS names of its EDS clusters: the sidecar's EDS subscription."""
    eds_sorted: tuple[str, ...]


@functools.lru_cache(maxsize=1024)
def cds_view(pairs: tuple[tuple[str, str | None], ...]) -> CdsView:
    """The view of ``(cluster name, EDS name or None)`` pairs.

    NOTE: cached so sidecars of one app share one view (memory), and an unchanged CDS config
    is the same object again (no subscription change to look for).
    """
    eds = frozenset(e for _, e in pairs if e is not None)
    return CdsView(tuple(sorted({n for n, _ in pairs})), eds, tuple(sorted(eds)))


def digest(strings: Iterable[str]) -> str:
    """First 16 hex digits of the SHA-1 of the sorted strings joined by newlines: what
    ``dump`` reports, for a driver to compare with what it expects."""
    joined = "\n".join(sorted(strings)).encode()
    return hashlib.sha1(joined, usedforsecurity=False).hexdigest()[:16]


@functools.lru_cache(maxsize=DECODE_CACHE)
def _tuple_digest(values: tuple[str, ...]) -> str:
    # NOTE: held tuples are shared between sidecars, so a dump hashes each distinct one once.
    return digest(values)


@dataclasses.dataclass
class Totals:
    """Counters of the whole process, for ``stats``."""

    responses: int = 0
    errors: int = 0


@dataclasses.dataclass(frozen=True)
class SidecarSpec:
    id: str
    app: str
    cluster: str
    region: str = ""
    zone: str = ""


@dataclasses.dataclass(frozen=True)
class Spec:
    xds: str
    sidecars: list[SidecarSpec]
    delta: bool = False
    streams_per_channel: int = 100
    token: str = ""
    """Echoed in the hello line: tells the driver which of its processes this is."""


def parse_spec(data: Any) -> Spec:
    """The spec from its decoded JSON; ValueError if it is malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("xds"), str):
        raise ValueError('the spec must be an object with "xds": "HOST:PORT"')
    raw = data.get("sidecars")
    if not isinstance(raw, list):
        raise ValueError('the spec must have a "sidecars" list')
    sidecars: list[SidecarSpec] = []
    for n, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValueError(f"sidecar {n}: expected an object")
        try:
            sidecars.append(
                SidecarSpec(
                    id=str(item["id"]),
                    app=str(item["app"]),
                    cluster=str(item["cluster"]),
                    region=str(item.get("region", "")),
                    zone=str(item.get("zone", "")),
                )
            )
        except KeyError as exc:
            raise ValueError(f"sidecar {n}: missing {exc}") from exc
    per_channel = data.get("streams_per_channel", 100)
    if not isinstance(per_channel, int) or isinstance(per_channel, bool):
        raise ValueError('"streams_per_channel" must be an integer')
    return Spec(
        xds=data["xds"],
        sidecars=sidecars,
        delta=bool(data.get("delta", False)),
        streams_per_channel=max(1, per_channel),
        token=str(data.get("token", "")),
    )


class Sidecar:
    """One simulated sidecar: one ADS stream (SotW or Delta), re-opened when it fails, and
    the CDS/EDS config it holds."""

    __slots__ = (
        "assignments",
        "cds",
        "cds_version",
        "cds_versions",
        "clusters",
        "complete",
        "delta",
        "eds_version",
        "eds_versions",
        "ever_ready",
        "id",
        "idx",
        "node",
        "reported",
        "reporter",
        "stub",
        "totals",
    )

    def __init__(
        self,
        *,
        idx: int,
        spec: SidecarSpec,
        stub: Any,
        reporter: Reporter,
        totals: Totals,
        delta: bool,
    ) -> None:
        self.idx = idx
        self.id = spec.id
        self.node = make_node(
            node_id=spec.id,
            app=spec.app,
            k8s_cluster=spec.cluster,
            region=spec.region,
            zone=spec.zone,
        )
        self.stub = stub
        self.reporter = reporter
        self.totals = totals
        self.delta = delta
        self.cds: CdsView | None = None
        # NOTE: keys are always a subset of ``cds.eds`` (pruned when CDS changes, filtered on
        # receipt), so "complete" is a length comparison.
        self.assignments: dict[str, tuple[str, ...]] = {}
        self.complete = False
        self.ever_ready = False
        self.reported = -1
        # SotW: the last accepted versions. Delta: cluster name -> EDS name, and the version
        # of every resource held (sent back as initial_resource_versions on reconnect).
        self.cds_version = ""
        self.eds_version = ""
        self.clusters: dict[str, str | None] = {}
        self.cds_versions: dict[str, str] = {}
        self.eds_versions: dict[str, str] = {}

    async def run(self) -> None:
        while True:
            call: Any = (
                self.stub.DeltaAggregatedResources()
                if self.delta
                else self.stub.StreamAggregatedResources()
            )
            try:
                await (self._delta_stream(call) if self.delta else self._stream(call))
                error = "OK: stream ended by the server"
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:
                # NOTE: a bug here (or an undecodable resource) is reported like a stream
                # failure and retried, rather than silently ending this sidecar.
                error = f"CLIENT: {type(exc).__name__}: {exc}"
            finally:
                call.cancel()
            self.totals.errors += 1
            self.reporter.event(("e", self.idx, time.time(), error))
            await asyncio.sleep(RECONNECT_DELAY)

    def dump(self) -> list[Any]:
        clusters = self.cds.clusters if self.cds is not None else ()
        eds = {name: _tuple_digest(self.assignments[name]) for name in sorted(self.assignments)}
        return [self.id, _tuple_digest(clusters), eds]

    # -- the config held -------------------------------------------------------------------

    def _set_cds(self, view: CdsView) -> bool:
        """Hold ``view``; True if the EDS subscription changed."""
        old = self.cds.eds if self.cds is not None else _EMPTY
        self.cds = view
        if old is view.eds or old == view.eds:
            return False
        for name in [n for n in self.assignments if n not in view.eds]:
            del self.assignments[name]
        for name in [n for n in self.eds_versions if n not in view.eds]:
            del self.eds_versions[name]
        return True

    def _hold(self, name: str, addrs: tuple[str, ...], received: float) -> None:
        old = self.assignments.get(name)
        if old is addrs:
            return
        self.assignments[name] = addrs
        if not self.ever_ready or not addrs or old == addrs:
            return
        if old:
            # NOTE: only reached when the tuple changed; ``addrs`` is sorted, so is this.
            before = set(old)
            new = [a for a in addrs if a not in before]
        else:
            new = list(addrs)
        if new:
            self.reporter.event(("a", self.idx, received, name, new))

    def _check(self, received: float) -> None:
        view = self.cds
        if view is None:
            return
        n = len(view.eds)
        complete = len(self.assignments) == n
        if complete and (not self.complete or n != self.reported):
            self.reported = n
            self.ever_ready = True
            self.reporter.event(("r", self.idx, received, n))
        self.complete = complete

    # -- State of the World ----------------------------------------------------------------

    async def _stream(self, call: Any) -> None:
        # NOTE: the node goes on the first request only, as with Envoy's
        # set_node_on_first_message_only; on a reconnect the requests carry the versions
        # last accepted and the EDS names held, as Envoy re-sends its subscriptions.
        await call.write(
            discovery_pb2.DiscoveryRequest(
                node=self.node, type_url=CDS, version_info=self.cds_version
            )
        )
        if self.cds is not None and self.cds.eds:
            await call.write(
                discovery_pb2.DiscoveryRequest(
                    type_url=EDS,
                    resource_names=self.cds.eds_sorted,
                    version_info=self.eds_version,
                )
            )
        eds_nonce = ""
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            received = time.time()
            self.totals.responses += 1
            type_url = resp.type_url
            if type_url == CDS:
                view = cds_view(
                    tuple(cluster_of(res.value) for res in resp.resources if res.type_url == CDS)
                )
                changed = self._set_cds(view)
                self._check(received)
                self.cds_version = resp.version_info
                await call.write(
                    discovery_pb2.DiscoveryRequest(
                        type_url=CDS, version_info=resp.version_info, response_nonce=resp.nonce
                    )
                )
                if changed:
                    # NOTE: like Envoy, a changed EDS subscription goes out after the CDS ACK
                    # with the last EDS nonce; the front-end compares resource_names on every
                    # request.
                    await call.write(
                        discovery_pb2.DiscoveryRequest(
                            type_url=EDS,
                            resource_names=view.eds_sorted,
                            version_info=self.eds_version,
                            response_nonce=eds_nonce,
                        )
                    )
            elif type_url == EDS:
                eds = self.cds.eds if self.cds is not None else _EMPTY
                # NOTE: a resource missing from a SotW EDS response is not a deletion (Envoy
                # keeps what it had): only the resources present are looked at.
                for res in resp.resources:
                    if res.type_url != EDS:
                        continue
                    name, addrs = assignment_of(res.value)
                    if name in eds:
                        self._hold(name, addrs, received)
                self._check(received)
                self.eds_version, eds_nonce = resp.version_info, resp.nonce
                await call.write(
                    discovery_pb2.DiscoveryRequest(
                        type_url=EDS,
                        resource_names=self.cds.eds_sorted if self.cds is not None else (),
                        version_info=resp.version_info,
                        response_nonce=resp.nonce,
                    )
                )
            else:
                # An unrequested type: ACK it so the front-end does not wait on us.
                await call.write(
                    discovery_pb2.DiscoveryRequest(
                        type_url=type_url,
                        version_info=resp.version_info,
                        response_nonce=resp.nonce,
                    )
                )

    # -- Delta -----------------------------------------------------------------------------

    async def _delta_stream(self, call: Any) -> None:
        # NOTE: an empty resource_names_subscribe on the first CDS request is a wildcard
        # subscription (every cluster of the app), as Envoy sends it. On a reconnect the
        # versions held go in initial_resource_versions, so the front-end sends only what
        # changed meanwhile (and removes what is gone).
        await call.write(
            discovery_pb2.DeltaDiscoveryRequest(
                node=self.node, type_url=CDS, initial_resource_versions=self.cds_versions
            )
        )
        if self.cds is not None and self.cds.eds:
            await call.write(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=EDS,
                    resource_names_subscribe=self.cds.eds_sorted,
                    initial_resource_versions=self.eds_versions,
                )
            )
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            received = time.time()
            self.totals.responses += 1
            type_url = resp.type_url
            if type_url == CDS:
                clusters, versions = self.clusters, self.cds_versions
                for name in resp.removed_resources:
                    clusters.pop(name, None)
                    versions.pop(name, None)
                for res in resp.resources:
                    if res.resource.type_url != CDS:
                        continue
                    cluster_name, eds_name = cluster_of(res.resource.value)
                    name = res.name or cluster_name
                    clusters[name] = eds_name
                    versions[name] = res.version
                old = self.cds.eds if self.cds is not None else _EMPTY
                view = cds_view(tuple(sorted(clusters.items())))
                changed = self._set_cds(view)
                self._check(received)
                await call.write(
                    discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, response_nonce=resp.nonce)
                )
                if changed:
                    # NOTE: a subscription change is a request of its own, without nonce
                    # (the ACK above went first), as Envoy sends it.
                    await call.write(
                        discovery_pb2.DeltaDiscoveryRequest(
                            type_url=EDS,
                            resource_names_subscribe=sorted(view.eds - old),
                            resource_names_unsubscribe=sorted(old - view.eds),
                        )
                    )
            elif type_url == EDS:
                eds = self.cds.eds if self.cds is not None else _EMPTY
                for name in resp.removed_resources:
                    self.eds_versions.pop(name, None)
                    if name in eds:
                        # NOTE: removed (or unknown to the server) while watched: the cluster
                        # holds no endpoints, and counts as having its assignment.
                        self._hold(name, (), received)
                for res in resp.resources:
                    if res.resource.type_url != EDS:
                        continue
                    cluster_name, addrs = assignment_of(res.resource.value)
                    name = res.name or cluster_name
                    if name in eds:
                        self.eds_versions[name] = res.version
                        self._hold(name, addrs, received)
                self._check(received)
                await call.write(
                    discovery_pb2.DeltaDiscoveryRequest(type_url=EDS, response_nonce=resp.nonce)
                )
            else:
                await call.write(
                    discovery_pb2.DeltaDiscoveryRequest(
                        type_url=type_url, response_nonce=resp.nonce
                    )
                )


async def serve_commands(
    reader: asyncio.StreamReader, reporter: Reporter, sidecars: list[Sidecar], totals: Totals
) -> None:
    """Answer the driver's commands until it closes the connection."""
    while True:
        try:
            line = await reader.readline()
        except ConnectionError:
            return
        except ValueError:
            # NOTE: a line over the reader's limit; it is dropped, the connection kept.
            reporter.send({"error": "command line too long"})
            continue
        if not line:
            return
        command = line.strip().decode(errors="replace")
        if command == "dump":
            reporter.send({"dump": [s.dump() for s in sidecars]})
        elif command == "stats":
            ready = sum(1 for s in sidecars if s.complete)
            reporter.send(
                {"stats": {"responses": totals.responses, "errors": totals.errors, "ready": ready}}
            )
        elif command:
            reporter.send({"error": f"unknown command {command!r}"})
        else:
            continue
        # NOTE: a reply (a dump may be megabytes) waits for the socket: backpressure on
        # the command path only, never on the sidecars.
        with contextlib.suppress(ConnectionError):
            await reporter.drain()


async def amain(spec: Spec, report: str) -> int:
    host, _, port = report.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    reporter = Reporter(writer)
    totals = Totals()
    per_channel = spec.streams_per_channel
    channels = [
        grpc.aio.insecure_channel(spec.xds, options=CHANNEL_OPTIONS)
        for _ in range((len(spec.sidecars) + per_channel - 1) // per_channel)
    ]
    stubs = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch) for ch in channels]
    sidecars = [
        Sidecar(
            idx=n,
            spec=s,
            stub=stubs[n // per_channel],
            reporter=reporter,
            totals=totals,
            delta=spec.delta,
        )
        for n, s in enumerate(spec.sidecars)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reporter.send({"hello": len(sidecars), "token": spec.token})
    tasks = [asyncio.create_task(s.run(), name=s.id) for s in sidecars]
    # NOTE: the driver closing its end (or dying) ends this process.
    commands = asyncio.create_task(serve_commands(reader, reporter, sidecars, totals))
    stopped = asyncio.create_task(stop.wait())
    status = 0
    try:
        await asyncio.wait({commands, stopped}, return_when=asyncio.FIRST_COMPLETED)
        failure = commands.exception() if commands.done() else None
        if failure is not None:
            traceback.print_exception(failure)
            status = 1
    finally:
        await close_down([*tasks, commands, stopped], channels, reporter, writer)
    return status


async def close_down(
    tasks: Sequence[asyncio.Task[Any]],
    channels: Sequence[grpc.aio.Channel],
    reporter: Reporter,
    writer: asyncio.StreamWriter,
) -> None:
    """The end of a sidecars process: its tasks, channels and report connection, closed."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close(grace=None)
    with contextlib.suppress(ConnectionError):
        await reporter.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    # NOTE: the driver may send SIGTERM as we exit on its closed connection. Closing the
    # loop closes its wakeup fd before it removes its signal handlers, and a signal in
    # between prints "Exception ignored ... signal wakeup fd". Done here: ignore them.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m navigator.bench.sidecars",
        description=(
            "Simulated Envoy sidecars (SotW or delta ADS, CDS + EDS) for the mesh benchmark; "
            "they report readiness, added addresses and stream failures to the driver."
        ),
    )
    parser.add_argument("--spec", required=True, type=Path, help="the driver's JSON spec file")
    parser.add_argument("--report", required=True, help="driver's HOST:PORT for JSON lines")
    args = parser.parse_args(argv)
    try:
        args.spec = parse_spec(json.loads(args.spec.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        parser.error(f"--spec {args.spec}: {exc}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return asyncio.run(amain(args.spec, args.report))


if __name__ == "__main__":
    sys.exit(main())
