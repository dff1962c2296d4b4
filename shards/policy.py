"""Per-service policy from ``navigator.avito.ru/*`` annotations on a Kubernetes Service.

Operators tune how the mesh talks to a service (load balancing, active and passive health
checks, timeouts, retries) with annotations, as Istio users do with a DestinationRule and a
VirtualService, but without another resource to keep in sync across clusters. This module is
the single place that knows the annotation names, their syntax and their defaults (documented
in ``docs/annotations.md``), so that translation only has to make two calls:

* ``parse`` turns a Service's annotations into a ``Policy`` plus diagnostics; an invalid value
  is reported and only that annotation falls back to its default.
* ``apply_cluster``, ``apply_route`` and ``apply_tcp_proxy`` set the Envoy fields of a port's
  resources from a ``Policy``.

Like ``shards.translate`` it is pure: no I/O, and its result depends only on its arguments.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import enum
import fractions
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from typing import Protocol as TypingProtocol

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.v3 import http_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from navigator import model

if TYPE_CHECKING:
    from shards import translate

PREFIX = "navigator.avito.ru/"

INVALID = "InvalidAnnotation"
UNKNOWN = "UnknownAnnotation"
NOT_APPLICABLE = "AnnotationNotApplicable"
CONFLICT = "AnnotationConflict"

_T = TypeVar("_T")
_Parser = Callable[[str], _T]


class LbPolicy(enum.StrEnum):
    ROUND_ROBIN = "round-robin"
    LEAST_REQUEST = "least-request"
    RING_HASH = "ring-hash"
    MAGLEV = "maglev"
    RANDOM = "random"

    @property
    def is_hash(self) -> bool:
        return self in (LbPolicy.RING_HASH, LbPolicy.MAGLEV)


_ENVOY_LB: Mapping[LbPolicy, cluster_pb2.Cluster.LbPolicy.ValueType] = {
    LbPolicy.ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    LbPolicy.LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
    LbPolicy.RING_HASH: cluster_pb2.Cluster.RING_HASH,
    LbPolicy.MAGLEV: cluster_pb2.Cluster.MAGLEV,
    LbPolicy.RANDOM: cluster_pb2.Cluster.RANDOM,
}


class HealthCheckKind(enum.StrEnum):
    HTTP = "http"
    TCP = "tcp"


RETRY_ON: frozenset[str] = frozenset(
    {
        # x-envoy-retry-on
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        # x-envoy-retry-grpc-on
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)
"""Envoy's retry conditions (``x-envoy-retry-on`` and ``x-envoy-retry-grpc-on``)."""

DEFAULT_RETRY_ON: tuple[str, ...] = (
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
)
"""Used when retries are configured without ``retry-on``: safe for non-idempotent requests."""


@dataclasses.dataclass(frozen=True, slots=True)
class HashCookie:
    name: str
    ttl: datetime.timedelta | None = None
    """None: hash an existing cookie only; set: Envoy generates it (0 = session cookie)."""


@dataclasses.dataclass(frozen=True, slots=True)
class HealthCheck:
    http_path: str = ""
    """Non-empty: an HTTP GET health check on HTTP ports."""
    tcp: bool = False
    """A TCP connect health check on the ports that get no HTTP check."""
    interval: datetime.timedelta = datetime.timedelta(seconds=5)
    timeout: datetime.timedelta = datetime.timedelta(seconds=1)
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3

    def kind_for(self, protocol: model.Protocol) -> HealthCheckKind | None:
        """The check a port of this protocol gets, if any."""
        if self.http_path and protocol.is_http:
            return HealthCheckKind.HTTP
        if self.tcp:
            return HealthCheckKind.TCP
        return None

    @property
    def enabled(self) -> bool:
        return bool(self.http_path) or self.tcp


@dataclasses.dataclass(frozen=True, slots=True)
class OutlierDetection:
    """None fields keep Envoy's defaults; any field set enables outlier detection."""

    consecutive_5xx: int | None = None
    interval: datetime.timedelta | None = None
    base_ejection_time: datetime.timedelta | None = None
    max_ejection_percent: int | None = None

    @property
    def enabled(self) -> bool:
        return any(
            v is not None
            for v in (
                self.consecutive_5xx,
                self.interval,
                self.base_ejection_time,
                self.max_ejection_percent,
            )
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """What the annotations of one Service ask for; ``Policy()`` is the mesh's default."""

    lb: LbPolicy = LbPolicy.ROUND_ROBIN
    hash_header: str = ""
    """Lower-cased header name; only used with a hash ``lb``."""
    hash_cookie: HashCookie | None = None
    health_check: HealthCheck = HealthCheck()
    outlier: OutlierDetection = OutlierDetection()
    connect_timeout: datetime.timedelta = datetime.timedelta(seconds=1)
    request_timeout: datetime.timedelta | None = None
    """None: Envoy's default (15s); zero disables the timeout (streams)."""
    retries: int | None = None
    retry_on: tuple[str, ...] = ()
    per_try_timeout: datetime.timedelta | None = None

    @property
    def has_retry_policy(self) -> bool:
        return self.retries is not None or bool(self.retry_on) or self.per_try_timeout is not None


DEFAULT = Policy()


class PortLike(TypingProtocol):
    """A ``model.ServicePort`` or a ``translate.MeshPort``."""

    @property
    def port(self) -> int: ...

    @property
    def protocol(self) -> model.Protocol: ...


def _diagnostic(obj: str, reason: str, message: str, *, error: bool) -> translate.Diagnostic:
    # NOTE: imported here: shards.translate imports this module and may use its names (such
    # as DEFAULT) while it is itself being imported.
    from shards import translate

    severity = translate.Severity.ERROR if error else translate.Severity.WARNING
    return translate.Diagnostic(object=obj, reason=reason, message=message, severity=severity)


# --- values ------------------------------------------------------------------------------


class _Invalid(ValueError):
    """The value does not parse; the message says what is expected."""


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_NANOS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_MS = datetime.timedelta(milliseconds=1)
_HOUR = datetime.timedelta(hours=1)


def parse_duration(text: str) -> datetime.timedelta:
    """A Go/Kubernetes duration (``250ms``, ``1.5s``, ``1m30s``; ``0`` alone); not negative.

    Raises ``OverflowError`` for one longer than a ``timedelta`` holds."""
    s = text.strip()
    if s == "0":
        return datetime.timedelta(0)
    if not s:
        raise _Invalid("a duration such as 250ms, 1s or 1m30s")
    pos, nanos = 0, fractions.Fraction(0)
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise _Invalid("a duration such as 250ms, 1s or 1m30s")
        try:
            nanos += fractions.Fraction(m.group(1)) * _NANOS[m.group(2)]
        except ValueError:
            # NOTE: int() refuses a number of more than 4300 digits.
            raise _Invalid("a duration such as 250ms, 1s or 1m30s") from None
        pos = m.end()
    if nanos.denominator != 1 or nanos % 1000:
        raise _Invalid("a duration in whole microseconds")
    return datetime.timedelta(microseconds=int(nanos) // 1000)


def _format(d: datetime.timedelta) -> str:
    micros = d // datetime.timedelta(microseconds=1)
    if micros % 1_000_000 == 0:
        return f"{micros // 1_000_000}s"
    if micros % 1000 == 0:
        return f"{micros // 1000}ms"
    return f"{micros}us"


def _duration(
    low: datetime.timedelta, high: datetime.timedelta, *, zero: bool = False
) -> _Parser[datetime.timedelta]:
    also = " (or 0s)" if zero else ""
    out_of_range = f"a duration from {_format(low)} to {_format(high)}{also}"

    def parse(text: str) -> datetime.timedelta:
        try:
            d = parse_duration(text)
        except OverflowError:
            # NOTE: longer than a timedelta holds (999999999 days): out of any range.
            raise _Invalid(out_of_range) from None
        if zero and d == datetime.timedelta(0):
            return d
        if not low <= d <= high:
            raise _Invalid(out_of_range)
        return d

    return parse


def _int(low: int, high: int) -> _Parser[int]:
    def parse(text: str) -> int:
        s = text.strip()
        # NOTE: int() refuses more than 4300 digits; no bound here has 19.
        digits = s.lstrip("0") or "0"
        if not re.fullmatch(r"[0-9]+", s) or len(digits) > 18 or not low <= int(digits) <= high:
            raise _Invalid(f"an integer from {low} to {high}")
        return int(digits)

    return parse


def _enum(cls: type[enum.StrEnum]) -> _Parser[str]:
    def parse(text: str) -> str:
        s = text.strip().lower()
        values = [str(v.value) for v in cls]
        if s not in values:
            raise _Invalid("one of " + ", ".join(values))
        return s

    return parse


_HEADER = re.compile(r":?[0-9A-Za-z!#$%&'*+\-.^_`|~]+")
_COOKIE = re.compile(r"[0-9A-Za-z!#$%&'*+\-.^_`|~]+")
_PATH = re.compile(r"/[\x21-\x7e]*")


def _header(text: str) -> str:
    s = text.strip()
    if not _HEADER.fullmatch(s):
        raise _Invalid("an HTTP header name such as x-user-id")
    return s.lower()


def _cookie(text: str) -> HashCookie:
    name, *attrs = (part.strip() for part in text.split(";"))
    expected = "a cookie name, optionally followed by ;ttl=<duration> (session;ttl=1h)"
    if not _COOKIE.fullmatch(name) or len(attrs) > 1:
        raise _Invalid(expected)
    if not attrs:
        return HashCookie(name=name)
    key, sep, value = attrs[0].partition("=")
    if key.strip() != "ttl" or not sep:
        raise _Invalid(expected)
    try:
        ttl = _duration(datetime.timedelta(seconds=1), datetime.timedelta(days=365), zero=True)(
            value
        )
    except _Invalid as exc:
        raise _Invalid(f"a cookie ttl of {exc}") from exc
    return HashCookie(name=name, ttl=ttl)


def _path(text: str) -> str:
    s = text.strip()
    if not _PATH.fullmatch(s) or len(s) > 1024:
        raise _Invalid("an absolute HTTP path such as /healthz (no spaces)")
    return s


def _retry_on(text: str) -> tuple[str, ...]:
    items = [part.strip().lower() for part in text.split(",")]
    unknown = sorted({i for i in items if i not in RETRY_ON})
    if unknown or not items:
        raise _Invalid(
            "a comma-separated list of Envoy retry conditions ("
            + ", ".join(sorted(RETRY_ON))
            + ")"
            + (f"; unknown: {', '.join(repr(u) for u in unknown)}" if unknown else "")
        )
    return tuple(dict.fromkeys(items))


# --- annotations -------------------------------------------------------------------------

_PARSERS: Mapping[str, _Parser[Any]] = {
    "lb-policy": _enum(LbPolicy),
    "hash-header": _header,
    "hash-cookie": _cookie,
    "health-check": _enum(HealthCheckKind),
    "health-check-path": _path,
    "health-check-interval": _duration(100 * _MS, _HOUR),
    "health-check-timeout": _duration(_MS, datetime.timedelta(minutes=1)),
    "healthy-threshold": _int(1, 100),
    "unhealthy-threshold": _int(1, 100),
    "outlier-consecutive-5xx": _int(1, 1000),
    "outlier-interval": _duration(100 * _MS, _HOUR),
    "outlier-base-ejection-time": _duration(_MS, _HOUR),
    "outlier-max-ejection-percent": _int(0, 100),
    "connect-timeout": _duration(_MS, datetime.timedelta(minutes=1)),
    "request-timeout": _duration(_MS, datetime.timedelta(hours=24), zero=True),
    "retries": _int(0, 10),
    "retry-on": _retry_on,
    "per-try-timeout": _duration(_MS, _HOUR),
}
ANNOTATIONS: tuple[str, ...] = tuple(sorted(PREFIX + name for name in _PARSERS))
"""Every annotation this module reads, with its prefix."""


def parse(
    annotations: Iterable[tuple[str, str]],
    *,
    obj: str,
    ports: Sequence[PortLike] = (),
) -> tuple[Policy, list[translate.Diagnostic]]:
    """The policy of one Service, and what was wrong with its annotations.

    ``annotations`` are (key, value) pairs (``model.Service.annotations``); keys outside
    ``navigator.avito.ru/`` are ignored. ``obj`` names the Service in diagnostics
    (``services/<ns>/<name>@<cluster>``). With ``ports``, annotations that have no effect on
    any of them are reported as warnings too. The diagnostics are sorted.
    """
    diags: list[translate.Diagnostic] = []
    values: dict[str, Any] = {}
    for key, raw in sorted(annotations):
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX) :]
        parser = _PARSERS.get(name)
        if parser is None:
            diags.append(
                _diagnostic(
                    obj, UNKNOWN, f"unknown annotation {key}; {_suggest(name)}", error=False
                )
            )
            continue
        try:
            values[name] = parser(raw)
        except _Invalid as exc:
            diags.append(
                # NOTE: an error: the setting (not the service) is discarded.
                _diagnostic(
                    obj,
                    INVALID,
                    f"annotation {key}: invalid value {raw!r}, expected {exc}; using the default",
                    error=True,
                )
            )
    pol = _build(values)
    diags.extend(_not_applicable(pol, values, obj=obj, ports=ports))
    return pol, sorted(diags)


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(_PARSERS), n=1)
    if close:
        return f"did you mean {PREFIX}{close[0]}?"
    return "known: " + ", ".join(sorted(_PARSERS))


def _build(values: Mapping[str, Any]) -> Policy:
    kind = values.get("health-check")
    path: str = values.get("health-check-path", "")
    if kind == HealthCheckKind.HTTP and not path:
        path = "/"
    base = HealthCheck()
    return Policy(
        lb=LbPolicy(values.get("lb-policy", LbPolicy.ROUND_ROBIN)),
        hash_header=values.get("hash-header", ""),
        hash_cookie=values.get("hash-cookie"),
        health_check=HealthCheck(
            http_path=path,
            tcp=kind == HealthCheckKind.TCP,
            interval=values.get("health-check-interval", base.interval),
            timeout=values.get("health-check-timeout", base.timeout),
            healthy_threshold=values.get("healthy-threshold", base.healthy_threshold),
            unhealthy_threshold=values.get("unhealthy-threshold", base.unhealthy_threshold),
        ),
        outlier=OutlierDetection(
            consecutive_5xx=values.get("outlier-consecutive-5xx"),
            interval=values.get("outlier-interval"),
            base_ejection_time=values.get("outlier-base-ejection-time"),
            max_ejection_percent=values.get("outlier-max-ejection-percent"),
        ),
        connect_timeout=values.get("connect-timeout", DEFAULT.connect_timeout),
        request_timeout=values.get("request-timeout"),
        retries=values.get("retries"),
        retry_on=values.get("retry-on", ()),
        per_try_timeout=values.get("per-try-timeout"),
    )


def _not_applicable(
    pol: Policy, values: Mapping[str, Any], *, obj: str, ports: Sequence[PortLike]
) -> Iterable[translate.Diagnostic]:
    def warn(message: str) -> translate.Diagnostic:
        return _diagnostic(obj, NOT_APPLICABLE, message, error=False)

    hashes = [PREFIX + n for n in ("hash-header", "hash-cookie") if n in values]
    if hashes and not pol.lb.is_hash:
        yield warn(
            f"{', '.join(hashes)} ignored: it needs {PREFIX}lb-policy ring-hash or maglev, "
            f"not {pol.lb.value}"
        )
    tuning = [
        PREFIX + n
        for n in (
            "health-check-interval",
            "health-check-timeout",
            "healthy-threshold",
            "unhealthy-threshold",
        )
        if n in values
    ]
    if tuning and not pol.health_check.enabled:
        yield warn(
            f"{', '.join(tuning)} ignored: no health check is enabled "
            f"(set {PREFIX}health-check-path or {PREFIX}health-check)"
        )
    for port in sorted(ports, key=lambda p: p.port):
        if port.protocol.is_http:
            continue
        if hashes and pol.lb.is_hash:
            yield warn(
                f"{', '.join(hashes)} ignored on {port.protocol.value} port {port.port}: "
                "an L4 port hashes on the source IP"
            )
        if pol.health_check.http_path and not pol.health_check.tcp:
            yield warn(
                f"no health check on {port.protocol.value} port {port.port}: an HTTP check "
                f"needs an HTTP port (set {PREFIX}health-check: tcp for a TCP connect check)"
            )
    if ports and not any(p.protocol.is_http for p in ports):
        http_only = [
            PREFIX + n
            for n in ("request-timeout", "retries", "retry-on", "per-try-timeout")
            if n in values
        ]
        if http_only:
            yield warn(f"{', '.join(http_only)} ignored: the service has no HTTP port")


def merge(
    services: Sequence[model.Service], *, ports: Sequence[PortLike] = ()
) -> tuple[Policy, list[translate.Diagnostic]]:
    """The policy of one logical service from its Services in every cluster.

    As for port protocols, the first cluster by name decides; a cluster whose annotations
    differ is reported (a warning) and its annotations are not validated on their own.
    """
    if not services:
        return DEFAULT, []
    ordered = sorted(services, key=lambda s: s.cluster)
    first = ordered[0]
    pol, diags = parse(
        first.annotations,
        obj=f"services/{first.namespace}/{first.name}@{first.cluster}",
        ports=ports,
    )
    mine = _ours(first.annotations)
    for svc in ordered[1:]:
        theirs = _ours(svc.annotations)
        if theirs == mine:
            continue
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        diags.append(
            _diagnostic(
                f"services/{svc.namespace}/{svc.name}@{svc.cluster}",
                CONFLICT,
                f"annotations {', '.join(differ)} differ from cluster {first.cluster}; "
                f"using those of {first.cluster}",
                error=False,
            )
        )
    return pol, sorted(diags)


def _ours(annotations: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k: v for k, v in annotations if k.startswith(PREFIX)}


# --- Envoy -------------------------------------------------------------------------------


def _pb_duration(d: datetime.timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(d)
    return out


def apply_cluster(
    cluster: cluster_pb2.Cluster, pol: Policy, *, protocol: model.Protocol
) -> cluster_pb2.Cluster:
    """Sets load balancing, connect timeout, health checks and outlier detection in place."""
    cluster.lb_policy = _ENVOY_LB[pol.lb]
    cluster.connect_timeout.CopyFrom(_pb_duration(pol.connect_timeout))
    hc = pol.health_check
    kind = hc.kind_for(protocol)
    del cluster.health_checks[:]
    if kind is not None:
        check = health_check_pb2.HealthCheck(
            timeout=_pb_duration(hc.timeout),
            interval=_pb_duration(hc.interval),
            # NOTE: Envoy checks a cluster that has carried no traffic yet only every 60 s by
            # default, so a fresh sidecar would notice a failing pod a minute late.
            no_traffic_interval=_pb_duration(hc.interval),
            healthy_threshold=wrappers_pb2.UInt32Value(value=hc.healthy_threshold),
            unhealthy_threshold=wrappers_pb2.UInt32Value(value=hc.unhealthy_threshold),
        )
        if kind == HealthCheckKind.HTTP:
            check.http_health_check.path = hc.http_path
            if protocol in (model.Protocol.HTTP2, model.Protocol.GRPC):
                check.http_health_check.codec_client_type = http_pb2.HTTP2
        else:
            check.tcp_health_check.SetInParent()
        cluster.health_checks.append(check)
    cluster.ClearField("outlier_detection")
    od = pol.outlier
    if od.enabled:
        out = cluster.outlier_detection
        out.SetInParent()
        if od.consecutive_5xx is not None:
            out.consecutive_5xx.value = od.consecutive_5xx
        if od.interval is not None:
            out.interval.CopyFrom(_pb_duration(od.interval))
        if od.base_ejection_time is not None:
            out.base_ejection_time.CopyFrom(_pb_duration(od.base_ejection_time))
        if od.max_ejection_percent is not None:
            out.max_ejection_percent.value = od.max_ejection_percent
    return cluster


def apply_route(
    action: route_components_pb2.RouteAction, pol: Policy
) -> route_components_pb2.RouteAction:
    """Sets the request timeout, the retry policy and the hash policy in place (HTTP ports)."""
    action.ClearField("timeout")
    if pol.request_timeout is not None:
        action.timeout.CopyFrom(_pb_duration(pol.request_timeout))
    action.ClearField("retry_policy")
    if pol.has_retry_policy:
        retry = action.retry_policy
        retry.retry_on = ",".join(pol.retry_on or DEFAULT_RETRY_ON)
        retry.num_retries.value = 1 if pol.retries is None else pol.retries
        if pol.per_try_timeout is not None:
            retry.per_try_timeout.CopyFrom(_pb_duration(pol.per_try_timeout))
    del action.hash_policy[:]
    if pol.lb.is_hash:
        Hash = route_components_pb2.RouteAction.HashPolicy
        if pol.hash_header:
            action.hash_policy.append(Hash(header=Hash.Header(header_name=pol.hash_header)))
        if pol.hash_cookie is not None:
            cookie = Hash.Cookie(name=pol.hash_cookie.name)
            if pol.hash_cookie.ttl is not None:
                cookie.ttl.CopyFrom(_pb_duration(pol.hash_cookie.ttl))
            action.hash_policy.append(Hash(cookie=cookie))
    return action


def apply_tcp_proxy(proxy: tcp_proxy_pb2.TcpProxy, pol: Policy) -> tcp_proxy_pb2.TcpProxy:
    """On an L4 port, a hash ``lb`` hashes on the client's source IP."""
    del proxy.hash_policy[:]
    if pol.lb.is_hash:
        proxy.hash_policy.add().source_ip.SetInParent()
    return proxy
