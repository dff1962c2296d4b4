"""Per-service policy: annotation parsing, the Envoy fields it sets, and Envoy's own verdict."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any

import pytest
import static_envoy
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.type.v3 import http_pb2
from google.protobuf import any_pb2

from navigator import model
from shards import policy, translate

P = policy.PREFIX
OBJ = "services/shop/item@east"
S = datetime.timedelta(seconds=1)
MS = datetime.timedelta(milliseconds=1)
HC = policy.HealthCheck()
OD = policy.OutlierDetection()


def _parse(**annotations: str) -> tuple[policy.Policy, list[translate.Diagnostic]]:
    pairs = [(P + k.replace("_", "-"), v) for k, v in annotations.items()]
    return policy.parse(pairs, obj=OBJ)


# --- parsing: valid values ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        pytest.param("lb-policy", "round-robin", {}, id="lb-round-robin"),
        pytest.param(
            "lb-policy", "least-request", {"lb": policy.LbPolicy.LEAST_REQUEST}, id="lb-least"
        ),
        pytest.param("lb-policy", "ring-hash", {"lb": policy.LbPolicy.RING_HASH}, id="lb-ring"),
        pytest.param("lb-policy", "Maglev ", {"lb": policy.LbPolicy.MAGLEV}, id="lb-maglev-case"),
        pytest.param("lb-policy", "random", {"lb": policy.LbPolicy.RANDOM}, id="lb-random"),
        pytest.param("hash-header", "X-User-Id", {"hash_header": "x-user-id"}, id="hash-header"),
        pytest.param("hash-header", ":authority", {"hash_header": ":authority"}, id="hash-pseudo"),
        pytest.param(
            "hash-cookie", "sess", {"hash_cookie": policy.HashCookie("sess")}, id="cookie-no-ttl"
        ),
        pytest.param(
            "hash-cookie",
            "sess; ttl=1h",
            {"hash_cookie": policy.HashCookie("sess", datetime.timedelta(hours=1))},
            id="cookie-ttl",
        ),
        pytest.param(
            "hash-cookie",
            "sess;ttl=0s",
            {"hash_cookie": policy.HashCookie("sess", datetime.timedelta(0))},
            id="cookie-session",
        ),
        pytest.param(
            "health-check-path",
            "/healthz?full=1",
            {"health_check": dataclasses.replace(HC, http_path="/healthz?full=1")},
            id="hc-path",
        ),
        pytest.param(
            "health-check",
            "tcp",
            {"health_check": dataclasses.replace(HC, tcp=True)},
            id="hc-tcp",
        ),
        pytest.param(
            "health-check",
            "http",
            {"health_check": dataclasses.replace(HC, http_path="/")},
            id="hc-http-root",
        ),
        pytest.param(
            "health-check-interval",
            "10s",
            {"health_check": dataclasses.replace(HC, interval=10 * S)},
            id="hc-interval",
        ),
        pytest.param(
            "health-check-timeout",
            "250ms",
            {"health_check": dataclasses.replace(HC, timeout=250 * MS)},
            id="hc-timeout",
        ),
        pytest.param(
            "healthy-threshold",
            "1",
            {"health_check": dataclasses.replace(HC, healthy_threshold=1)},
            id="healthy-threshold",
        ),
        pytest.param(
            "unhealthy-threshold",
            "5",
            {"health_check": dataclasses.replace(HC, unhealthy_threshold=5)},
            id="unhealthy-threshold",
        ),
        pytest.param(
            "outlier-consecutive-5xx",
            "7",
            {"outlier": dataclasses.replace(OD, consecutive_5xx=7)},
            id="outlier-5xx",
        ),
        pytest.param(
            "outlier-interval",
            "1m30s",
            {"outlier": dataclasses.replace(OD, interval=90 * S)},
            id="outlier-interval",
        ),
        pytest.param(
            "outlier-base-ejection-time",
            "45s",
            {"outlier": dataclasses.replace(OD, base_ejection_time=45 * S)},
            id="outlier-ejection-time",
        ),
        pytest.param(
            "outlier-max-ejection-percent",
            "0",
            {"outlier": dataclasses.replace(OD, max_ejection_percent=0)},
            id="outlier-percent-0",
        ),
        pytest.param(
            "outlier-max-ejection-percent",
            "100",
            {"outlier": dataclasses.replace(OD, max_ejection_percent=100)},
            id="outlier-percent-100",
        ),
        pytest.param("connect-timeout", "1.5s", {"connect_timeout": 1500 * MS}, id="connect"),
        pytest.param("connect-timeout", "100us", None, id="connect-below-1ms"),
        pytest.param("request-timeout", "30s", {"request_timeout": 30 * S}, id="request"),
        pytest.param(
            "request-timeout", "0s", {"request_timeout": datetime.timedelta(0)}, id="request-off"
        ),
        pytest.param("retries", "3", {"retries": 3}, id="retries"),
        pytest.param("retries", "0", {"retries": 0}, id="retries-0"),
        pytest.param("retry-on", "5xx", {"retry_on": ("5xx",)}, id="retry-on-one"),
        pytest.param(
            "retry-on",
            "gateway-error, reset,connect-failure,reset,unavailable",
            {"retry_on": ("gateway-error", "reset", "connect-failure", "unavailable")},
            id="retry-on-list-dedup",
        ),
        pytest.param("per-try-timeout", "2s", {"per_try_timeout": 2 * S}, id="per-try"),
    ],
)
def test_valid_values(key: str, value: str, expected: dict[str, Any] | None) -> None:
    pol, diags = policy.parse([(P + key, value)], obj=OBJ)
    if expected is None:
        assert pol == policy.DEFAULT
        assert [d.reason for d in diags] == [policy.INVALID]
        return
    assert pol == dataclasses.replace(policy.DEFAULT, **expected)
    assert [d for d in diags if d.reason != policy.NOT_APPLICABLE] == []


# --- parsing: invalid values fall back to the default, one annotation at a time ------------


@pytest.mark.parametrize(
    ("key", "value", "expects"),
    [
        pytest.param("lb-policy", "LEAST_REQUEST", "one of round-robin", id="lb-envoy-spelling"),
        pytest.param("lb-policy", "", "one of", id="lb-empty"),
        pytest.param("hash-header", "x user", "HTTP header name", id="hash-header-space"),
        pytest.param("hash-cookie", "a=b", "cookie name", id="cookie-bad-name"),
        pytest.param("hash-cookie", "s;max-age=1", "cookie name", id="cookie-bad-attr"),
        pytest.param("hash-cookie", "s;ttl=1", "cookie ttl", id="cookie-ttl-no-unit"),
        pytest.param("hash-cookie", "s;ttl=500ms", "1s to", id="cookie-ttl-short"),
        pytest.param("health-check", "grpc", "one of http, tcp", id="hc-kind"),
        pytest.param("health-check-path", "healthz", "absolute HTTP path", id="hc-path-relative"),
        pytest.param("health-check-path", "/a b", "absolute HTTP path", id="hc-path-space"),
        pytest.param("health-check-interval", "5", "duration", id="hc-interval-no-unit"),
        pytest.param("health-check-interval", "10ms", "100ms to 3600s", id="hc-interval-short"),
        pytest.param("health-check-interval", "2h", "100ms to 3600s", id="hc-interval-long"),
        pytest.param("health-check-timeout", "-1s", "duration", id="hc-timeout-negative"),
        pytest.param("health-check-timeout", "0s", "1ms to 60s", id="hc-timeout-zero"),
        pytest.param("healthy-threshold", "0", "integer from 1 to 100", id="healthy-zero"),
        pytest.param("unhealthy-threshold", "3.0", "integer from 1 to 100", id="unhealthy-float"),
        pytest.param("outlier-consecutive-5xx", "-2", "integer from 1", id="outlier-5xx-neg"),
        pytest.param("outlier-interval", "10 s", "duration", id="outlier-interval-space"),
        pytest.param("outlier-base-ejection-time", "1d", "duration", id="outlier-days"),
        pytest.param("outlier-max-ejection-percent", "101", "0 to 100", id="outlier-pct-101"),
        pytest.param("outlier-max-ejection-percent", "50%", "0 to 100", id="outlier-pct-sign"),
        pytest.param("connect-timeout", "0", "1ms to 60s", id="connect-zero"),
        pytest.param("connect-timeout", "5m", "1ms to 60s", id="connect-long"),
        pytest.param("connect-timeout", "1.5", "duration", id="connect-seconds-float"),
        pytest.param("connect-timeout", "1ns", "whole microseconds", id="connect-ns"),
        pytest.param("request-timeout", "25h", "(or 0s)", id="request-long"),
        pytest.param("retries", "11", "integer from 0 to 10", id="retries-many"),
        pytest.param("retries", "three", "integer from 0 to 10", id="retries-word"),
        pytest.param("retry-on", "5xx,bogus", "unknown: 'bogus'", id="retry-on-unknown"),
        pytest.param("retry-on", "5xx,,reset", "unknown: ''", id="retry-on-empty-item"),
        pytest.param("retry-on", "503", "unknown: '503'", id="retry-on-status-code"),
        pytest.param("per-try-timeout", "0s", "1ms to 3600s", id="per-try-zero"),
    ],
)
def test_invalid_value_is_reported_and_falls_back(key: str, value: str, expects: str) -> None:
    other, other_value, served = (
        ("connect-timeout", "2s", {"connect_timeout": 2 * S})
        if key == "retries"
        else ("retries", "2", {"retries": 2})
    )
    pol, diags = policy.parse([(P + key, value), (P + other, other_value)], obj=OBJ)
    assert len(diags) == 1, diags
    diag = diags[0]
    assert (diag.object, diag.reason, diag.severity) == (
        OBJ,
        policy.INVALID,
        translate.Severity.ERROR,
    )
    assert P + key in diag.message
    assert repr(value) in diag.message
    assert expects in diag.message
    # Only that annotation falls back: the other one is still served.
    assert pol == dataclasses.replace(policy.DEFAULT, **served)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0", datetime.timedelta(0), id="bare-zero"),
        pytest.param("250ms", 250 * MS, id="ms"),
        pytest.param("1m30s", 90 * S, id="compound"),
        pytest.param("1h0m0.5s", datetime.timedelta(hours=1, milliseconds=500), id="h-m-s"),
        pytest.param(".5s", 500 * MS, id="leading-dot"),
        pytest.param("1500us", 1500 * datetime.timedelta(microseconds=1), id="us"),
        pytest.param("2µs", 2 * datetime.timedelta(microseconds=1), id="micro-sign"),
        pytest.param("3000ns", 3 * datetime.timedelta(microseconds=1), id="ns"),
    ],
)
def test_go_durations(text: str, expected: datetime.timedelta) -> None:
    assert policy.parse_duration(text) == expected


@pytest.mark.parametrize(
    ("annotations", "reasons", "fragment"),
    [
        pytest.param(
            {"helth-check-path": "/"},
            [policy.UNKNOWN],
            "did you mean navigator.avito.ru/health-check-path?",
            id="unknown-typo",
        ),
        pytest.param({"xyz": "1"}, [policy.UNKNOWN], "known: connect-timeout", id="unknown-far"),
        pytest.param(
            {"hash-header": "x-user"},
            [policy.NOT_APPLICABLE],
            "needs navigator.avito.ru/lb-policy ring-hash or maglev, not round-robin",
            id="hash-without-hash-lb",
        ),
        pytest.param(
            {"health-check-interval": "1s", "unhealthy-threshold": "2"},
            [policy.NOT_APPLICABLE],
            "no health check is enabled",
            id="hc-tuning-without-check",
        ),
        pytest.param(
            {"lb-policy": "bogus", "hash-header": "x"},
            [policy.NOT_APPLICABLE, policy.INVALID],
            "not round-robin",
            id="invalid-lb-then-hash-unused",
        ),
    ],
)
def test_diagnostics_make_mistakes_visible(
    annotations: dict[str, str], reasons: list[str], fragment: str
) -> None:
    _, diags = policy.parse([(P + k, v) for k, v in annotations.items()], obj=OBJ)
    assert sorted(d.reason for d in diags) == sorted(reasons)
    assert any(fragment in d.message for d in diags), diags
    assert all(
        d.severity == translate.Severity.WARNING for d in diags if d.reason != policy.INVALID
    )


def _port(number: int, protocol: model.Protocol) -> model.ServicePort:
    return model.ServicePort(name=f"p{number}", port=number, protocol=protocol)


HTTP = _port(80, model.Protocol.HTTP)
TCP = _port(5432, model.Protocol.TCP)


@pytest.mark.parametrize(
    ("annotations", "ports", "fragments"),
    [
        pytest.param(
            {"lb-policy": "maglev", "hash-header": "x"},
            [HTTP, TCP],
            ["hash-header ignored on tcp port 5432: an L4 port hashes on the source IP"],
            id="hash-header-on-l4",
        ),
        pytest.param({"lb-policy": "maglev"}, [TCP], [], id="hash-lb-on-l4-is-fine"),
        pytest.param(
            {"health-check-path": "/h"},
            [HTTP, TCP],
            ["no health check on tcp port 5432"],
            id="http-check-on-l4",
        ),
        pytest.param(
            {"health-check-path": "/h", "health-check": "tcp"}, [HTTP, TCP], [], id="both-checks"
        ),
        pytest.param(
            {"request-timeout": "1s", "retries": "2"},
            [TCP],
            ["request-timeout, navigator.avito.ru/retries ignored: the service has no HTTP port"],
            id="http-only-on-l4-service",
        ),
        pytest.param({"request-timeout": "1s"}, [HTTP, TCP], [], id="http-only-with-http-port"),
    ],
)
def test_port_applicability(
    annotations: dict[str, str], ports: list[model.ServicePort], fragments: list[str]
) -> None:
    _, diags = policy.parse([(P + k, v) for k, v in annotations.items()], obj=OBJ, ports=ports)
    assert all(d.reason == policy.NOT_APPLICABLE for d in diags)
    assert len(diags) == len(fragments), diags
    for fragment, diag in zip(fragments, diags, strict=True):
        assert fragment in diag.message


def test_parsing_is_deterministic_and_ignores_foreign_annotations() -> None:
    pairs = [
        (P + "retries", "x"),
        (P + "zzz", "1"),
        ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
        (P + "lb-policy", "nope"),
        (P + "aaa", "1"),
    ]
    first = policy.parse(pairs, obj=OBJ)
    assert first == policy.parse(list(reversed(pairs)), obj=OBJ)
    assert first[1] == sorted(first[1])
    assert len(first[1]) == 4


def _svc(cluster: str, **annotations: str) -> model.Service:
    return model.Service(
        cluster=model.ClusterName(cluster),
        namespace="shop",
        name="item",
        type=model.ServiceType.CLUSTER_IP,
        cluster_ip="10.0.0.1",
        ports=(HTTP,),
        annotations=tuple(sorted((P + k, v) for k, v in annotations.items())),
    )


def test_merge_first_cluster_by_name_decides_and_conflicts_are_reported() -> None:
    pol, diags = policy.merge(
        [_svc("west", retries="5"), _svc("east", retries="2"), _svc("north", retries="2")]
    )
    assert pol.retries == 2
    assert [(d.object, d.reason, d.severity) for d in diags] == [
        ("services/shop/item@west", policy.CONFLICT, translate.Severity.WARNING)
    ]
    assert "navigator.avito.ru/retries differ from cluster east" in diags[0].message
    assert policy.merge([]) == (policy.DEFAULT, [])


# --- Envoy fields ------------------------------------------------------------------------


def _mesh_port(protocol: model.Protocol, number: int = 8080) -> translate.MeshPort:
    return translate.MeshPort(
        namespace="shop",
        service="item",
        name="p",
        port=number,
        protocol=protocol,
        cluster_ips={model.ClusterName("east"): "10.0.0.1"},
        endpoints=(),
    )


FULL = {
    "lb-policy": "ring-hash",
    "hash-header": "x-user-id",
    "hash-cookie": "sess;ttl=1h",
    "health-check-path": "/healthz",
    "health-check": "tcp",
    "health-check-interval": "10s",
    "health-check-timeout": "2s",
    "healthy-threshold": "1",
    "unhealthy-threshold": "4",
    "outlier-consecutive-5xx": "7",
    "outlier-interval": "5s",
    "outlier-base-ejection-time": "30s",
    "outlier-max-ejection-percent": "50",
    "connect-timeout": "250ms",
    "request-timeout": "30s",
    "retries": "3",
    "retry-on": "5xx,reset,unavailable",
    "per-try-timeout": "10s",
}


def _full() -> policy.Policy:
    pol, diags = policy.parse([(P + k, v) for k, v in FULL.items()], obj=OBJ)
    assert diags == []
    return pol


def test_default_policy_keeps_the_generated_cluster_and_route() -> None:
    for protocol in model.Protocol:
        if protocol == model.Protocol.UDP:
            continue
        plain = translate.cluster(_mesh_port(protocol))
        applied = policy.apply_cluster(
            translate.cluster(_mesh_port(protocol)), policy.DEFAULT, protocol=protocol
        )
        assert applied == plain
    plain_route = translate.route(_mesh_port(model.Protocol.HTTP))
    action = plain_route.virtual_hosts[0].routes[0].route
    before = route_components_pb2.RouteAction()
    before.CopyFrom(action)
    assert policy.apply_route(action, policy.DEFAULT) == before
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix="s", cluster="c")
    assert policy.apply_tcp_proxy(proxy, policy.DEFAULT) == tcp_proxy_pb2.TcpProxy(
        stat_prefix="s", cluster="c"
    )


def test_apply_cluster_http() -> None:
    out = policy.apply_cluster(
        translate.cluster(_mesh_port(model.Protocol.HTTP)), _full(), protocol=model.Protocol.HTTP
    )
    assert out.lb_policy == cluster_pb2.Cluster.RING_HASH
    assert out.connect_timeout.ToMilliseconds() == 250
    [hc] = out.health_checks
    assert hc.WhichOneof("health_checker") == "http_health_check"
    assert hc.http_health_check.path == "/healthz"
    assert hc.http_health_check.codec_client_type == http_pb2.HTTP1
    assert (hc.interval.seconds, hc.timeout.seconds) == (10, 2)
    assert (hc.healthy_threshold.value, hc.unhealthy_threshold.value) == (1, 4)
    od = out.outlier_detection
    assert (od.consecutive_5xx.value, od.max_ejection_percent.value) == (7, 50)
    assert (od.interval.seconds, od.base_ejection_time.seconds) == (5, 30)


@pytest.mark.parametrize(
    ("protocol", "checker", "codec"),
    [
        pytest.param(model.Protocol.GRPC, "http_health_check", http_pb2.HTTP2, id="grpc-h2"),
        pytest.param(model.Protocol.HTTP2, "http_health_check", http_pb2.HTTP2, id="http2-h2"),
        pytest.param(model.Protocol.TCP, "tcp_health_check", None, id="tcp-connect"),
    ],
)
def test_apply_cluster_health_check_per_protocol(
    protocol: model.Protocol, checker: str, codec: int | None
) -> None:
    out = policy.apply_cluster(translate.cluster(_mesh_port(protocol)), _full(), protocol=protocol)
    [hc] = out.health_checks
    assert hc.WhichOneof("health_checker") == checker
    if codec is not None:
        assert hc.http_health_check.codec_client_type == codec


def test_only_an_http_check_leaves_l4_ports_unchecked() -> None:
    pol, _ = _parse(health_check_path="/h")
    tcp = policy.apply_cluster(
        translate.cluster(_mesh_port(model.Protocol.TCP)), pol, protocol=model.Protocol.TCP
    )
    assert list(tcp.health_checks) == []


def test_outlier_detection_with_one_field_keeps_envoy_defaults() -> None:
    pol, _ = _parse(outlier_consecutive_5xx="3")
    out = policy.apply_cluster(
        translate.cluster(_mesh_port(model.Protocol.HTTP)), pol, protocol=model.Protocol.HTTP
    )
    assert out.HasField("outlier_detection")
    assert out.outlier_detection.consecutive_5xx.value == 3
    assert not out.outlier_detection.HasField("interval")
    assert not out.outlier_detection.HasField("max_ejection_percent")


def test_apply_route() -> None:
    action = policy.apply_route(route_components_pb2.RouteAction(cluster="c"), _full())
    assert action.timeout.seconds == 30
    assert action.retry_policy.retry_on == "5xx,reset,unavailable"
    assert action.retry_policy.num_retries.value == 3
    assert action.retry_policy.per_try_timeout.seconds == 10
    header, cookie = action.hash_policy
    assert header.header.header_name == "x-user-id"
    assert (cookie.cookie.name, cookie.cookie.ttl.seconds) == ("sess", 3600)


@pytest.mark.parametrize(
    ("annotations", "retry_on", "num_retries", "per_try"),
    [
        pytest.param({"retries": "2"}, "connect-failure,refused-stream,unavailable,cancelled", 2,
                     0, id="retries-default-conditions"),
        pytest.param({"retry-on": "5xx"}, "5xx", 1, 0, id="retry-on-envoy-default-count"),
        pytest.param({"per-try-timeout": "3s"}, "connect-failure,refused-stream,unavailable,"
                     "cancelled", 1, 3, id="per-try-alone"),
        pytest.param({"retries": "0", "retry-on": "5xx"}, "5xx", 0, 0, id="retries-off"),
    ],
)  # fmt: skip
def test_retry_policy(
    annotations: dict[str, str], retry_on: str, num_retries: int, per_try: int
) -> None:
    pol, _ = policy.parse([(P + k, v) for k, v in annotations.items()], obj=OBJ)
    action = policy.apply_route(route_components_pb2.RouteAction(cluster="c"), pol)
    assert action.retry_policy.retry_on == retry_on
    assert action.retry_policy.num_retries.value == num_retries
    assert action.retry_policy.per_try_timeout.seconds == per_try
    assert not action.HasField("timeout")


def test_request_timeout_zero_disables_and_hash_needs_hash_lb() -> None:
    pol, _ = _parse(request_timeout="0s", hash_header="x-a")
    action = policy.apply_route(route_components_pb2.RouteAction(cluster="c"), pol)
    assert action.HasField("timeout")
    assert action.timeout.ToNanoseconds() == 0
    assert list(action.hash_policy) == []
    assert not action.HasField("retry_policy")


@pytest.mark.parametrize(
    ("lb", "hashed"),
    [
        pytest.param("ring-hash", True, id="ring-hash-source-ip"),
        pytest.param("maglev", True, id="maglev-source-ip"),
        pytest.param("least-request", False, id="least-request-no-hash"),
    ],
)
def test_apply_tcp_proxy(lb: str, hashed: bool) -> None:
    pol, _ = _parse(lb_policy=lb)
    proxy = policy.apply_tcp_proxy(tcp_proxy_pb2.TcpProxy(stat_prefix="s", cluster="c"), pol)
    assert [h.HasField("source_ip") for h in proxy.hash_policy] == ([True] if hashed else [])


def test_apply_is_idempotent() -> None:
    pol = _full()
    once = policy.apply_cluster(
        translate.cluster(_mesh_port(model.Protocol.HTTP)), pol, protocol=model.Protocol.HTTP
    )
    twice = cluster_pb2.Cluster()
    twice.CopyFrom(once)
    assert policy.apply_cluster(twice, pol, protocol=model.Protocol.HTTP) == once
    action = policy.apply_route(route_components_pb2.RouteAction(cluster="c"), pol)
    again = route_components_pb2.RouteAction()
    again.CopyFrom(action)
    assert policy.apply_route(again, pol) == action
    reset = policy.apply_cluster(twice, policy.DEFAULT, protocol=model.Protocol.HTTP)
    assert reset == translate.cluster(_mesh_port(model.Protocol.HTTP))


# --- Envoy's own validation --------------------------------------------------------------


def _any(msg: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def _static(cluster: cluster_pb2.Cluster) -> cluster_pb2.Cluster:
    """The generated EDS cluster made STATIC with one endpoint, so it validates alone."""
    cluster.ClearField("eds_cluster_config")
    cluster.type = cluster_pb2.Cluster.STATIC
    cluster.load_assignment.CopyFrom(static_envoy.assignment(cluster.name, "127.0.0.1", 9))
    return cluster


def _bootstrap(pol: policy.Policy) -> bootstrap_pb2.Bootstrap:
    """An HTTP, an HTTP/2 and a TCP port of one service, with routes and a tcp_proxy."""
    boot = bootstrap_pb2.Bootstrap()
    for number, protocol in [
        (8080, model.Protocol.HTTP),
        (8081, model.Protocol.GRPC),
        (5432, model.Protocol.TCP),
    ]:
        port = _mesh_port(protocol, number)
        boot.static_resources.clusters.append(
            _static(policy.apply_cluster(translate.cluster(port), pol, protocol=protocol))
        )
        listener = translate.listener(port, "127.0.0.1", translate.Options())
        [filt] = listener.filter_chains[0].filters
        if protocol.is_http:
            routes = translate.route(port)
            policy.apply_route(routes.virtual_hosts[0].routes[0].route, pol)
            hcm = hcm_pb2.HttpConnectionManager(
                stat_prefix=port.envoy_name,
                route_config=route_pb2.RouteConfiguration(
                    name=routes.name, virtual_hosts=routes.virtual_hosts
                ),
                http_filters=[
                    hcm_pb2.HttpFilter(
                        name="envoy.filters.http.router", typed_config=_any(router_pb2.Router())
                    )
                ],
            )
            filt.typed_config.CopyFrom(_any(hcm))
        else:
            proxy = tcp_proxy_pb2.TcpProxy()
            filt.typed_config.Unpack(proxy)
            filt.typed_config.CopyFrom(_any(policy.apply_tcp_proxy(proxy, pol)))
        boot.static_resources.listeners.append(
            listener_pb2.Listener(
                name=listener.name,
                address=listener.address,
                filter_chains=[listener_components_pb2.FilterChain(filters=[filt])],
            )
        )
    return boot


@pytest.mark.parametrize(
    "annotations",
    [
        pytest.param(FULL, id="every-annotation"),
        pytest.param({}, id="defaults"),
        pytest.param(
            {"lb-policy": "maglev", "hash-cookie": "s;ttl=0s", "request-timeout": "0s"},
            id="maglev-session-cookie-no-timeout",
        ),
        pytest.param({"lb-policy": "least-request", "health-check": "http"}, id="least-request"),
        pytest.param({"lb-policy": "random", "outlier-max-ejection-percent": "0"}, id="random"),
    ],
)
def test_envoy_accepts_the_result(annotations: dict[str, str], tmp_path: Path) -> None:
    pol, diags = policy.parse([(P + k, v) for k, v in annotations.items()], obj=OBJ)
    assert [d for d in diags if d.reason == policy.INVALID] == []
    out = static_envoy.validate(_bootstrap(pol), tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_envoy_rejects_what_parse_refuses(tmp_path: Path) -> None:
    """Negative control: the validation run does catch a bad policy (bypassing ``parse``)."""
    bad = dataclasses.replace(
        _full(), outlier=dataclasses.replace(_full().outlier, max_ejection_percent=101)
    )
    out = static_envoy.validate(_bootstrap(bad), tmp_path)
    assert out.returncode != 0
    assert "max_ejection_percent" in out.stdout + out.stderr
