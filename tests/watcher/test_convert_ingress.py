"""Tables for the Ingress converter: ``networking.k8s.io/v1`` JSON in, ``model.Ingress`` (or
a reason) out, and the round trip of the result through the model's JSON."""

from __future__ import annotations

from typing import Any

import pytest

from navigator import keys, model
from navigator.watcher import convert, informer

C = model.ClusterName("east")
PREFIX = model.PathType.PREFIX
EXACT = model.PathType.EXACT


def ing(spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"namespace": "shop", "name": "web", **meta},
        "spec": spec,
    }


def backend(name: str = "item", number: int | None = 80, port_name: str | None = None) -> Any:
    port: dict[str, Any] = {}
    if number is not None:
        port["number"] = number
    if port_name is not None:
        port["name"] = port_name
    return {"service": {"name": name, "port": port}}


def rule(host: str | None, *paths: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"http": {"paths": list(paths)}}
    if host is not None:
        out["host"] = host
    return out


def path(value: str | None, path_type: str | None, be: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"backend": backend() if be is None else be}
    if value is not None:
        out["path"] = value
    if path_type is not None:
        out["pathType"] = path_type
    return out


def P(
    value: str, path_type: model.PathType = PREFIX, service: str = "item", port: int | str = 80
) -> model.IngressPath:
    return model.IngressPath(path=value, path_type=path_type, service=service, port=port)


def ingress(
    *rules: model.IngressRule, cls: str = "public", default: model.IngressPath | None = None
) -> model.Ingress:
    return model.Ingress(
        cluster=C,
        namespace="shop",
        name="web",
        ingress_class=cls,
        rules=rules,
        default_backend=default,
    )


def R(host: str, *paths: model.IngressPath) -> model.IngressRule:
    return model.IngressRule(host=host, paths=paths)


VALID = [
    pytest.param(
        ing({"ingressClassName": "public", "rules": [rule("a.example.com", path("/", "Prefix"))]}),
        ingress(R("a.example.com", P("/"))),
        id="class-name-prefix",
    ),
    pytest.param(
        ing(
            {"rules": [rule("a.example.com", path("/", "Prefix"))]},
            annotations={"kubernetes.io/ingress.class": "public"},
        ),
        ingress(R("a.example.com", P("/"))),
        id="legacy-class-annotation",
    ),
    pytest.param(
        ing(
            {"ingressClassName": "public", "rules": [rule("a", path("/", "Prefix"))]},
            annotations={"kubernetes.io/ingress.class": "other"},
        ),
        ingress(R("a", P("/"))),
        id="class-name-wins-over-annotation",
    ),
    pytest.param(
        ing({"rules": [rule(None, path("/", "Prefix"))]}),
        ingress(R("", P("/")), cls=""),
        id="no-class-no-host",
    ),
    pytest.param(
        ing(
            {
                "ingressClassName": "public",
                "rules": [
                    rule(
                        "*.Example.com",
                        path("/api", "Exact"),
                        path("/static", "ImplementationSpecific"),
                        path(None, None),
                    )
                ],
            }
        ),
        ingress(R("*.example.com", P("/api", EXACT), P("/static"), P("/"))),
        id="path-types-implementation-specific-is-prefix-host-lowercased",
    ),
    pytest.param(
        ing(
            {
                "ingressClassName": "public",
                "rules": [rule("a", path("/", "Prefix", backend("item", None, "http")))],
            }
        ),
        ingress(R("a", P("/", port="http"))),
        id="named-port",
    ),
    pytest.param(
        ing({"ingressClassName": "public", "defaultBackend": backend("fallback", 8080)}),
        ingress(default=P("/", service="fallback", port=8080)),
        id="default-backend-only",
    ),
    pytest.param(
        ing(
            {
                "ingressClassName": "public",
                "rules": [
                    rule(
                        "a",
                        path(
                            "/b",
                            "Prefix",
                            {
                                "resource": {
                                    "apiGroup": "k8s.example.com",
                                    "kind": "Bucket",
                                    "name": "assets",
                                }
                            },
                        ),
                    )
                ],
            }
        ),
        ingress(
            R(
                "a",
                model.IngressPath(
                    path="/b", path_type=PREFIX, service="", port=0, resource="Bucket/assets"
                ),
            )
        ),
        id="resource-backend-kept-for-translation-to-report",
    ),
    pytest.param(
        ing({"ingressClassName": "public", "rules": [{"host": "a"}]}),
        ingress(R("a")),
        id="rule-without-http",
    ),
]


@pytest.mark.parametrize(("obj", "expected"), VALID)
def test_valid(obj: dict[str, Any], expected: model.Ingress) -> None:
    got = convert.convert(C, model.Kind.INGRESS, obj)
    assert got == expected
    assert model.decode(model.Kind.INGRESS, model.encode(got)) == got
    assert convert.identity_of(got) == convert.identity(C, model.Kind.INGRESS, obj)


INVALID = [
    pytest.param(ing({"rules": [rule("a", path("api", "Prefix"))]}), "does not start with /",
                 id="relative-path"),
    pytest.param(ing({"rules": [rule("a", path("/", "Regex"))]}), "unknown path type",
                 id="unknown-path-type"),
    pytest.param(ing({"rules": [rule("a", path("/", "Prefix", backend("item", None)))]}),
                 "exactly one of number, name", id="port-without-number-or-name"),
    pytest.param(ing({"rules": [rule("a", path("/", "Prefix", backend("item", 80, "http")))]}),
                 "exactly one of number, name", id="port-with-number-and-name"),
    pytest.param(ing({"rules": [rule("a", path("/", "Prefix", backend("item", 0)))]}),
                 "out of range", id="port-zero"),
    pytest.param(ing({"rules": [rule("a", path("/", "Prefix", {}))]}),
                 "exactly one of service, resource", id="empty-backend"),
    pytest.param(ing({"rules": [rule("a", path("/", "Prefix", backend("a/b")))]}),
                 "invalid name", id="service-name-with-slash"),
    pytest.param(ing({"rules": "nope"}), "expected a list", id="rules-not-a-list"),
    pytest.param(ing({"ingressClassName": 3}), "expected a string", id="class-not-a-string"),
    pytest.param({"metadata": {"namespace": "shop", "name": "web"}}, "spec", id="no-spec"),
]  # fmt: skip


@pytest.mark.parametrize(("obj", "reason"), INVALID)
def test_invalid(obj: dict[str, Any], reason: str) -> None:
    with pytest.raises(convert.ConversionError, match=reason):
        convert.convert(C, model.Kind.INGRESS, obj)


def test_state_key_round_trip() -> None:
    got = convert.convert(C, model.Kind.INGRESS, ing({"ingressClassName": "public"}))
    key = keys.state_key(got)
    assert keys.parse_state_key(key) == convert.identity_of(got)


def test_ingresses_are_watched_and_optional() -> None:
    by_kind = {r.kind: r for r in informer.RESOURCES}
    res = by_kind[model.Kind.INGRESS]
    assert res.path == "/apis/networking.k8s.io/v1/ingresses"
    assert res.optional
    assert not res.custom
