"""What one xDS client may cost a front-end, so that a flood from one does not starve the others.

A front-end serves thousands of sidecars on one event loop (5,000 on two cores): whatever one
client can make it do without bound (hold streams, send big messages, send requests as fast as
it can write them) is time or memory taken from every other sidecar. Each limit refuses the
excess, ends only the stream concerned (never the HTTP/2 connection: a node-local balancer
carries many sidecars on one), counts it in ``navigator_xds_limited_total{reason}`` and logs it
(``RefusalLog``: at most 10 lines a second, the rest counted in the next line). The reasons:

- ``message_size`` (RESOURCE_EXHAUSTED): a request larger than ``max_message_bytes`` (4 MiB),
  refused before it is parsed. gRPC itself refuses one larger than twice that before it is
  even read in full (same status), but does not tell the handler: those are not counted;
- ``streams`` (RESOURCE_EXHAUSTED): the process already serves ``max_streams`` (20,000);
- ``streams_per_client`` (RESOURCE_EXHAUSTED): the client already has
  ``max_streams_per_client`` (16) streams open, ADS and per-type, SotW and Delta together;
- ``resource_names`` (RESOURCE_EXHAUSTED): a request naming more than ``max_resource_names``
  (10,000) resources, refused before the stream subscribes to them, or a Delta stream whose
  subscriptions add up to more (all types together; a SotW request replaces its type's).
  Subscribing costs the loop about 5 us a name at once (and a push recomputes what the names
  select), so this bounds what any one request can cost;
- ``request_rate`` (RESOURCE_EXHAUSTED): the client's requests (ACKs included) exceed its token
  bucket: ``requests_per_second`` (100) sustained, ``request_burst`` (200) at once. A request
  costs one token, plus one per ``BYTES_PER_TOKEN`` (64 KiB) of it, plus ``STREAM_TOKENS`` (10)
  if it opens a stream, plus, when it changes what the stream watches, one per
  ``KEYS_PER_TOKEN`` (100) keys it then watches: what costs the loop more counts for more.
  That last part is only known once the request is handled, so it
  may take the bucket below zero (down to ``-burst``): the client's next requests wait for the
  debt to be paid. The stream whose request finds too few tokens is ended;
- ``first_request`` (DEADLINE_EXCEEDED): a stream that sends no request within
  ``FIRST_REQUEST_TIMEOUT`` (10 s); until its first request names it, a stream belongs to no
  client, so it is not counted in ``streams`` either.

What a client is. It must be something a flood cannot trivially multiply, and must not punish
the many sidecars behind one node-local balancer (they all arrive from the balancer's address,
over a few HTTP/2 connections, so a cap per peer address or per connection is wrong):

- with ``--authn token``, the verified pod: cluster, namespace and pod name of its
  service-account token (``authn.Identity``). A token that names no pod (a Kubernetes that does
  not put the pod in the review's ``extra``) is keyed by its service account and the node id
  the stream claims, which the holder of one valid token could vary;
- with ``--authn none``, the Envoy node id the stream claims (with its cluster). Without
  identities a client that varies its node id is many clients: only ``max_streams`` and the
  per-stream limits bound it. Turning ``--authn token`` on is what closes that.

A client's state (its stream count and its token bucket) lives while it has a stream, and for
``2 * burst / rate`` seconds after its last one closes (the time its bucket takes to refill
from the deepest debt), so closing every stream and reconnecting buys no new burst.

Cost on the hot path, per request: the length of its bytes and of its names, one clock read, a
few float operations (``Quota.allow``) and an identity check of what the stream watches; per
stream, two dict operations when it opens and closes. Measured: 0.7 us more a request (parsing
and handling a small ACK: 1.7 us before, 2.5 us with the checks), where a push costs the
front-end about 150 us a stream (bench_frontend.py): under 1%.

Exceptions: ``Limited`` (refused or ended by a limit; carries the gRPC status, the metric's
reason and a one-line message).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable

import grpc
import prometheus_client

from navigator.xds import authn, resources

log = logging.getLogger(__name__)

MESSAGE_SIZE = "message_size"
RESOURCE_NAMES = "resource_names"
STREAMS = "streams"
STREAMS_PER_CLIENT = "streams_per_client"
REQUEST_RATE = "request_rate"
FIRST_REQUEST = "first_request"

LIMITED = prometheus_client.Counter(
    "navigator_xds_limited_total",
    "xDS streams refused or ended by a limit (navigator.xds.limits), by reason",
    ["reason"],
)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""NOTE: measured (xds-protos, 4,000 resources, the most a sidecar seeing the whole mesh
names): a SotW EDS request of realistic names ("namespace/service:port") is 146 KB; a Delta one
subscribing them with ``initial_resource_versions`` 372 KB, 544 KB with names of Kubernetes'
maximum lengths. 4 MiB is 7x the largest, and gRPC's own default (nothing a sidecar could send
before is refused now)."""
GRPC_CAP_FACTOR = 2
"""gRPC's ``max_receive_message_length`` is this times ours: ours refuses and counts, gRPC's
bounds what is buffered before ours can look (measured: gRPC refuses a larger message from its
length prefix, buffering none of it; a 200 MiB one left the server's RSS as it was)."""
DEFAULT_MAX_RESOURCE_NAMES = 10_000
"""NOTE: 2.5x the 4,000 names of a sidecar that sees the whole mesh (the mesh benchmark's
full-mesh Envoy). Measured with the real stream code: subscribing 4,000 names costs 9.7 ms,
150,000 (what 4 MiB of names holds) 0.8 s, all at once; 10,000 about 25 ms."""
DEFAULT_MAX_STREAMS = 20_000
"""NOTE: 4x the 5,000 streams a process is sized for on two cores (about 35 KiB each idle:
700 MiB at the cap); the benchmarks run 2,500-5,000 per front-end."""
DEFAULT_MAX_STREAMS_PER_CLIENT = 16
"""NOTE: a sidecar needs one stream (ADS) or four (per-type CDS/EDS/LDS/RDS), and for a moment
one more of each while a reconnect overlaps the stream the front-end has not yet seen end."""
DEFAULT_REQUESTS_PER_SECOND = 100.0
DEFAULT_REQUEST_BURST = 200.0
"""NOTE: a sidecar sends one ACK per response, plus a subscription change when CDS (EDS names)
or LDS (RDS names) changes. A stream gets at most one round per ``--coalesce`` (50 ms) while
changes keep coming, and a round carries at most six responses (four types, two of them again
in the removal phase): endpoint churn costs a sidecar 1 request per round (20/s at most),
configuration churn up to 8. 100 tokens a second covers 5 requests in every round at the
fastest rate rounds can come; a burst of 200 covers 25 rounds of 8 at once, or a reconnect
(4 requests and their ACKs) many times over."""
BYTES_PER_TOKEN = 64 * 1024
"""NOTE: parsing costs about 1.1 ns a byte (4 MiB of names: 4.7 ms), handling a SotW ACK of
4,000 names 0.8 ms with its name set, a small request about 15 us in all. A full-mesh SotW
sidecar under endpoint churn (20 ACKs of 146 KB a second) then spends 65 tokens a second,
within the rate, while a flood of 4 MiB requests gets about 1.5 of them a second."""
KEYS_PER_TOKEN = 100
"""NOTE: a stream watches about two cache keys per endpoint assignment (its zone's and the
default). A full-mesh sidecar's EDS subscription (8,000 keys) then costs 80 tokens each time it
changes (at connect, when a cluster comes or goes): within the burst; a client subscribing
10,000 names again and again pays 200 tokens (2 s of its rate) each time."""
STREAM_TOKENS = 10
"""NOTE: measured, a stream served and closed costs the front-end 450 us of CPU before it
pushes anything (a refused one 250 us, 220 of them gRPC's), then its first push and status
record; a small request about 15 us. A sidecar opens one stream (ADS) or four (per-type) when
it connects: 10 or 40 tokens, within the burst; a client opening stream after stream gets 10
a second."""
FIRST_REQUEST_TIMEOUT = 10.0
"""NOTE: Envoy sends its first request as it opens a stream; one that says nothing holds a
handler and belongs to no client (not counted anywhere) until it does."""
_IDLE_MAX = 65_536
"""Clients without streams whose buckets are kept (oldest forgotten first)."""


class Limited(Exception):
    """A stream refused or ended by a limit."""

    def __init__(
        self,
        reason: str,
        message: str,
        code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The limits of one front-end process (module docstring); ValueError if one is not > 0."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_resource_names: int = DEFAULT_MAX_RESOURCE_NAMES
    max_streams: int = DEFAULT_MAX_STREAMS
    max_streams_per_client: int = DEFAULT_MAX_STREAMS_PER_CLIENT
    requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND
    request_burst: float = DEFAULT_REQUEST_BURST

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"{field.name} must be > 0, not {getattr(self, field.name)!r}")
        if self.request_burst < 1:
            raise ValueError(f"request_burst must be >= 1 (one request), not {self.request_burst}")

    def grpc_options(self) -> list[tuple[str, int]]:
        cap = min(2**31 - 1, GRPC_CAP_FACTOR * self.max_message_bytes)
        return [("grpc.max_receive_message_length", cap)]

    def too_many_names(self, names: int) -> Limited:
        return Limited(
            RESOURCE_NAMES,
            f"subscribed to {names} resource names, more than the {self.max_resource_names} "
            "allowed",
        )

    def too_big(self, size: int) -> Limited:
        """The refusal of a request of ``size`` bytes (more than ``max_message_bytes``)."""
        return Limited(
            MESSAGE_SIZE, f"request of {size} bytes, more than the {self.max_message_bytes} allowed"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Client:
    """Whom a stream's limits are counted against (module docstring)."""

    kind: str
    """``pod``, ``service-account`` (a token naming no pod) or ``node`` (no authentication)."""
    cluster: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.cluster}/{self.name}"


def client_of(node: resources.NodeInfo, identity: authn.Identity | None) -> Client:
    if identity is None:
        return Client("node", node.k8s_cluster, node.id)
    if identity.pod:
        return Client("pod", identity.cluster, f"{identity.namespace}/{identity.pod}")
    return Client(
        "service-account",
        identity.cluster,
        f"{identity.namespace}/{identity.service_account} node {node.id}",
    )


class Bucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst``; starts full."""

    __slots__ = ("_burst", "_rate", "at", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self.tokens = burst
        self.at = now

    def charge(self, cost: float, now: float) -> None:
        """Takes ``cost`` tokens whether there are that many or not, down to ``-burst``."""
        tokens = min(self.tokens + (now - self.at) * self._rate, self._burst)
        self.at = now
        self.tokens = max(tokens - cost, -self._burst)

    def take(self, cost: float, now: float) -> bool:
        """Takes ``cost`` tokens if there are that many (after refilling up to ``now``)."""
        tokens = self.tokens + (now - self.at) * self._rate
        tokens = min(tokens, self._burst)
        self.at = now
        if tokens < cost:
            self.tokens = tokens
            return False
        self.tokens = tokens - cost
        return True


class Quota:
    """One client's streams and request bucket; ``allow`` is called for every request."""

    __slots__ = ("_clock", "bucket", "client", "streams")

    def __init__(self, client: Client, limits: Limits, clock: Callable[[], float]) -> None:
        self.client = client
        self.streams = 0
        self._clock = clock
        self.bucket = Bucket(limits.requests_per_second, limits.request_burst, clock())

    def allow(self, size: int, extra: float = 0.0) -> bool:
        """Charges one request of ``size`` bytes (and ``extra`` tokens); False: over the
        client's rate."""
        return self.bucket.take(1.0 + size / BYTES_PER_TOKEN + extra, self._clock())

    def watched(self, keys: int) -> None:
        """The request just allowed made its stream watch ``keys`` keys (a new set)."""
        self.bucket.charge(keys / KEYS_PER_TOKEN, self._clock())


class Admission:
    """Which streams are served: the process's count and each client's (``Quota``)."""

    def __init__(self, limits: Limits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self.served = 0
        """Streams admitted and not yet ended."""
        self._quotas: dict[Client, Quota] = {}
        """Clients with at least one stream."""
        self._idle: collections.OrderedDict[Client, tuple[float, Quota]] = collections.OrderedDict()
        """Clients whose last stream ended, until their bucket is full again (oldest first)."""
        self._keep = 2 * limits.request_burst / limits.requests_per_second

    def join(self, client: Client) -> Quota:
        """Admits one stream of ``client``; raises Limited (``streams``, ``streams_per_client``)."""
        now = self._clock()
        self._forget(now)
        if self.served >= self.limits.max_streams:
            raise Limited(
                STREAMS, f"this front-end serves its maximum of {self.limits.max_streams} streams"
            )
        quota = self._quotas.get(client)
        if quota is None:
            kept = self._idle.pop(client, None)
            quota = kept[1] if kept is not None else Quota(client, self.limits, self._clock)
            self._quotas[client] = quota
        elif quota.streams >= self.limits.max_streams_per_client:
            raise Limited(
                STREAMS_PER_CLIENT,
                f"{client} has its maximum of {self.limits.max_streams_per_client} streams open",
            )
        quota.streams += 1
        self.served += 1
        return quota

    def part(self, quota: Quota) -> None:
        """One stream of ``join`` ended."""
        self.served -= 1
        quota.streams -= 1
        if quota.streams == 0:
            del self._quotas[quota.client]
            now = self._clock()
            self._idle[quota.client] = (now + self._keep, quota)
            if len(self._idle) > _IDLE_MAX:
                self._idle.popitem(last=False)
            self._forget(now)

    def _forget(self, now: float) -> None:
        # NOTE: every entry is kept for the same time, so the oldest expires first.
        while self._idle:
            client, (until, _) = next(iter(self._idle.items()))
            if until > now:
                return
            del self._idle[client]

    def clients(self) -> int:
        """Clients with a stream."""
        return len(self._quotas)


class RefusalLog:
    """Counts every stream a limit refused or ended, and logs at most ``per_second`` lines a
    second; the next line says how many were left out (a flood must not flood the log)."""

    def __init__(self, per_second: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._bucket = Bucket(per_second, per_second, clock())
        self._suppressed = 0

    def limited(self, exc: Limited, node: resources.NodeInfo | None, peer: str) -> None:
        LIMITED.labels(exc.reason).inc()
        if not self._bucket.take(1.0, self._clock()):
            self._suppressed += 1
            return
        log.warning(
            f"xds stream limited: {exc.message}",
            extra={
                "reason": exc.reason,
                "node": node.id if node is not None else "",
                "app": node.app if node is not None else "",
                "k8s_cluster": node.k8s_cluster if node is not None else "",
                "peer": peer,
                "suppressed": self._suppressed,
            },
        )
        self._suppressed = 0
