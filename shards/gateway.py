"""Ingress gateways: a ``Gateway`` and the Kubernetes Ingresses of its class → one Envoy's
listener and routes. A purely computational module: no I/O, results depend on arguments only.

.. code-block:: yaml

    kind: Gateway                  # navigator.avito.ru/v1
    metadata: {namespace: infra, name: public}
    spec: {ingressClass: public, port: 8080}

An Envoy whose node says app ``gateway:infra:public`` (``app_name``) gets:

* one Listener ``gateway/infra/public:8080`` on ``0.0.0.0:8080`` with an HTTP connection
  manager (edge settings: ``use_remote_address``, any ``:port`` of the Host header stripped)
  whose routes come over RDS as ``gateway/infra/public``. The port is part of the listener's
  name because Envoy refuses to change the address of a listener it has (a port change is
  a new listener, the old one removed);
* that RouteConfiguration: one virtual host per distinct Ingress host (``*`` for rules
  without host; ``*.example.com`` as Envoy's suffix wildcard, which, unlike Kubernetes',
  also matches several labels), each route to the Envoy cluster ``ns/name:port`` of the
  backend Service port (a named port is resolved through the service's port names);
* the clusters and endpoint assignments of those service ports (``gateway_snapshot``).

Matching, as Kubernetes specifies it: ``Exact`` routes first, then ``Prefix`` routes
longest first (ties by path), so the longest match wins and ``Exact`` wins ties. ``Prefix``
is element-wise (``/foo`` matches ``/foo`` and ``/foo/bar``, not ``/foobar``): Envoy's
``path_separated_prefix``; ``/`` is a plain prefix. A trailing ``/`` of a prefix is ignored,
as Kubernetes says. ``spec.defaultBackend`` receives what matches no rule: it is the last
route of every virtual host that has no ``/`` prefix route of its own, and the only route
of ``*`` when no rule is host-less.

Several clusters: Gateways and Ingresses are merged by namespace/name like every other
object. Equal specs are one object; on differing specs the first cluster by name wins and
each other cluster gets a ``GatewayConflict`` / ``IngressConflict`` warning.

Bad input is data (``translate.Diagnostic``), and only what is at fault is skipped:

* ``GatewayInvalidPort`` / ``GatewayInvalidClass`` (error): no listener for that Gateway;
* ``IngressMissingService`` / ``IngressMissingPort`` (error): that path is skipped;
* ``IngressUnsupportedBackend`` (error): a ``resource`` backend; that path is skipped;
* ``IngressConflict`` (warning): a host + path type + path claimed twice; the Ingress first
  by namespace/name (then rule order) keeps it. Also two default backends.

Not done here: TLS (``spec.tls``), canary splits on gateway routes (a gateway routes to a
canaried service's own cluster), IngressClass objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, message

from navigator import model, snapshot
from shards import policy

if TYPE_CHECKING:
    from shards import translate

ServiceKey = tuple[str, str]
"""(namespace, name) of a Service."""

_Obj = TypeVar("_Obj", model.Gateway, model.Ingress)

APP_PREFIX = "gateway:"

INVALID_PORT = "GatewayInvalidPort"
INVALID_CLASS = "GatewayInvalidClass"
GATEWAY_CONFLICT = "GatewayConflict"
MISSING_SERVICE = "IngressMissingService"
MISSING_PORT = "IngressMissingPort"
UNSUPPORTED_BACKEND = "IngressUnsupportedBackend"
INGRESS_CONFLICT = "IngressConflict"


def app_name(gw: model.Gateway) -> model.AppName:
    """The app of a gateway's Envoy (its ``node.cluster`` or ``metadata.app``).

    ``gateway:<namespace>:<name>``: one etcd key segment (no ``/``), unambiguous (``:`` is in
    no Kubernetes name) and distinct from the app of every sidecar that uses no ``:``.
    """
    return model.AppName(f"{APP_PREFIX}{gw.namespace}:{gw.name}")


def route_name(gw: model.Gateway) -> str:
    return f"gateway/{gw.namespace}/{gw.name}"


def listener_name(gw: model.Gateway) -> str:
    return f"{route_name(gw)}:{gw.port}"


def _diag(obj: str, reason: str, text: str, *, error: bool = True) -> translate.Diagnostic:
    # NOTE: imported here, as in shards.canary: shards.translate may import this module.
    from shards import translate

    severity = translate.Severity.ERROR if error else translate.Severity.WARNING
    return translate.Diagnostic(object=obj, reason=reason, message=text, severity=severity)


def _obj(kind: str, namespace: str, name: str, cluster: str = "") -> str:
    return f"{kind}/{namespace}/{name}" + (f"@{cluster}" if cluster else "")


# --- merging across clusters -----------------------------------------------------------


def merge_gateways(
    gateways: Iterable[model.Gateway],
) -> tuple[list[model.Gateway], list[translate.Diagnostic]]:
    """One Gateway per namespace/name (first cluster by name wins), sorted."""
    return _merge(gateways, "gateways", GATEWAY_CONFLICT, lambda g: (g.ingress_class, g.port))


def merge_ingresses(
    ingresses: Iterable[model.Ingress],
) -> tuple[list[model.Ingress], list[translate.Diagnostic]]:
    """One Ingress per namespace/name (first cluster by name wins), sorted."""
    return _merge(
        ingresses,
        "ingresses",
        INGRESS_CONFLICT,
        lambda i: (i.ingress_class, i.rules, i.default_backend),
    )


def _merge(
    objs: Iterable[_Obj], kind: str, reason: str, spec: Callable[[_Obj], object]
) -> tuple[list[_Obj], list[translate.Diagnostic]]:
    by_key: dict[ServiceKey, list[_Obj]] = {}
    for obj in objs:
        by_key.setdefault((obj.namespace, obj.name), []).append(obj)
    out: list[_Obj] = []
    diags: list[translate.Diagnostic] = []
    for (ns, name), found in sorted(by_key.items()):
        found.sort(key=lambda o: o.cluster)
        first = found[0]
        out.append(first)
        for other in found[1:]:
            if spec(other) != spec(first):
                diags.append(
                    _diag(
                        _obj(kind, ns, name, other.cluster),
                        reason,
                        f"spec differs from the one in {first.cluster}; using {first.cluster}'s",
                        error=False,
                    )
                )
    return out, diags


# --- the intermediate model ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Route:
    """One route of a virtual host, resolved to an Envoy cluster."""

    exact: bool
    path: str
    """Normalized: a prefix other than ``/`` has no trailing ``/``."""
    cluster: str
    """``ns/name:port`` of the backend service port."""
    source: str
    """``<namespace>/<name>`` of the Ingress it came from."""

    def sort_key(self) -> tuple[int, int, str]:
        return (0 if self.exact else 1, -len(self.path), self.path)


@dataclasses.dataclass(frozen=True, slots=True)
class VirtualHost:
    host: str
    """``*`` for every host."""
    routes: tuple[Route, ...]
    """In match order."""


@dataclasses.dataclass(frozen=True, slots=True)
class GatewayResources:
    """What one Gateway's Envoy needs besides its backends' clusters and endpoints."""

    gateway: model.Gateway
    app: model.AppName
    virtual_hosts: tuple[VirtualHost, ...]
    listeners: tuple[snapshot.Resource, ...]
    routes: tuple[snapshot.Resource, ...]
    clusters: tuple[str, ...]
    """Envoy cluster names (``ns/name:port``) the routes use, sorted."""
    services: tuple[ServiceKey, ...]
    """The backend services, sorted: their clusters and endpoints must reach the gateway."""


def _normalize(path: model.IngressPath) -> str:
    if path.path_type == model.PathType.PREFIX and path.path != "/":
        return path.path.rstrip("/") or "/"
    return path.path


def _backend(
    ing: model.Ingress,
    path: model.IngressPath,
    services: Mapping[ServiceKey, translate.MeshService],
) -> tuple[translate.MeshPort | None, translate.Diagnostic | None]:
    obj = _obj("ingresses", ing.namespace, ing.name)
    where = f"path {path.path} ({path.path_type.value})"
    if path.resource:
        text = f"{where}: resource backend {path.resource} is not routable by the mesh"
        return None, _diag(obj, UNSUPPORTED_BACKEND, text)
    svc = services.get((ing.namespace, path.service))
    if svc is None:
        text = f"{where}: service {ing.namespace}/{path.service} is not a routable mesh service"
        return None, _diag(obj, MISSING_SERVICE, text)
    for port in svc.ports:
        if (port.port if isinstance(path.port, int) else port.name) == path.port:
            return port, None
    text = f"{where}: service {ing.namespace}/{path.service} has no port {path.port!r}"
    return None, _diag(obj, MISSING_PORT, text)


def virtual_hosts(
    ingresses: Iterable[model.Ingress],
    services: Mapping[ServiceKey, translate.MeshService],
) -> tuple[tuple[VirtualHost, ...], dict[str, translate.MeshPort], list[translate.Diagnostic]]:
    """The virtual hosts of a set of (merged) Ingresses of one class, in a stable order.

    Returns them, the service ports they route to (by Envoy cluster name) and diagnostics.
    """
    diags: list[translate.Diagnostic] = []
    used: dict[str, translate.MeshPort] = {}
    hosts: dict[str, dict[tuple[bool, str], Route]] = {}
    default: Route | None = None
    for ing in sorted(ingresses, key=lambda i: (i.namespace, i.name)):
        source = f"{ing.namespace}/{ing.name}"
        for rule in ing.rules:
            host = rule.host or "*"
            routes = hosts.setdefault(host, {})
            for path in rule.paths:
                port, diag = _backend(ing, path, services)
                if port is None:
                    diags.append(diag)  # type: ignore[arg-type]
                    continue
                route = Route(
                    exact=path.path_type == model.PathType.EXACT,
                    path=_normalize(path),
                    cluster=port.envoy_name,
                    source=source,
                )
                claim = (route.exact, route.path)
                winner = routes.get(claim)
                if winner is not None:
                    diags.append(_conflict(ing, host, path, winner.source))
                    continue
                routes[claim] = route
                used[port.envoy_name] = port
        if ing.default_backend is not None:
            port, diag = _backend(ing, ing.default_backend, services)
            if port is None:
                diags.append(diag)  # type: ignore[arg-type]
            elif default is not None:
                diags.append(_conflict(ing, "", ing.default_backend, default.source))
            else:
                default = Route(exact=False, path="/", cluster=port.envoy_name, source=source)
                used[port.envoy_name] = port
    if default is not None:
        hosts.setdefault("*", {})
    out: list[VirtualHost] = []
    for host, routes in hosts.items():
        ordered = sorted(routes.values(), key=Route.sort_key)
        if default is not None and (False, "/") not in routes:
            ordered.append(default)
        if ordered:
            out.append(VirtualHost(host=host, routes=tuple(ordered)))
    out.sort(key=lambda v: (v.host == "*", v.host.startswith("*."), v.host))
    return tuple(out), used, diags


def _conflict(
    ing: model.Ingress, host: str, path: model.IngressPath, winner: str
) -> translate.Diagnostic:
    what = (
        "default backend" if not host else f"host {host} path {path.path} ({path.path_type.value})"
    )
    return _diag(
        _obj("ingresses", ing.namespace, ing.name),
        INGRESS_CONFLICT,
        f"{what} is already claimed by ingress {winner}; ignored here",
        error=False,
    )


# --- generators -------------------------------------------------------------------------


def _any(msg: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def listener(gw: model.Gateway) -> listener_pb2.Listener:
    """The gateway's one listener: HTTP on ``0.0.0.0:<spec.port>``, routes over RDS."""
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=f"gateway.{gw.namespace}.{gw.name}",
        rds=hcm_pb2.Rds(
            config_source=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource(),
                resource_api_version=config_source_pb2.ApiVersion.V3,
            ),
            route_config_name=route_name(gw),
        ),
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=_any(router_pb2.Router())
            )
        ],
        strip_any_host_port=True,
    )
    # NOTE: an edge proxy: the client's address is the peer's, not a header's.
    hcm.use_remote_address.value = True
    return listener_pb2.Listener(
        name=listener_name(gw),
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="0.0.0.0", port_value=gw.port)
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=_any(hcm),
                    )
                ]
            )
        ],
        traffic_direction=base_pb2.INBOUND,
    )


def _match(route: Route) -> route_components_pb2.RouteMatch:
    if route.exact:
        return route_components_pb2.RouteMatch(path=route.path)
    if route.path == "/":
        return route_components_pb2.RouteMatch(prefix="/")
    return route_components_pb2.RouteMatch(path_separated_prefix=route.path)


def route_configuration(
    gw: model.Gateway,
    vhosts: Sequence[VirtualHost],
    ports: Mapping[str, translate.MeshPort],
) -> route_pb2.RouteConfiguration:
    """The gateway's routes; each action carries its service's timeouts and retries."""
    return route_pb2.RouteConfiguration(
        name=route_name(gw),
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=vh.host,
                domains=[vh.host],
                routes=[
                    route_components_pb2.Route(
                        name=r.source,
                        match=_match(r),
                        route=policy.apply_route(
                            route_components_pb2.RouteAction(cluster=r.cluster),
                            ports[r.cluster].pol,
                        ),
                    )
                    for r in vh.routes
                ],
            )
            for vh in vhosts
        ],
    )


def _resource(name: str, msg: message.Message) -> snapshot.Resource:
    return snapshot.Resource(name=name, body=msg.SerializeToString(deterministic=True))


# --- one gateway, all gateways ----------------------------------------------------------


def gateway_resources(
    gw: model.Gateway,
    ingresses: Iterable[model.Ingress],
    services: Mapping[ServiceKey, translate.MeshService],
) -> tuple[GatewayResources | None, list[translate.Diagnostic]]:
    """The resources of one (merged) Gateway from the (merged) Ingresses of the mesh.

    Only Ingresses of the Gateway's class are read. None (and an error) for a Gateway that
    cannot have a listener.
    """
    obj = _obj("gateways", gw.namespace, gw.name)
    if not 1 <= gw.port <= 65535:
        return None, [_diag(obj, INVALID_PORT, f"port {gw.port} is not 1-65535")]
    if not gw.ingress_class:
        return None, [_diag(obj, INVALID_CLASS, "empty ingressClass")]
    mine = [i for i in ingresses if i.ingress_class == gw.ingress_class]
    vhosts, ports, diags = virtual_hosts(mine, services)
    routes = route_configuration(gw, vhosts, ports)
    return (
        GatewayResources(
            gateway=gw,
            app=app_name(gw),
            virtual_hosts=vhosts,
            listeners=(_resource(listener_name(gw), listener(gw)),),
            routes=(_resource(route_name(gw), routes),),
            clusters=tuple(sorted(ports)),
            services=tuple(sorted({(p.namespace, p.service) for p in ports.values()})),
        ),
        sorted(set(diags)),
    )


def resolve(
    gateways: Iterable[model.Gateway],
    ingresses: Iterable[model.Ingress],
    services: Mapping[ServiceKey, translate.MeshService],
) -> tuple[dict[model.AppName, GatewayResources], dict[str, list[translate.Diagnostic]]]:
    """Every Gateway of the mesh, by app name.

    Diagnostics are keyed like ``translate.Result.diagnostics``: a gateway's by its app
    name (what its Ingresses did wrong included), conflicts across clusters under ``""``.
    """
    merged_gws, diags_gw = merge_gateways(gateways)
    merged_ings, diags_ing = merge_ingresses(ingresses)
    diags: dict[str, list[translate.Diagnostic]] = {"": sorted(set(diags_gw + diags_ing))}
    out: dict[model.AppName, GatewayResources] = {}
    for gw in merged_gws:
        res, gw_diags = gateway_resources(gw, merged_ings, services)
        diags[app_name(gw)] = gw_diags
        if res is not None:
            out[res.app] = res
    return out, diags


def gateway_snapshot(
    res: GatewayResources,
    k8s_cluster: model.ClusterName,
    services: Iterable[translate.ServiceResources],
) -> snapshot.AppSnapshot:
    """The snapshot of a gateway's Envoys in ``k8s_cluster``: its listener and routes, and
    the clusters and endpoint assignments of the service ports it routes to (not the
    services' own listeners and routes: a gateway is no sidecar).

    ``services``: the ``ServiceResources`` of at least ``res.services``; others are ignored.
    """
    wanted = set(res.clusters)
    clusters = [c for svc in services for c in svc.clusters if c.name in wanted]
    return snapshot.AppSnapshot(
        app=res.app,
        cluster=k8s_cluster,
        resources={
            snapshot.CLUSTER: tuple(sorted(clusters, key=lambda r: r.name)),
            snapshot.LISTENER: res.listeners,
            snapshot.ROUTE: res.routes,
        },
        endpoints=tuple(sorted({c.name for c in clusters})),
    )
