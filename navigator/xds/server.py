"""The xDS gRPC server that Envoy sidecars connect to: ADS and per-type, SotW and Delta.

Services, all on one port:

- ``AggregatedDiscoveryService``: ``StreamAggregatedResources`` (State of the World) and
  ``DeltaAggregatedResources`` (incremental), chosen by the sidecar's bootstrap
  (``navigator bootstrap --delta``); one stream carries every type, so the front-end orders
  them (make-before-break);
- ``Cluster/Endpoint/Listener/RouteDiscoveryService``: ``Stream*`` and ``Delta*`` for clients
  that use one stream per type (each stream then serves its type only; ordering across types
  is the client's business, as the protocol says).

Each stream serves one sidecar, identified by its Envoy node (``id``; ``metadata.app`` and
``metadata.k8s_cluster`` select the app snapshot; ``locality.zone`` the endpoint variant). The
protocol state is in ``streams``; what a node should hold and the shared response bodies in
``resources``; per-sidecar status records in ``status``.

Cost at scale: one etcd watch per front-end (``cache``); responses are concatenations of
bytes encoded once per resource and whole bodies are shared between the streams that receive
the same content, so a push to N sidecars serializes nothing N times. A stream computes its
responses from the current state just before sending them and awaits each write: a slow
sidecar holds at most one round of responses in flight and never a queue, and what changed
meanwhile is coalesced into its next round; a burst of changes wakes a stream once, and a
stream that pushed less than ``coalesce`` seconds ago waits out the rest first (the bounded
delay that turns a burst into one push).

What one client may cost (message size, streams, request rate) is bounded in ``limits``; the
requests reach the handler as bytes, so their size is checked before they are parsed.

Also ``main`` (``navigator xds``) and ``serve`` (an async context manager for tests and the
lab).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import functools
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
import grpc.aio
import prometheus_client
from envoy.service.discovery.v3 import discovery_pb2

from coordinator import etcd as etcd_mod
from coordinator import membership, session
from navigator import runtime, snapshot
from navigator.xds import authn, resources, streams
from navigator.xds import cache as cache_mod
from navigator.xds import limits as limits_mod
from navigator.xds import status as status_mod

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
METHOD = "StreamAggregatedResources"
DELTA_METHOD = "DeltaAggregatedResources"

PER_TYPE_SERVICES = {
    snapshot.CLUSTER: ("envoy.service.cluster.v3.ClusterDiscoveryService", "Clusters"),
    snapshot.ENDPOINT: ("envoy.service.endpoint.v3.EndpointDiscoveryService", "Endpoints"),
    snapshot.LISTENER: ("envoy.service.listener.v3.ListenerDiscoveryService", "Listeners"),
    snapshot.ROUTE: ("envoy.service.route.v3.RouteDiscoveryService", "Routes"),
}
"""Type URL → (service, method suffix): ``Stream<suffix>`` and ``Delta<suffix>``."""

ROLE = "xds"
MEMBER_TTL = 10
"""Seconds a dead front-end's member and sidecar records outlive it."""

DEFAULT_LISTEN = "0.0.0.0:18010"
"""Front-ends listen here; sidecars reach them through the node-local balancer (18000)."""
DEFAULT_HTTP = "0.0.0.0:9110"
DEFAULT_COALESCE = 0.05

STREAM_ERRORS = prometheus_client.Counter(
    "navigator_xds_stream_errors_total",
    "xDS streams refused or ended by an error",
    ["reason"],
)


class AdsServer:
    """Every xDS service over a ``ConfigSource``; register ``generic_handlers()``."""

    def __init__(
        self,
        source: cache_mod.ConfigSource,
        *,
        board: status_mod.StatusBoard | None = None,
        coalesce: float = DEFAULT_COALESCE,
        max_nacks: int = 256,
        authenticator: authn.Authenticator | None = None,
        limits: limits_mod.Limits | None = None,
    ) -> None:
        self.source = source
        self.authenticator = authenticator
        """None: sidecars are served as the node they claim (no identity check)."""
        self._denials = authn.DenialLog()
        self.limits = limits if limits is not None else limits_mod.Limits()
        self.admission = limits_mod.Admission(self.limits)
        self._refusals = limits_mod.RefusalLog()
        self.responses = resources.ResponseCache()
        self.board = board
        self.coalesce = coalesce
        self.nacks: collections.deque[streams.Nack] = collections.deque(maxlen=max_nacks)
        """The most recent NACKs, newest last (also in logs, metrics and status records)."""
        self.streams: set[streams.Stream[Any]] = set()

    # -- streams.Context -------------------------------------------------------------------

    def record_nack(self, nack: streams.Nack) -> None:
        self.nacks.append(nack)

    def touched(self, stream: streams.Stream[Any]) -> None:
        if self.board is not None:
            self.board.touched(stream)

    # -- gRPC ------------------------------------------------------------------------------

    def generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        # NOTE: response_serializer=None: the handlers yield wire bytes assembled from cache;
        # request_deserializer=None: they parse each request after checking its size.
        def handler(variant: type[streams.Stream[Any]], request: Any, only: str | None) -> Any:
            # NOTE: a partial of the async generator (inspect sees through it): no extra
            # generator layer per message.
            serve_stream = functools.partial(
                self._handle, variant=variant, only_type=only, parse=request.FromString
            )
            return grpc.stream_stream_rpc_method_handler(
                serve_stream, request_deserializer=None, response_serializer=None
            )

        sotw, delta = discovery_pb2.DiscoveryRequest, discovery_pb2.DeltaDiscoveryRequest
        out = [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    METHOD: handler(streams.SotwStream, sotw, None),
                    DELTA_METHOD: handler(streams.DeltaStream, delta, None),
                },
            )
        ]
        for type_url, (service, suffix) in PER_TYPE_SERVICES.items():
            out.append(
                grpc.method_handlers_generic_handler(
                    service,
                    {
                        f"Stream{suffix}": handler(streams.SotwStream, sotw, type_url),
                        f"Delta{suffix}": handler(streams.DeltaStream, delta, type_url),
                    },
                )
            )
        return out

    async def _handle(
        self,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        variant: type[streams.Stream[Any]],
        only_type: str | None,
        parse: Callable[[bytes], Any] | None = None,
    ) -> AsyncIterator[bytes]:
        """Serves one stream. ``parse``: the requests arrive as bytes, checked against the
        size limit and parsed here; None: they arrive parsed (a caller's own deserializer)
        and count as 0 bytes."""
        node: resources.NodeInfo | None = None
        quota: limits_mod.Quota | None = None
        try:
            try:
                async with asyncio.timeout(limits_mod.FIRST_REQUEST_TIMEOUT):
                    first = await anext(requests)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise limits_mod.Limited(
                    limits_mod.FIRST_REQUEST,
                    f"no request within {limits_mod.FIRST_REQUEST_TIMEOUT:g}s",
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ) from None
            size = 0
            if parse is not None:
                size = len(first)
                if size > self.limits.max_message_bytes:
                    raise self.limits.too_big(size)
                first = parse(first)
            try:
                node = resources.placed(self.source, resources.NodeInfo.from_proto(first.node))
            except ValueError as exc:
                STREAM_ERRORS.labels("invalid_node").inc()
                log.warning("stream refused", extra={"peer": context.peer(), "error": str(exc)})
                _refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                return
            identity: authn.Identity | None = None
            if self.authenticator is not None:
                try:
                    identity = await self.authenticator.authenticate(
                        node, context.invocation_metadata() or ()
                    )
                except authn.Denied as denied:
                    self._denials.denied(denied, node, context.peer())
                    _refuse(context, denied.code, denied.message)
                    return
                authn.AUTHENTICATED.inc()
            delta = variant.variant == streams.DELTA
            if (names := _requested(first, delta)) > self.limits.max_resource_names:
                raise self.limits.too_many_names(names)
            # NOTE: refused before the stream subscribes or computes anything.
            quota = self.admission.join(limits_mod.client_of(node, identity))
            if not quota.allow(size, limits_mod.STREAM_TOKENS):
                raise self._over_rate(quota)
            sub = self.source.subscribe()
            stream = variant(self, node, sub, only_type=only_type)
            stream.on_request(first)
            quota.watched(len(sub.keys))
            reader = asyncio.create_task(
                self._read(requests, stream, quota, parse), name=f"xds-read-{node.id}"
            )
            streams.STREAMS.labels(stream.variant).inc()
            self.streams.add(stream)
            if self.board is not None:
                self.board.opened(stream)
            log.info(
                "stream opened",
                extra={
                    "node": node.id,
                    "app": node.app,
                    "k8s_cluster": node.k8s_cluster,
                    "variant": stream.variant,
                    "type": snapshot.SHORT_NAMES.get(only_type or "", "ads"),
                },
            )
            last_round = -float("inf")
            ended: limits_mod.Limited | None = None
            try:
                while True:
                    await sub.changed.wait()
                    if stream.closed:
                        break
                    wait = self.coalesce - (time.monotonic() - last_round)
                    if wait > 0 and sub.since is not None:
                        # NOTE: pushed a moment ago: let the rest of a burst arrive (bounded).
                        await asyncio.sleep(wait)
                    sub.changed.clear()
                    cause_at, sub.since = sub.since, None
                    last_round = time.monotonic()
                    for out in stream.respond(cause_at):
                        yield out
            except Exception:
                STREAM_ERRORS.labels("send").inc()
                raise
            finally:
                streams.STREAMS.labels(stream.variant).dec()
                self.streams.discard(stream)
                if self.board is not None:
                    self.board.closed(stream)
                sub.close()
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    ended = await reader
                log.info("stream closed", extra={"node": node.id, "app": node.app})
            if ended is not None:
                # NOTE: not raised: raised here, it would hold this frame in a cycle.
                self._refusals.limited(ended, node, context.peer())
                _refuse(context, ended.code, ended.message)
        except limits_mod.Limited as limited:
            self._refusals.limited(limited, node, context.peer())
            _refuse(context, limited.code, limited.message)
        finally:
            if quota is not None:
                self.admission.part(quota)
            # NOTE: grpc's request iterator is an async generator that keeps the last request
            # it read, in a reference cycle with its receiver: without aclose() it goes only
            # when the cyclic collector runs (rarely here: GC_THRESHOLDS), and a refused
            # request is up to max_message_bytes. Measured: a flood of 4 MiB requests held
            # 1.3 GB.
            close = getattr(aiter(requests), "aclose", None)
            if close is not None:
                with contextlib.suppress(RuntimeError):
                    await close()

    def _over_rate(self, quota: limits_mod.Quota) -> limits_mod.Limited:
        return limits_mod.Limited(
            limits_mod.REQUEST_RATE,
            f"{quota.client} sends requests faster than the {self.limits.requests_per_second:g} "
            f"a second (burst {self.limits.request_burst:g}) allowed",
        )

    async def _read(
        self,
        requests: AsyncIterator[Any],
        stream: streams.Stream[Any],
        quota: limits_mod.Quota,
        parse: Callable[[bytes], Any] | None,
    ) -> limits_mod.Limited | None:
        """Feeds the requests after the first to the stream; what ended it, if a limit did."""
        max_bytes = self.limits.max_message_bytes
        max_names = self.limits.max_resource_names
        delta = stream.variant == streams.DELTA
        try:
            async for item in requests:
                size, req = 0, item
                if parse is not None:
                    size = len(item)
                    if size > max_bytes:
                        return self.limits.too_big(size)
                    req = parse(item)
                if (names := _requested(req, delta)) > max_names:
                    # NOTE: before the stream subscribes to them (about 5 us each, at once).
                    return self.limits.too_many_names(names)
                if not quota.allow(size):
                    return self._over_rate(quota)
                keys = stream.sub.keys
                stream.on_request(req)
                if stream.sub.keys is not keys:
                    quota.watched(len(stream.sub.keys))
                # NOTE: a SotW request replaces its type's subscription (checked above); a
                # Delta one adds to it.
                if delta and names and (names := _subscribed(stream)) > max_names:
                    return self.limits.too_many_names(names)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            raise
        except Exception as exc:
            STREAM_ERRORS.labels("read").inc()
            log.warning("stream read failed", extra={"node": stream.node.id, "error": str(exc)})
        finally:
            stream.closed = True
            stream.sub.changed.set()
        return None


def _refuse(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """Ends the stream with ``code`` once the handler returns.

    NOTE: not ``context.abort()``: it raises, and the exception's traceback kept the handler's
    frame, with the request it refused (up to max_message_bytes, parsed to several times
    that), until the cyclic collector ran: measured, a flood of 4 MiB requests held 2.9 GB.
    """
    context.set_code(code)
    context.set_details(message)


def _requested(req: Any, delta: bool) -> int:
    """The resource names a request names."""
    if delta:
        return len(req.resource_names_subscribe) + len(req.initial_resource_versions)
    return len(req.resource_names)


def _subscribed(stream: streams.Stream[Any]) -> int:
    """The resource names a stream subscribes to, every type together.

    NOTE: O(types): each type's state keeps its subscription as a set (``names``)."""
    total = 0
    for st in stream.types.values():
        total += len(st.names)
    return total


@dataclasses.dataclass(frozen=True, slots=True)
class Handle:
    """A running front-end, as ``serve`` yields it."""

    address: str
    """The bound ``host:port`` of the gRPC server."""
    port: int
    cache: cache_mod.SnapshotCache
    ads: AdsServer
    board: status_mod.StatusBoard
    loader: asyncio.Task[None]


SERVER_OPTIONS = [
    # NOTE: sidecars and balancers ping every second or few to notice a dead control plane;
    # gRPC's default policy would answer such pings with GOAWAY(too_many_pings).
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
]


@dataclasses.dataclass(frozen=True, slots=True)
class ServerTls:
    """The front-end's certificate and key (PEM files) and, to require client certificates
    (mutual TLS: the node-local balancers'), the CA that signs them."""

    cert: str
    key: str
    client_ca: str = ""

    def credentials(self) -> grpc.ServerCredentials:
        """Raises OSError (one line, naming the file) when a file cannot be read."""
        pem: dict[str, bytes] = {}
        for part, path in (("cert", self.cert), ("key", self.key), ("client CA", self.client_ca)):
            if path:
                try:
                    with open(path, "rb") as f:
                        pem[part] = f.read()
                except OSError as exc:
                    raise OSError(f"TLS {part} {path}: {exc.strerror or exc}") from exc
        return grpc.ssl_server_credentials(
            [(pem["key"], pem["cert"])],
            root_certificates=pem.get("client CA"),
            require_client_auth="client CA" in pem,
        )


@contextlib.asynccontextmanager
async def serve(
    *,
    etcd: etcd_mod.Etcd,
    listen: str = "127.0.0.1:0",
    health: runtime.Health | None = None,
    grace: float = 1.0,
    member: membership.Member | None = None,
    coalesce: float = DEFAULT_COALESCE,
    status_interval: float = 0.5,
    authenticator: authn.Authenticator | None = None,
    tls: ServerTls | None = None,
    limits: limits_mod.Limits | None = None,
) -> AsyncIterator[Handle]:
    """Runs the snapshot loader and the xDS server until the block exits.

    ``authenticator`` checks each sidecar's identity before it is served (``authn``); ``tls``
    serves gRPC over TLS (mutual when it has a client CA); ``limits`` bounds what one client
    may cost (``limits``; None: the defaults).

    ``health`` (if given) turns ready once the first listing is loaded. With ``member`` the
    front-end registers under one lease (``MEMBER_TTL``) and writes its sidecars' status
    records under it. The caller owns ``etcd`` and closes it.
    """
    source = cache_mod.SnapshotCache(etcd, health=health)
    loader = asyncio.create_task(source.run(), name="xds-snapshot-loader")
    board = status_mod.StatusBoard(
        etcd, member.id if member is not None else "local", interval=status_interval
    )
    limits = limits if limits is not None else limits_mod.Limits()
    ads = AdsServer(
        source, board=board, coalesce=coalesce, authenticator=authenticator, limits=limits
    )
    tasks = [loader]
    if member is not None:
        registration = membership.Registration(etcd, member)

        async def registered(current: session.Session) -> None:
            await asyncio.gather(registration.run(current), board.run(current))

        # NOTE: membership and status are for people and tools; serving never waits for them,
        # and goes on if they fail (logged).
        member_task = asyncio.create_task(
            session.run_sessions(etcd, ttl=MEMBER_TTL, body=registered), name="xds-member"
        )
        member_task.add_done_callback(_log_crash)
        tasks.append(member_task)
    credentials = tls.credentials() if tls is not None else None
    server = grpc.aio.server(options=[*SERVER_OPTIONS, *limits.grpc_options()])
    try:
        server.add_generic_rpc_handlers(ads.generic_handlers())
        # NOTE: several addresses (comma-separated) share one server.
        port = 0
        for address in [a.strip() for a in listen.split(",") if a.strip()]:
            bound = (
                server.add_secure_port(address, credentials)
                if credentials is not None
                else server.add_insecure_port(address)
            )
            if bound == 0:
                raise OSError(f"cannot listen on {address}")
            port = port or bound
        if port == 0:
            raise OSError(f"nothing to listen on: {listen!r}")
        await server.start()
        try:
            host = listen.split(",", maxsplit=1)[0].rpartition(":")[0].strip("[]") or "0.0.0.0"
            log.info("xds listening", extra={"address": listen, "port": port})
            yield Handle(
                address=f"{host}:{port}",
                port=port,
                cache=source,
                ads=ads,
                board=board,
                loader=loader,
            )
        finally:
            await server.stop(grace)
    finally:
        for task in tasks:
            task.cancel()
        # NOTE: a crash of these was logged (or is re-raised by the caller's wait on loader).
        await asyncio.gather(*tasks, return_exceptions=True)


GC_THRESHOLDS = (20_000, 20, 50)
"""Collections of the young generation every 20,000 allocations, not 700: a push to 5,000
streams allocates that many objects for a few milliseconds each."""


async def _freeze_when_loaded(source: cache_mod.SnapshotCache) -> None:
    """Takes the loaded snapshots out of the garbage collector's scans.

    NOTE: measured at 5,000 streams (benchmarks/bench_floor.py): 18% of the CPU of a push
    went to the collector, walking the snapshot cache's long-lived objects again and again.
    ``gc.freeze`` moves what exists now to a generation it never scans; later changes are
    collected as usual.
    """
    gc.set_threshold(*GC_THRESHOLDS)
    await source.wait_loaded()
    gc.collect()
    gc.freeze()
    log.info("snapshots loaded; long-lived objects frozen", extra={"frozen": gc.get_freeze_count()})


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "front-end registration and sidecar status stopped",
            extra={"error": str(task.exception())},
        )


def _parser(
    add_review_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="navigator xds",
        description=(
            "xDS front-end: serves app snapshots from etcd to Envoy sidecars "
            "(ADS and per-type, State of the World and Delta)."
        ),
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
    parser.add_argument(
        "--coalesce",
        type=float,
        default=DEFAULT_COALESCE,
        help="seconds a stream that just pushed waits before its next push, so a burst of "
        "changes becomes one push (default %(default)s)",
    )
    runtime.add_member_arguments(parser)
    parser.add_argument(
        "--authn",
        choices=["none", "token"],
        default="none",
        help="how a sidecar proves who it is: 'token' = its pod's service-account token, "
        "checked with its cluster's TokenReview API; the app it may ask for is its service "
        "account's name (default %(default)s: served as the node it claims)",
    )
    parser.add_argument(
        "--token-audience",
        default=authn.DEFAULT_AUDIENCE,
        help="the audience sidecars' tokens must be issued for (default %(default)s)",
    )
    if add_review_arguments is not None:
        add_review_arguments(parser)
    _add_limit_arguments(parser)
    tls = parser.add_argument_group("TLS (PEM files)")
    tls.add_argument("--tls-cert", default="", help="the front-end's certificate")
    tls.add_argument("--tls-key", default="", help="its private key")
    tls.add_argument(
        "--tls-client-ca",
        default="",
        help="require client certificates (the node-local balancers') signed by this CA",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    return parser


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "limits (per front-end process; what one client may cost: navigator.xds.limits)"
    )
    group.add_argument(
        "--max-message-bytes",
        type=int,
        default=limits_mod.DEFAULT_MAX_MESSAGE_BYTES,
        help="a larger request ends its stream (default %(default)s)",
    )
    group.add_argument(
        "--max-resource-names",
        type=int,
        default=limits_mod.DEFAULT_MAX_RESOURCE_NAMES,
        help="resource names one stream may subscribe to, all types together; more ends it "
        "(default %(default)s)",
    )
    group.add_argument(
        "--max-streams",
        type=int,
        default=limits_mod.DEFAULT_MAX_STREAMS,
        help="streams served at once by this process (default %(default)s)",
    )
    group.add_argument(
        "--max-streams-per-client",
        type=int,
        default=limits_mod.DEFAULT_MAX_STREAMS_PER_CLIENT,
        help="streams of one client (its verified pod with --authn token, else its node id) "
        "(default %(default)s)",
    )
    group.add_argument(
        "--max-requests-per-second",
        type=float,
        default=limits_mod.DEFAULT_REQUESTS_PER_SECOND,
        help="requests (ACKs included) one client may send a second, sustained; one more "
        f"for each {limits_mod.BYTES_PER_TOKEN // 1024} KiB of a request (default %(default)s)",
    )
    group.add_argument(
        "--request-burst",
        type=float,
        default=limits_mod.DEFAULT_REQUEST_BURST,
        help="requests one client may send at once, above the rate (default %(default)s)",
    )


def _limits(args: argparse.Namespace) -> limits_mod.Limits:
    """ValueError (one line) if a limit is not positive."""
    return limits_mod.Limits(
        max_message_bytes=args.max_message_bytes,
        max_resource_names=args.max_resource_names,
        max_streams=args.max_streams,
        max_streams_per_client=args.max_streams_per_client,
        requests_per_second=args.max_requests_per_second,
        request_burst=args.request_burst,
    )


Reviewers = Callable[
    [argparse.Namespace], contextlib.AbstractAsyncContextManager[Mapping[str, authn.Reviewer]]
]
"""Makes each cluster's TokenReview client from the options (``navigator.tokenreview``)."""


def main(
    argv: list[str] | None = None,
    *,
    reviewers: Reviewers | None = None,
    add_review_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """``navigator xds``; ``reviewers`` (with its options) enables ``--authn token``."""
    args = _parser(add_review_arguments).parse_args(argv)
    runtime.setup_logging(args.log_level, component="xds")
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        log.error("--tls-cert and --tls-key go together; --tls-client-ca needs them")
        return 2
    try:
        limits = _limits(args)
    except ValueError as exc:
        log.error("bad limits", extra={"error": str(exc)})
        return 2
    if args.authn == "token" and reviewers is None:
        log.error("--authn token: this entry point has no TokenReview client (run navigator xds)")
        return 2
    try:
        # NOTE: a short retry budget so an unreachable etcd is reported within seconds;
        # the cache keeps retrying (not ready) instead of exiting.
        etcd_client = runtime.etcd_client(args, retry_for=5.0)
    except ValueError as exc:
        log.error("bad etcd options", extra={"error": str(exc)})
        return 2

    async def amain(stop: asyncio.Event) -> int:
        health = runtime.Health()
        async with contextlib.AsyncExitStack() as stack:
            authenticator: authn.Authenticator | None = None
            if args.authn == "token":
                assert reviewers is not None
                try:
                    clusters = await stack.enter_async_context(reviewers(args))
                except ValueError as exc:
                    log.error("bad token review options", extra={"error": str(exc)})
                    return 2
                authenticator = authn.TokenAuthenticator(clusters, audience=args.token_audience)
            else:
                log.warning("sidecars are not authenticated (--authn none)")
            return await _serve_until_stopped(
                args,
                etcd_client,
                health=health,
                authenticator=authenticator,
                limits=limits,
                stop=stop,
            )

    return runtime.run(amain)


async def _serve_until_stopped(
    args: argparse.Namespace,
    etcd_client: etcd_mod.Etcd,
    *,
    health: runtime.Health,
    authenticator: authn.Authenticator | None,
    limits: limits_mod.Limits,
    stop: asyncio.Event,
) -> int:
    async with (
        etcd_client as etcd,
        runtime.http_server(args.http, health) as http_address,
    ):
        member = membership.Member(role=ROLE, id=args.id, address=args.listen, http=http_address)
        async with serve(
            etcd=etcd,
            listen=args.listen,
            health=health,
            grace=5.0,
            member=member,
            coalesce=args.coalesce,
            authenticator=authenticator,
            limits=limits,
            tls=ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca)
            if args.tls_cert
            else None,
        ) as handle:
            log.info(
                "xds front-end started",
                extra={
                    "grpc": handle.address,
                    "http": http_address,
                    "etcd": args.etcd,
                    "authn": args.authn,
                },
            )
            frozen = asyncio.create_task(_freeze_when_loaded(handle.cache))
            await runtime.wait_stop(stop, handle.loader)
            frozen.cancel()
    log.info("xds front-end stopped")
    return 0
