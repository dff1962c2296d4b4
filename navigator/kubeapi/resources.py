"""The one table of resource kinds the local API server serves.

Discovery, OpenAPI, routing, validation and defaulting are all derived from ``RESOURCES``, so
adding a kind (or a custom resource of the mesh) is one entry here and nothing else.

``RESOURCES`` are the stored kinds. ``VIRTUAL`` kinds (TokenReview) are only ever created:
the server computes the answer and stores nothing. A ``Subresource`` such as
``serviceaccounts/token`` is likewise create-only and answered in another kind (TokenRequest).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from navigator.kubeapi import errors
from navigator.kubeapi.validation import (
    BOOL,
    INT,
    INT_OR_STR,
    OBJECT_REFERENCE,
    STR,
    AnyValue,
    Array,
    Map,
    Obj,
    Schema,
    top_level,
)

MESH_GROUP = "navigator.avito.ru"
AUTHENTICATION_GROUP = "authentication.k8s.io"


class DefaultingContext(Protocol):
    """What defaulting may ask of the store (state-dependent defaults such as a ClusterIP)."""

    def allocate_cluster_ip(self) -> str: ...


Defaulter = Callable[[dict[str, Any], dict[str, Any] | None, DefaultingContext], None]
"""Fills defaults into a new object in place; ``old`` is the stored object on update.
May raise ``errors.ApiError`` (for example on a change of an immutable field)."""


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool
    schema: Schema
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    crd: bool = False  # custom resource: CRD-style errors, no strategic merge patch
    status_subresource: bool = False
    # Services and custom resources answer DELETE with the deleted object, others with Status.
    return_deleted_object: bool = False
    allow_create_on_update: bool = False
    defaulter: Defaulter | None = field(default=None, compare=False)
    subresources: tuple[Subresource, ...] = ()  # create-only ones; ``status`` is apart
    virtual: bool = False  # create-only and never stored (TokenReview)
    # The protobuf encoding, for the kinds that kubectl's typed commands (``create token``,
    # ``create serviceaccount``) send as protobuf; other kinds take JSON or YAML only.
    proto: ProtoMessage | None = field(default=None, compare=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def qualified(self) -> str:
        """How error messages name the resource: ``services``, ``nexuses.navigator.avito.ru``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def path_prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/{self.version}"


@dataclass(frozen=True)
class Subresource:
    """A create-only subresource whose request and answer are of another kind:
    ``POST .../serviceaccounts/{name}/token`` takes and returns a TokenRequest."""

    name: str
    kind: ResourceType


@dataclass(frozen=True)
class ProtoField:
    """One field of a protobuf message: its JSON name and ``type``, a scalar (``string``,
    ``int64``, ``bool``, ``map`` for map<string, string>) or a message."""

    name: str
    type: str | ProtoMessage = "string"
    repeated: bool = False
    # A pointer in Go (``*int64``): a zero sent is a value. Otherwise zero means unset, as the
    # JSON encoding's omitempty has it.
    pointer: bool = False


ProtoMessage = Mapping[int, ProtoField]


# --- Schemas ---------------------------------------------------------------------------------

SERVICE_PORT = Obj(
    {
        "name": STR,
        "port": INT,
        "protocol": STR,
        "targetPort": INT_OR_STR,
        "appProtocol": STR,
        "nodePort": INT,
    }
)
SERVICE = top_level(
    spec=Obj(
        {
            "type": STR,
            "clusterIP": STR,
            "clusterIPs": Array(STR),
            "ports": Array(SERVICE_PORT),
            "selector": Map(STR),
            "externalName": STR,
            "externalIPs": Array(STR),
            "sessionAffinity": STR,
            "sessionAffinityConfig": AnyValue(),
            "ipFamilies": Array(STR),
            "ipFamilyPolicy": STR,
            "internalTrafficPolicy": STR,
            "externalTrafficPolicy": STR,
            "publishNotReadyAddresses": BOOL,
            "loadBalancerIP": STR,
            "loadBalancerClass": STR,
            "loadBalancerSourceRanges": Array(STR),
            "allocateLoadBalancerNodePorts": BOOL,
            "healthCheckNodePort": INT,
            "trafficDistribution": STR,
        }
    ),
    status=Obj({"loadBalancer": AnyValue(), "conditions": Array(AnyValue())}),
)

ENDPOINT_ADDRESS = Obj(
    {"ip": STR, "hostname": STR, "nodeName": STR, "targetRef": OBJECT_REFERENCE}
)
ENDPOINT_PORT = Obj({"name": STR, "port": INT, "protocol": STR, "appProtocol": STR})
ENDPOINTS = top_level(
    subsets=Array(
        Obj(
            {
                "addresses": Array(ENDPOINT_ADDRESS),
                "notReadyAddresses": Array(ENDPOINT_ADDRESS),
                "ports": Array(ENDPOINT_PORT),
            }
        )
    )
)

ENDPOINT_SLICE = top_level(
    addressType=STR,
    endpoints=Array(
        Obj(
            {
                "addresses": Array(STR),
                "conditions": Obj({"ready": BOOL, "serving": BOOL, "terminating": BOOL}),
                "hostname": STR,
                "targetRef": OBJECT_REFERENCE,
                "nodeName": STR,
                "zone": STR,
                "hints": AnyValue(),
                "deprecatedTopology": Map(STR),
            }
        )
    ),
    ports=Array(ENDPOINT_PORT),
)

NODE = top_level(
    spec=Obj(
        {
            "podCIDR": STR,
            "podCIDRs": Array(STR),
            "providerID": STR,
            "unschedulable": BOOL,
            "taints": Array(Obj({"key": STR, "value": STR, "effect": STR, "timeAdded": STR})),
            "configSource": AnyValue(),
            "externalID": STR,
        }
    ),
    status=Obj(
        {
            "addresses": Array(Obj({"type": STR, "address": STR})),
            "conditions": Array(AnyValue()),
            "capacity": Map(INT_OR_STR),
            "allocatable": Map(INT_OR_STR),
            "nodeInfo": AnyValue(),
            "daemonEndpoints": AnyValue(),
            "images": Array(AnyValue()),
            "volumesInUse": Array(STR),
            "volumesAttached": Array(AnyValue()),
            "phase": STR,
            "config": AnyValue(),
            "features": AnyValue(),
            "runtimeHandlers": Array(AnyValue()),
        }
    ),
)

NAMESPACE = top_level(
    spec=Obj({"finalizers": Array(STR)}),
    status=Obj({"phase": STR, "conditions": Array(AnyValue())}),
)

# Pods are optional for the mesh: known top level, free-form spec and status.
POD = top_level(spec=AnyValue(), status=AnyValue())

INGRESS = top_level(
    spec=Obj(
        {
            "ingressClassName": STR,
            "defaultBackend": AnyValue(),
            "tls": Array(Obj({"hosts": Array(STR), "secretName": STR})),
            "rules": Array(
                Obj(
                    {
                        "host": STR,
                        "http": Obj(
                            {
                                "paths": Array(
                                    Obj({"path": STR, "pathType": STR, "backend": AnyValue()})
                                )
                            }
                        ),
                    }
                )
            ),
        }
    ),
    status=AnyValue(),
)

SERVICE_ACCOUNT = top_level(
    secrets=Array(OBJECT_REFERENCE),
    imagePullSecrets=Array(Obj({"name": STR})),
    automountServiceAccountToken=BOOL,
)

SECRET = top_level(data=Map(STR), stringData=Map(STR), type=STR, immutable=BOOL)

BOUND_OBJECT_REFERENCE = Obj({"kind": STR, "apiVersion": STR, "name": STR, "uid": STR})
TOKEN_REQUEST = top_level(
    spec=Obj(
        {
            "audiences": Array(STR),
            "expirationSeconds": INT,
            "boundObjectRef": BOUND_OBJECT_REFERENCE,
        }
    ),
    status=Obj({"token": STR, "expirationTimestamp": STR}),
)
TOKEN_REVIEW = top_level(
    spec=Obj({"token": STR, "audiences": Array(STR)}),
    status=AnyValue(),
)

# --- Protobuf field numbers (``generated.proto`` of k8s.io/api and apimachinery) -----------

PROTO_OWNER_REFERENCE: ProtoMessage = {
    1: ProtoField("kind"), 3: ProtoField("name"), 4: ProtoField("uid"),
    5: ProtoField("apiVersion"), 6: ProtoField("controller", "bool", pointer=True),
    7: ProtoField("blockOwnerDeletion", "bool", pointer=True),
}
PROTO_OBJECT_META: ProtoMessage = {
    1: ProtoField("name"), 2: ProtoField("generateName"), 3: ProtoField("namespace"),
    5: ProtoField("uid"), 6: ProtoField("resourceVersion"), 11: ProtoField("labels", "map"),
    12: ProtoField("annotations", "map"),
    13: ProtoField("ownerReferences", PROTO_OWNER_REFERENCE, repeated=True),
    14: ProtoField("finalizers", repeated=True),
}
PROTO_OBJECT_REFERENCE: ProtoMessage = {
    1: ProtoField("kind"), 2: ProtoField("namespace"), 3: ProtoField("name"),
    4: ProtoField("uid"), 5: ProtoField("apiVersion"), 6: ProtoField("resourceVersion"),
    7: ProtoField("fieldPath"),
}
PROTO_SERVICE_ACCOUNT: ProtoMessage = {
    1: ProtoField("metadata", PROTO_OBJECT_META),
    2: ProtoField("secrets", PROTO_OBJECT_REFERENCE, repeated=True),
    3: ProtoField("imagePullSecrets", {1: ProtoField("name")}, repeated=True),
    4: ProtoField("automountServiceAccountToken", "bool", pointer=True),
}
PROTO_TOKEN_REQUEST: ProtoMessage = {
    1: ProtoField("metadata", PROTO_OBJECT_META),
    2: ProtoField("spec", {
        1: ProtoField("audiences", repeated=True),
        3: ProtoField("boundObjectRef", {1: ProtoField("kind"), 2: ProtoField("apiVersion"),
                                         3: ProtoField("name"), 4: ProtoField("uid")}),
        4: ProtoField("expirationSeconds", "int64", pointer=True),
    }),
}
PROTO_TOKEN_REVIEW: ProtoMessage = {
    1: ProtoField("metadata", PROTO_OBJECT_META),
    2: ProtoField("spec", {1: ProtoField("token"), 2: ProtoField("audiences", repeated=True)}),
}

NAMESPACED_NAME = Obj({"namespace": STR, "name": STR})
CANARY_RELEASE = top_level(
    spec=Obj({"backends": Array(NAMESPACED_NAME.extend({"weight": INT}))}),
    status=AnyValue(),
)
NEXUS = top_level(
    spec=Obj({"appName": STR, "services": Array(NAMESPACED_NAME)}),
    status=AnyValue(),
)
GATEWAY = top_level(spec=Obj({"ingressClass": STR, "port": INT}), status=AnyValue())


# --- Defaulting ------------------------------------------------------------------------------


def default_service(
    obj: dict[str, Any], old: dict[str, Any] | None, ctx: DefaultingContext
) -> None:
    """What the real Service strategy does that clients see: type, ports, ClusterIP.

    Invariant: a Service other than ExternalName or headless always has a ClusterIP, and an
    update that omits it keeps the old one (as a real server does); changing it is Invalid.
    """
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        if port.get("targetPort") is None and port.get("port") is not None:
            port["targetPort"] = port["port"]
    if spec["type"] == "ExternalName":
        return
    old_ip = ((old or {}).get("spec") or {}).get("clusterIP")
    if not spec.get("clusterIP"):
        spec["clusterIP"] = old_ip or ctx.allocate_cluster_ip()
    elif old_ip and spec["clusterIP"] != old_ip:
        raise errors.invalid(
            "Service", "", obj["metadata"]["name"],
            [("spec.clusterIPs[0]", "FieldValueInvalid",
              f'Invalid value: []string{{"{spec["clusterIP"]}"}}: may not change once set')],
        )
    if spec["clusterIP"] != "None":
        spec["clusterIPs"] = [spec["clusterIP"]]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")


def default_namespace(
    obj: dict[str, Any], old: dict[str, Any] | None, ctx: DefaultingContext
) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")


def default_secret(
    obj: dict[str, Any], old: dict[str, Any] | None, ctx: DefaultingContext
) -> None:
    """As the real server's conversion does: ``stringData`` is written into ``data``
    (base64) and never stored; ``type`` defaults to Opaque."""
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = dict(obj.get("data") or {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data
    if not obj.get("type"):
        obj["type"] = "Opaque"


_ALL = ("all",)

# Not stored and not in ``RESOURCES``: the kinds of the token APIs.
TOKEN_REQUEST_KIND = ResourceType(AUTHENTICATION_GROUP, "v1", "TokenRequest", "tokenrequests",
                                  True, TOKEN_REQUEST, proto=PROTO_TOKEN_REQUEST)
TOKEN_REVIEW_KIND = ResourceType(AUTHENTICATION_GROUP, "v1", "TokenReview", "tokenreviews",
                                 False, TOKEN_REVIEW, virtual=True, proto=PROTO_TOKEN_REVIEW)

RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Namespace", "namespaces", False, NAMESPACE, ("ns",),
                 status_subresource=True, return_deleted_object=True,
                 defaulter=default_namespace),
    ResourceType("", "v1", "Service", "services", True, SERVICE, ("svc",), _ALL,
                 status_subresource=True, return_deleted_object=True,
                 defaulter=default_service),
    ResourceType("", "v1", "Endpoints", "endpoints", True, ENDPOINTS, ("ep",),
                 allow_create_on_update=True),
    ResourceType("", "v1", "Node", "nodes", False, NODE, ("no",), status_subresource=True,
                 return_deleted_object=True),
    ResourceType("", "v1", "Pod", "pods", True, POD, ("po",), _ALL, status_subresource=True,
                 return_deleted_object=True),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", True, SERVICE_ACCOUNT, ("sa",),
                 return_deleted_object=True, proto=PROTO_SERVICE_ACCOUNT,
                 subresources=(Subresource("token", TOKEN_REQUEST_KIND),)),
    ResourceType("", "v1", "Secret", "secrets", True, SECRET, defaulter=default_secret),
    ResourceType("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", True,
                 ENDPOINT_SLICE),
    ResourceType("networking.k8s.io", "v1", "Ingress", "ingresses", True, INGRESS, ("ing",),
                 status_subresource=True, return_deleted_object=True),
    ResourceType(MESH_GROUP, "v1", "CanaryRelease", "canaryreleases", True, CANARY_RELEASE,
                 crd=True, status_subresource=True, return_deleted_object=True),
    ResourceType(MESH_GROUP, "v1", "Nexus", "nexuses", True, NEXUS, crd=True,
                 status_subresource=True, return_deleted_object=True),
    ResourceType(MESH_GROUP, "v1", "Gateway", "gateways", True, GATEWAY, crd=True,
                 status_subresource=True, return_deleted_object=True),
)


VIRTUAL: tuple[ResourceType, ...] = (TOKEN_REVIEW_KIND,)


def group_versions() -> dict[tuple[str, str], list[ResourceType]]:
    """Resource types, stored and virtual, by (group, version), in table order."""
    out: dict[tuple[str, str], list[ResourceType]] = {}
    for rt in (*RESOURCES, *VIRTUAL):
        out.setdefault((rt.group, rt.version), []).append(rt)
    return out


def virtual_kind(group: str, plural: str) -> ResourceType | None:
    for rt in VIRTUAL:
        if rt.group == group and rt.plural == plural:
            return rt
    return None


def any_kind(api_version: str, kind: str) -> ResourceType | None:
    """A kind the server takes in a request body: stored, virtual, or a subresource's."""
    subs = (sub.kind for rt in RESOURCES for sub in rt.subresources)
    for rt in (*RESOURCES, *VIRTUAL, *subs):
        if rt.api_version == api_version and rt.kind == kind:
            return rt
    return None


def by_kind(api_version: str, kind: str) -> ResourceType | None:
    """A stored kind (virtual ones are never created through the store)."""
    for rt in RESOURCES:
        if rt.api_version == api_version and rt.kind == kind:
            return rt
    return None
