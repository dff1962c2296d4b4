"""Translation: normalized mesh state → Envoy resources. A purely computational module.

No I/O happens here: every function takes normalized objects (``navigator.model``) and returns
new values, so translation can be tested with tables and golden files and re-run by any
translator with the same result. The shard runner does all the reading and writing around it.

The shape follows the layers of a compiler:

1. ``mesh_service``: the Services and Endpoints (or EndpointSlices) of one namespace/name
   from every cluster become one logical ``MeshService`` (the intermediate model): per port,
   the ClusterIP in each cluster and the ready endpoints of every cluster, with their
   locality.
2. Small generators turn a ``MeshService`` port into one resource of each xDS type
   (``cluster``, ``load_assignment``, ``listener``, ``route``). Endpoint assignments come in
   variants: one per zone of the mesh (``mesh_zones``), with that zone's endpoints at
   priority 0, and ``_default`` (every endpoint at priority 0) for sidecars of unknown zone.
3. ``app_services`` resolves an app's Nexus objects into the services it may call, and
   ``app_snapshot`` assembles its resources for sidecars of one Kubernetes cluster.

Bad input is data: every step returns ``Diagnostic`` values next to its result and skips only
the object at fault.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import regex_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, message, wrappers_pb2

from navigator import keys, model, snapshot
from shards import canary, gateway, policy

HEALTH_PORT = 15021
HEALTH_LISTENER = "navigator-health"
CONTROL_PLANE_HEALTH_CLUSTER = "navigator-control-plane-health"
"""A static cluster of every sidecar's bootstrap (``navigator.bootstrap``): the control
plane's /readyz."""

OVERPROVISIONING_FACTOR = 140
"""Envoy's default, stated explicitly: the spill-over table of the design depends on it."""

CONNECT_TIMEOUT_S = 1


class Severity(enum.StrEnum):
    ERROR = "error"
    """The object was skipped."""
    WARNING = "warning"
    """The object was used, with a deterministic choice the operator should know about."""


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Diagnostic:
    """Something translation skipped or decided, and why; published for ``navigator state``."""

    object: str
    """``<kind>/<namespace>/<name>`` (and ``@<cluster>`` when one cluster is at fault)."""
    reason: str
    """A stable, machine-readable reason (``MissingService``, ``PortProtocolConflict``…)."""
    message: str
    severity: Severity = Severity.ERROR


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    bind_to_port: bool = True
    """True where the sidecar binds ClusterIP:port itself (the lab's pod network namespaces);
    False behind an iptables redirect to a virtual outbound listener (a real cluster)."""
    health_port: int = HEALTH_PORT
    """The sidecar's health listener (``/healthz``); 0: none."""
    tracing: model.Tracing | None = None
    """The mesh-wide tracing setting (from etcd), on every HTTP connection manager."""


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class LbEndpoint:
    cluster: model.ClusterName
    region: str
    zone: str
    ip: str
    port: int
    weight: int = model.DEFAULT_WEIGHT
    """Its Kubernetes cluster's weight (the operator's setting); drained clusters have none."""


@dataclasses.dataclass(frozen=True, slots=True)
class MeshPort:
    """One port of a logical service: what becomes one Envoy cluster, listener and route."""

    namespace: str
    service: str
    name: str
    port: int
    protocol: model.Protocol
    cluster_ips: Mapping[model.ClusterName, str]
    endpoints: tuple[LbEndpoint, ...]
    """Ready endpoints of every cluster, sorted."""
    pol: policy.Policy = policy.DEFAULT
    """Load balancing, health checks, timeouts and retries, from the Service's annotations."""

    @property
    def envoy_name(self) -> str:
        return envoy_name(self.namespace, self.service, self.port)


@dataclasses.dataclass(frozen=True, slots=True)
class MeshService:
    """The Services of one namespace/name in every cluster, as one logical service."""

    namespace: str
    name: str
    ports: tuple[MeshPort, ...]
    clusters: tuple[model.ClusterName, ...]
    """Clusters where the Service exists."""


def envoy_name(namespace: str, name: str, port: int) -> str:
    """Name of the Envoy cluster, listener and route of a service port: ``ns/name:port``."""
    return f"{namespace}/{name}:{port}"


# --- 1. the intermediate model ---------------------------------------------------------


def mesh_service(
    services: Sequence[model.Service],
    endpoints: Sequence[model.Endpoints],
    nodes: Mapping[tuple[model.ClusterName, str], model.Node],
    *,
    slices: Sequence[model.EndpointSlice] = (),
    weights: Mapping[model.ClusterName, int] | None = None,
) -> tuple[MeshService | None, list[Diagnostic]]:
    """Merges one namespace/name's Services and Endpoints from every cluster.

    ``services``, ``endpoints`` and ``slices`` (EndpointSlices labelled with that Service)
    hold the objects of that namespace/name (any order); ``nodes`` maps (cluster, node name)
    to Nodes, for endpoint localities. Returns None when no cluster has a Service that the
    mesh can route to.

    NOTE: per cluster, EndpointSlices win: a cluster that has any slice of the Service takes
    its endpoints from the union of its slices and ignores its Endpoints object (Kubernetes
    mirrors one into the other, and truncates Endpoints at 1000 addresses); a cluster with
    no slice takes them from its Endpoints.
    """
    diags: list[Diagnostic] = []
    if not services:
        return None, diags
    services = sorted(services, key=lambda s: s.cluster)
    ns, name = services[0].namespace, services[0].name
    routable = [s for s in services if s.type == model.ServiceType.CLUSTER_IP and s.cluster_ip]
    # NOTE: headless and ExternalName Services are resolved by DNS in the pod, not by the
    # sidecar's listeners; they are left to plain passthrough until the mesh models them.
    clashing = [s for s in routable if _port_name_clash(s)]
    for svc in clashing:
        # Endpoints are matched to Service ports by name: with two ports of one name, which
        # pod port serves which Service port is undefined. Only this cluster's Service is
        # skipped; the other clusters' pods keep being served.
        diags.append(
            Diagnostic(
                object=f"services/{ns}/{name}@{svc.cluster}",
                reason="PortNameClash",
                message=f"port name {_port_name_clash(svc)!r} is used by several ports",
            )
        )
    routable = [s for s in routable if s not in clashing]
    if not routable:
        return None, diags
    eps_by_cluster: dict[model.ClusterName, Sequence[model.Endpoint]] = {
        e.cluster: e.endpoints for e in endpoints
    }
    slices_by_cluster: dict[model.ClusterName, list[model.EndpointSlice]] = {}
    for sl in slices:
        slices_by_cluster.setdefault(sl.cluster, []).append(sl)
    for k8s, own_slices in slices_by_cluster.items():
        eps_by_cluster[k8s] = _union_of_slices(own_slices)

    # Ports are matched across clusters by number; the first cluster (by name) decides the
    # protocol when clusters disagree, and the conflict is reported.
    chosen: dict[int, model.ServicePort] = {}
    for svc in routable:
        for port in svc.ports:
            if port.protocol == model.Protocol.UDP:
                continue
            first = chosen.get(port.port)
            if first is None:
                chosen[port.port] = port
            elif first.protocol != port.protocol:
                diags.append(
                    Diagnostic(
                        object=f"services/{ns}/{name}@{svc.cluster}",
                        reason="PortProtocolConflict",
                        message=(
                            f"port {port.port} is {port.protocol.value} in {svc.cluster} but "
                            f"{first.protocol.value} elsewhere; using {first.protocol.value}"
                        ),
                        severity=Severity.WARNING,
                    )
                )

    pol, pol_diags = policy.merge(routable, ports=list(chosen.values()))
    diags.extend(pol_diags)
    ports: list[MeshPort] = []
    for number in sorted(chosen):
        sport = chosen[number]
        cluster_ips: dict[model.ClusterName, str] = {}
        lb: list[LbEndpoint] = []
        for svc in routable:
            own = next((p for p in svc.ports if p.port == number), None)
            if own is None:
                continue
            cluster_ips[svc.cluster] = svc.cluster_ip
            weight = (weights or {}).get(svc.cluster, model.DEFAULT_WEIGHT)
            if weight == 0:
                continue  # NOTE: a drained cluster keeps its listeners, not its endpoints.
            eps = eps_by_cluster.get(svc.cluster, ())
            lb.extend(_resolve(own, svc.cluster, eps, nodes, weight=weight))
        ports.append(
            MeshPort(
                namespace=ns,
                service=name,
                name=sport.name,
                port=number,
                protocol=sport.protocol,
                cluster_ips=cluster_ips,
                endpoints=tuple(sorted(set(lb))),
                pol=pol,
            )
        )
    return (
        MeshService(
            namespace=ns,
            name=name,
            ports=tuple(ports),
            clusters=tuple(s.cluster for s in routable),
        ),
        diags,
    )


def _union_of_slices(slices: Iterable[model.EndpointSlice]) -> tuple[model.Endpoint, ...]:
    """The endpoints of one cluster's slices of one Service, one per IP.

    An IP in several slices (briefly, while the controller moves it) is merged as the
    converter merges Endpoints subsets: ready only if ready in every slice, ports united, and
    node, zone and pod taken from the first slice (by name) that has them.
    """
    merged: dict[str, model.Endpoint] = {}
    for sl in sorted(slices, key=lambda s: s.name):
        for ep in sl.endpoints:
            seen = merged.get(ep.ip)
            if seen is None:
                merged[ep.ip] = ep
                continue
            merged[ep.ip] = model.Endpoint(
                ip=ep.ip,
                ready=seen.ready and ep.ready,
                ports=tuple(sorted(set(seen.ports) | set(ep.ports), key=_port_order)),
                node=seen.node or ep.node,
                zone=seen.zone or ep.zone,
                pod=seen.pod or ep.pod,
            )
    return tuple(merged.values())


def _port_order(port: model.EndpointPort) -> tuple[str, int, str]:
    return port.name, port.port, port.protocol


def _port_name_clash(svc: model.Service) -> str:
    """A port name used by two ports of ``svc`` (empty: none)."""
    seen: set[str] = set()
    for port in svc.ports:
        if port.name in seen:
            return port.name
        seen.add(port.name)
    return ""


def _resolve(
    sport: model.ServicePort,
    k8s: model.ClusterName,
    endpoints: Iterable[model.Endpoint],
    nodes: Mapping[tuple[model.ClusterName, str], model.Node],
    *,
    weight: int = model.DEFAULT_WEIGHT,
) -> Iterable[LbEndpoint]:
    """The ready endpoints of one cluster for one Service port.

    Kubernetes names an Endpoints (and EndpointSlice) port after its Service port and gives it
    the resolved target port number, so a named ``targetPort`` resolves per endpoint by looking
    up the port name.
    """
    for ep in endpoints:
        if not ep.ready:
            continue
        port = next((p.port for p in ep.ports if p.name == sport.name), None)
        if port is None and len(ep.ports) == 1 and not sport.name:
            port = ep.ports[0].port
        if port is None:
            continue
        node = nodes.get((k8s, ep.node)) if ep.node else None
        yield LbEndpoint(
            cluster=k8s,
            region=node.region if node else "",
            zone=ep.zone or (node.zone if node else ""),
            ip=ep.ip,
            port=port,
            weight=weight,
        )


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Zone:
    """A zone of the mesh, identified with its region (``""`` when no Node says it)."""

    region: str
    name: str


_ZONE_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
"""A Kubernetes label value: usable as the variant segment of an EDS key (no ``/``), and
never ``_default``."""


def zones_of(svc: MeshService) -> set[tuple[str, str]]:
    """The (region, zone) pairs of a service's endpoints that have a zone."""
    return {(ep.region, ep.zone) for port in svc.ports for ep in port.endpoints if ep.zone}


def mesh_zones(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[Zone, ...], list[Diagnostic]]:
    """The zones of the mesh, from the (region, zone) pairs of Nodes and endpoints.

    A zone is identified with its region: a pair without region (an endpoint whose zone came
    from its EndpointSlice, on a Node not known) joins the zone's region from elsewhere. A
    zone name that cannot be a key segment is reported and skipped; a zone claimed by two
    regions is reported and takes the first region by name.
    """
    regions: dict[str, set[str]] = {}
    for region, zone in pairs:
        if zone:
            regions.setdefault(zone, set()).add(region)
    zones: list[Zone] = []
    diags: list[Diagnostic] = []
    for zone, found in sorted(regions.items()):
        if not _ZONE_NAME.fullmatch(zone):
            diags.append(
                Diagnostic(
                    object=f"zones/{zone}",
                    reason="InvalidZoneName",
                    message=f"zone {zone!r} is not a label value; no endpoint variant for it",
                    severity=Severity.WARNING,
                )
            )
            continue
        named = sorted(found - {""})
        if len(named) > 1:
            diags.append(
                Diagnostic(
                    object=f"zones/{zone}",
                    reason="ZoneRegionConflict",
                    message=f"zone {zone} is in regions {', '.join(named)}; using {named[0]}",
                    severity=Severity.WARNING,
                )
            )
        zones.append(Zone(region=named[0] if named else "", name=zone))
    return tuple(zones), diags


# --- 2. generators: one resource of each type per service port -------------------------


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def _any(msg: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def cluster(port: MeshPort) -> cluster_pb2.Cluster:
    out = cluster_pb2.Cluster(
        name=port.envoy_name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads()),
        connect_timeout=duration_pb2.Duration(seconds=CONNECT_TIMEOUT_S),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
    )
    if port.protocol in (model.Protocol.HTTP2, model.Protocol.GRPC):
        opts = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
        out.typed_extension_protocol_options[
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ].CopyFrom(_any(opts))
    return policy.apply_cluster(out, port.pol, protocol=port.protocol)


def priority(ep: LbEndpoint, zone: Zone | None, region_of: Mapping[str, str]) -> int:
    """Priority of an endpoint for sidecars in ``zone`` (None: unknown zone), before
    renumbering: 0 = the same zone, 1 = another zone of the same region, 2 = elsewhere.

    An endpoint without region (on a Node not known) takes its zone's region from
    ``region_of`` (zone name → region).
    """
    if zone is None or ep.zone == zone.name:
        return 0
    if zone.region and (ep.region or region_of.get(ep.zone, "")) == zone.region:
        return 1
    return 2


def load_assignment(
    port: MeshPort, *, zone: Zone | None = None, region_of: Mapping[str, str] | None = None
) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints grouped by locality (region, zone, and the Kubernetes cluster as sub-zone).

    For sidecars in ``zone``, localities get priorities by distance (``priority``); empty
    priorities are dropped and the rest renumbered from 0, since Envoy requires contiguous
    priorities. With the overprovisioning factor, a priority that is less than 1/1.4 healthy
    spills its missing share over to the next one.
    """
    groups: dict[tuple[str, str, str], list[LbEndpoint]] = {}
    for ep in port.endpoints:
        groups.setdefault((ep.region, ep.zone, ep.cluster), []).append(ep)
    raw = {key: priority(eps[0], zone, region_of or {}) for key, eps in groups.items()}
    # NOTE: Envoy weighs an endpoint without a weight as 1: once any cluster has a weight of
    # its own, every endpoint of the assignment carries its weight explicitly.
    explicit = any(ep.weight != model.DEFAULT_WEIGHT for ep in port.endpoints)
    dense = {p: i for i, p in enumerate(sorted(set(raw.values())))}
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=port.envoy_name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                locality=base_pb2.Locality(region=region, zone=zone_name, sub_zone=k8s),
                lb_endpoints=[_lb_endpoint(ep, explicit) for ep in eps],
                # NOTE: a locality's share is the sum of its endpoints' weights (its endpoint
                # count when no cluster weight is set).
                load_balancing_weight=wrappers_pb2.UInt32Value(
                    value=max(1, round(sum(ep.weight for ep in eps) / model.DEFAULT_WEIGHT))
                ),
                priority=dense[raw[(region, zone_name, k8s)]],
            )
            for (region, zone_name, k8s), eps in sorted(
                groups.items(), key=lambda kv: (raw[kv[0]], kv[0])
            )
        ],
        policy=endpoint_pb2.ClusterLoadAssignment.Policy(
            overprovisioning_factor=wrappers_pb2.UInt32Value(value=OVERPROVISIONING_FACTOR)
        ),
    )


def _lb_endpoint(ep: LbEndpoint, explicit: bool) -> endpoint_components_pb2.LbEndpoint:
    out = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=_address(ep.ip, ep.port))
    )
    if explicit:
        out.load_balancing_weight.value = ep.weight
    return out


def _address(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=ip, port_value=port)
    )


def listener(
    port: MeshPort, cluster_ip: str, options: Options, *, split: canary.Canary | None = None
) -> listener_pb2.Listener:
    """A listener on the Service's ClusterIP:port in the sidecar's own cluster; an L4 port of
    a canaried service splits its connections (``split``)."""
    stat = f"{port.namespace}.{port.service}.{port.port}"
    if port.protocol.is_http:
        hcm = hcm_pb2.HttpConnectionManager(
            stat_prefix=stat,
            rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=port.envoy_name),
            http_filters=[
                hcm_pb2.HttpFilter(
                    name="envoy.filters.http.router", typed_config=_any(router_pb2.Router())
                )
            ],
        )
        if port.protocol != model.Protocol.HTTP:
            hcm.codec_type = hcm_pb2.HttpConnectionManager.AUTO
        if options.tracing is not None:
            hcm.tracing.CopyFrom(tracing(options.tracing))
        filt = listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager", typed_config=_any(hcm)
        )
    else:
        tcp = canary.apply_tcp_proxy(
            policy.apply_tcp_proxy(
                tcp_proxy_pb2.TcpProxy(stat_prefix=stat, cluster=port.envoy_name), port.pol
            ),
            split,
            port.port,
        )
        filt = listener_components_pb2.Filter(
            name="envoy.filters.network.tcp_proxy", typed_config=_any(tcp)
        )
    out = listener_pb2.Listener(
        name=port.envoy_name,
        address=_address(cluster_ip, port.port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[filt])],
        traffic_direction=base_pb2.OUTBOUND,
    )
    if not options.bind_to_port:
        out.bind_to_port.value = False
    return out


def route(port: MeshPort, *, split: canary.Canary | None = None) -> route_pb2.RouteConfiguration:
    """The route of an HTTP port: to its own Envoy cluster, or split across the backends of
    its canary release (``split``)."""
    return route_pb2.RouteConfiguration(
        name=port.envoy_name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=f"{port.namespace}/{port.service}",
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix="/"),
                        route=canary.apply_route(
                            policy.apply_route(
                                route_components_pb2.RouteAction(cluster=port.envoy_name),
                                port.pol,
                            ),
                            split,
                            port.port,
                        ),
                    )
                ],
            )
        ],
    )


def _resource(name: str, msg: message.Message) -> snapshot.Resource:
    return snapshot.Resource(name=name, body=msg.SerializeToString(deterministic=True))


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceResources:
    """Everything derived from one MeshService, serialized once and shared by every app."""

    namespace: str
    name: str
    clusters: tuple[snapshot.Resource, ...]
    routes: tuple[snapshot.Resource, ...]
    listeners: Mapping[model.ClusterName, tuple[snapshot.Resource, ...]]
    """Per Kubernetes cluster: listeners on that cluster's ClusterIPs."""
    endpoints: Mapping[str, Mapping[str, bytes]]
    """Per Envoy cluster name, per variant (a zone name or ``_default``): the serialized
    ClusterLoadAssignment."""


def service_resources(
    svc: MeshService,
    options: Options,
    *,
    zones: Sequence[Zone] = (),
    split: canary.Canary | None = None,
) -> ServiceResources:
    """The resources of a service; endpoint assignments for ``_default`` and every zone.

    ``split``: the service's canary release (``canary.resolve``), which its routes and L4
    listeners apply.
    """
    listeners: dict[model.ClusterName, list[snapshot.Resource]] = {}
    for port in svc.ports:
        for k8s, ip in sorted(port.cluster_ips.items()):
            listeners.setdefault(k8s, []).append(
                _resource(port.envoy_name, listener(port, ip, options, split=split))
            )
    return ServiceResources(
        namespace=svc.namespace,
        name=svc.name,
        clusters=tuple(_resource(p.envoy_name, cluster(p)) for p in svc.ports),
        routes=tuple(
            _resource(p.envoy_name, route(p, split=split)) for p in svc.ports if p.protocol.is_http
        ),
        listeners={k: tuple(v) for k, v in listeners.items()},
        endpoints={p.envoy_name: _variants(p, zones) for p in svc.ports},
    )


def _variants(port: MeshPort, zones: Sequence[Zone]) -> dict[str, bytes]:
    """Every zone's variant is written, even when equal to another: the front-end looks up
    the sidecar's own zone, then ``_default``, and nothing else."""
    region_of = {z.name: z.region for z in zones}
    out = {keys.DEFAULT_VARIANT: load_assignment(port).SerializeToString(deterministic=True)}
    for zone in zones:
        cla = load_assignment(port, zone=zone, region_of=region_of)
        out[zone.name] = cla.SerializeToString(deterministic=True)
    return out


# --- 3. apps ---------------------------------------------------------------------------


def app_services(
    nexuses: Iterable[model.Nexus],
    services_by_namespace: Mapping[str, Iterable[str]],
) -> tuple[list[tuple[str, str]], list[Diagnostic]]:
    """The (namespace, name) pairs an app may call: the union of all its Nexus objects.

    All Nexus objects of one appName are merged, whatever their namespace or cluster (the old
    and the new release are kept side by side during a roll-out). An entry with an empty name
    selects every service of its namespace. A named service that exists nowhere is reported
    and skipped.
    """
    wanted: set[tuple[str, str]] = set()
    diags: list[Diagnostic] = []
    for nexus in sorted(nexuses, key=lambda n: (n.cluster, n.namespace, n.name)):
        for ref in nexus.services:
            ns = ref.namespace or nexus.namespace
            known = services_by_namespace.get(ns, ())
            if not ref.name:
                wanted.update((ns, n) for n in known)
            elif ref.name in set(known):
                wanted.add((ns, ref.name))
            else:
                diags.append(
                    Diagnostic(
                        object=f"nexuses/{nexus.namespace}/{nexus.name}@{nexus.cluster}",
                        reason="MissingService",
                        message=f"service {ns}/{ref.name} does not exist in any cluster",
                    )
                )
    return sorted(wanted), sorted(set(diags))


TRACING_CLUSTER = "navigator-tracing"


def tracing(setting: model.Tracing) -> hcm_pb2.HttpConnectionManager.Tracing:
    """Tracing of an HTTP connection manager: the service name is the Envoy node's cluster,
    which is the app (set by the bootstrap)."""
    if setting.provider == model.TracingProvider.ZIPKIN:
        name = "envoy.tracers.zipkin"
        config: message.Message = zipkin_pb2.ZipkinConfig(
            collector_cluster=TRACING_CLUSTER,
            collector_endpoint="/api/v2/spans",
            collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON,
            shared_span_context=wrappers_pb2.BoolValue(value=False),
        )
    else:
        name = "envoy.tracers.opentelemetry"
        config = opentelemetry_pb2.OpenTelemetryConfig(
            grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=TRACING_CLUSTER)
            )
        )
    return hcm_pb2.HttpConnectionManager.Tracing(
        random_sampling=percent_pb2.Percent(value=setting.sampling),
        provider=http_tracer_pb2.Tracing.Http(name=name, typed_config=_any(config)),
    )


def tracing_cluster(setting: model.Tracing) -> cluster_pb2.Cluster:
    """The collector, resolved by DNS unless it is an IP address."""
    try:
        ipaddress.ip_address(setting.host)
        kind = cluster_pb2.Cluster.STATIC
    except ValueError:
        kind = cluster_pb2.Cluster.STRICT_DNS
    out = cluster_pb2.Cluster(
        name=TRACING_CLUSTER,
        type=kind,
        connect_timeout=duration_pb2.Duration(seconds=CONNECT_TIMEOUT_S),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=TRACING_CLUSTER,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(
                                address=_address(setting.host, setting.port)
                            )
                        )
                    ]
                )
            ],
        ),
    )
    if setting.provider == model.TracingProvider.OPENTELEMETRY:
        opts = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
        out.typed_extension_protocol_options[
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ].CopyFrom(_any(opts))
    return out


def _rewrite_to(path: str) -> regex_pb2.RegexMatchAndSubstitute:
    return regex_pb2.RegexMatchAndSubstitute(
        pattern=regex_pb2.RegexMatcher(regex="^.*$"), substitution=path
    )


def health_listener(port: int) -> listener_pb2.Listener:
    """The sidecar's ``/healthz``: it exists only once the sidecar has its listeners from the
    control plane, so a probe on it fails until the whole configuration path has worked."""
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix="navigator_health",
        route_config=route_pb2.RouteConfiguration(
            name=HEALTH_LISTENER,
            # NOTE: the control plane's cluster is static, in the bootstrap; not validated here
            # so that a sidecar with an older bootstrap still takes the listener.
            validate_clusters=wrappers_pb2.BoolValue(value=False),
            virtual_hosts=[
                route_components_pb2.VirtualHost(
                    name=HEALTH_LISTENER,
                    domains=["*"],
                    routes=[
                        route_components_pb2.Route(
                            match=route_components_pb2.RouteMatch(path="/healthz"),
                            direct_response=route_components_pb2.DirectResponseAction(
                                status=200, body=base_pb2.DataSource(inline_string="ok\n")
                            ),
                        ),
                        # The whole path: this sidecar has its config and the control plane,
                        # reached as the sidecar reaches it for xDS, is ready.
                        route_components_pb2.Route(
                            match=route_components_pb2.RouteMatch(path="/healthz/control-plane"),
                            route=route_components_pb2.RouteAction(
                                cluster=CONTROL_PLANE_HEALTH_CLUSTER,
                                regex_rewrite=_rewrite_to("/readyz"),
                                timeout=duration_pb2.Duration(seconds=2),
                            ),
                        ),
                    ],
                )
            ],
        ),
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=_any(router_pb2.Router())
            )
        ],
    )
    return listener_pb2.Listener(
        name=HEALTH_LISTENER,
        address=_address("0.0.0.0", port),
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


def app_snapshot(
    app: model.AppName,
    k8s_cluster: model.ClusterName,
    services: Iterable[ServiceResources],
    options: Options | None = None,
) -> snapshot.AppSnapshot:
    """An app's resources for its sidecars in ``k8s_cluster``."""
    options = options or Options()
    clusters: list[snapshot.Resource] = []
    routes: list[snapshot.Resource] = []
    listeners: list[snapshot.Resource] = []
    if options.health_port:
        listeners.append(_resource(HEALTH_LISTENER, health_listener(options.health_port)))
    if options.tracing is not None:
        clusters.append(_resource(TRACING_CLUSTER, tracing_cluster(options.tracing)))
    endpoints: list[str] = []
    for res in services:
        clusters.extend(res.clusters)
        routes.extend(res.routes)
        listeners.extend(res.listeners.get(k8s_cluster, ()))
        endpoints.extend(res.endpoints)
    return snapshot.AppSnapshot(
        app=app,
        cluster=k8s_cluster,
        resources={
            snapshot.CLUSTER: tuple(sorted(clusters, key=lambda r: r.name)),
            snapshot.LISTENER: tuple(sorted(listeners, key=lambda r: r.name)),
            snapshot.ROUTE: tuple(sorted(routes, key=lambda r: r.name)),
        },
        endpoints=tuple(sorted(endpoints)),
    )


# --- all at once ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    """Normalized objects of every cluster (what the ``state/`` prefix of etcd holds)."""

    objects: tuple[model.Object, ...]

    def of(self, cls: type[model.Object]) -> list[model.Object]:
        return [o for o in self.objects if isinstance(o, cls)]


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    apps: Mapping[tuple[model.AppName, model.ClusterName], snapshot.AppSnapshot]
    endpoints: Mapping[tuple[str, str], bytes]
    """Shared endpoint assignments by (Envoy cluster name, variant)."""
    diagnostics: Mapping[str, tuple[Diagnostic, ...]]
    """By app name; ``""`` holds the diagnostics of services."""


def translate(
    objects: Iterable[model.Object],
    clusters: Iterable[model.ClusterName],
    options: Options | None = None,
    *,
    weights: Mapping[model.ClusterName, int] | None = None,
) -> Result:
    """The whole mesh at once: the reference that the incremental runner must agree with.

    ``weights``: the operator's weight per Kubernetes cluster (default ``DEFAULT_WEIGHT``;
    0 drains the cluster).
    """
    services: dict[tuple[str, str], list[model.Service]] = {}
    endpoints: dict[tuple[str, str], list[model.Endpoints]] = {}
    slices: dict[tuple[str, str], list[model.EndpointSlice]] = {}
    nodes: dict[tuple[model.ClusterName, str], model.Node] = {}
    nexuses: dict[model.AppName, list[model.Nexus]] = {}
    releases: list[model.CanaryRelease] = []
    gateways: list[model.Gateway] = []
    ingresses: list[model.Ingress] = []
    for obj in objects:
        if isinstance(obj, model.Service):
            services.setdefault((obj.namespace, obj.name), []).append(obj)
        elif isinstance(obj, model.Endpoints):
            endpoints.setdefault((obj.namespace, obj.name), []).append(obj)
        elif isinstance(obj, model.EndpointSlice):
            slices.setdefault((obj.namespace, obj.service), []).append(obj)
        elif isinstance(obj, model.Node):
            nodes[(obj.cluster, obj.name)] = obj
        elif isinstance(obj, model.Nexus):
            nexuses.setdefault(obj.app_name, []).append(obj)
        elif isinstance(obj, model.CanaryRelease):
            releases.append(obj)
        elif isinstance(obj, model.Gateway):
            gateways.append(obj)
        elif isinstance(obj, model.Ingress):
            ingresses.append(obj)

    diags: dict[str, list[Diagnostic]] = {"": []}
    meshed: dict[tuple[str, str], MeshService] = {}
    for key in sorted(services):
        svc, service_diags = mesh_service(
            services[key],
            endpoints.get(key, []),
            nodes,
            slices=slices.get(key, []),
            weights=weights,
        )
        diags[""].extend(service_diags)
        if svc is not None:
            meshed[key] = svc
    pairs = {(n.region, n.zone) for n in nodes.values()}
    for svc in meshed.values():
        pairs |= zones_of(svc)
    zones, zone_diags = mesh_zones(pairs)
    diags[""].extend(zone_diags)
    canaries, canary_diags = canary.resolve(
        releases, {key: {p.port for p in svc.ports} for key, svc in meshed.items()}
    )
    diags[""].extend(canary_diags)
    resources = {
        key: service_resources(svc, options or Options(), zones=zones, split=canaries.get(key))
        for key, svc in meshed.items()
    }

    by_ns: dict[str, list[str]] = {}
    for ns, name in sorted(services):
        by_ns.setdefault(ns, []).append(name)

    apps: dict[tuple[model.AppName, model.ClusterName], snapshot.AppSnapshot] = {}
    all_endpoints: dict[tuple[str, str], bytes] = {}
    for res in resources.values():
        for name, variants in res.endpoints.items():
            all_endpoints.update({(name, v): body for v, body in variants.items()})
    for app in sorted(nexuses):
        wanted, app_diags = app_services(nexuses[app], by_ns)
        # NOTE: a caller of a canaried service needs its backends' clusters and endpoints.
        wanted = canary.with_backends(wanted, canaries)
        diags[app] = app_diags
        visible = [resources[k] for k in wanted if k in resources]
        for k8s in sorted(set(clusters)):
            apps[(app, k8s)] = app_snapshot(app, k8s, visible, options)
    for k8s in sorted(set(clusters)):
        apps[(keys.DEFAULT_APP, k8s)] = app_snapshot(keys.DEFAULT_APP, k8s, [], options)
    gws, gw_diags = gateway.resolve(gateways, ingresses, meshed)
    diags[""].extend(gw_diags.pop("", []))
    for app, gw_res in gws.items():
        diags[app] = gw_diags.get(app, [])
        backends = [resources[k] for k in gw_res.services if k in resources]
        for k8s in sorted(set(clusters)):
            apps[(app, k8s)] = gateway.gateway_snapshot(gw_res, k8s, backends)
    return Result(
        apps=apps,
        endpoints=all_endpoints,
        diagnostics={k: tuple(sorted(v)) for k, v in diags.items()},
    )
