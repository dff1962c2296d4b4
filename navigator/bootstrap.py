"""The Envoy bootstrap of a Navigator sidecar (``navigator bootstrap``).

The bootstrap is the only static config a sidecar has: who it is (node id, app, Kubernetes
cluster, locality — what the xDS front-end uses to pick its snapshot and endpoint variant) and
where the control plane is (ADS over gRPC to the node-local balancer at ``HOST_IP``).
Everything else arrives over ADS.

Identity (``--xds-ca``, ``--token-file``): the sidecar reaches the balancer over TLS (checked
against the mesh CA) and sends its pod's projected service-account token on every xDS stream
as ``authorization: Bearer``, which the front-end checks (``navigator xds --authn token``).
Envoy's Google gRPC client does both: ``ssl_credentials`` for the channel and the
``file_based_metadata`` call credentials, which read the token file on each new stream, so a
token the kubelet rotated in place is the one sent on the next reconnect. gRPC sends call
credentials only over a secure channel: a token needs the CA.

NOTE: the ``navigator-xds`` cluster uses HTTP/2 keepalive pings (interval ~5 s, timeout
~3 s) so that a black-holed control plane is noticed within seconds and Envoy reconnects
(through the balancer, to a healthy front-end) instead of waiting for TCP to give up.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from typing import Any

import yaml

from navigator import envoy_extras

XDS_CLUSTER = "navigator-xds"
DEFAULT_XDS_PORT = 18000
HOST_IP_ENV = "HOST_IP"
"""The downward API's ``status.hostIP``: where the node-local balancer listens."""

_HTTP_PROTOCOL_OPTIONS = (
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)


class BootstrapError(ValueError):
    """The bootstrap cannot be rendered from the given inputs."""


CONTROL_PLANE_HEALTH_CLUSTER = "navigator-control-plane-health"
"""Must match ``shards.translate.CONTROL_PLANE_HEALTH_CLUSTER``."""
DEFAULT_CONTROL_PLANE_HEALTH_PORT = 9102
"""The default ``--http`` port of ``navigator xds`` (its /readyz)."""


def _ads_source() -> dict[str, Any]:
    return {"ads": {}, "resource_api_version": "V3"}


def render(
    *,
    node_id: str,
    app: str,
    cluster: str,
    region: str = "",
    zone: str,
    xds_host: str | None = None,
    xds_port: int = DEFAULT_XDS_PORT,
    admin_address: str = "127.0.0.1",
    admin_port: int = 19000,
    keepalive_interval: float = 5.0,
    keepalive_timeout: float = 3.0,
    control_plane_health_port: int = DEFAULT_CONTROL_PLANE_HEALTH_PORT,
    delta: bool = False,
    reconnect_base: float = 0.1,
    reconnect_max: float = 2.0,
    node_name: str = "",
    xds_ca: str = "",
    token_file: str = "",
) -> dict[str, Any]:
    """An Envoy v3 bootstrap (as a dict ready for JSON/YAML) for one sidecar.

    ``cluster`` is the sidecar's Kubernetes cluster; ``xds_host`` defaults to ``$HOST_IP``
    (the node-local balancer). ``delta`` selects incremental xDS over ADS instead of State of
    the World. ``reconnect_*``: the backoff of the ADS stream's reconnection (Envoy's default
    starts at 0.5 s); a stream reset by the balancer when a front-end dies reconnects at once.
    ``node_name`` (the pod's Kubernetes node) lets the front-end place a sidecar given no zone
    in its node's region and zone. ``xds_ca`` (a PEM file) makes the xDS channel TLS, checked
    against it; ``token_file`` (needs ``xds_ca``) is the token sent on every stream.
    """
    host = xds_host or os.environ.get(HOST_IP_ENV, "")
    if not host:
        raise BootstrapError(f"no xDS host given and ${HOST_IP_ENV} is not set")
    if not node_id or not app or not cluster:
        raise BootstrapError("node id, app and cluster are required")
    if token_file and not xds_ca:
        raise BootstrapError("a token needs --xds-ca: gRPC sends it only over TLS")
    try:
        ipaddress.ip_address(host)
        discovery = "STATIC"
    except ValueError:
        discovery = "STRICT_DNS"
    locality = {"region": region, "zone": zone} if region else {"zone": zone}
    return {
        "node": {
            "id": node_id,
            "cluster": app,
            # NOTE: "admin" lets `navigator proxy-diff` find the sidecar's admin from its
            # status record (a loopback address only answers in the pod: port-forward it).
            "metadata": {
                "app": app,
                "k8s_cluster": cluster,
                "admin": f"{admin_address}:{admin_port}",
            }
            | ({"node_name": node_name} if node_name else {}),
            "locality": locality,
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    _xds_service(
                        host,
                        xds_port,
                        xds_ca=xds_ca,
                        token_file=token_file,
                        keepalive=(keepalive_interval, keepalive_timeout),
                        reconnect=(reconnect_base, reconnect_max),
                    )
                ],
            },
            "cds_config": _ads_source(),
            "lds_config": _ads_source(),
        },
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": discovery,
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": _HTTP_PROTOCOL_OPTIONS,
                            "explicit_http_config": {
                                "http2_protocol_options": {
                                    "connection_keepalive": {
                                        "interval": _duration(keepalive_interval),
                                        "timeout": _duration(keepalive_timeout),
                                    }
                                }
                            },
                        }
                    },
                    "load_assignment": _assignment(XDS_CLUSTER, host, xds_port),
                },
                {
                    # NOTE: the control plane's /readyz, behind the same address as xDS: the
                    # sidecar's /healthz/control-plane route (from translation) leads here.
                    "name": CONTROL_PLANE_HEALTH_CLUSTER,
                    "type": discovery,
                    "connect_timeout": "1s",
                    "load_assignment": _assignment(
                        CONTROL_PLANE_HEALTH_CLUSTER, host, control_plane_health_port
                    ),
                },
            ]
        },
        "admin": {
            "address": {"socket_address": {"address": admin_address, "port_value": admin_port}}
        },
    }


_FILE_METADATA = "envoy.grpc_credentials.file_based_metadata"


def _xds_service(
    host: str,
    port: int,
    *,
    xds_ca: str,
    token_file: str,
    keepalive: tuple[float, float],
    reconnect: tuple[float, float],
) -> dict[str, Any]:
    """The ADS ``GrpcService``: Envoy's own client on the ``navigator-xds`` cluster, or, with
    TLS to the balancer, the Google gRPC client with the token as call credentials."""
    retry = {
        "retry_back_off": {
            "base_interval": _duration(reconnect[0]),
            "max_interval": _duration(reconnect[1]),
        }
    }
    if not xds_ca:
        return {"envoy_grpc": {"cluster_name": XDS_CLUSTER, "retry_policy": retry}}
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    google: dict[str, Any] = {
        "target_uri": target,
        "stat_prefix": "navigator_xds",
        "channel_credentials": {"ssl_credentials": {"root_certs": {"filename": xds_ca}}},
        # NOTE: the same pings as the envoy_grpc cluster: a black-holed control plane is
        # noticed in seconds.
        "channel_args": {
            "args": {
                "grpc.keepalive_time_ms": {"int_value": int(keepalive[0] * 1000)},
                "grpc.keepalive_timeout_ms": {"int_value": int(keepalive[1] * 1000)},
                "grpc.keepalive_permit_without_calls": {"int_value": 1},
                "grpc.initial_reconnect_backoff_ms": {"int_value": int(reconnect[0] * 1000)},
                "grpc.min_reconnect_backoff_ms": {"int_value": int(reconnect[0] * 1000)},
                "grpc.max_reconnect_backoff_ms": {"int_value": int(reconnect[1] * 1000)},
            }
        },
    }
    if token_file:
        google["credentials_factory_name"] = _FILE_METADATA
        google["call_credentials"] = [
            {
                "from_plugin": {
                    "name": _FILE_METADATA,
                    "typed_config": {
                        "@type": "type.googleapis.com/"
                        "envoy.config.grpc_credential.v3.FileBasedMetadataConfig",
                        "secret_data": {"filename": token_file},
                        "header_key": "authorization",
                        "header_prefix": "Bearer ",
                    },
                }
            }
        ]
    return {"google_grpc": google, "retry_policy": retry}


def _assignment(name: str, host: str, port: int) -> dict[str, Any]:
    address = {"socket_address": {"address": host, "port_value": port}}
    return {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
    }


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="navigator bootstrap", description="Print the Envoy bootstrap of a sidecar."
    )
    parser.add_argument("--app", required=True, help="the app name (Nexus appName)")
    parser.add_argument("--cluster", required=True, help="the sidecar's Kubernetes cluster")
    parser.add_argument(
        "--zone",
        default="",
        help="the sidecar's zone (default: its node's, from --node-name, as the control plane "
        "knows it)",
    )
    parser.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME", ""),
        help="the pod's Kubernetes node (default $NODE_NAME; the downward API's spec.nodeName)",
    )
    parser.add_argument("--region", default="", help="the sidecar's region")
    parser.add_argument(
        "--node-id",
        default=os.environ.get("POD_NAME", ""),
        help="unique sidecar id (default $POD_NAME, else <app>-<hostname>)",
    )
    parser.add_argument(
        "--xds",
        type=_host_port,
        default=None,
        help=f"the node-local balancer's HOST:PORT (default ${HOST_IP_ENV}:{DEFAULT_XDS_PORT})",
    )
    parser.add_argument(
        "--control-plane-health-port",
        type=int,
        default=DEFAULT_CONTROL_PLANE_HEALTH_PORT,
        help="port of the control plane's /readyz at the xDS host (default %(default)s)",
    )
    parser.add_argument(
        "--delta", action="store_true", help="incremental xDS (Delta) instead of State of the World"
    )
    parser.add_argument("--admin-address", default="127.0.0.1")
    parser.add_argument("--admin-port", type=int, default=19000)
    parser.add_argument(
        "--outbound-port",
        type=int,
        help="port of the virtual outbound listener (127.0.0.1) the pod's iptables redirect "
        "sends the ClusterIP ranges to; with --service-cidrs",
    )
    parser.add_argument(
        "--service-cidrs", default="", help="the redirected ClusterIP ranges, comma-separated"
    )
    parser.add_argument(
        "--stats", metavar="HOST:PORT", help="serve /metrics and /ready here (not the admin)"
    )
    parser.add_argument(
        "--xds-ca",
        default="",
        metavar="FILE",
        help="reach the balancer over TLS, checked against this CA (PEM)",
    )
    parser.add_argument(
        "--token-file",
        default="",
        metavar="FILE",
        help="the pod's projected service-account token, sent on every xDS stream (needs --xds-ca)",
    )
    parser.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    args = parser.parse_args(argv)
    xds_host, xds_port = args.xds or (None, DEFAULT_XDS_PORT)
    node_id = args.node_id or f"{args.app}-{os.uname().nodename}"
    try:
        doc = render(
            node_id=node_id,
            app=args.app,
            cluster=args.cluster,
            region=args.region,
            zone=args.zone,
            xds_host=xds_host,
            xds_port=xds_port,
            admin_address=args.admin_address,
            admin_port=args.admin_port,
            control_plane_health_port=args.control_plane_health_port,
            delta=args.delta,
            node_name=args.node_name,
            xds_ca=args.xds_ca,
            token_file=args.token_file,
        )
        if args.outbound_port is not None:
            if not 0 < args.outbound_port < 65536:
                raise BootstrapError(f"--outbound-port {args.outbound_port} is not 1-65535")
            cidrs = envoy_extras.parse_cidrs(args.service_cidrs)
            envoy_extras.add_outbound(doc, args.outbound_port, cidrs)
        elif args.service_cidrs:
            raise BootstrapError("--service-cidrs needs --outbound-port")
        if args.stats:
            envoy_extras.add_stats(doc, *envoy_extras.parse_host_port(args.stats))
    except (BootstrapError, envoy_extras.ExtrasError) as exc:
        print(f"navigator bootstrap: {exc}", file=sys.stderr)
        return 2
    emit(doc, args.output)
    return 0


def emit(doc: dict[str, Any], output: str) -> None:
    """Prints an Envoy config as ``json`` or ``yaml`` (what ``-o`` of the config commands takes)."""
    if output == "json":
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(doc, sort_keys=False))
