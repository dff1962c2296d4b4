"""The stored form of translated configuration, shared by translators and xDS front-ends.

A translator publishes, per app and Kubernetes cluster, one *app snapshot* (listeners,
clusters, routes, and the names of the endpoint assignments the app needs) and, once per
Envoy cluster, a shared endpoint assignment (see ``navigator.keys``). Both hold resources
already serialized as protobuf, so a front-end never re-encodes them per sidecar.

Versions are content hashes: two translators that derive the same state write the same
bytes, and two front-ends serving them give a sidecar the same versions.

NOTE: the JSON layout of an app snapshot is part of the stable etcd API.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

TYPE_URLS = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
"""Make-before-break order: clusters, endpoints, listeners, routes."""

SHORT_NAMES = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds"}

FORMAT = 1


class SnapshotError(ValueError):
    """A stored snapshot cannot be read."""


def content_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


def version_of(items: Iterable[tuple[str, str]]) -> str:
    """The version of a set of (name, resource hash) pairs: independent of their order."""
    digest = hashlib.sha256()
    for name, res_hash in sorted(items):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(res_hash.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    name: str
    body: bytes
    """The resource message serialized deterministically (not wrapped in Any)."""
    hash: str = ""

    def __post_init__(self) -> None:
        if not self.hash:
            object.__setattr__(self, "hash", content_hash(self.body))


@dataclasses.dataclass(frozen=True, slots=True)
class AppSnapshot:
    app: str
    cluster: str
    resources: Mapping[str, tuple[Resource, ...]]
    """By type URL (CDS, LDS, RDS); each tuple sorted by name."""
    endpoints: tuple[str, ...]
    """Envoy cluster names whose shared endpoint assignments this app needs, sorted."""

    @property
    def version(self) -> str:
        items: list[tuple[str, str]] = []
        for type_url in sorted(self.resources):
            items.extend((f"{type_url}|{r.name}", r.hash) for r in self.resources[type_url])
        items.extend((f"eds|{name}", "") for name in self.endpoints)
        return version_of(items)


def encode_app(snap: AppSnapshot) -> bytes:
    doc: dict[str, Any] = {
        "format": FORMAT,
        "app": snap.app,
        "cluster": snap.cluster,
        "version": snap.version,
        "resources": {
            type_url: [
                {"name": r.name, "hash": r.hash, "body": base64.b64encode(r.body).decode()}
                for r in sorted(res, key=lambda r: r.name)
            ]
            for type_url, res in sorted(snap.resources.items())
        },
        "endpoints": sorted(snap.endpoints),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_app(data: bytes) -> AppSnapshot:
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise SnapshotError(f"unsupported snapshot format {doc.get('format')!r}")
        resources = {
            type_url: tuple(
                Resource(name=r["name"], body=base64.b64decode(r["body"]), hash=r["hash"])
                for r in items
            )
            for type_url, items in doc["resources"].items()
        }
        return AppSnapshot(
            app=doc["app"],
            cluster=doc["cluster"],
            resources=resources,
            endpoints=tuple(doc["endpoints"]),
        )
    except SnapshotError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise SnapshotError(f"cannot decode app snapshot: {exc}") from exc


def resource_to_dict(type_url: str, body: bytes) -> dict[str, Any]:
    """A serialized resource as the JSON-like dict Envoy's admin shows (for people and tests)."""
    # NOTE: importing these registers every message a resource may embed in an Any.
    from envoy.config.cluster.v3 import cluster_pb2  # noqa: F401
    from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: F401
    from envoy.config.listener.v3 import listener_pb2  # noqa: F401
    from envoy.config.route.v3 import route_pb2  # noqa: F401
    from envoy.config.trace.v3 import opentelemetry_pb2, zipkin_pb2  # noqa: F401
    from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
    from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
        http_connection_manager_pb2,
    )
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
    from google.protobuf import json_format, symbol_database

    full_name = type_url.rpartition("/")[2]
    cls = symbol_database.Default().GetSymbol(full_name)
    msg = cls.FromString(body)
    # NOTE: a JSON round trip turns the OrderedDicts of embedded Anys into plain dicts.
    out: dict[str, Any] = json.loads(
        json_format.MessageToJson(msg, preserving_proto_field_name=True, sort_keys=True)
    )
    return out
