"""The normalized model: the only fields of Kubernetes objects that the mesh needs.

Watchers convert Kubernetes objects into these frozen dataclasses and store them in etcd as
canonical JSON (sorted keys, no whitespace), so an unchanged object always encodes to the same
bytes and a watcher can skip writing it. Translators decode them back. This module sits at the
bottom of the layers: it imports nothing of ours and does no I/O.

NOTE: the JSON produced by ``encode`` is part of the stable etcd API (see ``navigator.keys``).
Add optional fields with defaults; never rename or repurpose one.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any, NewType, TypeVar

ClusterName = NewType("ClusterName", str)
"""A Kubernetes cluster as the mesh knows it (``east``, ``west``)."""

AppName = NewType("AppName", str)
"""An application: the unit of Nexus scoping and of translator sharding."""


class Kind(enum.StrEnum):
    """Kinds of normalized objects, as they appear in etcd keys."""

    SERVICE = "services"
    ENDPOINTS = "endpoints"
    ENDPOINT_SLICE = "endpointslices"
    NODE = "nodes"
    NEXUS = "nexuses"
    CANARY = "canaryreleases"
    GATEWAY = "gateways"
    INGRESS = "ingresses"


class ServiceType(enum.StrEnum):
    """How a Service is reached (Kubernetes ``spec.type`` plus headless)."""

    CLUSTER_IP = "ClusterIP"
    HEADLESS = "Headless"
    EXTERNAL_NAME = "ExternalName"


class Protocol(enum.StrEnum):
    """What the mesh does with a port: L7 HTTP (connection manager) or L4 TCP proxy."""

    HTTP = "http"
    HTTP2 = "http2"
    GRPC = "grpc"
    TCP = "tcp"
    UDP = "udp"

    @property
    def is_http(self) -> bool:
        return self in (Protocol.HTTP, Protocol.HTTP2, Protocol.GRPC)


@dataclasses.dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    protocol: Protocol
    target_port: int | str = 0
    """The pod port: a number, or a port name resolved per endpoint (0 = same as ``port``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Service:
    cluster: ClusterName
    namespace: str
    name: str
    type: ServiceType
    cluster_ip: str
    ports: tuple[ServicePort, ...]
    external_name: str = ""
    annotations: tuple[tuple[str, str], ...] = ()
    """Only ``navigator.avito.ru/*`` annotations, sorted by key."""


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    ready: bool
    ports: tuple[EndpointPort, ...]
    node: str = ""
    zone: str = ""
    """Zone from the endpoint itself (EndpointSlice); empty when only the Node knows it."""
    pod: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoints:
    cluster: ClusterName
    namespace: str
    name: str
    endpoints: tuple[Endpoint, ...]
    """Sorted by IP, so that equal sets encode equally."""


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointSlice:
    """One ``discovery.k8s.io/v1`` EndpointSlice: a part of one Service's endpoints.

    A Service has any number of slices; translation takes their union per cluster.
    """

    cluster: ClusterName
    namespace: str
    name: str
    service: str
    """The ``kubernetes.io/service-name`` label: the Service the slice belongs to."""
    endpoints: tuple[Endpoint, ...]
    """One per address, sorted by IP; each carries the slice's ports."""


@dataclasses.dataclass(frozen=True, slots=True)
class Node:
    cluster: ClusterName
    name: str
    region: str
    zone: str


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceRef:
    namespace: str
    name: str
    """Empty: every service of the namespace."""


@dataclasses.dataclass(frozen=True, slots=True)
class Nexus:
    cluster: ClusterName
    namespace: str
    name: str
    app_name: AppName
    services: tuple[ServiceRef, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class CanaryBackend:
    namespace: str
    name: str
    weight: int


@dataclasses.dataclass(frozen=True, slots=True)
class CanaryRelease:
    cluster: ClusterName
    namespace: str
    name: str
    backends: tuple[CanaryBackend, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Gateway:
    cluster: ClusterName
    namespace: str
    name: str
    ingress_class: str
    port: int


class PathType(enum.StrEnum):
    """How an Ingress path matches. Kubernetes' ``ImplementationSpecific`` is stored as
    ``Prefix`` (see ``navigator.watcher.convert``)."""

    PREFIX = "Prefix"
    EXACT = "Exact"


@dataclasses.dataclass(frozen=True, slots=True)
class IngressPath:
    """One path of an Ingress rule (or its default backend), with its backend.

    The backend is a Service of the Ingress's own namespace and a port of it, by number or by
    name (as ``spec.rules[].http.paths[].backend.service.port`` says).
    """

    path: str
    """Starts with ``/``; a default backend has ``/``."""
    path_type: PathType
    service: str
    """The backend Service (same namespace as the Ingress); empty for a resource backend."""
    port: int | str
    """The Service port: its number, or its name."""
    resource: str = ""
    """``<Kind>/<name>`` of a resource backend (``backend.resource``): the mesh cannot route
    to it, so translation reports the path and skips it."""


@dataclasses.dataclass(frozen=True, slots=True)
class IngressRule:
    host: str
    """Empty: every host. May be a wildcard (``*.example.com``)."""
    paths: tuple[IngressPath, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Ingress:
    """A ``networking.k8s.io/v1`` Ingress: served by the Gateways of its class."""

    cluster: ClusterName
    namespace: str
    name: str
    ingress_class: str
    """``spec.ingressClassName``, else the ``kubernetes.io/ingress.class`` annotation; empty
    when neither is set (no Gateway serves it)."""
    rules: tuple[IngressRule, ...]
    default_backend: IngressPath | None = None


Object = Service | Endpoints | EndpointSlice | Node | Nexus | CanaryRelease | Gateway | Ingress

KIND_OF: dict[type[Any], Kind] = {
    Service: Kind.SERVICE,
    Endpoints: Kind.ENDPOINTS,
    EndpointSlice: Kind.ENDPOINT_SLICE,
    Node: Kind.NODE,
    Nexus: Kind.NEXUS,
    CanaryRelease: Kind.CANARY,
    Gateway: Kind.GATEWAY,
    Ingress: Kind.INGRESS,
}
CLASS_OF: dict[Kind, type[Any]] = {kind: cls for cls, kind in KIND_OF.items()}


def kind_of(obj: Object) -> Kind:
    return KIND_OF[type(obj)]


def namespace_of(obj: Object) -> str:
    """The namespace of an object; cluster-scoped objects (Nodes) have none."""
    return "" if isinstance(obj, Node) else obj.namespace


def encode(obj: Object) -> bytes:
    """Canonical JSON: equal objects give equal bytes."""
    return json.dumps(
        dataclasses.asdict(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


T = TypeVar("T")


class DecodeError(ValueError):
    """A stored value does not decode into the model (written by an incompatible version)."""


def decode(kind: Kind, data: bytes) -> Object:
    """Inverse of ``encode``; raises DecodeError on anything it cannot read."""
    try:
        raw = json.loads(data)
        obj: Object = _build(CLASS_OF[kind], raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise DecodeError(f"cannot decode {kind.value}: {exc}") from exc
    return obj


def _build(cls: type[T], raw: Any) -> T:
    hints = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in hints:
            continue  # NOTE: a field added by a newer writer is ignored, not an error.
        kwargs[name] = _convert(hints[name], value)
    return cls(**kwargs)


_NESTED: dict[str, type[Any]] = {
    "ServicePort": ServicePort,
    "EndpointPort": EndpointPort,
    "Endpoint": Endpoint,
    "ServiceRef": ServiceRef,
    "CanaryBackend": CanaryBackend,
    "IngressRule": IngressRule,
    "IngressPath": IngressPath,
}
_ENUMS: dict[str, type[enum.StrEnum]] = {
    "Protocol": Protocol,
    "ServiceType": ServiceType,
    "PathType": PathType,
}


_FIELD_TYPES: dict[type[Any], dict[str, str]] = {}


def _field_types(cls: type[Any]) -> dict[str, str]:
    # NOTE: kept per class: decoding a mesh's state asks for it at every nested endpoint.
    found = _FIELD_TYPES.get(cls)
    if found is None:
        found = _FIELD_TYPES[cls] = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    return found


def _convert(type_name: str, value: Any) -> Any:
    if type_name.endswith(" | None"):
        return None if value is None else _convert(type_name[: -len(" | None")], value)
    if type_name.startswith("tuple[tuple[str, str]"):
        return tuple((str(k), str(v)) for k, v in value)
    if type_name.startswith("tuple["):
        inner = type_name[len("tuple[") :].split(",", maxsplit=1)[0].strip()
        return tuple(_convert(inner, item) for item in value)
    if type_name in _NESTED:
        return _build(_NESTED[type_name], value)
    if type_name in _ENUMS:
        return _ENUMS[type_name](value)
    return value


DEFAULT_WEIGHT = 100
"""A cluster's weight when the operator set none: every ready pod gets an equal share."""
MAX_WEIGHT = 10_000


def encode_weight(weight: int) -> bytes:
    """The value of a cluster weight key (``navigator.keys.cluster_weight_key``)."""
    if not 0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"a cluster weight is 0 (drained) to {MAX_WEIGHT}, got {weight}")
    return json.dumps({"weight": weight}, separators=(",", ":")).encode()


def decode_weight(data: bytes) -> int:
    try:
        weight = json.loads(data)["weight"]
    except (ValueError, TypeError, KeyError) as exc:
        raise DecodeError(f"cannot decode a cluster weight: {exc}") from exc
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= MAX_WEIGHT:
        raise DecodeError(f"a cluster weight is 0 to {MAX_WEIGHT}, got {weight!r}")
    return weight


class TracingProvider(enum.StrEnum):
    ZIPKIN = "zipkin"
    OPENTELEMETRY = "opentelemetry"


@dataclasses.dataclass(frozen=True, slots=True)
class Tracing:
    """The mesh-wide tracing setting, applied to every HTTP connection manager."""

    provider: TracingProvider
    collector: str
    """``host:port`` of the collector (Zipkin HTTP, or OpenTelemetry gRPC)."""
    sampling: float = 1.0
    """Percent of requests that start a trace (0 to 100)."""

    @property
    def host(self) -> str:
        return self.collector.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.collector.rpartition(":")[2])


def encode_tracing(tracing: Tracing) -> bytes:
    """The value of ``navigator.keys.TRACING``; raises ValueError on a bad setting."""
    checked = decode_tracing(
        json.dumps(
            {
                "provider": str(tracing.provider),
                "collector": tracing.collector,
                "sampling": tracing.sampling,
            }
        ).encode()
    )
    return json.dumps(dataclasses.asdict(checked), sort_keys=True, separators=(",", ":")).encode()


def decode_tracing(data: bytes) -> Tracing:
    try:
        raw = json.loads(data)
        provider = TracingProvider(raw["provider"])
        collector = str(raw["collector"])
        sampling = float(raw.get("sampling", 1.0))
        host, sep, port = collector.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"collector {collector!r} is not host:port")
        if not 0.0 <= sampling <= 100.0:
            raise ValueError(f"sampling {sampling} is not a percentage")
    except (ValueError, TypeError, KeyError) as exc:
        raise DecodeError(f"bad tracing setting: {exc}") from exc
    return Tracing(provider=provider, collector=collector, sampling=sampling)
