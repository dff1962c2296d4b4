"""Ingress gateways: route order, host and path matching, missing backends, conflicts, the
generated protos, Envoy's own verdict on them, and real requests through a real Envoy."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import static_envoy
from aiohttp import web
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from navigator import model, snapshot
from navigator.lab import procs
from shards import gateway, translate

E = model.ClusterName("east")
W = model.ClusterName("west")
ERR = translate.Severity.ERROR
WARN = translate.Severity.WARNING
PREFIX = model.PathType.PREFIX
EXACT = model.PathType.EXACT

GW = model.Gateway(cluster=E, namespace="infra", name="public", ingress_class="pub", port=8080)


def _mesh(name: str, *ports: tuple[str, int], ns: str = "shop") -> translate.MeshService:
    return translate.MeshService(
        namespace=ns,
        name=name,
        ports=tuple(
            translate.MeshPort(
                namespace=ns,
                service=name,
                name=pname,
                port=number,
                protocol=model.Protocol.HTTP,
                cluster_ips={E: "10.0.0.1"},
                endpoints=(),
            )
            for pname, number in ports
        ),
        clusters=(E,),
    )


SERVICES: dict[tuple[str, str], translate.MeshService] = {
    ("shop", "item"): _mesh("item", ("http", 80), ("admin", 9000)),
    ("shop", "cart"): _mesh("cart", ("http", 8080)),
    ("shop", "fallback"): _mesh("fallback", ("", 80)),
    ("blog", "posts"): _mesh("posts", ("http", 80), ns="blog"),
}


def _p(
    path: str, service: str = "item", port: int | str = 80, path_type: model.PathType = PREFIX
) -> model.IngressPath:
    return model.IngressPath(path=path, path_type=path_type, service=service, port=port)


def _ing(
    name: str,
    *rules: tuple[str, tuple[model.IngressPath, ...]],
    ns: str = "shop",
    cls: str = "pub",
    cluster: model.ClusterName = E,
    default: model.IngressPath | None = None,
) -> model.Ingress:
    return model.Ingress(
        cluster=cluster,
        namespace=ns,
        name=name,
        ingress_class=cls,
        rules=tuple(model.IngressRule(host=h, paths=p) for h, p in rules),
        default_backend=default,
    )


def _shape(res: gateway.GatewayResources) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(host, [(match kind, path, cluster)]) from the generated RouteConfiguration."""
    rc = route_pb2.RouteConfiguration()
    rc.ParseFromString(res.routes[0].body)
    out = []
    for vh in rc.virtual_hosts:
        assert list(vh.domains) == [vh.name]
        routes = []
        for r in vh.routes:
            kind = r.match.WhichOneof("path_specifier")
            routes.append((kind, getattr(r.match, kind), r.route.cluster))
        out.append((vh.name, routes))
    return out


def _reasons(diags: list[translate.Diagnostic]) -> list[tuple[str, str, translate.Severity]]:
    return [(d.object, d.reason, d.severity) for d in diags]


# --- tables ----------------------------------------------------------------------------

ITEM, CART, FALLBACK = "shop/item:80", "shop/cart:8080", "shop/fallback:80"
SEP = "path_separated_prefix"

SHAPES = [
    pytest.param(
        [_ing("web", ("a.example.com", (_p("/"),)))],
        [("a.example.com", [("prefix", "/", ITEM)])],
        id="one-host-one-prefix",
    ),
    pytest.param(
        [
            _ing(
                "web",
                (
                    "a.example.com",
                    (
                        _p("/"),
                        _p("/api/", "cart", 8080),
                        _p("/api/v1", "cart", "http"),
                        _p("/api", "item", path_type=EXACT),
                        _p("/z", "item", 9000, EXACT),
                    ),
                ),
            )
        ],
        [
            (
                "a.example.com",
                [
                    ("path", "/api", ITEM),
                    ("path", "/z", "shop/item:9000"),
                    (SEP, "/api/v1", CART),
                    (SEP, "/api", CART),
                    ("prefix", "/", ITEM),
                ],
            )
        ],
        id="exact-first-then-longest-prefix-trailing-slash-dropped-named-port",
    ),
    pytest.param(
        [
            _ing("b", ("", (_p("/"),)), ("*.example.com", (_p("/", "cart", 8080),))),
            _ing("a", ("b.example.com", (_p("/x"),)), ("a.example.com", (_p("/y"),))),
        ],
        [
            ("a.example.com", [(SEP, "/y", ITEM)]),
            ("b.example.com", [(SEP, "/x", ITEM)]),
            ("*.example.com", [("prefix", "/", CART)]),
            ("*", [("prefix", "/", ITEM)]),
        ],
        id="hosts-sorted-wildcards-then-any-last",
    ),
    pytest.param(
        [
            _ing("web", ("a.example.com", (_p("/x"),)), ("a.example.com", (_p("/y"),))),
            _ing("shop2", ("a.example.com", (_p("/w", "cart", 8080),))),
        ],
        [("a.example.com", [(SEP, "/w", CART), (SEP, "/x", ITEM), (SEP, "/y", ITEM)])],
        id="rules-of-one-host-merged-across-ingresses",
    ),
    pytest.param(
        [
            _ing("web", ("a.example.com", (_p("/x"),))),
            _ing("dflt", default=_p("/", "fallback", 80)),
        ],
        [
            ("a.example.com", [(SEP, "/x", ITEM), ("prefix", "/", FALLBACK)]),
            ("*", [("prefix", "/", FALLBACK)]),
        ],
        id="default-backend-catches-the-rest-of-every-host",
    ),
    pytest.param(
        [
            _ing("web", ("a.example.com", (_p("/"),))),
            _ing("dflt", default=_p("/", "fallback", 80)),
        ],
        [("a.example.com", [("prefix", "/", ITEM)]), ("*", [("prefix", "/", FALLBACK)])],
        id="default-backend-not-added-behind-a-root-prefix",
    ),
    pytest.param(
        [
            _ing("web", ("a.example.com", (_p("/"),))),
            _ing("other", ("b.example.com", (_p("/"),)), cls="internal"),
            _ing("none", ("c.example.com", (_p("/"),)), cls=""),
        ],
        [("a.example.com", [("prefix", "/", ITEM)])],
        id="other-classes-ignored",
    ),
    pytest.param([], [], id="no-ingress-empty-route-configuration"),
]


@pytest.mark.parametrize(("ingresses", "expected"), SHAPES)
def test_routes(ingresses: list[model.Ingress], expected: list[Any]) -> None:
    res, diags = gateway.gateway_resources(GW, ingresses, SERVICES)
    assert diags == []
    assert res is not None
    assert _shape(res) == expected


def test_order_does_not_depend_on_input_order() -> None:
    ings = [
        _ing("b", ("a.example.com", (_p("/x"), _p("/x/y", "cart", 8080)))),
        _ing("a", ("a.example.com", (_p("/x", "cart", 8080, EXACT),)), ("", (_p("/"),))),
    ]
    first, _ = gateway.gateway_resources(GW, ings, SERVICES)
    second, _ = gateway.gateway_resources(GW, list(reversed(ings)), SERVICES)
    assert first is not None and second is not None
    assert first.routes == second.routes
    assert first.routes[0].body == second.routes[0].body


BAD = [
    pytest.param(
        [_ing("web", ("a", (_p("/x", "nope"), _p("/"))))],
        [("a", [("prefix", "/", ITEM)])],
        [("ingresses/shop/web", "IngressMissingService", ERR)],
        id="missing-service-skips-that-path",
    ),
    pytest.param(
        [_ing("web", ("a", (_p("/x", "item", 81), _p("/y", "item", "grpc"), _p("/"))))],
        [("a", [("prefix", "/", ITEM)])],
        [
            ("ingresses/shop/web", "IngressMissingPort", ERR),
            ("ingresses/shop/web", "IngressMissingPort", ERR),
        ],
        id="missing-port-number-and-name",
    ),
    pytest.param(
        [_ing("web", ("a", (_p("/"),)), ns="blog")],
        [],
        [("ingresses/blog/web", "IngressMissingService", ERR)],
        id="backend-looked-up-in-the-ingress-namespace",
    ),
    pytest.param(
        [
            _ing(
                "web",
                (
                    "a",
                    (
                        model.IngressPath(
                            path="/b", path_type=PREFIX, service="", port=0, resource="Bucket/x"
                        ),
                        _p("/"),
                    ),
                ),
            )
        ],
        [("a", [("prefix", "/", ITEM)])],
        [("ingresses/shop/web", "IngressUnsupportedBackend", ERR)],
        id="resource-backend-reported",
    ),
    pytest.param(
        [
            _ing("zz", ("a", (_p("/x", "cart", 8080), _p("/x", "cart", 8080, EXACT)))),
            _ing("aa", ("a", (_p("/x/"),))),
        ],
        [("a", [("path", "/x", CART), (SEP, "/x", ITEM)])],
        [("ingresses/shop/zz", "IngressConflict", WARN)],
        id="same-host-path-first-ingress-by-name-wins-exact-and-prefix-do-not-conflict",
    ),
    pytest.param(
        [
            _ing("b", default=_p("/", "cart", 8080)),
            _ing("a", default=_p("/", "fallback", 80), ns="shop"),
        ],
        [("*", [("prefix", "/", FALLBACK)])],
        [("ingresses/shop/b", "IngressConflict", WARN)],
        id="two-default-backends",
    ),
]


@pytest.mark.parametrize(("ingresses", "expected", "reasons"), BAD)
def test_bad_input_is_data(
    ingresses: list[model.Ingress], expected: list[Any], reasons: list[Any]
) -> None:
    res, diags = gateway.gateway_resources(GW, ingresses, SERVICES)
    assert res is not None
    assert _shape(res) == expected
    assert _reasons(diags) == reasons


@pytest.mark.parametrize(
    ("gw", "reason"),
    [
        pytest.param(model.Gateway(E, "infra", "g", "pub", 0), "GatewayInvalidPort", id="port-0"),
        pytest.param(
            model.Gateway(E, "infra", "g", "pub", 70000), "GatewayInvalidPort", id="port-70000"
        ),
        pytest.param(model.Gateway(E, "infra", "g", "", 80), "GatewayInvalidClass", id="no-class"),
    ],
)
def test_invalid_gateway(gw: model.Gateway, reason: str) -> None:
    res, diags = gateway.gateway_resources(gw, [], SERVICES)
    assert res is None
    assert _reasons(diags) == [("gateways/infra/g", reason, ERR)]


def test_several_clusters_merge_and_conflicts() -> None:
    ings = [
        _ing("web", ("a", (_p("/"),)), cluster=W),
        _ing("web", ("a", (_p("/"),)), cluster=E),
        _ing("api", ("b", (_p("/", "cart", 8080),)), cluster=W),
        _ing("api", ("b", (_p("/"),)), cluster=E),
    ]
    gws = [
        GW,
        dataclasses.replace(GW, cluster=W),
        model.Gateway(E, "infra", "other", "pub", 80),
        model.Gateway(W, "infra", "other", "pub", 81),
    ]
    found, diags = gateway.resolve(gws, ings, SERVICES)
    assert sorted(found) == ["gateway:infra:other", "gateway:infra:public"]
    assert found[gateway.app_name(GW)].gateway.port == 8080
    assert found[model.AppName("gateway:infra:other")].gateway.port == 80  # east < west
    assert _reasons(diags[""]) == [
        ("gateways/infra/other@west", "GatewayConflict", WARN),
        ("ingresses/shop/api@west", "IngressConflict", WARN),
    ]
    assert diags["gateway:infra:public"] == []
    res = found[gateway.app_name(GW)]
    assert _shape(res) == [("a", [("prefix", "/", ITEM)]), ("b", [("prefix", "/", ITEM)])]
    assert res.services == (("shop", "item"),)
    assert res.clusters == (ITEM,)


# --- protos and the snapshot -----------------------------------------------------------


def test_listener_proto() -> None:
    lis = gateway.listener(GW)
    assert lis.name == "gateway/infra/public:8080"
    assert lis.address.socket_address.address == "0.0.0.0"
    assert lis.address.socket_address.port_value == 8080
    [chain] = lis.filter_chains
    [filt] = chain.filters
    hcm = hcm_pb2.HttpConnectionManager()
    assert filt.typed_config.Unpack(hcm)
    assert hcm.rds.route_config_name == "gateway/infra/public"
    assert hcm.rds.config_source.HasField("ads")
    assert hcm.strip_any_host_port
    assert hcm.use_remote_address.value
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]


def test_app_name_is_one_key_segment() -> None:
    assert gateway.app_name(GW) == "gateway:infra:public"
    assert "/" not in gateway.app_name(GW)


def test_gateway_snapshot_has_only_the_backend_clusters() -> None:
    res, _ = gateway.gateway_resources(GW, [_ing("web", ("a", (_p("/"),)))], SERVICES)
    assert res is not None
    svc = translate.service_resources(SERVICES[("shop", "item")], translate.Options())
    snap = gateway.gateway_snapshot(res, E, [svc])
    assert snap.app == "gateway:infra:public"
    assert [r.name for r in snap.resources[snapshot.CLUSTER]] == [ITEM]  # not :9000
    assert [r.name for r in snap.resources[snapshot.LISTENER]] == ["gateway/infra/public:8080"]
    assert [r.name for r in snap.resources[snapshot.ROUTE]] == ["gateway/infra/public"]
    assert snap.endpoints == (ITEM,)
    assert snapshot.decode_app(snapshot.encode_app(snap)) == snap


# --- Envoy's verdict, real traffic ------------------------------------------------------


def _static_listener(res: gateway.GatewayResources, port: int) -> listener_pb2.Listener:
    """The generated listener on 127.0.0.1:``port`` with the generated routes inlined."""
    lis = listener_pb2.Listener()
    lis.ParseFromString(res.listeners[0].body)
    lis.address.socket_address.address = "127.0.0.1"
    lis.address.socket_address.port_value = port
    filt = lis.filter_chains[0].filters[0]
    hcm = hcm_pb2.HttpConnectionManager()
    filt.typed_config.Unpack(hcm)
    rc = route_pb2.RouteConfiguration()
    rc.ParseFromString(res.routes[0].body)
    hcm.ClearField("rds")
    hcm.route_config.CopyFrom(rc)
    filt.typed_config.Pack(hcm)
    return lis


ROUTED = [
    _ing(
        "web",
        ("a.example.com", (_p("/"),)),
        ("b.example.com", (_p("/cart", "cart", "http"), _p("/", "item", 80))),
        ("*.example.com", (_p("/api", "cart", 8080, EXACT),)),
    ),
    _ing("dflt", default=_p("/", "fallback", 80)),
]


def _bootstrap(
    res: gateway.GatewayResources, listen: int, hosts: Mapping[str, tuple[str, int]]
) -> bootstrap_pb2.Bootstrap:
    boot = bootstrap_pb2.Bootstrap()
    boot.static_resources.listeners.append(_static_listener(res, listen))
    for name in res.clusters:
        boot.static_resources.clusters.append(static_envoy.cluster(name, *hosts[name]))
    return boot


def test_envoy_accepts_listener_and_routes(tmp_path: Path) -> None:
    res, diags = gateway.gateway_resources(GW, ROUTED, SERVICES)
    assert res is not None and diags == []
    hosts = {name: ("127.0.0.1", 9) for name in res.clusters}
    out = static_envoy.validate(_bootstrap(res, 8080, hosts), tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_envoy_checks_the_route_cluster_names(tmp_path: Path) -> None:
    """Negative control: validation does resolve the routes' clusters."""
    res, _ = gateway.gateway_resources(GW, ROUTED, SERVICES)
    assert res is not None
    boot = _bootstrap(res, 8080, {name: ("127.0.0.1", 9) for name in res.clusters})
    del boot.static_resources.clusters[0]
    out = static_envoy.validate(boot, tmp_path)
    assert out.returncode != 0


@contextlib.asynccontextmanager
async def _backends(hosts: list[str]) -> AsyncIterator[dict[str, int]]:
    """HTTP servers on ``hosts`` answering ``<host> <path>``; yields host → port."""
    runners: list[web.AppRunner] = []
    ports: dict[str, int] = {}
    try:
        for host in hosts:

            async def hello(req: web.Request, host: str = host) -> web.Response:
                return web.Response(text=f"{host} {req.path}")

            app = web.Application()
            app.router.add_get("/{tail:.*}", hello)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            ports[host] = procs.free_port(host)
            await web.TCPSite(runner, host, ports[host]).start()
        yield ports
    finally:
        for runner in runners:
            await runner.cleanup()


REQUESTS = [
    # (Host header, path, expected backend host or HTTP status)
    ("a.example.com", "/anything", "127.0.0.2"),
    ("a.example.com:8080", "/", "127.0.0.2"),
    ("b.example.com", "/cart", "127.0.0.3"),
    ("b.example.com", "/cart/42", "127.0.0.3"),
    ("b.example.com", "/cartography", "127.0.0.2"),
    ("x.example.com", "/api", "127.0.0.3"),
    ("x.example.com", "/api/v2", "127.0.0.4"),
    ("elsewhere.org", "/", "127.0.0.4"),
]


async def test_real_traffic_by_host_and_path(tmp_path: Path) -> None:
    res, diags = gateway.gateway_resources(GW, ROUTED, SERVICES)
    assert res is not None and diags == []
    by_cluster = {ITEM: "127.0.0.2", CART: "127.0.0.3", FALLBACK: "127.0.0.4"}
    listen = procs.free_port()
    async with _backends(sorted(set(by_cluster.values()))) as ports:
        hosts = {name: (ip, ports[ip]) for name, ip in by_cluster.items()}
        async with (
            static_envoy.running(_bootstrap(res, listen, hosts), tmp_path),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        ):
            got = []
            for host, path, _ in REQUESTS:
                async with http.get(
                    f"http://127.0.0.1:{listen}{path}", headers={"Host": host}
                ) as resp:
                    assert resp.status == 200, (host, path, resp.status)
                    text = await resp.text()
                    assert text.endswith(f" {path}")
                    got.append((host, path, text.split()[0]))
    assert got == REQUESTS
