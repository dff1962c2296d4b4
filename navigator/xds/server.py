"""The ADS (State of the World) gRPC server that Envoy sidecars connect to.

Each stream serves one sidecar, identified by its Envoy node (``id``; ``metadata.app`` and
``metadata.k8s_cluster`` select the app snapshot; ``locality.zone`` selects the endpoint
variant). Responses are assembled from bytes the cache encoded once (``cache.Encoded``) and
whole response bodies are shared between streams (``ResponseCache``): nothing is serialized
per sidecar except the nonce. Versions are content hashes of the resources in a response, so
every front-end gives a sidecar the same versions and a fail-over re-sends nothing.

Protocol rules kept here (see LAB.md, "Envoy's xDS behaviour"):

- ``resource_names`` is compared on EVERY request, stale nonce or not: Envoy re-sends its EDS
  request with the previous nonce and a new name list when CDS adds a cluster;
- a request with a stale nonce is otherwise ignored; ACK = latest nonce and no error_detail;
  NACK = error_detail (logged once, counted, never string-matched, never re-sent: a response
  goes out only when the content version or the subscription changes);
- make-before-break: when several types are due, CDS, EDS, LDS, RDS in that order;
- never backwards: a sidecar that resumes with a version this front-end does not know may
  hold a newer one (from a front-end ahead of this one); it gets nothing until this
  front-end has checked it holds everything etcd held after the stream opened.

Also ``main`` (``navigator xds``) and ``serve`` (an async context manager for tests and the
lab).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import grpc.aio
import prometheus_client
from envoy.service.discovery.v3 import discovery_pb2

from coordinator import etcd as etcd_mod
from coordinator import membership, session
from navigator import keys, model, runtime, snapshot
from navigator.xds import cache as cache_mod
from navigator.xds import wire

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
METHOD = "StreamAggregatedResources"

ROLE = "xds"
MEMBER_TTL = 10
"""Seconds a dead front-end's member record outlives it (it leads nothing)."""

DEFAULT_LISTEN = "0.0.0.0:18000"
DEFAULT_HTTP = "127.0.0.1:9102"

WILDCARD_TYPES = frozenset({snapshot.CLUSTER, snapshot.LISTENER})
"""Types whose responses hold every resource of the app snapshot, whatever was requested."""

STREAMS = prometheus_client.Gauge("navigator_xds_streams", "Connected ADS streams")
RESPONSES = prometheus_client.Counter(
    "navigator_xds_responses_total", "DiscoveryResponses sent", ["type"]
)
NACKS = prometheus_client.Counter(
    "navigator_xds_nacks_total", "DiscoveryResponses rejected by Envoy", ["type"]
)
SENT_BYTES = prometheus_client.Counter(
    "navigator_xds_sent_bytes_total", "Bytes of DiscoveryResponses sent"
)
HELD = prometheus_client.Counter(
    "navigator_xds_resume_held_total",
    "Responses held back from a resuming sidecar until this front-end caught up with etcd",
    ["type"],
)
ACK_LATENCY = prometheus_client.Histogram(
    "navigator_xds_ack_latency_seconds",
    "Time from sending a response to its ACK",
    ["type"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
)


@dataclasses.dataclass(frozen=True, slots=True)
class NodeInfo:
    """Who is at the other end of a stream, from the Envoy ``Node`` of its first request."""

    id: str
    app: str
    k8s_cluster: str
    region: str
    zone: str

    @classmethod
    def from_proto(cls, node: Any) -> NodeInfo:
        fields = node.metadata.fields
        app = fields["app"].string_value if "app" in fields else node.cluster
        k8s_cluster = fields["k8s_cluster"].string_value if "k8s_cluster" in fields else ""
        if not node.id or not app or not k8s_cluster:
            raise ValueError(
                "the Envoy node must carry id, metadata.app (or cluster) and "
                f"metadata.k8s_cluster; got id={node.id!r} app={app!r} "
                f"k8s_cluster={k8s_cluster!r}"
            )
        return cls(
            id=node.id,
            app=app,
            k8s_cluster=k8s_cluster,
            region=node.locality.region,
            zone=node.locality.zone,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Nack:
    node_id: str
    app: str
    type_url: str
    rejected_version: str
    accepted_version: str
    message: str


class ResponseCache:
    """Response bodies (a DiscoveryResponse without nonce) shared by every stream, LRU.

    NOTE: keyed by (type URL, version). The version hashes every (name, resource hash) pair of
    the response, so equal keys mean byte-identical resources, whichever app, cluster or zone
    asked: the names are part of the version, no separate names hash is needed.
    """

    def __init__(self, *, max_entries: int = 4096, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._entries: collections.OrderedDict[tuple[str, str], bytes] = collections.OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def body(self, type_url: str, version: str, items: Sequence[cache_mod.Encoded]) -> bytes:
        key = (type_url, version)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return found
        self.misses += 1
        body = wire.response_body(
            type_url=type_url, version=version, entries=[item.entry for item in items]
        )
        self._entries[key] = body
        self._bytes += len(body)
        while self._entries and (
            len(self._entries) > self._max_entries or self._bytes > self._max_bytes
        ):
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted)
        return body


def build(
    source: cache_mod.ConfigSource,
    node: NodeInfo,
    type_url: str,
    names: frozenset[str],
) -> tuple[str, list[cache_mod.Encoded]] | None:
    """The content of a response for ``node``: (version, resources); None = not known yet."""
    if not source.loaded:
        return None
    # NOTE: an app without a snapshot (no Nexus) gets the default one: its health listener.
    entry = source.app(node.app, node.k8s_cluster) or source.app(keys.DEFAULT_APP, node.k8s_cluster)
    items: list[cache_mod.Encoded] = []
    if entry is not None:
        if type_url in WILDCARD_TYPES:
            items = list(entry.of_type(type_url).values())
        elif type_url == snapshot.ROUTE:
            routes = entry.of_type(snapshot.ROUTE)
            items = [routes[name] for name in sorted(names) if name in routes]
        elif type_url == snapshot.ENDPOINT:
            for name in sorted(names):
                if name not in entry.endpoints:
                    continue
                found = source.eds(name, node.zone) if node.zone else None
                if found is None:
                    found = source.eds(name, keys.DEFAULT_VARIANT)
                if found is not None:
                    items.append(found)
    if entry is not None and type_url in WILDCARD_TYPES:
        return entry.versions.get(type_url, _EMPTY_VERSION), items
    return snapshot.version_of((item.name, item.hash) for item in items), items


_EMPTY_VERSION = snapshot.version_of(())


class _TypeState:
    """What one stream subscribed to and last sent, for one type URL."""

    __slots__ = ("force", "names", "nonce", "resumed", "sent_at", "sent_version", "waiting_ack")

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self.sent_version = ""
        self.nonce = ""
        self.force = True
        """Send even if the version did not change (new or changed subscription)."""
        self.resumed = False
        """``sent_version`` is what the sidecar said it has, not something we sent."""
        self.sent_at = 0.0
        self.waiting_ack = False


class _Stream:
    """The protocol state of one ADS stream; no I/O, driven by ``AdsServer._handle``."""

    def __init__(self, server: AdsServer, node: NodeInfo, sub: cache_mod.Subscription) -> None:
        self.server = server
        self.node = node
        self.sub = sub
        self.types: dict[str, _TypeState] = {}
        self.closed = False
        self.opened_at = time.monotonic()
        self._nonces = 0
        self._app_key = keys.app_snapshot_key(
            model.AppName(node.app), model.ClusterName(node.k8s_cluster)
        )
        self._update_keys()

    def _update_keys(self) -> None:
        deps = {
            self._app_key,
            keys.app_snapshot_key(keys.DEFAULT_APP, model.ClusterName(self.node.k8s_cluster)),
        }
        eds = self.types.get(snapshot.ENDPOINT)
        if eds is not None:
            for name in eds.names:
                deps.add(keys.eds_key(name, keys.DEFAULT_VARIANT))
                if self.node.zone:
                    deps.add(keys.eds_key(name, self.node.zone))
        self.sub.set_keys(deps)

    def _subscribe(self, type_url: str, st: _TypeState, names: frozenset[str]) -> None:
        st.names = names
        st.force = True
        if type_url == snapshot.ENDPOINT:
            self._update_keys()
        self.sub.changed.set()

    def on_request(self, req: Any) -> None:
        type_url: str = req.type_url
        if type_url not in snapshot.SHORT_NAMES:
            log.debug("request for an unserved type ignored", extra={"type_url": type_url})
            return
        names = frozenset() if type_url in WILDCARD_TYPES else frozenset(req.resource_names)
        st = self.types.get(type_url)
        if st is None:
            st = self.types[type_url] = _TypeState(names)
            if req.version_info and not req.response_nonce:
                # NOTE: Envoy resuming on a new stream (or another front-end) says what it
                # has; versions are content hashes, so equal means it needs nothing.
                st.sent_version = req.version_info
                st.force = False
                st.resumed = True
            if type_url == snapshot.ENDPOINT:
                self._update_keys()
            self.sub.changed.set()
            return
        if req.response_nonce != st.nonce:
            # NOTE: stale nonce: only a changed subscription counts (EDS re-request after CDS).
            if names != st.names:
                self._subscribe(type_url, st, names)
            return
        if req.HasField("error_detail"):
            self._on_nack(type_url, st, req)
        elif st.waiting_ack:
            ACK_LATENCY.labels(snapshot.SHORT_NAMES[type_url]).observe(
                time.monotonic() - st.sent_at
            )
        st.waiting_ack = False
        if names != st.names:
            self._subscribe(type_url, st, names)

    def _on_nack(self, type_url: str, st: _TypeState, req: Any) -> None:
        short = snapshot.SHORT_NAMES[type_url]
        NACKS.labels(short).inc()
        nack = Nack(
            node_id=self.node.id,
            app=self.node.app,
            type_url=type_url,
            rejected_version=st.sent_version,
            accepted_version=req.version_info,
            message=req.error_detail.message,
        )
        self.server.nacks.append(nack)
        # NOTE: the message holds a random token: log it, never match on it. The rejected
        # version is not re-sent: next response only when the content changes.
        log.warning(
            "envoy rejected config",
            extra={
                "node": self.node.id,
                "app": self.node.app,
                "type": short,
                "rejected_version": nack.rejected_version,
                "accepted_version": nack.accepted_version,
                "error": nack.message,
            },
        )

    def next_response(self, type_url: str) -> bytes | None:
        """The response due for ``type_url`` (and records it as sent), or None."""
        st = self.types.get(type_url)
        if st is None:
            return None
        built = build(self.server.source, self.node, type_url, st.names)
        if built is None:
            return None
        version, items = built
        if version == st.sent_version and not st.force:
            st.resumed = False
            return None
        if st.resumed and not self.server.source.caught_up(self.opened_at):
            # NOTE: the sidecar has a version we do not know: it may be newer than ours (it
            # came from a front-end ahead of us). Answer only once we are known to hold all
            # that etcd held after it connected; it keeps its config meanwhile.
            HELD.labels(snapshot.SHORT_NAMES[type_url]).inc()
            return None
        st.resumed = False
        body = self.server.responses.body(type_url, version, items)
        self._nonces += 1
        st.nonce = str(self._nonces)
        st.sent_version = version
        st.force = False
        st.sent_at = time.monotonic()
        st.waiting_ack = True
        return wire.with_nonce(body, st.nonce)


class AdsServer:
    """The ADS service over a ``ConfigSource``; register ``generic_handler()`` on a server."""

    def __init__(self, source: cache_mod.ConfigSource, *, max_nacks: int = 256) -> None:
        self.source = source
        self.responses = ResponseCache()
        self.nacks: collections.deque[Nack] = collections.deque(maxlen=max_nacks)
        """The most recent NACKs, newest last (also in logs and ``navigator_xds_nacks_total``)."""

    def generic_handler(self) -> grpc.GenericRpcHandler:
        # NOTE: response_serializer=None: the handler yields wire bytes assembled from cache.
        handler = grpc.stream_stream_rpc_method_handler(
            self._handle,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=None,
        )
        return grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler})

    async def _handle(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        try:
            node = NodeInfo.from_proto(first.node)
        except ValueError as exc:
            log.warning("stream refused", extra={"peer": context.peer(), "error": str(exc)})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        sub = self.source.subscribe()
        stream = _Stream(self, node, sub)
        stream.on_request(first)
        reader = asyncio.create_task(self._read(requests, stream), name=f"ads-read-{node.id}")
        STREAMS.inc()
        log.info(
            "stream opened",
            extra={"node": node.id, "app": node.app, "k8s_cluster": node.k8s_cluster},
        )
        try:
            while True:
                await sub.changed.wait()
                sub.changed.clear()
                if stream.closed:
                    break
                # NOTE: make-before-break: snapshot.TYPE_URLS is CDS, EDS, LDS, RDS; each
                # response is built just before it is sent, from the current state.
                for type_url in snapshot.TYPE_URLS:
                    out = stream.next_response(type_url)
                    if out is None:
                        continue
                    RESPONSES.labels(snapshot.SHORT_NAMES[type_url]).inc()
                    SENT_BYTES.inc(len(out))
                    yield out
        finally:
            STREAMS.dec()
            sub.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader
            log.info("stream closed", extra={"node": node.id, "app": node.app})

    @staticmethod
    async def _read(requests: AsyncIterator[Any], stream: _Stream) -> None:
        try:
            async for req in requests:
                stream.on_request(req)
        finally:
            stream.closed = True
            stream.sub.changed.set()


@dataclasses.dataclass(frozen=True, slots=True)
class Handle:
    """A running front-end, as ``serve`` yields it."""

    address: str
    """The bound ``host:port`` of the gRPC server."""
    port: int
    cache: cache_mod.SnapshotCache
    ads: AdsServer
    loader: asyncio.Task[None]


SERVER_OPTIONS = [
    # NOTE: sidecars ping every few seconds to notice a dead control plane; gRPC's default
    # policy would answer such pings with GOAWAY(too_many_pings).
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
]


@contextlib.asynccontextmanager
async def serve(
    *,
    etcd: etcd_mod.Etcd,
    listen: str = "127.0.0.1:0",
    health: runtime.Health | None = None,
    grace: float = 1.0,
) -> AsyncIterator[Handle]:
    """Runs the snapshot loader and the ADS server until the block exits.

    ``health`` (if given) turns ready once the first listing is loaded. The caller owns
    ``etcd`` and closes it.
    """
    source = cache_mod.SnapshotCache(etcd, health=health)
    loader = asyncio.create_task(source.run(), name="xds-snapshot-loader")
    ads = AdsServer(source)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    try:
        server.add_generic_rpc_handlers((ads.generic_handler(),))
        # NOTE: several addresses (comma-separated) share one server: the lab listens on
        # every node address, as a front-end on a master listens on the node's own.
        port = 0
        for address in [a.strip() for a in listen.split(",") if a.strip()]:
            bound = server.add_insecure_port(address)
            if bound == 0:
                raise OSError(f"cannot listen on {address}")
            port = port or bound
        if port == 0:
            raise OSError(f"nothing to listen on: {listen!r}")
        await server.start()
        try:
            host = listen.split(",", maxsplit=1)[0].rpartition(":")[0].strip("[]") or "0.0.0.0"
            log.info("xds listening", extra={"address": listen, "port": port})
            yield Handle(address=f"{host}:{port}", port=port, cache=source, ads=ads, loader=loader)
        finally:
            await server.stop(grace)
    finally:
        loader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loader


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="navigator xds",
        description="xDS front-end: serves app snapshots from etcd to Envoy sidecars (ADS).",
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        help=f"gRPC address, or several comma-separated (default {DEFAULT_LISTEN})",
    )
    runtime.add_etcd_argument(parser)
    parser.add_argument(
        "--http",
        default=DEFAULT_HTTP,
        help=f"address of /healthz, /readyz, /metrics (default {DEFAULT_HTTP})",
    )
    runtime.add_member_arguments(parser)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    runtime.setup_logging(args.log_level, component="xds")
    try:
        endpoints = etcd_mod.parse_endpoints(args.etcd)
    except ValueError as exc:
        log.error("bad --etcd", extra={"error": str(exc)})
        return 2

    async def amain(stop: asyncio.Event) -> int:
        health = runtime.Health()
        # NOTE: a short retry budget so an unreachable etcd is reported within seconds;
        # the cache keeps retrying (not ready) instead of exiting.
        async with (
            etcd_mod.Etcd(endpoints, retry_for=5.0) as etcd,
            runtime.http_server(args.http, health) as http_address,
            serve(etcd=etcd, listen=args.listen, health=health, grace=5.0) as handle,
        ):
            log.info(
                "xds front-end started",
                extra={"grpc": handle.address, "http": http_address, "etcd": args.etcd},
            )
            registration = membership.Registration(
                etcd,
                membership.Member(role=ROLE, id=args.id, address=args.listen, http=http_address),
            )
            # NOTE: membership is for people and tools; serving never waits for it.
            registering = asyncio.create_task(
                session.run_sessions(etcd, ttl=MEMBER_TTL, body=registration.run)
            )
            await runtime.wait_stop(stop, handle.loader, registering)
        log.info("xds front-end stopped")
        return 0

    return runtime.run(amain)
