"""Discovery and OpenAPI v3 documents, derived from the resource table.

kubectl resolves names (``svc``, ``nexus``) through legacy discovery (``/api``, ``/apis``) and,
before any create, replace or patch, reads ``/openapi/v3``: when the PATCH operation of the
kind declares a ``fieldValidation`` query parameter it sends ``?fieldValidation=Strict`` and
leaves validation to the server, so it needs no client-side schema. The documents are built
once per process (they only depend on the table) and carry a content hash, as kubectl caches
them by ``serverRelativeURL``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from navigator.kubeapi import resources
from navigator.kubeapi.resources import ResourceType

VERSION_INFO = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-navigator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def api_resource_list(group: str, version: str) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for rt in resources.group_versions()[(group, version)]:
        entry: dict[str, Any] = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": ["create"] if rt.virtual else
                     [v for v in _VERBS if rt.namespaced or v != "deletecollection"],
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        out.append(entry)
        if rt.status_subresource:
            out.append({"name": f"{rt.plural}/status", "singularName": "",
                        "namespaced": rt.namespaced, "kind": rt.kind,
                        "verbs": ["get", "patch", "update"]})
        for sub in rt.subresources:
            out.append({"name": f"{rt.plural}/{sub.name}", "singularName": "",
                        "namespaced": rt.namespaced, "group": sub.kind.group,
                        "version": sub.kind.version, "kind": sub.kind.kind,
                        "verbs": ["create"]})
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                        "serverAddress": server_address}],
    }


def api_group(group: str) -> dict[str, Any]:
    versions = [
        {"groupVersion": f"{g}/{v}", "version": v}
        for (g, v) in resources.group_versions() if g == group
    ]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": versions,
            "preferredVersion": versions[0]}


def api_group_list() -> dict[str, Any]:
    groups = sorted({g for (g, _) in resources.group_versions() if g})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group(g) for g in groups]}


# --- OpenAPI v3 ------------------------------------------------------------------------------


def _schema_id(rt: ResourceType) -> str:
    prefix = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{prefix}.{rt.version}.{rt.kind}"


def _param(name: str, where: str = "query", type_: str = "string") -> dict[str, Any]:
    return {"name": name, "in": where, "schema": {"type": type_},
            **({"required": True} if where == "path" else {})}


def _operation(rt: ResourceType, action: str, path_params: list[str]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{_schema_id(rt)}"}
    params = [_param(p, "path") for p in path_params]
    if action in ("post", "put", "patch"):
        params += [_param("dryRun"), _param("fieldManager"), _param("fieldValidation")]
    if action in ("list", "watchlist"):
        params += [_param(p) for p in ("labelSelector", "fieldSelector", "continue",
                                       "resourceVersion", "resourceVersionMatch")]
        params += [_param(p, type_=t) for p, t in (("limit", "integer"), ("watch", "boolean"),
                                                   ("allowWatchBookmarks", "boolean"),
                                                   ("timeoutSeconds", "integer"))]
    op: dict[str, Any] = {
        "operationId": f"{action}{rt.kind}",
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version,
                                            "kind": rt.kind},
        "parameters": params,
        "responses": {"200": {"description": "OK",
                              "content": {"application/json": {"schema": ref}}}},
    }
    if action in ("post", "put"):
        op["requestBody"] = {"content": {"*/*": {"schema": ref}}, "required": True}
    if action == "patch":
        op["requestBody"] = {"content": {
            media: {"schema": {"type": "object"}}
            for media in ("application/json-patch+json", "application/merge-patch+json",
                          "application/strategic-merge-patch+json")
        }, "required": True}
    return op


def _paths(rt: ResourceType) -> dict[str, Any]:
    base = rt.path_prefix if rt.path_prefix.startswith("/apis") else "/api/v1"
    scope = f"{base}/namespaces/{{namespace}}" if rt.namespaced else base
    ns = ["namespace"] if rt.namespaced else []
    coll, item = f"{scope}/{rt.plural}", f"{scope}/{rt.plural}/{{name}}"
    if rt.virtual:
        return {coll: {"post": _operation(rt, "post", ns)}}
    paths: dict[str, Any] = {
        coll: {"get": _operation(rt, "list", ns), "post": _operation(rt, "post", ns)},
        item: {a: _operation(rt, a, [*ns, "name"])
               for a in ("get", "put", "patch", "delete")},
    }
    if rt.namespaced:
        paths[coll]["delete"] = _operation(rt, "deletecollection", ns)
        paths[f"{base}/{rt.plural}"] = {"get": _operation(rt, "list", [])}
    if rt.status_subresource:
        paths[f"{item}/status"] = {a: _operation(rt, a, [*ns, "name"])
                                   for a in ("get", "put", "patch")}
    for sub in rt.subresources:
        paths[f"{item}/{sub.name}"] = {"post": _operation(sub.kind, "post", [*ns, "name"])}
    return paths


def _schema(rt: ResourceType) -> dict[str, Any]:
    schema = rt.schema.openapi()
    schema["x-kubernetes-group-version-kind"] = [
        {"group": rt.group, "version": rt.version, "kind": rt.kind}
    ]
    return schema


@functools.cache
def documents() -> dict[str, tuple[bytes, str]]:
    """``api/v1`` / ``apis/{group}/{version}`` -> (encoded document, content hash)."""
    out: dict[str, tuple[bytes, str]] = {}
    for (group, version), rts in resources.group_versions().items():
        doc = {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": VERSION_INFO["gitVersion"]},
            "paths": {p: ops for rt in rts for p, ops in _paths(rt).items()},
            "components": {"schemas": {
                _schema_id(kind): _schema(kind)
                for rt in rts for kind in (rt, *(sub.kind for sub in rt.subresources))
            }},
        }
        body = json.dumps(doc, sort_keys=True).encode()
        key = f"apis/{group}/{version}" if group else f"api/{version}"
        out[key] = (body, hashlib.sha512(body).hexdigest().upper()[:64])
    return out


def root_document() -> dict[str, Any]:
    return {"paths": {
        key: {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
        for key, (_, digest) in documents().items()
    }}
