"""The Envoy bootstrap of a Navigator sidecar (``navigator bootstrap``).

The bootstrap is the only static config a sidecar has: who it is (node id, app, Kubernetes
cluster, locality — what the xDS front-end uses to pick its snapshot and endpoint variant) and
where the control plane is (ADS over gRPC to the node-local balancer at ``HOST_IP``).
Everything else arrives over ADS.

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
) -> dict[str, Any]:
    """An Envoy v3 bootstrap (as a dict ready for JSON/YAML) for one sidecar.

    ``cluster`` is the sidecar's Kubernetes cluster; ``xds_host`` defaults to ``$HOST_IP``
    (the node-local balancer). ``delta`` selects incremental xDS over ADS instead of State of
    the World. ``reconnect_*``: the backoff of the ADS stream's reconnection (Envoy's default
    starts at 0.5 s); a stream reset by the balancer when a front-end dies reconnects at once.
    ``node_name`` (the pod's Kubernetes node) lets the front-end place a sidecar given no zone
    in its node's region and zone.
    """
    host = xds_host or os.environ.get(HOST_IP_ENV, "")
    if not host:
        raise BootstrapError(f"no xDS host given and ${HOST_IP_ENV} is not set")
    if not node_id or not app or not cluster:
        raise BootstrapError("node id, app and cluster are required")
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
                    {
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER,
                            "retry_policy": {
                                "retry_back_off": {
                                    "base_interval": _duration(reconnect_base),
                                    "max_interval": _duration(reconnect_max),
                                }
                            },
                        }
                    }
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
