"""The node-local balancer's Envoy config (``navigator balancer-config``).

Every node runs one balancer (a DaemonSet with hostNetwork): an Envoy with this static config,
listening on the node's address, which sidecars find as ``HOST_IP`` (downward API
``status.hostIP``). It forwards each sidecar's xDS stream (gRPC over HTTP/2) to one healthy
front-end, and the control plane's readiness (the sidecar's ``/healthz/control-plane``) to one
as well. A front-end's death is then invisible to the sidecars' traffic: the balancer resets
the streams it carried, each sidecar reconnects at once to the same local address and is
routed to a healthy front-end, which resumes it without re-sending what it already has.

How a bad front-end is left out, fastest first:

- its connection closes (process killed): the streams on it are reset immediately;
- HTTP/2 keepalive pings on every upstream connection (``keepalive_interval`` /
  ``keepalive_timeout``): a black-holed front-end (packets dropped, nothing closed) is noticed
  within interval + timeout and its connection closed, resetting its streams;
- active health checks of each front-end's ``/readyz`` (``health_interval``,
  ``unhealthy_threshold``): a front-end that is up but not ready (e.g. lost etcd) gets no new
  streams; its existing ones keep their config;
- outlier detection: one local-origin failure (a connect failure or timeout, a connection
  closed by the keepalive) ejects the front-end for 5 s, so the streams it dropped do not
  reconnect to it before the health checks catch up.

TLS (``Tls``): sidecars reach the balancer over TLS (its certificate names the node's
address), which lets them send their service-account token (``navigator bootstrap
--token-file``); the balancer reaches the front-ends with mutual TLS: it checks that a
front-end's certificate is signed by the mesh CA and names ``frontend_san``, and presents its
own, which the front-end requires (``navigator xds --tls-client-ca``). The token travels
unchanged in the stream's headers. The /readyz checks stay plain HTTP on the front-ends' HTTP
port (a transport-socket match just for them).

New streams go to the front-end with the fewest active streams (LEAST_REQUEST). The panic
threshold is 1%: only when no front-end is healthy does the balancer try them all (a
front-end that lost etcd still serves the last snapshots it loaded, better than nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import sys
from collections.abc import Sequence
from typing import Any

from navigator import bootstrap, envoy_extras

XDS_CLUSTER = "navigator-frontends"
HEALTH_CLUSTER = "navigator-frontends-http"
DEFAULT_LISTEN_PORT = bootstrap.DEFAULT_XDS_PORT
DEFAULT_HEALTH_PORT = bootstrap.DEFAULT_CONTROL_PLANE_HEALTH_PORT
DEFAULT_FRONTEND_GRPC = 18010
DEFAULT_FRONTEND_HTTP = 9110

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_PREVIOUS_HOSTS = {
    "name": "envoy.retry_host_predicates.previous_hosts",
    "typed_config": {
        "@type": "type.googleapis.com/"
        "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
    },
}


class ConfigError(ValueError):
    """The config cannot be rendered from the given inputs."""


@dataclasses.dataclass(frozen=True, slots=True)
class Frontend:
    host: str
    grpc_port: int = DEFAULT_FRONTEND_GRPC
    http_port: int = DEFAULT_FRONTEND_HTTP

    @classmethod
    def parse(cls, value: str) -> Frontend:
        """``HOST[:GRPC_PORT[:HTTP_PORT]]`` (IPv6 in brackets)."""
        host, rest = value, ""
        if value.startswith("["):
            host, _, rest = value[1:].partition("]")
            rest = rest.removeprefix(":")
        elif ":" in value:
            host, _, rest = value.partition(":")
        ports = [p for p in rest.split(":") if p] if rest else []
        if not host or len(ports) > 2 or not all(p.isdigit() and 0 < int(p) < 65536 for p in ports):
            raise ConfigError(f"expected HOST[:GRPC_PORT[:HTTP_PORT]], got {value!r}")
        grpc_port = int(ports[0]) if ports else DEFAULT_FRONTEND_GRPC
        http_port = int(ports[1]) if len(ports) > 1 else DEFAULT_FRONTEND_HTTP
        return cls(host, grpc_port, http_port)


DEFAULT_FRONTEND_SAN = "navigator-xds"
"""The DNS name every front-end certificate carries (the balancer checks it)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Tls:
    """The balancer's TLS files (PEM); empty strings: that side stays plaintext."""

    cert: str = ""
    """Served to sidecars (names the node's address), with ``key``."""
    key: str = ""
    frontend_ca: str = ""
    """Front-ends' certificates must be signed by it (and name ``frontend_san``)."""
    client_cert: str = ""
    """Presented to the front-ends, with ``client_key``."""
    client_key: str = ""
    frontend_san: str = DEFAULT_FRONTEND_SAN

    def check(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ConfigError("--tls-cert and --tls-key go together")
        if bool(self.client_cert) != bool(self.client_key):
            raise ConfigError("--client-cert and --client-key go together")
        if self.client_cert and not self.frontend_ca:
            raise ConfigError("--client-cert needs --frontend-ca")


_TLS_SOCKET = "envoy.transport_sockets.tls"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
_HEALTH_MATCH = {"navigator-health": "plain"}


def _certificate(cert: str, key: str) -> dict[str, Any]:
    return {"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}


def _downstream_tls(tls: Tls) -> dict[str, Any]:
    return {
        "name": _TLS_SOCKET,
        "typed_config": {
            "@type": _TLS + "DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [_certificate(tls.cert, tls.key)],
                "alpn_protocols": ["h2"],
            },
        },
    }


def _upstream_tls(tls: Tls) -> dict[str, Any]:
    common: dict[str, Any] = {
        "validation_context": {
            "trusted_ca": {"filename": tls.frontend_ca},
            "match_typed_subject_alt_names": [
                {"san_type": "DNS", "matcher": {"exact": tls.frontend_san}}
            ],
        },
        "alpn_protocols": ["h2"],
    }
    if tls.client_cert:
        common["tls_certificates"] = [_certificate(tls.client_cert, tls.client_key)]
    return {
        "name": _TLS_SOCKET,
        "typed_config": {
            "@type": _TLS + "UpstreamTlsContext",
            "common_tls_context": common,
            "sni": tls.frontend_san,
        },
    }


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _seconds(value: float) -> str:
    return f"{value:g}s"


def render(
    frontends: Sequence[Frontend],
    *,
    listen: str,
    listen_port: int = DEFAULT_LISTEN_PORT,
    health_port: int = DEFAULT_HEALTH_PORT,
    admin_address: str = "127.0.0.1",
    admin_port: int = 19900,
    keepalive_interval: float = 1.0,
    keepalive_timeout: float = 1.0,
    health_interval: float = 1.0,
    health_timeout: float = 1.0,
    unhealthy_threshold: int = 2,
    tls: Tls | None = None,
) -> dict[str, Any]:
    """The balancer's Envoy bootstrap (a dict ready for JSON/YAML)."""
    tls = tls or Tls()
    tls.check()
    if not frontends:
        raise ConfigError("at least one front-end is required")
    if not listen:
        raise ConfigError(f"no listen address given and ${bootstrap.HOST_IP_ENV} is not set")
    if keepalive_interval <= 0 or keepalive_timeout <= 0 or health_interval <= 0:
        raise ConfigError("keepalive and health-check intervals must be positive")
    discovery = "STATIC" if all(_is_ip(f.host) for f in frontends) else "STRICT_DNS"
    health_check = {
        "timeout": _seconds(health_timeout),
        "interval": _seconds(health_interval),
        # NOTE: the default no_traffic_interval is 60 s: a standby front-end would be
        # checked once a minute; check every front-end at the same pace.
        "no_traffic_interval": _seconds(health_interval),
        "unhealthy_threshold": unhealthy_threshold,
        "healthy_threshold": 1,
        "http_health_check": {"path": "/readyz", "codec_client_type": "HTTP1"},
    }
    if tls.frontend_ca:
        health_check["transport_socket_match_criteria"] = _HEALTH_MATCH

    def endpoints(port_of: str) -> list[dict[str, Any]]:
        return [
            {
                "endpoint": {
                    "address": {
                        "socket_address": {"address": f.host, "port_value": getattr(f, port_of)}
                    },
                    "health_check_config": {"port_value": f.http_port},
                }
            }
            for f in frontends
        ]

    def cluster(name: str, port_of: str, http2: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": name,
            "type": discovery,
            "connect_timeout": "1s",
            "lb_policy": "LEAST_REQUEST",
            "common_lb_config": {"healthy_panic_threshold": {"value": 1.0}},
            "health_checks": [health_check],
            "outlier_detection": {
                "consecutive_5xx": 5,
                "consecutive_gateway_failure": 3,
                "split_external_local_origin_errors": True,
                "consecutive_local_origin_failure": 1,
                "interval": "1s",
                "base_ejection_time": "5s",
                "max_ejection_percent": 100,
            },
            # NOTE: every sidecar of the node holds one long-lived stream here; Envoy's
            # default limit of 1,024 concurrent requests per cluster would refuse the rest.
            "circuit_breakers": {
                "thresholds": [{"max_requests": 1_000_000, "max_pending_requests": 1_000_000}]
            },
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": endpoints(port_of)}],
            },
        }
        if http2 and tls.frontend_ca:
            out["transport_socket"] = _upstream_tls(tls)
            # NOTE: /readyz is plain HTTP on the front-end's HTTP port: the health checks
            # select this socket by their match criteria; the streams get the TLS one.
            out["transport_socket_matches"] = [
                {
                    "name": "health-plain",
                    "match": _HEALTH_MATCH,
                    "transport_socket": {
                        "name": "envoy.transport_sockets.raw_buffer",
                        "typed_config": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
                        },
                    },
                }
            ]
        if http2:
            out["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": _HTTP_OPTIONS,
                    "explicit_http_config": {
                        "http2_protocol_options": {
                            "connection_keepalive": {
                                "interval": _seconds(keepalive_interval),
                                "timeout": _seconds(keepalive_timeout),
                            }
                        }
                    },
                }
            }
        return out

    def listener(name: str, port: int, cluster_name: str, http2: bool) -> dict[str, Any]:
        hcm: dict[str, Any] = {
            "@type": _HCM + "HttpConnectionManager",
            "stat_prefix": name,
            "codec_type": "HTTP2" if http2 else "AUTO",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": name,
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                # NOTE: xDS streams live for hours: no route timeout. A
                                # stream refused by a front-end that just died is tried on
                                # another before the sidecar sees an error.
                                "route": {
                                    "cluster": cluster_name,
                                    "timeout": "0s",
                                    "retry_policy": {
                                        "retry_on": "connect-failure,refused-stream,reset",
                                        "num_retries": 2,
                                        "retry_host_predicate": [_PREVIOUS_HOSTS],
                                        "host_selection_retry_max_attempts": 3,
                                    },
                                },
                            }
                        ],
                    }
                ]
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}
            ],
        }
        if http2:
            # NOTE: the default stream idle timeout (5 min) would cut a quiet xDS stream.
            hcm["stream_idle_timeout"] = "0s"
            hcm["http2_protocol_options"] = {
                "connection_keepalive": {"interval": "10s", "timeout": "5s"}
            }
        chain: dict[str, Any] = {
            "filters": [
                {
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm,
                }
            ]
        }
        if http2 and tls.cert:
            chain["transport_socket"] = _downstream_tls(tls)
        return {
            "name": name,
            "address": {"socket_address": {"address": listen, "port_value": port}},
            "filter_chains": [chain],
        }

    return {
        "node": {"id": f"navigator-balancer-{listen}", "cluster": "navigator-balancer"},
        "static_resources": {
            "listeners": [
                listener("xds", listen_port, XDS_CLUSTER, http2=True),
                listener("control-plane-health", health_port, HEALTH_CLUSTER, http2=False),
            ],
            "clusters": [
                cluster(XDS_CLUSTER, "grpc_port", http2=True),
                cluster(HEALTH_CLUSTER, "http_port", http2=False),
            ],
        },
        "admin": {
            "address": {"socket_address": {"address": admin_address, "port_value": admin_port}}
        },
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="navigator balancer-config",
        description=(
            "Print the Envoy config of the node-local balancer: it listens on the node's "
            "address (HOST_IP) and balances sidecars' xDS streams over healthy front-ends."
        ),
    )
    parser.add_argument(
        "--frontend",
        action="append",
        default=[],
        metavar="HOST[:GRPC[:HTTP]]",
        help=f"a front-end (repeat; a DNS name resolving to all of them also works); ports "
        f"default to {DEFAULT_FRONTEND_GRPC} (xDS) and {DEFAULT_FRONTEND_HTTP} (/readyz)",
    )
    parser.add_argument(
        "--listen",
        default=None,
        help=f"address to listen on (default ${bootstrap.HOST_IP_ENV}, the node's address)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_LISTEN_PORT, help="xDS port")
    parser.add_argument(
        "--health-port",
        type=int,
        default=DEFAULT_HEALTH_PORT,
        help="port of the control plane's readiness for sidecars (default %(default)s)",
    )
    parser.add_argument("--admin-address", default="127.0.0.1")
    parser.add_argument("--admin-port", type=int, default=19900)
    parser.add_argument(
        "--keepalive-interval", type=float, default=1.0, help="HTTP/2 ping interval, s"
    )
    parser.add_argument(
        "--keepalive-timeout", type=float, default=1.0, help="HTTP/2 ping timeout, s"
    )
    parser.add_argument(
        "--health-interval", type=float, default=1.0, help="/readyz check interval, s"
    )
    parser.add_argument(
        "--stats", metavar="HOST:PORT", help="serve /metrics and /ready here (not the admin)"
    )
    tls = parser.add_argument_group("TLS (PEM files)")
    tls.add_argument("--tls-cert", default="", help="certificate served to sidecars")
    tls.add_argument("--tls-key", default="", help="its private key")
    tls.add_argument("--frontend-ca", default="", help="CA the front-ends' certificates have")
    tls.add_argument(
        "--frontend-san",
        default=DEFAULT_FRONTEND_SAN,
        help="DNS name the front-ends' certificates carry (default %(default)s)",
    )
    tls.add_argument("--client-cert", default="", help="certificate shown to the front-ends")
    tls.add_argument("--client-key", default="", help="its private key")
    parser.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        frontends = [Frontend.parse(v) for v in args.frontend]
        doc = render(
            frontends,
            listen=args.listen or os.environ.get(bootstrap.HOST_IP_ENV, ""),
            listen_port=args.port,
            health_port=args.health_port,
            admin_address=args.admin_address,
            admin_port=args.admin_port,
            keepalive_interval=args.keepalive_interval,
            keepalive_timeout=args.keepalive_timeout,
            health_interval=args.health_interval,
            tls=Tls(
                cert=args.tls_cert,
                key=args.tls_key,
                frontend_ca=args.frontend_ca,
                client_cert=args.client_cert,
                client_key=args.client_key,
                frontend_san=args.frontend_san,
            ),
        )
        if args.stats:
            envoy_extras.add_stats(doc, *envoy_extras.parse_host_port(args.stats))
    except (ConfigError, envoy_extras.ExtrasError) as exc:
        print(f"navigator balancer-config: {exc}", file=sys.stderr)
        return 2
    bootstrap.emit(doc, args.output)
    return 0
