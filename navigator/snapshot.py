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
from collections.abc import Iterable, Mapping, Sequence
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
    return version_of_sorted(sorted(items))


def version_of_sorted(items: Sequence[tuple[str, str]]) -> str:
    """``version_of`` for pairs already sorted (one hash over one joined string)."""
    text = "".join(f"{name}\0{res_hash}\n" for name, res_hash in items)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


CHUNK_SIZE = 512 * 1024
"""An app snapshot larger than this is stored as parts of at most this size (etcd refuses a
request over 1.5 MiB, and a value near that limit makes every watcher of it slow)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Parts:
    """An encoded app snapshot as stored: the head (the app key's value) and its chunks."""

    head: bytes
    chunks: tuple[tuple[str, bytes], ...]
    """(content hash, bytes), in order; empty when the snapshot fits in its head."""


def split_app(body: bytes, chunk_size: int = CHUNK_SIZE) -> Parts:
    """``body`` (from ``encode_app``) as it is written to etcd.

    NOTE: chunks are named by their content hash, so a head never references a chunk that a
    later snapshot overwrote: a reader holding a head either finds its exact parts or waits.
    """
    if len(body) <= chunk_size:
        return Parts(body, ())
    chunks = tuple(
        (content_hash(body[i : i + chunk_size]), body[i : i + chunk_size])
        for i in range(0, len(body), chunk_size)
    )
    head = {
        "format": FORMAT,
        "chunks": [digest for digest, _ in chunks],
        "size": len(body),
        "hash": content_hash(body),
    }
    return Parts(json.dumps(head, sort_keys=True, separators=(",", ":")).encode(), chunks)


def head_chunks(value: bytes) -> tuple[str, ...] | None:
    """The chunk hashes a stored head names, in order; None when ``value`` is a whole snapshot."""
    # NOTE: a head is small (a hash per 512 KiB) and has no "resources"; a snapshot has them.
    if len(value) > 64 * 1024 or b'"chunks"' not in value:
        return None
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if not isinstance(doc, dict) or "chunks" not in doc or "resources" in doc:
        return None
    chunks = doc["chunks"]
    if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
        raise SnapshotError("a snapshot head's chunks must be a list of hashes")
    return tuple(chunks)


def join_chunks(value: bytes, chunks: Iterable[bytes]) -> bytes:
    """The whole snapshot from its head and its chunks' bytes; checks size and hash."""
    body = b"".join(chunks)
    doc = json.loads(value)
    if len(body) != doc.get("size") or content_hash(body) != doc.get("hash"):
        raise SnapshotError("the parts of a snapshot do not add up to it (size or hash)")
    return body


def decode_app(data: bytes, *, bodies: bool = True) -> AppSnapshot:
    """Inverse of ``encode_app``; without ``bodies`` the resources keep their names and
    hashes only (empty bodies): enough for versions, at half the cost."""
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise SnapshotError(f"unsupported snapshot format {doc.get('format')!r}")
        resources = {
            type_url: tuple(
                Resource(
                    name=r["name"],
                    body=base64.b64decode(r["body"]) if bodies else b"",
                    hash=r["hash"],
                )
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
