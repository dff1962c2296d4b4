"""The floor: a minimal ADS server that replays pre-encoded bytes (``python -m
navigator.bench.replay``).

Why it exists: to say how far the xDS front-end (``navigator xds``) is from the least a Python
``grpc.aio`` process can do to serve the same sidecars the same snapshots on the same machine
(``benchmarks/bench_floor.py`` and ``navigator bench`` run both and compare). It does no etcd
watching and no translation while it is measured, keeps no status records and no protocol
state beyond what an answer needs.

What it does:

- at start it reads the snapshots ONCE from etcd (``navigator.state.load_snapshots``: the
  front-end's own ``SnapshotCache``, loaded, no watch) and the names of the endpoint
  assignments held (keys only, to know every variant of a name), then closes its etcd client;
- it serves ``envoy.service.discovery.v3.AggregatedDiscoveryService``: both
  ``StreamAggregatedResources`` (State of the World) and ``DeltaAggregatedResources``
  (Delta), registered through grpc's generic handler with no response serializer, as
  ``navigator/xds/server.py`` does: every response is bytes, nothing is built as a protobuf
  message per stream; requests are parsed (``*DiscoveryRequest.FromString``);
- a node is read from the first request (``resources.NodeInfo``: ``metadata.app``,
  ``metadata.k8s_cluster``, locality) and placed into its zone as the front-end does
  (``resources.placed``); what it should hold is the front-end's ``resources.desired``;
- bodies are encoded LAZILY, once per (app, k8s cluster, zone, type URL, subscribed names),
  on the first request that needs them, through the front-end's ``resources.ResponseCache``
  (``wire.response_body``, ``wire.delta_body``/``delta_resource``); per stream only the nonce
  is appended (``wire.with_nonce``);
- SotW, per stream and type: answered when a type is opened or its subscribed names change,
  or when a request's ``version_info`` differs from what would be sent now; an ACK, a NACK
  (``error_detail``) and a stale nonce with unchanged names are ignored;
- Delta, per stream and type: CDS and LDS are wildcard (every resource of the app, whatever is
  subscribed); EDS and RDS follow ``resource_names_subscribe``/``unsubscribe``; a request that
  opens a type or changes its names is answered with what the sidecar does not hold yet
  (``Resource.name`` and ``version`` = the cache's hash; names that do not exist once in
  ``removed_resources``); ``initial_resource_versions`` is taken as what it holds; anything
  else (ACK, NACK) is ignored;
- flips, the one change it knows (``POST /flip``): an alternate ClusterLoadAssignment for
  every variant (zones and the default) of one EDS name held, swapped in for the loaded one
  (flipping the same way again restores it); the EDS response is queued, at once, on every
  stream (SotW and Delta) subscribed to that name, and the answer returns once they are
  queued. Encoding (the alternate, then one body per group of streams that get the same
  bytes) is timed apart from queueing (``encode_ms``, ``queue_ms``).

What it does NOT do: no make-before-break ordering, no warming, no flow control (a response is
queued and the stream's generator yields it), no NACK handling, no resume checks, no status
records, no metrics, no per-type services, no etcd after the load.

Control endpoint (HTTP, aiohttp, ``--http``, meant for loopback):

- ``POST /flip`` with ``{"name": "<EDS name>", "address": "<IP>"}``: the alternate is the
  current assignment plus one lb endpoint at ``address``, with the port of the assignment's
  first endpoint, in its first locality; computed on the request. A second flip of the name
  with the same address restores the original; one with another address replaces the
  alternate. Answers ``{"name", "address", "flipped": bool, "variants": N, "pushed": N,
  "encode_ms", "queue_ms"}``; 400 for a bad body, 404 for a name without an assignment, 409
  for an assignment without an endpoint to take the port from;
- ``POST /flip`` with no body (``--watch NAME`` only): the alternate of ``NAME`` is its
  assignment without its last lb endpoint, encoded EAGERLY at start; the answer is the same
  with ``flipped`` (``bench_floor.py`` uses this);
- ``GET /stats``: streams (total and ``by_variant`` sotw/delta), responses sent (total),
  ``bodies`` (groups answered) and ``bodies_encoded`` (bodies built), the flips in effect;
  with ``--watch``: the streams watching it, whether it is flipped, and per variant the
  address sets (``ip:port``) of the original and the alternate assignment. RSS and CPU are
  read by the driver from ``/proc/PID``.

Run (normally started by a benchmark)::

    .venv/bin/python -m navigator.bench.replay --etcd http://127.0.0.1:2379 \\
        --listen 127.0.0.1:18020 --http 127.0.0.1:9120 [--watch bench/target:8080]

Exits on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import itertools
import json
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio
from aiohttp import web
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from coordinator import etcd as etcd_mod
from navigator import keys, snapshot, state
from navigator.xds import cache as cache_mod
from navigator.xds import resources, wire
from navigator.xds.server import DELTA_METHOD, METHOD, SERVER_OPTIONS, SERVICE

log = logging.getLogger(__name__)

EDS = snapshot.ENDPOINT
SOTW = "sotw"
DELTA = "delta"
VARIANTS = (SOTW, DELTA)
DROP_LAST = "-"
"""The label of the ``--watch`` flip in ``Replay.flips`` (the others are addresses)."""

BodyKey = tuple[str, str, str, str, frozenset[str]]
"""(app, k8s cluster, zone, type URL, subscribed names): who gets the same content."""
GroupKey = tuple[str, BodyKey]
"""(protocol variant, body key): the streams a flip gives the same bytes."""


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    version: str
    body: bytes
    """A (Delta)DiscoveryResponse without its nonce."""


@dataclasses.dataclass(slots=True)
class TypeState:
    names: frozenset[str]
    version: str = ""
    """SotW: the version last sent."""
    nonce: str = ""
    known: dict[str, str] = dataclasses.field(default_factory=dict)
    """Delta: name → hash the sidecar holds ("": told it does not exist)."""


@dataclasses.dataclass(eq=False, slots=True)
class Stream:
    variant: str
    node: resources.NodeInfo
    queue: asyncio.Queue[bytes | None] = dataclasses.field(default_factory=asyncio.Queue)
    types: dict[str, TypeState] = dataclasses.field(default_factory=dict)
    nonces: itertools.count[int] = dataclasses.field(default_factory=itertools.count)
    group: GroupKey | None = None
    """Its EDS subscription's group (``Replay.groups``), if it subscribed to any."""


@dataclasses.dataclass(frozen=True, slots=True)
class Alternate:
    variant: str
    original: cache_mod.Encoded
    flipped: cache_mod.Encoded
    original_addrs: tuple[str, ...]
    flipped_addrs: tuple[str, ...]


class FlipError(Exception):
    """A flip that cannot be made; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def addresses(cla: Any) -> tuple[str, ...]:
    out = {
        f"{lb.endpoint.address.socket_address.address}:"
        f"{lb.endpoint.address.socket_address.port_value}"
        for locality in cla.endpoints
        for lb in locality.lb_endpoints
    }
    return tuple(sorted(out))


def drop_last_endpoint(name: str, variant: str, encoded: cache_mod.Encoded) -> Alternate:
    """The assignment without its last lb endpoint (and without its locality if emptied)."""
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(resources.body_of(encoded))
    before = addresses(cla)
    for index in range(len(cla.endpoints) - 1, -1, -1):
        locality = cla.endpoints[index]
        if locality.lb_endpoints:
            del locality.lb_endpoints[-1]
            if not locality.lb_endpoints:
                del cla.endpoints[index]
            break
    else:
        raise ValueError(f"{name} ({variant}) has no endpoint to drop")
    flipped = cache_mod.encode_eds(name, cla.SerializeToString())
    return Alternate(variant, encoded, flipped, before, addresses(cla))


def add_endpoint(
    name: str, variant: str, encoded: cache_mod.Encoded, address: str
) -> cache_mod.Encoded:
    """The assignment plus one lb endpoint at ``address`` (the first endpoint's port and
    weight), in its first locality; an ``Encoded``."""
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(resources.body_of(encoded))
    first = next((lb for loc in cla.endpoints for lb in loc.lb_endpoints), None)
    if first is None:
        raise ValueError(f"{name} ({variant}) has no endpoint to take the port from")
    added = cla.endpoints[0].lb_endpoints.add()
    added.endpoint.address.socket_address.address = address
    added.endpoint.address.socket_address.port_value = (
        first.endpoint.address.socket_address.port_value
    )
    if first.HasField("load_balancing_weight"):
        # NOTE: once one endpoint carries a weight, every one of the assignment does.
        added.load_balancing_weight.value = first.load_balancing_weight.value
    return cache_mod.encode_eds(name, cla.SerializeToString())


class Overlay:
    """The loaded cache (a ``ConfigSource``) with some endpoint assignments swapped."""

    def __init__(self, cache: cache_mod.SnapshotCache) -> None:
        self.cache = cache
        self.swapped: dict[tuple[str, str], cache_mod.Encoded] = {}
        self._memo: dict[Hashable, object] = {}

    def swap(self, name: str, variants: Mapping[str, cache_mod.Encoded]) -> None:
        """``name``'s assignments are ``variants`` from now on (none: the loaded ones)."""
        for key in [k for k in self.swapped if k[0] == name]:
            del self.swapped[key]
        for variant, encoded in variants.items():
            self.swapped[name, variant] = encoded
        self._memo = {}

    @property
    def loaded(self) -> bool:
        return self.cache.loaded

    @property
    def ready(self) -> bool:
        return self.cache.loaded

    def app(self, app: str, cluster: str) -> cache_mod.AppEntry | None:
        return self.cache.app(app, cluster)

    def eds(self, name: str, variant: str) -> cache_mod.Encoded | None:
        found = self.swapped.get((name, variant))
        return found if found is not None else self.cache.eds(name, variant)

    def zone_view(self, zone: str) -> Mapping[str, cache_mod.Encoded]:
        return cache_mod.ZoneView(self, zone)

    def history(self) -> dict[Hashable, Any]:
        return self._memo

    def eds_epoch(self) -> int:
        return 0

    def eds_changed_since(self, epoch: int) -> Sequence[str] | None:
        return None  # NOTE: a swap empties the memo: every answer is computed again.

    def locality(self, cluster: str, node: str) -> tuple[str, str] | None:
        return self.cache.locality(cluster, node)

    def subscribe(self) -> cache_mod.Subscription:
        return self.cache.subscribe()

    def memo(self) -> dict[Hashable, object]:
        return self._memo

    def caught_up(self, since: float) -> bool:
        return True


class Replay:
    """Pre-encoded responses and the streams they go to."""

    def __init__(
        self,
        cache: cache_mod.SnapshotCache,
        variants: Mapping[str, Sequence[str]],
        *,
        watch: str | None = None,
        alternates: Sequence[Alternate] = (),
    ) -> None:
        self.source = Overlay(cache)
        self.variants = variants
        """EDS name → the variants of it held (zones and the default)."""
        self.watch = watch
        self.alternates = list(alternates)
        """``watch``'s alternates (the last endpoint dropped), encoded at start."""
        self.flips: dict[str, str] = {}
        """EDS name → the flip in effect: an address, or ``DROP_LAST``."""
        self.shared = resources.ResponseCache()
        self.bodies: dict[BodyKey, Response] = {}
        """Per key: the current SotW response."""
        self.streams: set[Stream] = set()
        self.open = dict.fromkeys(VARIANTS, 0)
        """Streams open, by protocol variant."""
        self.groups: dict[str, dict[GroupKey, set[Stream]]] = {}
        """EDS name → the streams subscribed to it, by what they would be sent."""
        self.responses = 0
        self.sent_bytes = 0

    # -- responses ---------------------------------------------------------------------

    def current(self, node: resources.NodeInfo, type_url: str, names: frozenset[str]) -> Response:
        key: BodyKey = (node.app, node.k8s_cluster, node.zone, type_url, names)
        found = self.bodies.get(key)
        if found is None:
            version, items = self._desired(node, type_url, names)
            body = self.shared.body(type_url, version, list(items.values()))
            found = self.bodies[key] = Response(version, body)
        return found

    def _desired(
        self, node: resources.NodeInfo, type_url: str, names: frozenset[str]
    ) -> resources.Desired:
        found = resources.desired(self.source, node, type_url, names)
        if found is None:
            raise RuntimeError("the snapshot cache is not loaded")
        return found

    def _delta_body(
        self,
        type_url: str,
        version: str,
        send: Sequence[cache_mod.Encoded],
        removed: Sequence[str],
    ) -> bytes:
        # NOTE: keyed by what it carries, as the front-end's: streams getting the same share it.
        key = ("delta", type_url, version, tuple((e.name, e.hash) for e in send), tuple(removed))
        return self.shared.get(
            key,
            lambda: wire.delta_body(
                type_url=type_url,
                version=version,
                resources=[wire.delta_resource(e.name, e.hash, e.entry) for e in send],
                removed=list(removed),
            ),
        )

    def _queue(self, stream: Stream, held: TypeState, body: bytes) -> None:
        held.nonce = str(next(stream.nonces))
        framed = wire.with_nonce(body, held.nonce)
        stream.queue.put_nowait(framed)
        self.responses += 1
        self.sent_bytes += len(framed)

    def _send_sotw(self, stream: Stream, held: TypeState, response: Response) -> None:
        held.version = response.version
        self._queue(stream, held, response.body)

    def _regroup(self, stream: Stream, names: frozenset[str]) -> None:
        """Files ``stream`` under each EDS name it subscribes to (``names``)."""
        old = stream.group
        if old is not None:
            for name in old[1][4]:
                by_key = self.groups.get(name, {})
                members = by_key.get(old)
                if members is not None:
                    members.discard(stream)
                    if not members:
                        del by_key[old]
                if not by_key:
                    self.groups.pop(name, None)
        stream.group = None
        if names:
            node = stream.node
            key: GroupKey = (stream.variant, (node.app, node.k8s_cluster, node.zone, EDS, names))
            for name in names:
                self.groups.setdefault(name, {}).setdefault(key, set()).add(stream)
            stream.group = key

    # -- requests ----------------------------------------------------------------------

    def on_request(self, stream: Stream, req: Any) -> None:
        type_url = req.type_url
        if not type_url:
            return
        names = (
            frozenset() if type_url in resources.WILDCARD_TYPES else frozenset(req.resource_names)
        )
        held = stream.types.get(type_url)
        if held is None or held.names != names:
            held = stream.types[type_url] = TypeState(names)
            if type_url == EDS:
                self._regroup(stream, names)
            self._send_sotw(stream, held, self.current(stream.node, type_url, names))
            return
        if req.response_nonce and req.response_nonce != held.nonce:
            return  # NOTE: stale nonce, same names: an answer is on its way.
        if req.HasField("error_detail"):
            return  # NOTE: a NACK: never re-sent in a loop.
        response = self.current(stream.node, type_url, names)
        if req.version_info != response.version:
            self._send_sotw(stream, held, response)

    def on_delta_request(self, stream: Stream, req: Any) -> None:
        type_url = req.type_url
        if not type_url:
            return
        wildcard = type_url in resources.WILDCARD_TYPES
        held = stream.types.get(type_url)
        changed = held is None
        if held is None:
            held = stream.types[type_url] = TypeState(
                frozenset(), known=dict(req.initial_resource_versions)
            )
        if not wildcard and (req.resource_names_subscribe or req.resource_names_unsubscribe):
            names = (
                (held.names | set(req.resource_names_subscribe))
                - set(req.resource_names_unsubscribe)
                - {"*"}
            )
            if names != held.names:
                for name in held.names - names:
                    held.known.pop(name, None)
                held.names = frozenset(names)
                changed = True
                if type_url == EDS:
                    self._regroup(stream, held.names)
        if not changed:
            return  # NOTE: an ACK or a NACK, nothing asked for: ignored.
        version, items = self._desired(stream.node, type_url, held.names)
        send = [e for name, e in items.items() if held.known.get(name) != e.hash]
        if wildcard:
            removed = [n for n, h in held.known.items() if h and n not in items]
        else:
            removed = [n for n in sorted(held.names) if n not in items and held.known.get(n) != ""]
        if not send and not removed:
            return
        for e in send:
            held.known[e.name] = e.hash
        for name in removed:
            if wildcard:
                del held.known[name]
            else:
                held.known[name] = ""
        self._queue(stream, held, self._delta_body(type_url, version, send, removed))

    # -- flips -------------------------------------------------------------------------

    def flip_watch(self) -> dict[str, Any]:
        """Swaps ``--watch``'s assignment for its alternate, or back."""
        if self.watch is None:
            raise FlipError(400, "no --watch: POST /flip needs {name, address}")
        alternates = {a.variant: a.flipped for a in self.alternates}
        return self.flip([(self.watch, DROP_LAST, lambda: alternates)])

    def flip_address(self, name: str, address: str) -> dict[str, Any]:
        """Swaps ``name``'s assignments for themselves plus an endpoint at ``address``, or
        back if that is the flip in effect."""
        answer = self.flip_addresses([name], address)
        answer["name"] = name
        return answer

    def flip_addresses(self, names: Sequence[str], address: str) -> dict[str, Any]:
        """``flip_address`` for several names at once, pushed as one response per stream
        (as one endpoint change of a service with several ports reaches a sidecar)."""
        flips = []
        count = 0
        for name in names:
            variants = self.variants.get(name, ())
            held = ((v, self.source.cache.eds(name, v)) for v in variants)
            originals = [(v, e) for v, e in held if e is not None]
            if not originals:
                raise FlipError(404, f"no endpoint assignment of {name!r} was loaded")
            count += len(originals)

            def make(
                name: str = name, originals: list[tuple[str, Any]] = originals
            ) -> dict[str, cache_mod.Encoded]:
                try:
                    return {v: add_endpoint(name, v, e, address) for v, e in originals}
                except ValueError as exc:
                    raise FlipError(409, str(exc)) from exc

            flips.append((name, address, make))
        answer = self.flip(flips)
        return {"names": list(names), "address": address, "variants": count, **answer}

    def flip(
        self, flips: Sequence[tuple[str, str, Callable[[], Mapping[str, cache_mod.Encoded]]]]
    ) -> dict[str, Any]:
        """Swaps (or restores) each ``(name, label, make)``'s assignments (``make()`` gives the
        alternates by variant) and queues ONE EDS response on every stream subscribed to any
        of the names, carrying those of them it watches."""
        started = time.perf_counter()
        names = set()
        for name, label, make in flips:
            names.add(name)
            if self.flips.get(name) == label:
                del self.flips[name]
                self.source.swap(name, {})
            else:
                self.source.swap(name, make())
                self.flips[name] = label
        before = {
            key: self.bodies.pop(key)
            for key in [k for k in self.bodies if k[3] == EDS and names & k[4]]
        }
        groups: dict[GroupKey, set[Stream]] = {}
        for name in names:
            groups.update(self.groups.get(name, {}))
        # NOTE: one body per group of streams that get the same bytes, before any is queued.
        due: list[tuple[set[Stream], Response, dict[str, str]]] = []
        for (variant, key), members in groups.items():
            node = next(iter(members)).node
            version, items = self._desired(node, EDS, key[4])
            found = [items[n] for n in sorted(names & key[4]) if n in items]
            if not found:
                continue
            if variant == SOTW:
                response = self.current(node, EDS, key[4])
                old = before.get(key)
                if old is None or old.version != response.version:
                    # NOTE: as the front-end does, a SotW EDS push carries only the changed
                    # assignments (with the whole set's version).
                    body = self.shared.partial_body(EDS, response.version, found)
                    due.append((members, Response(response.version, body), {}))
            else:
                body = self._delta_body(EDS, version, found, [])
                due.append((members, Response(version, body), {e.name: e.hash for e in found}))
        encoded = time.perf_counter()
        pushed = 0
        for members, response, digests in due:
            for stream in members:
                held = stream.types[EDS]
                if digests:
                    held.known.update(digests)
                    self._queue(stream, held, response.body)
                else:
                    self._send_sotw(stream, held, response)
            pushed += len(members)
        queued = time.perf_counter()
        return {
            "flipped": all(name in self.flips for name in names),
            "pushed": pushed,
            "encode_ms": round((encoded - started) * 1e3, 3),
            "queue_ms": round((queued - encoded) * 1e3, 3),
        }

    # -- gRPC --------------------------------------------------------------------------

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        # NOTE: response_serializer=None: the handlers yield wire bytes, as the front-end's.
        def handler(variant: str, request: Any) -> Any:
            serve_stream = functools.partial(self._handle, variant=variant)
            return grpc.stream_stream_rpc_method_handler(
                serve_stream, request_deserializer=request.FromString, response_serializer=None
            )

        return [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    METHOD: handler(SOTW, discovery_pb2.DiscoveryRequest),
                    DELTA_METHOD: handler(DELTA, discovery_pb2.DeltaDiscoveryRequest),
                },
            )
        ]

    async def _handle(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, variant: str
    ) -> AsyncIterator[bytes]:
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        try:
            node = resources.placed(self.source, resources.NodeInfo.from_proto(first.node))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        stream = Stream(variant, node)
        on_request = self.on_request if variant == SOTW else self.on_delta_request
        self.streams.add(stream)
        self.open[variant] += 1
        reader = asyncio.create_task(self._read(requests, stream, on_request))
        try:
            on_request(stream, first)
            while (out := await stream.queue.get()) is not None:
                yield out
        finally:
            self.streams.discard(stream)
            self.open[variant] -= 1
            self._regroup(stream, frozenset())
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader

    @staticmethod
    async def _read(
        requests: AsyncIterator[Any], stream: Stream, on_request: Callable[[Stream, Any], None]
    ) -> None:
        try:
            async for req in requests:
                on_request(stream, req)
        finally:
            stream.queue.put_nowait(None)

    # -- control -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "loaded": True,
            "streams": len(self.streams),
            "by_variant": dict(self.open),
            "responses": self.responses,
            "sent_bytes": self.sent_bytes,
            "bodies": len(self.bodies),
            "bodies_encoded": self.shared.misses,
            "flips": dict(sorted(self.flips.items())),
            "watch": self.watch,
        }
        if self.watch is not None:
            doc["watchers"] = sum(len(m) for m in self.groups.get(self.watch, {}).values())
            doc["flipped"] = self.flips.get(self.watch) == DROP_LAST
            doc["variants"] = {
                a.variant: {"original": list(a.original_addrs), "flipped": list(a.flipped_addrs)}
                for a in self.alternates
            }
        return doc

    def http_app(self) -> web.Application:
        async def flip(request: web.Request) -> web.Response:
            raw = await request.read()
            try:
                if not raw.strip():
                    return web.json_response(self.flip_watch())
                try:
                    doc = json.loads(raw)
                    names = doc["names"] if "names" in doc else [doc["name"]]
                    address = doc["address"]
                    if not isinstance(names, list) or not names:
                        raise TypeError("names must be a non-empty list")
                    if not all(isinstance(n, str) for n in names) or not isinstance(address, str):
                        raise TypeError("names and address must be strings")
                    address = str(ipaddress.ip_address(address))
                except (ValueError, KeyError, TypeError) as exc:
                    raise FlipError(
                        400, f'expected {{"name" or "names": ..., "address": IP}}: {exc}'
                    ) from exc
                if "names" in doc:
                    return web.json_response(self.flip_addresses(names, address))
                return web.json_response(self.flip_address(names[0], address))
            except FlipError as exc:
                return web.json_response({"error": str(exc)}, status=exc.status)

        async def stats(request: web.Request) -> web.Response:
            return web.json_response(self.stats())

        app = web.Application()
        app.router.add_post("/flip", flip)
        app.router.add_get("/stats", stats)
        return app


async def load(endpoints: str, watch: str | None) -> Replay:
    """Reads the snapshots once (and which assignments exist), builds ``watch``'s alternates;
    no etcd after this."""
    async with etcd_mod.Etcd(endpoints, timeout=30.0, retry_for=30.0) as etcd:
        cache: cache_mod.SnapshotCache = await state.load_snapshots(etcd)
        eds_keys = await etcd.get_prefix(keys.EDS_SNAPSHOTS, keys_only=True)
    variants: dict[str, list[str]] = {}
    for key in sorted(eds_keys.items):
        with contextlib.suppress(keys.SchemaError):
            name, variant = keys.parse_eds_key(key)
            if cache.eds(name, variant) is not None:
                variants.setdefault(name, []).append(variant)
    alternates = []
    if watch is not None:
        for variant in variants.get(watch, ()):
            encoded = cache.eds(watch, variant)
            if encoded is not None:
                alternates.append(drop_last_endpoint(watch, variant, encoded))
        if not alternates:
            raise SystemExit(f"replay: no endpoint assignment of {watch!r} in etcd")
    return Replay(cache, variants, watch=watch, alternates=alternates)


async def amain(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # NOTE: a signal while etcd is still being read (retried for up to 30 s) ends it too.
    loading = asyncio.create_task(load(args.etcd, args.watch))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({loading, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not loading.done():
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        return 0
    stopped.cancel()
    replay = loading.result()
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(replay.generic_handlers())
    if server.add_insecure_port(args.listen) == 0:
        raise SystemExit(f"replay: cannot listen on {args.listen}")
    await server.start()
    runner = web.AppRunner(replay.http_app(), access_log=None)
    try:
        await runner.setup()
        host, _, port = args.http.rpartition(":")
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
        log.warning(
            "replay server ready: %d EDS names, watch %s, grpc %s, http %s",
            len(replay.variants),
            args.watch,
            args.listen,
            args.http,
        )
        await stop.wait()
    finally:
        await runner.cleanup()
        await server.stop(0.5)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m navigator.bench.replay",
        description="The floor: a minimal ADS server (SotW and Delta) replaying pre-encoded "
        "snapshots read once from etcd.",
    )
    parser.add_argument("--etcd", required=True, help="etcd endpoints, read once at start")
    parser.add_argument("--listen", default="127.0.0.1:18020", help="gRPC HOST:PORT")
    parser.add_argument("--http", default="127.0.0.1:9120", help="control HOST:PORT (loopback)")
    parser.add_argument(
        "--watch",
        default=None,
        help="an EDS name whose alternate (its last endpoint dropped) is encoded at start and "
        "swapped by POST /flip with no body",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
