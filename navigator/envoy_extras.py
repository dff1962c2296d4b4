"""What an Envoy in a Kubernetes pod needs beside its xDS config: static listeners that
``navigator bootstrap`` and ``navigator balancer-config`` add on request.

``add_outbound`` (``navigator bootstrap --outbound-port PORT --service-cidrs CIDR,...``)
    the sidecar's *virtual outbound listener* on 127.0.0.1:PORT, where the pod's iptables
    redirect (``deploy/image/navigator-iptables``) sends every TCP connection to the mesh's
    ClusterIP ranges. Its ``original_dst`` listener filter restores the address the
    application connected to and Envoy hands the connection to the listener of that
    ClusterIP:port (the translator's listeners, which do not bind with ``navigator
    translator --no-bind-to-port``). A ClusterIP the app's Nexus does not list has no such
    listener: the connection is passed through to its original destination (Envoy's own
    connections are not redirected), so a missing Nexus entry degrades to plain Kubernetes
    instead of a refused connection. Anything else reaching the listener matches no filter
    chain and is closed.

``add_stats`` (``--stats HOST:PORT`` on both commands)
    a listener serving ``/metrics`` (Envoy's ``/stats/prometheus``) and ``/ready`` from the
    admin interface, so Prometheus and the kubelet reach them while the admin interface
    itself stays on 127.0.0.1 (it can drain and stop Envoy).

Both work on the JSON-like dict of an Envoy config and refuse a name or port already taken.
"""

from __future__ import annotations

import ipaddress
from typing import Any

OUTBOUND_LISTENER = "navigator-outbound"
PASSTHROUGH_CLUSTER = "navigator-passthrough"
STATS_LISTENER = "navigator-stats"
ADMIN_CLUSTER = "navigator-admin"

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
_TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_ORIGINAL_DST = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


class ExtrasError(ValueError):
    """The config cannot take what was asked; the message is one line."""


def _socket(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def parse_cidrs(value: str) -> list[ipaddress.IPv4Network]:
    out: list[ipaddress.IPv4Network] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            net = ipaddress.ip_network(item)
        except ValueError:
            raise ExtrasError(f"not a CIDR: {item!r}") from None
        if not isinstance(net, ipaddress.IPv4Network):
            raise ExtrasError(f"only IPv4 ClusterIP ranges are supported, got {item}")
        out.append(net)
    if not out:
        raise ExtrasError("no service CIDR given")
    return out


def parse_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ExtrasError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _port(listener: dict[str, Any]) -> int | None:
    port = listener.get("address", {}).get("socket_address", {}).get("port_value")
    return port if isinstance(port, int) else None


def _add(items: list[dict[str, Any]], item: dict[str, Any], what: str) -> None:
    if any(existing.get("name") == item["name"] for existing in items):
        raise ExtrasError(f"the config already has a {what} named {item['name']}")
    if what == "listener" and any(_port(existing) == _port(item) for existing in items):
        raise ExtrasError(f"the config already has a listener on port {_port(item)}")
    items.append(item)


def add_outbound(config: dict[str, Any], port: int, cidrs: list[ipaddress.IPv4Network]) -> None:
    static = config.setdefault("static_resources", {})
    tcp = {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": _TCP_PROXY,
            "stat_prefix": "navigator_passthrough",
            "cluster": PASSTHROUGH_CLUSTER,
        },
    }
    listener = {
        "name": OUTBOUND_LISTENER,
        # NOTE: REDIRECT sends locally generated packets to 127.0.0.1; nothing outside the
        # pod can reach this listener.
        "address": _socket("127.0.0.1", port),
        "use_original_dst": True,
        "traffic_direction": "OUTBOUND",
        "listener_filters": [
            {
                "name": "envoy.filters.listener.original_dst",
                "typed_config": {"@type": _ORIGINAL_DST},
            }
        ],
        "filter_chains": [
            {
                # NOTE: only the redirected ranges pass through: a connection made to this
                # listener's own address would otherwise loop back into it.
                "filter_chain_match": {
                    "prefix_ranges": [
                        {"address_prefix": str(n.network_address), "prefix_len": n.prefixlen}
                        for n in cidrs
                    ]
                },
                "filters": [tcp],
            }
        ],
    }
    _add(static.setdefault("listeners", []), listener, "listener")
    passthrough = {
        "name": PASSTHROUGH_CLUSTER,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "1s",
    }
    _add(static.setdefault("clusters", []), passthrough, "cluster")


def add_stats(config: dict[str, Any], host: str, port: int) -> None:
    try:
        admin = config["admin"]["address"]["socket_address"]
        admin_host, admin_port = str(admin["address"]), int(admin["port_value"])
    except (KeyError, TypeError, ValueError):
        raise ExtrasError("the config has no admin socket address") from None
    if admin_host in ("0.0.0.0", "::"):
        admin_host = "127.0.0.1"
    static = config.setdefault("static_resources", {})
    routes = [
        {
            "match": {"path": "/metrics"},
            "route": {"cluster": ADMIN_CLUSTER, "prefix_rewrite": "/stats/prometheus"},
        },
        {"match": {"path": "/ready"}, "route": {"cluster": ADMIN_CLUSTER}},
    ]
    hcm = {
        "@type": _HCM + "HttpConnectionManager",
        "stat_prefix": "navigator_stats",
        "codec_type": "AUTO",
        "route_config": {
            "name": STATS_LISTENER,
            "virtual_hosts": [{"name": STATS_LISTENER, "domains": ["*"], "routes": routes}],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    listener = {
        "name": STATS_LISTENER,
        "address": _socket(host, port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    _add(static.setdefault("listeners", []), listener, "listener")
    cluster = {
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _socket(admin_host, admin_port)}}]}
            ],
        },
    }
    _add(static.setdefault("clusters", []), cluster, "cluster")
