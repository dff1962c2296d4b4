"""The floor for ``bench_floor.py``: a minimal ADS server that replays pre-encoded bytes.

Why it exists: to say how far the xDS front-end (``navigator xds``) is from the least a Python
``grpc.aio`` process can do to serve the same sidecars the same snapshots on the same machine.
This server does no etcd watching and no translation while it is measured, keeps no status
records and no protocol state beyond what an answer needs:

- at start it reads the snapshots ONCE from etcd (``navigator.state.load_snapshots``: the
  front-end's own ``SnapshotCache``, loaded, no watch) and closes its etcd client;
- it serves ``StreamAggregatedResources`` (State of the World ADS) only: no Delta, no
  per-type services. Registered through grpc's generic handler with no response serializer,
  as ``navigator/xds/server.py`` does: every response is bytes, nothing is built as a
  protobuf message per stream; requests are parsed (``DiscoveryRequest.FromString``);
- responses are encoded LAZILY, once per (app, k8s cluster, zone, type URL, subscribed names),
  on the first request that needs them (``navigator.xds.resources.build`` for the resources
  and version, ``navigator.xds.wire.response_body`` for the body), both the normal and the
  flipped body at once (see below); per stream only the nonce is appended
  (``wire.with_nonce``);
- per stream: the node is read from the first request; a request is answered when it opens a
  type or changes its subscribed names, or when its ``version_info`` differs from the version
  that would be sent now; an ACK (that version), a NACK (``error_detail``) and a stale nonce
  with unchanged names are ignored. No make-before-break ordering, no flow control: a
  response is queued and the stream's generator yields it;
- the flip: EAGERLY at start, for every endpoint variant of ``--watch`` held in etcd, the
  ClusterLoadAssignment is decoded, its last lb endpoint dropped, and re-encoded (an
  alternate ``Encoded``). ``POST /flip`` on the control endpoint swaps the current assignment
  for the alternate (flipping again restores it) and queues, at once, the EDS response of
  every stream whose subscription names ``--watch``; it answers when they are queued.

Control endpoint (HTTP on loopback, aiohttp, ``--http``): ``POST /flip`` → ``{"flipped":
bool, "pushed": N, "queue_ms": ...}``; ``GET /stats`` → streams, streams watching, responses
sent (total), bodies encoded, and per variant the address sets (``ip:port``) of the original
and the alternate assignment. RSS and CPU are read by the driver from ``/proc/PID``.

Run (normally started by ``bench_floor.py``)::

    .venv/bin/python benchmarks/replay_server.py --etcd http://127.0.0.1:2379 \\
        --listen 127.0.0.1:18020 --http 127.0.0.1:9120 [--watch bench/target:8080]

Exits on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
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
from navigator.xds.server import METHOD, SERVER_OPTIONS, SERVICE

log = logging.getLogger("replay_server")

DEFAULT_WATCH = "bench/target:8080"
EDS = snapshot.ENDPOINT

BodyKey = tuple[str, str, str, str, frozenset[str]]
"""(app, k8s cluster, zone, type URL, subscribed names): who gets the same bytes."""


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    version: str
    body: bytes
    """A DiscoveryResponse without its nonce."""


@dataclasses.dataclass(slots=True)
class TypeState:
    names: frozenset[str]
    version: str = ""
    nonce: str = ""


@dataclasses.dataclass(eq=False, slots=True)
class Stream:
    node: resources.NodeInfo
    queue: asyncio.Queue[bytes | None] = dataclasses.field(default_factory=asyncio.Queue)
    types: dict[str, TypeState] = dataclasses.field(default_factory=dict)
    nonces: itertools.count[int] = dataclasses.field(default_factory=itertools.count)


@dataclasses.dataclass(frozen=True, slots=True)
class Alternate:
    variant: str
    original: cache_mod.Encoded
    flipped: cache_mod.Encoded
    original_addrs: tuple[str, ...]
    flipped_addrs: tuple[str, ...]


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


class Replay:
    """Pre-encoded responses and the streams they go to."""

    def __init__(
        self, cache: cache_mod.SnapshotCache, watch: str, alternates: Sequence[Alternate]
    ) -> None:
        self.cache = cache
        self.watch = watch
        self.alternates = list(alternates)
        self._swap = {a.original.hash: a.flipped for a in alternates}
        self.flipped = False
        self.bodies: dict[BodyKey, tuple[Response, Response]] = {}
        """Per key: (normal, flipped); the same object twice if ``watch`` is not in it."""
        self.streams: set[Stream] = set()
        self.watchers: set[Stream] = set()
        self.responses = 0

    # -- responses ---------------------------------------------------------------------

    def current(self, node: resources.NodeInfo, type_url: str, names: frozenset[str]) -> Response:
        key: BodyKey = (node.app, node.k8s_cluster, node.zone, type_url, names)
        pair = self.bodies.get(key)
        if pair is None:
            pair = self.bodies[key] = self._encode(node, type_url, names)
        return pair[1] if self.flipped else pair[0]

    def _encode(
        self, node: resources.NodeInfo, type_url: str, names: frozenset[str]
    ) -> tuple[Response, Response]:
        found = resources.build(self.cache, node, type_url, names)
        if found is None:
            raise RuntimeError("the snapshot cache is not loaded")
        version, items = found
        normal = Response(version, self._body(type_url, version, items))
        swapped = [self._swap.get(e.hash, e) if e.name == self.watch else e for e in items]
        if all(a is b for a, b in zip(swapped, items, strict=True)):
            return normal, normal
        flipped_version = snapshot.version_of((e.name, e.hash) for e in swapped)
        return normal, Response(flipped_version, self._body(type_url, flipped_version, swapped))

    @staticmethod
    def _body(type_url: str, version: str, items: Sequence[cache_mod.Encoded]) -> bytes:
        return wire.response_body(
            type_url=type_url, version=version, entries=[e.entry for e in items]
        )

    def send(self, stream: Stream, type_url: str, held: TypeState) -> None:
        response = self.current(stream.node, type_url, held.names)
        held.version = response.version
        held.nonce = str(next(stream.nonces))
        stream.queue.put_nowait(wire.with_nonce(response.body, held.nonce))
        self.responses += 1

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
                if self.watch in names:
                    self.watchers.add(stream)
                else:
                    self.watchers.discard(stream)
            self.send(stream, type_url, held)
            return
        if req.response_nonce and req.response_nonce != held.nonce:
            return  # NOTE: stale nonce, same names: an answer is on its way.
        if req.HasField("error_detail"):
            return  # NOTE: a NACK: never re-sent in a loop.
        if req.version_info != self.current(stream.node, type_url, names).version:
            self.send(stream, type_url, held)

    def flip(self) -> int:
        """Swaps the watched assignment and queues its EDS response on every watcher."""
        self.flipped = not self.flipped
        for stream in self.watchers:
            held = stream.types.get(EDS)
            if held is not None:
                self.send(stream, EDS, held)
        return len(self.watchers)

    # -- gRPC --------------------------------------------------------------------------

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        # NOTE: response_serializer=None: the handler yields wire bytes, as the front-end.
        handler = grpc.stream_stream_rpc_method_handler(
            self._handle,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=None,
        )
        return [grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler})]

    async def _handle(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        try:
            node = resources.NodeInfo.from_proto(first.node)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        stream = Stream(node)
        self.streams.add(stream)
        reader = asyncio.create_task(self._read(requests, stream))
        try:
            self.on_request(stream, first)
            while (out := await stream.queue.get()) is not None:
                yield out
        finally:
            self.streams.discard(stream)
            self.watchers.discard(stream)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader

    async def _read(self, requests: AsyncIterator[Any], stream: Stream) -> None:
        try:
            async for req in requests:
                self.on_request(stream, req)
        finally:
            stream.queue.put_nowait(None)

    # -- control -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "loaded": True,
            "streams": len(self.streams),
            "watchers": len(self.watchers),
            "responses": self.responses,
            "bodies": len(self.bodies),
            "flipped": self.flipped,
            "watch": self.watch,
            "variants": {
                a.variant: {"original": list(a.original_addrs), "flipped": list(a.flipped_addrs)}
                for a in self.alternates
            },
        }

    def http_app(self) -> web.Application:
        async def flip(request: web.Request) -> web.Response:
            started = time.perf_counter()
            pushed = self.flip()
            took = (time.perf_counter() - started) * 1e3
            return web.json_response(
                {"flipped": self.flipped, "pushed": pushed, "queue_ms": round(took, 3)}
            )

        async def stats(request: web.Request) -> web.Response:
            return web.json_response(self.stats())

        app = web.Application()
        app.router.add_post("/flip", flip)
        app.router.add_get("/stats", stats)
        return app


async def load(endpoints: str, watch: str) -> Replay:
    """Reads the snapshots once, builds the alternates of ``watch``; no etcd after this."""
    async with etcd_mod.Etcd(endpoints, timeout=30.0, retry_for=30.0) as etcd:
        cache = await state.load_snapshots(etcd)
        variants = await etcd.get_prefix(keys.eds_key(watch, ""), keys_only=True)
    alternates = []
    for key in sorted(variants.items):
        _, variant = keys.parse_eds_key(key)
        encoded = cache.eds(watch, variant)
        if encoded is not None:
            alternates.append(drop_last_endpoint(watch, variant, encoded))
    if not alternates:
        raise SystemExit(f"replay_server: no endpoint assignment of {watch!r} in etcd")
    return Replay(cache, watch, alternates)


async def amain(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    replay = await load(args.etcd, args.watch)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(replay.generic_handlers())
    if server.add_insecure_port(args.listen) == 0:
        raise SystemExit(f"replay_server: cannot listen on {args.listen}")
    await server.start()
    runner = web.AppRunner(replay.http_app(), access_log=None)
    await runner.setup()
    host, _, port = args.http.rpartition(":")
    await web.TCPSite(runner, host, int(port)).start()
    log.warning(
        "replay server ready: %d variants of %s, grpc %s, http %s",
        len(replay.alternates),
        args.watch,
        args.listen,
        args.http,
    )
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await server.stop(0.5)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Minimal SotW ADS replay server (the floor).")
    parser.add_argument("--etcd", required=True, help="etcd endpoints, read once at start")
    parser.add_argument("--listen", default="127.0.0.1:18020", help="gRPC HOST:PORT")
    parser.add_argument("--http", default="127.0.0.1:9120", help="control HOST:PORT (loopback)")
    parser.add_argument("--watch", default=DEFAULT_WATCH, help="the EDS cluster /flip changes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
