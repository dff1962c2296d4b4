"""Who a sidecar is, before it is served, and which app it may ask for.

A sidecar sends its pod's projected service-account token (audience ``navigator`` by default)
as gRPC metadata, ``authorization: Bearer <token>``, on every xDS stream (Envoy reads the file
the kubelet rotates: ``navigator bootstrap --token-file``). The front-end asks the TokenReview
API of the cluster the sidecar names (``metadata.k8s_cluster``) whether the token is valid for
the audience; a token of another cluster is then simply invalid. The review says which
service account the pod runs as (``system:serviceaccount:<namespace>:<name>``), and that is
the sidecar's identity: **the app it may ask for is its service account's name**, never the
``metadata.app`` it claims (a gateway's Envoy, app ``gateway:<namespace>:<name>``, runs as the
service account named after its Gateway, in the Gateway's namespace). A sidecar of app A
asking as app B gets nothing, and the attempt is logged and counted, so Nexus scoping is an
access boundary as well.

Outcomes (``Denied.reason``, also the label of ``navigator_xds_authn_denied_total``):

- ``no_token``: no bearer token (UNAUTHENTICATED);
- ``unknown_cluster``: no TokenReview API configured for the cluster it names
  (UNAUTHENTICATED);
- ``invalid_token``: the review says not authenticated: expired, wrong audience, bad
  signature, its pod or service account gone (UNAUTHENTICATED, with the review's error);
- ``not_a_service_account``: a valid token of a user, not of a pod (PERMISSION_DENIED);
- ``wrong_app``: a valid identity asking for another app's configuration (PERMISSION_DENIED);
- ``review_unavailable``: the API could not be asked (UNAVAILABLE: the sidecar retries; a
  stream already open is not affected).

Reviews are cached by token digest (the raw token is not kept): a positive one for ``ttl``
(60 s), a negative one for ``negative_ttl`` (5 s), at most ``max_entries``; concurrent
streams with the same token share one review in flight, so 5,000 sidecars reconnecting at
once cost one review each, and a reconnect within a minute costs none. A token is checked
when a stream opens; an open stream is not cut when its token expires (its next reconnect
needs a fresh one), as with Istio's xDS authentication.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import grpc
import prometheus_client

from navigator.xds import resources

log = logging.getLogger(__name__)

DEFAULT_AUDIENCE = "navigator"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"

AUTHENTICATED = prometheus_client.Counter(
    "navigator_xds_authn_ok_total", "xDS streams whose sidecar identity was verified"
)
DENIED = prometheus_client.Counter(
    "navigator_xds_authn_denied_total",
    "xDS streams refused because the sidecar's identity was missing, invalid or not entitled",
    ["reason"],
)
REVIEWS = prometheus_client.Counter(
    "navigator_xds_token_reviews_total",
    "TokenReview calls made (cache misses), by result",
    ["result"],
)


@dataclasses.dataclass(frozen=True, slots=True)
class Review:
    """What a cluster's TokenReview API answered."""

    authenticated: bool
    username: str = ""
    audiences: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    error: str = ""


class ReviewUnavailable(Exception):
    """The TokenReview API could not be asked (after retries); the message is one line."""


class Reviewer(Protocol):
    """One cluster's TokenReview API."""

    async def review(self, token: str, audiences: Sequence[str]) -> Review: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """A sidecar's verified identity: the pod's service account in its cluster."""

    cluster: str
    namespace: str
    service_account: str
    pod: str = ""

    @property
    def app(self) -> str:
        """The app this identity may ask for: its service account's name."""
        return self.service_account

    @property
    def gateway_app(self) -> str:
        """The app of the Gateway named like the service account, in its namespace: a
        gateway's Envoy runs as the service account named after its Gateway."""
        return f"gateway:{self.namespace}:{self.service_account}"

    def allows(self, app: str) -> bool:
        return app in (self.app, self.gateway_app)

    @property
    def username(self) -> str:
        return f"{SERVICE_ACCOUNT_PREFIX}{self.namespace}:{self.service_account}"


class Denied(Exception):
    """A stream refused: the gRPC status to answer with, a metric label, one line."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


class Authenticator(Protocol):
    async def authenticate(
        self, node: resources.NodeInfo, metadata: Sequence[tuple[str, str | bytes]]
    ) -> Identity: ...


def bearer_token(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    """The token of the first ``authorization: Bearer`` entry, if any."""
    for key, value in metadata:
        if key.lower() != "authorization":
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def identity_of(cluster: str, review: Review) -> Identity:
    """The identity a positive review names; Denied if it is not a pod's service account."""
    rest = review.username.removeprefix(SERVICE_ACCOUNT_PREFIX)
    namespace, _, name = rest.partition(":")
    if rest == review.username or not namespace or not name or ":" in name:
        raise Denied(
            grpc.StatusCode.PERMISSION_DENIED,
            "not_a_service_account",
            f"{review.username!r} is not a service account",
        )
    pods = review.extra.get(POD_NAME_EXTRA, ())
    return Identity(cluster, namespace, name, pods[0] if pods else "")


_Entry = tuple[float, Identity | Denied]


class TokenAuthenticator:
    """Sidecar identity by TokenReview, per cluster, with a bounded cache (module docstring)."""

    def __init__(
        self,
        reviewers: Mapping[str, Reviewer],
        *,
        audience: str = DEFAULT_AUDIENCE,
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
        max_entries: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reviewers = dict(reviewers)
        self.audience = audience
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._clock = clock
        # NOTE: an OrderedDict as a small TTL + LRU cache (oldest first): the whole policy is
        # these few lines, not worth a dependency.
        self._cache: collections.OrderedDict[tuple[str, bytes], _Entry] = collections.OrderedDict()
        self._inflight: dict[tuple[str, bytes], asyncio.Task[Identity | Denied]] = {}

    async def authenticate(
        self, node: resources.NodeInfo, metadata: Sequence[tuple[str, str | bytes]]
    ) -> Identity:
        token = bearer_token(metadata)
        if token is None:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, "no_token", "no bearer token")
        reviewer = self.reviewers.get(node.k8s_cluster)
        if reviewer is None:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "unknown_cluster",
                f"no token review configured for cluster {node.k8s_cluster!r}",
            )
        found = await self._reviewed(node.k8s_cluster, reviewer, token)
        if isinstance(found, Denied):
            # NOTE: a fresh exception per stream: the cached one must not carry (and keep
            # alive) the traceback of the stream that raised it last.
            raise Denied(found.code, found.reason, found.message)
        if not found.allows(node.app):
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                "wrong_app",
                f"{found.username} in cluster {found.cluster} may ask for app "
                f"{found.app!r}, not {node.app!r}",
            )
        return found

    async def _reviewed(self, cluster: str, reviewer: Reviewer, token: str) -> Identity | Denied:
        key = (cluster, hashlib.sha256(token.encode()).digest())
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > self._clock():
                self._cache.move_to_end(key)
                return cached[1]
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            # NOTE: a task of its own, shielded: a sidecar that goes away mid-review does not
            # cancel the review the other streams with the same token wait for.
            task = asyncio.create_task(self._review_into_cache(key, cluster, reviewer, token))
            self._inflight[key] = task
        return await asyncio.shield(task)

    async def _review_into_cache(
        self, key: tuple[str, bytes], cluster: str, reviewer: Reviewer, token: str
    ) -> Identity | Denied:
        try:
            outcome, ttl = await self._review(cluster, reviewer, token)
        finally:
            del self._inflight[key]
        if ttl > 0:
            self._cache[key] = (self._clock() + ttl, outcome)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return outcome

    async def _review(
        self, cluster: str, reviewer: Reviewer, token: str
    ) -> tuple[Identity | Denied, float]:
        try:
            review = await reviewer.review(token, [self.audience])
        except ReviewUnavailable as exc:
            REVIEWS.labels("unavailable").inc()
            # NOTE: not cached: the next stream asks again.
            return Denied(grpc.StatusCode.UNAVAILABLE, "review_unavailable", str(exc)), 0.0
        if not review.authenticated or self.audience not in review.audiences:
            REVIEWS.labels("rejected").inc()
            why = review.error or "not valid for audience " + repr(self.audience)
            return (
                Denied(grpc.StatusCode.UNAUTHENTICATED, "invalid_token", f"token rejected: {why}"),
                self._negative_ttl,
            )
        REVIEWS.labels("authenticated").inc()
        try:
            return identity_of(cluster, review), self._ttl
        except Denied as denied:
            return denied, self._ttl


class DenialLog:
    """Logs refused streams, at most ``per_second`` lines a second; the rest are counted and
    the next line says how many were left out (a flood of bad clients must not flood the
    log)."""

    def __init__(self, per_second: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._rate = per_second
        self._clock = clock
        self._tokens = per_second
        self._at = clock()
        self._suppressed = 0

    def denied(self, exc: Denied, node: resources.NodeInfo, peer: str) -> None:
        DENIED.labels(exc.reason).inc()
        now = self._clock()
        self._tokens = min(self._rate, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            self._suppressed += 1
            return
        self._tokens -= 1
        log.warning(
            f"sidecar refused: {exc.message}",
            extra={
                "reason": exc.reason,
                "node": node.id,
                "app": node.app,
                "k8s_cluster": node.k8s_cluster,
                "peer": peer,
                "suppressed": self._suppressed,
            },
        )
        self._suppressed = 0
