"""Kubernetes objects (as the API returns them) → the normalized model, with no I/O.

Like Cilium's clustermesh converters, this is a purely computational layer: it takes the
camelCase JSON dicts a list or watch returns and produces the frozen dataclasses of
``navigator.model``, keeping only what the mesh needs. The informer and the sync store do
the I/O around it, so everything here is tested with plain tables.

Bad input is data: a malformed object raises ``ConversionError`` with a one-line reason, and
the caller decides what to do with it (the informer logs it, counts it, and keeps serving the
last good value of that object).

Decisions worth knowing:

- A headless Service (``clusterIP: None``) and an ExternalName Service have ``cluster_ip ""``:
  there is no virtual IP to build a listener on.
- NodePort and LoadBalancer Services are ClusterIP Services for the mesh.
- SCTP ports are left out: Envoy cannot proxy them.
- A string ``targetPort`` made only of digits is a number (``"8080"`` → 8080).
- An address listed both ready and not ready (in different subsets) is not ready: a pod
  that is not ready for one port is not trusted with the others.
- An EndpointSlice becomes one ``model.EndpointSlice`` (per object, like every kind here);
  merging a Service's slices is translation's job. Its Service is the
  ``kubernetes.io/service-name`` label (missing: malformed). ``conditions.ready`` absent means
  ready, as Kubernetes says; ``serving`` and ``terminating`` are not read (a terminating
  endpoint is not ready, so it already receives no new traffic). An endpoint with several
  addresses gives one model endpoint per address. A slice port without a number ("every
  port") is left out: the mesh needs a number to connect to.
- An ``FQDN`` EndpointSlice is a ConversionError, as is any addressType other than IPv4 or
  IPv6: the mesh routes to pod IPs only, and the error keeps it visible (log, metric) rather
  than silently dropped. An address of the other IP family than the slice's is malformed.
- An Ingress's class is ``spec.ingressClassName``, else the legacy annotation
  ``kubernetes.io/ingress.class`` (the API server refuses both set at once); neither gives
  ``""``, which no Gateway serves (IngressClass objects and their default class are not
  read). ``pathType`` ``ImplementationSpecific`` (and a missing one) is ``Prefix``: the
  Gateway's implementation is Envoy's path-separated prefix, the same element-wise match as
  ``Prefix``. A missing path is ``/``; a path that does not start with ``/`` is malformed.
  A backend names ``service.name`` and exactly one of ``port.number`` / ``port.name``.
  A ``resource`` backend is kept (``IngressPath.resource``) rather than dropped or failing
  the whole Ingress: it is valid Kubernetes that the mesh cannot route, and translation
  reports it on the Gateway (``IngressUnsupportedBackend``) while the other paths are served.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from navigator import keys, model

ANNOTATION_PREFIX = "navigator.avito.ru/"
"""Only annotations under this prefix reach the model."""

REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")

_APP_PROTOCOLS: dict[str, model.Protocol] = {
    "http": model.Protocol.HTTP,
    "http2": model.Protocol.HTTP2,
    "h2c": model.Protocol.HTTP2,
    "kubernetes.io/h2c": model.Protocol.HTTP2,
    "grpc": model.Protocol.GRPC,
    "kubernetes.io/ws": model.Protocol.HTTP,
    "tcp": model.Protocol.TCP,
    "tls": model.Protocol.TCP,
    "https": model.Protocol.TCP,
    "kubernetes.io/wss": model.Protocol.TCP,
    "udp": model.Protocol.UDP,
}
"""``appProtocol`` values we know (lower-cased); any other value falls back to the port name."""

_NAME_PREFIXES: tuple[tuple[str, model.Protocol], ...] = (
    # NOTE: ``http2`` must be tested before ``http``.
    ("http2", model.Protocol.HTTP2),
    ("http", model.Protocol.HTTP),
    ("grpc", model.Protocol.GRPC),
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
"""The label that ties an EndpointSlice to its Service."""

_SLICE_ADDRESS_TYPES = {"IPv4": 4, "IPv6": 6}

_NAMESPACED = {
    model.Kind.SERVICE,
    model.Kind.ENDPOINTS,
    model.Kind.ENDPOINT_SLICE,
    model.Kind.NEXUS,
    model.Kind.CANARY,
    model.Kind.GATEWAY,
    model.Kind.INGRESS,
}

INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
"""The legacy way to give an Ingress its class, read when ``spec.ingressClassName`` is unset."""

_PATH_TYPES = {
    "Prefix": model.PathType.PREFIX,
    "Exact": model.PathType.EXACT,
    "ImplementationSpecific": model.PathType.PREFIX,
}


class ConversionError(ValueError):
    """A Kubernetes object that cannot become a model object; the message is one line."""


# --- small typed accessors: every failure names the field path ---------------------------


def _dict(value: Any, path: str, *, default: dict[str, Any] | None = None) -> dict[str, Any]:
    if value is None and default is not None:
        return default
    if not isinstance(value, dict):
        raise ConversionError(f"{path}: expected an object, got {_type_name(value)}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConversionError(f"{path}: expected a list, got {_type_name(value)}")
    return value


def _str(value: Any, path: str, *, default: str | None = None) -> str:
    if value is None and default is not None:
        return default
    if not isinstance(value, str):
        raise ConversionError(f"{path}: expected a string, got {_type_name(value)}")
    if not value.isascii():
        # NOTE: JSON may escape a lone UTF-16 surrogate ("\ud800"); the model's canonical JSON
        # is UTF-8, which cannot hold one (the object could never be written to etcd).
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ConversionError(f"{path}: not valid Unicode (a lone surrogate)") from None
    return value


def _int(value: Any, path: str) -> int:
    # NOTE: bool is a subclass of int in Python, but never a valid Kubernetes integer.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConversionError(f"{path}: expected an integer, got {_type_name(value)}")
    return value


def _port_number(value: Any, path: str) -> int:
    port = _int(value, path)
    if not 1 <= port <= 65535:
        raise ConversionError(f"{path}: port {port} out of range 1-65535")
    return port


def _name(value: Any, path: str) -> str:
    name = _str(value, path)
    # NOTE: names become etcd key segments (navigator.keys); "/" would break the schema.
    if not name or "/" in name:
        raise ConversionError(f"{path}: invalid name {name!r}")
    return name


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list"}.get(
        type(value), "object" if isinstance(value, dict) else type(value).__name__
    )


# --- identity ---------------------------------------------------------------------------


def identity(cluster: model.ClusterName, kind: model.Kind, obj: Mapping[str, Any]) -> keys.StateKey:
    """Which normalized object a Kubernetes object is, from its metadata alone.

    Works for objects whose spec is malformed, so that their deletion can still be applied.
    """
    meta = _dict(obj.get("metadata"), "metadata")
    name = _name(meta.get("name"), "metadata.name")
    namespace = _name(meta.get("namespace"), "metadata.namespace") if kind in _NAMESPACED else ""
    return keys.StateKey(cluster=cluster, kind=kind, namespace=namespace, name=name)


def identity_of(obj: model.Object) -> keys.StateKey:
    """The identity of a model object: equal to ``identity`` of the object it came from."""
    return keys.StateKey(
        cluster=obj.cluster,
        kind=model.kind_of(obj),
        namespace=model.namespace_of(obj),
        name=obj.name,
    )


# --- converters, one per kind -----------------------------------------------------------


def convert(cluster: model.ClusterName, kind: model.Kind, obj: Mapping[str, Any]) -> model.Object:
    """Converts a Kubernetes object of ``kind``; raises ConversionError on malformed input."""
    if not isinstance(obj, Mapping):
        raise ConversionError(f"expected an object, got {_type_name(obj)}")
    return CONVERTERS[kind](cluster, obj)


def service(cluster: model.ClusterName, obj: Mapping[str, Any]) -> model.Service:
    ident = identity(cluster, model.Kind.SERVICE, obj)
    spec = _dict(obj.get("spec"), "spec")
    svc_type = _str(spec.get("type"), "spec.type", default="ClusterIP")
    cluster_ip = _str(spec.get("clusterIP"), "spec.clusterIP", default="")
    external_name = ""
    if svc_type == "ExternalName":
        svc_kind = model.ServiceType.EXTERNAL_NAME
        external_name = _str(spec.get("externalName"), "spec.externalName")
        if not external_name:
            raise ConversionError("spec.externalName: empty for an ExternalName service")
        cluster_ip = ""
    elif svc_type in ("ClusterIP", "NodePort", "LoadBalancer"):
        if cluster_ip == "None":
            svc_kind = model.ServiceType.HEADLESS
            cluster_ip = ""
        else:
            svc_kind = model.ServiceType.CLUSTER_IP
            if cluster_ip:
                _ip(cluster_ip, "spec.clusterIP")
    else:
        raise ConversionError(f"spec.type: unknown service type {svc_type!r}")

    ports: list[model.ServicePort] = []
    for i, raw in enumerate(_list(spec.get("ports"), "spec.ports")):
        port = _service_port(_dict(raw, f"spec.ports[{i}]"), f"spec.ports[{i}]")
        if port is not None:
            ports.append(port)
    ports.sort(key=lambda p: (p.port, p.protocol.value, p.name))

    return model.Service(
        cluster=cluster,
        namespace=ident.namespace,
        name=ident.name,
        type=svc_kind,
        cluster_ip=cluster_ip,
        ports=tuple(ports),
        external_name=external_name,
        annotations=_mesh_annotations(obj),
    )


def _service_port(raw: dict[str, Any], path: str) -> model.ServicePort | None:
    name = _str(raw.get("name"), f"{path}.name", default="")
    number = _port_number(raw.get("port"), f"{path}.port")
    l4 = _str(raw.get("protocol"), f"{path}.protocol", default="TCP")
    app_protocol = _str(raw.get("appProtocol"), f"{path}.appProtocol", default="")
    if l4 == "SCTP":
        return None
    if l4 == "UDP":
        protocol = model.Protocol.UDP
    elif l4 == "TCP":
        protocol = port_protocol(name=name, app_protocol=app_protocol)
        if protocol is model.Protocol.UDP:
            raise ConversionError(f"{path}.appProtocol: udp on a TCP port")
    else:
        raise ConversionError(f"{path}.protocol: unknown protocol {l4!r}")

    target: int | str
    raw_target = raw.get("targetPort")
    if raw_target is None:
        target = number
    elif isinstance(raw_target, str):
        raw_target = _str(raw_target, f"{path}.targetPort")
        # NOTE: ASCII digits only: "²" is a digit to str.isdigit, not to int().
        if raw_target.isascii() and raw_target.isdigit():
            digits = raw_target.lstrip("0") or "0"
            if len(digits) > 5:
                # NOTE: int() refuses a string of more than 4300 digits; no port has 6.
                raise ConversionError(f"{path}.targetPort: port {digits[:6]}... out of range")
            target = _port_number(int(digits), f"{path}.targetPort")
        elif raw_target:
            target = raw_target
        else:
            raise ConversionError(f"{path}.targetPort: empty")
    else:
        target = _port_number(raw_target, f"{path}.targetPort")
    return model.ServicePort(name=name, port=number, protocol=protocol, target_port=target)


def port_protocol(*, name: str, app_protocol: str = "") -> model.Protocol:
    """The mesh protocol of a TCP port: ``appProtocol`` first, else the port name's prefix."""
    known = _APP_PROTOCOLS.get(app_protocol.lower())
    if known is not None:
        return known
    lowered = name.lower()
    for prefix, protocol in _NAME_PREFIXES:
        if lowered == prefix or lowered.startswith(prefix + "-"):
            return protocol
    return model.Protocol.TCP


def _mesh_annotations(obj: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    meta = _dict(obj.get("metadata"), "metadata")
    annotations = _dict(meta.get("annotations"), "metadata.annotations", default={})
    out: list[tuple[str, str]] = []
    for key, value in annotations.items():
        if isinstance(key, str) and key.startswith(ANNOTATION_PREFIX):
            _str(key, "metadata.annotations")
            out.append((key, _str(value, f"metadata.annotations[{key}]")))
    return tuple(sorted(out))


def endpoints(cluster: model.ClusterName, obj: Mapping[str, Any]) -> model.Endpoints:
    ident = identity(cluster, model.Kind.ENDPOINTS, obj)
    # NOTE: by IP; an IP in several subsets (its ports resolved differently) is one endpoint.
    merged: dict[str, _Address] = {}
    for i, raw_subset in enumerate(_list(obj.get("subsets"), "subsets")):
        path = f"subsets[{i}]"
        subset = _dict(raw_subset, path)
        ports = [
            _endpoint_port(_dict(p, f"{path}.ports[{j}]"), f"{path}.ports[{j}]")
            for j, p in enumerate(_list(subset.get("ports"), f"{path}.ports"))
        ]
        for field, ready in (("addresses", True), ("notReadyAddresses", False)):
            for j, raw_addr in enumerate(_list(subset.get(field), f"{path}.{field}")):
                apath = f"{path}.{field}[{j}]"
                addr = _dict(raw_addr, apath)
                ip = _ip(_str(addr.get("ip"), f"{apath}.ip"), f"{apath}.ip")
                node = _str(addr.get("nodeName"), f"{apath}.nodeName", default="")
                pod = _pod_name(addr.get("targetRef"), f"{apath}.targetRef")
                entry = merged.setdefault(ip, _Address(ip))
                entry.add(ready=ready, ports=ports, node=node, pod=pod)

    ordered = sorted(merged.values(), key=lambda a: _ip_sort_key(a.ip))
    return model.Endpoints(
        cluster=cluster,
        namespace=ident.namespace,
        name=ident.name,
        endpoints=tuple(a.build() for a in ordered),
    )


class _Address:
    """One IP while subsets (or a slice's endpoints) are merged."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.ready = True
        self.ports: set[model.EndpointPort] = set()
        self.node = ""
        self.pod = ""
        self.zone = ""

    def add(
        self,
        *,
        ready: bool,
        ports: list[model.EndpointPort],
        node: str,
        pod: str,
        zone: str = "",
    ) -> None:
        self.ready = self.ready and ready
        self.ports.update(ports)
        self.node = self.node or node
        self.pod = self.pod or pod
        self.zone = self.zone or zone

    def build(self) -> model.Endpoint:
        ports = tuple(sorted(self.ports, key=lambda p: (p.name, p.port, p.protocol)))
        return model.Endpoint(
            ip=self.ip, ready=self.ready, ports=ports, node=self.node, zone=self.zone, pod=self.pod
        )


def endpoint_slice(cluster: model.ClusterName, obj: Mapping[str, Any]) -> model.EndpointSlice:
    ident = identity(cluster, model.Kind.ENDPOINT_SLICE, obj)
    meta = _dict(obj.get("metadata"), "metadata")
    labels = _dict(meta.get("labels"), "metadata.labels", default={})
    label_path = f"metadata.labels[{SERVICE_NAME_LABEL}]"
    if labels.get(SERVICE_NAME_LABEL) is None:
        raise ConversionError(f"{label_path}: missing; the slice belongs to no Service")
    service_name = _name(labels[SERVICE_NAME_LABEL], label_path)
    address_type = _str(obj.get("addressType"), "addressType")
    family = _SLICE_ADDRESS_TYPES.get(address_type)
    if family is None:
        raise ConversionError(f"addressType: {address_type!r} not supported (IPv4, IPv6 only)")

    ports: list[model.EndpointPort] = []
    for i, raw_port in enumerate(_list(obj.get("ports"), "ports")):
        path = f"ports[{i}]"
        raw = _dict(raw_port, path)
        if raw.get("port") is None:
            continue  # NOTE: no number means "every port": nothing the mesh can connect to.
        ports.append(_endpoint_port(raw, path))

    # NOTE: by IP, as for Endpoints: an IP listed twice is ready only if ready every time.
    merged: dict[str, _Address] = {}
    for i, raw_ep in enumerate(_list(obj.get("endpoints"), "endpoints")):
        path = f"endpoints[{i}]"
        ep = _dict(raw_ep, path)
        conditions = _dict(ep.get("conditions"), f"{path}.conditions", default={})
        ready = conditions.get("ready")
        if ready is not None and not isinstance(ready, bool):
            raise ConversionError(
                f"{path}.conditions.ready: expected a boolean, got {_type_name(ready)}"
            )
        node = _str(ep.get("nodeName"), f"{path}.nodeName", default="")
        zone = _str(ep.get("zone"), f"{path}.zone", default="")
        pod = _pod_name(ep.get("targetRef"), f"{path}.targetRef")
        for j, raw_ip in enumerate(_list(ep.get("addresses"), f"{path}.addresses")):
            apath = f"{path}.addresses[{j}]"
            ip = _ip(_str(raw_ip, apath), apath)
            if ipaddress.ip_address(ip).version != family:
                raise ConversionError(f"{apath}: {ip} is not an {address_type} address")
            entry = merged.setdefault(ip, _Address(ip))
            entry.add(ready=ready is not False, ports=ports, node=node, pod=pod, zone=zone)

    ordered = sorted(merged.values(), key=lambda a: _ip_sort_key(a.ip))
    return model.EndpointSlice(
        cluster=cluster,
        namespace=ident.namespace,
        name=ident.name,
        service=service_name,
        endpoints=tuple(a.build() for a in ordered),
    )


def _endpoint_port(raw: dict[str, Any], path: str) -> model.EndpointPort:
    name = _str(raw.get("name"), f"{path}.name", default="")
    number = _port_number(raw.get("port"), f"{path}.port")
    protocol = _str(raw.get("protocol"), f"{path}.protocol", default="TCP")
    if protocol not in ("TCP", "UDP", "SCTP"):
        raise ConversionError(f"{path}.protocol: unknown protocol {protocol!r}")
    return model.EndpointPort(name=name, port=number, protocol=protocol)


def _pod_name(raw: Any, path: str) -> str:
    if raw is None:
        return ""
    ref = _dict(raw, path)
    if _str(ref.get("kind"), f"{path}.kind", default="Pod") != "Pod":
        return ""
    return _str(ref.get("name"), f"{path}.name", default="")


def _ip(value: str, path: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConversionError(f"{path}: not an IP address: {value!r}") from None


def _ip_sort_key(ip: str) -> tuple[int, bytes]:
    addr = ipaddress.ip_address(ip)
    return addr.version, addr.packed


def node(cluster: model.ClusterName, obj: Mapping[str, Any]) -> model.Node:
    ident = identity(cluster, model.Kind.NODE, obj)
    meta = _dict(obj.get("metadata"), "metadata")
    labels = _dict(meta.get("labels"), "metadata.labels", default={})
    return model.Node(
        cluster=cluster,
        name=ident.name,
        region=_first_label(labels, REGION_LABELS),
        zone=_first_label(labels, ZONE_LABELS),
    )


def _first_label(labels: dict[str, Any], names: tuple[str, ...]) -> str:
    for name in names:
        value = labels.get(name)
        if value:
            return _str(value, f"metadata.labels[{name}]")
    return ""


def nexus(cluster: model.ClusterName, obj: Mapping[str, Any]) -> model.Nexus:
    ident = identity(cluster, model.Kind.NEXUS, obj)
    spec = _dict(obj.get("spec"), "spec")
    app = _str(spec.get("appName"), "spec.appName")
    if not app:
        raise ConversionError("spec.appName: empty")
    refs: set[model.ServiceRef] = set()
    for i, raw in enumerate(_list(spec.get("services"), "spec.services")):
        path = f"spec.services[{i}]"
        entry = _dict(raw, path)
        # NOTE: no namespace means the Nexus's own namespace; no name means every service.
        namespace = _str(entry.get("namespace"), f"{path}.namespace", default="")
        name = _str(entry.get("name"), f"{path}.name", default="")
        refs.add(model.ServiceRef(namespace=namespace or ident.namespace, name=name))
    return model.Nexus(
        cluster=cluster,
        namespace=ident.namespace,
        name=ident.name,
        app_name=model.AppName(app),
        services=tuple(sorted(refs, key=lambda r: (r.namespace, r.name))),
    )


def canary_release(cluster: model.ClusterName, obj: Mapping[str, Any]) -> model.CanaryRelease:
    ident = identity(cluster, model.Kind.CANARY, obj)
    spec = _dict(obj.get("spec"), "spec")
    backends: list[model.CanaryBackend] = []
    for i, raw in enumerate(_list(spec.get("backends"), "spec.backends")):
        path = f"spec.backends[{i}]"
        entry = _dict(raw, path)
        namespace = _str(entry.get("namespace"), f"{path}.namespace", default="")
        name = _name(entry.get("name"), f"{path}.name")
        weight = _int(entry.get("weight"), f"{path}.weight")
        if weight < 0:
            raise ConversionError(f"{path}.weight: negative weight {weight}")
        backends.append(
            model.CanaryBackend(namespace=namespace or ident.namespace, name=name, weight=weight)
        )
    # NOTE: whether the weights make sense (sum, existing backends) is translation's call.
    backends.sort(key=lambda b: (b.namespace, b.name, b.weight))
    return model.CanaryRelease(
        cluster=cluster, namespace=ident.namespace, name=ident.name, backends=tuple(backends)
    )


def gateway(cluster: model.ClusterName, obj: Mapping[str, Any]) -> model.Gateway:
    ident = identity(cluster, model.Kind.GATEWAY, obj)
    spec = _dict(obj.get("spec"), "spec")
    ingress_class = _str(spec.get("ingressClass"), "spec.ingressClass")
    if not ingress_class:
        raise ConversionError("spec.ingressClass: empty")
    return model.Gateway(
        cluster=cluster,
        namespace=ident.namespace,
        name=ident.name,
        ingress_class=ingress_class,
        port=_port_number(spec.get("port"), "spec.port"),
    )


def ingress(cluster: model.ClusterName, obj: Mapping[str, Any]) -> model.Ingress:
    ident = identity(cluster, model.Kind.INGRESS, obj)
    meta = _dict(obj.get("metadata"), "metadata")
    annotations = _dict(meta.get("annotations"), "metadata.annotations", default={})
    spec = _dict(obj.get("spec"), "spec")
    ingress_class = _str(spec.get("ingressClassName"), "spec.ingressClassName", default="")
    if not ingress_class:
        ingress_class = _str(
            annotations.get(INGRESS_CLASS_ANNOTATION),
            f"metadata.annotations[{INGRESS_CLASS_ANNOTATION}]",
            default="",
        )
    rules: list[model.IngressRule] = []
    for i, raw_rule in enumerate(_list(spec.get("rules"), "spec.rules")):
        path = f"spec.rules[{i}]"
        rule = _dict(raw_rule, path)
        host = _str(rule.get("host"), f"{path}.host", default="")
        http = _dict(rule.get("http"), f"{path}.http", default={})
        paths = tuple(
            _ingress_path(_dict(raw, f"{path}.http.paths[{j}]"), f"{path}.http.paths[{j}]")
            for j, raw in enumerate(_list(http.get("paths"), f"{path}.http.paths"))
        )
        rules.append(model.IngressRule(host=host.lower(), paths=paths))
    default = None
    if spec.get("defaultBackend") is not None:
        default = _ingress_backend(
            _dict(spec.get("defaultBackend"), "spec.defaultBackend"),
            "spec.defaultBackend",
            path="/",
            path_type=model.PathType.PREFIX,
        )
    # NOTE: rules keep their order: on a host+path claimed twice in one Ingress the first wins.
    return model.Ingress(
        cluster=cluster,
        namespace=ident.namespace,
        name=ident.name,
        ingress_class=ingress_class,
        rules=tuple(rules),
        default_backend=default,
    )


def _ingress_path(raw: dict[str, Any], path: str) -> model.IngressPath:
    value = _str(raw.get("path"), f"{path}.path", default="/") or "/"
    if not value.startswith("/"):
        raise ConversionError(f"{path}.path: {value!r} does not start with /")
    raw_type = _str(raw.get("pathType"), f"{path}.pathType", default="ImplementationSpecific")
    path_type = _PATH_TYPES.get(raw_type)
    if path_type is None:
        raise ConversionError(f"{path}.pathType: unknown path type {raw_type!r}")
    backend = _dict(raw.get("backend"), f"{path}.backend")
    return _ingress_backend(backend, f"{path}.backend", path=value, path_type=path_type)


def _ingress_backend(
    backend: dict[str, Any], where: str, *, path: str, path_type: model.PathType
) -> model.IngressPath:
    has_service = backend.get("service") is not None
    has_resource = backend.get("resource") is not None
    if has_service == has_resource:
        raise ConversionError(f"{where}: expected exactly one of service, resource")
    if has_resource:
        ref = _dict(backend.get("resource"), f"{where}.resource")
        kind = _str(ref.get("kind"), f"{where}.resource.kind")
        name = _str(ref.get("name"), f"{where}.resource.name")
        return model.IngressPath(
            path=path, path_type=path_type, service="", port=0, resource=f"{kind}/{name}"
        )
    svc = _dict(backend.get("service"), f"{where}.service")
    name = _name(svc.get("name"), f"{where}.service.name")
    port = _dict(svc.get("port"), f"{where}.service.port")
    number, port_name = port.get("number"), port.get("name")
    if (number is None) == (port_name is None):
        raise ConversionError(f"{where}.service.port: expected exactly one of number, name")
    if number is not None:
        value: int | str = _port_number(number, f"{where}.service.port.number")
    else:
        value = _str(port_name, f"{where}.service.port.name")
        if not value:
            raise ConversionError(f"{where}.service.port.name: empty")
    return model.IngressPath(path=path, path_type=path_type, service=name, port=value)


CONVERTERS: dict[model.Kind, Callable[[model.ClusterName, Mapping[str, Any]], model.Object]] = {
    model.Kind.SERVICE: service,
    model.Kind.ENDPOINTS: endpoints,
    model.Kind.ENDPOINT_SLICE: endpoint_slice,
    model.Kind.NODE: node,
    model.Kind.NEXUS: nexus,
    model.Kind.CANARY: canary_release,
    model.Kind.GATEWAY: gateway,
    model.Kind.INGRESS: ingress,
}
