"""Canary releases: validation, conflicts across clusters, Envoy fields, Envoy's own verdict
and the split of real traffic through a real Envoy."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import static_envoy
from aiohttp import web
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2

from navigator import model
from navigator.lab import procs
from shards import canary, translate

E = model.ClusterName("east")
W = model.ClusterName("west")
ERR = translate.Severity.ERROR
WARN = translate.Severity.WARNING

SERVICES: dict[tuple[str, str], set[int]] = {
    ("shop", "item"): {8890, 9090, 5432},
    ("shop", "item-v2"): {8890, 9090, 5432},
    ("shop", "item-canary"): {8890, 5432},
    ("shop", "item-debug"): {7000},
    ("blue", "item"): {8890, 9090, 5432},
}


def _b(name: str, weight: int, namespace: str = "shop") -> model.CanaryBackend:
    return model.CanaryBackend(namespace=namespace, name=name, weight=weight)


def _release(
    *backends: model.CanaryBackend, cluster: model.ClusterName = E, name: str = "item"
) -> model.CanaryRelease:
    return model.CanaryRelease(cluster=cluster, namespace="shop", name=name, backends=backends)


def _reasons(diags: list[translate.Diagnostic]) -> list[tuple[str, str, translate.Severity]]:
    return [(d.object, d.reason, d.severity) for d in diags]


# --- valid specs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backends", "ports", "splits", "visible"),
    [
        pytest.param(
            [_b("item", 90), _b("item-v2", 10)],
            {8890, 9090, 5432},
            {8890: [("shop/item:8890", 90), ("shop/item-v2:8890", 10)]},
            [("shop", "item-v2")],
            id="self-and-canary-90-10",
        ),
        pytest.param(
            [_b("item-v2", 100)],
            {8890, 9090, 5432},
            {9090: [("shop/item-v2:9090", 100)]},
            [("shop", "item-v2")],
            id="full-cut-over-to-one-backend",
        ),
        pytest.param(
            [_b("item", 50, namespace="blue"), _b("item", 50)],
            {8890, 9090, 5432},
            {5432: [("blue/item:5432", 50), ("shop/item:5432", 50)]},
            [("blue", "item")],
            id="backend-in-another-namespace",
        ),
        pytest.param(
            [_b("item", 100), _b("item-v2", 0)],
            {8890, 9090, 5432},
            {8890: [("shop/item:8890", 100)]},
            [("shop", "item-v2")],
            id="drained-backend-weight-0-stays-visible",
        ),
        pytest.param(
            [_b("item", 100), _b("item-debug", 0)],
            {8890, 9090, 5432},
            {8890: [("shop/item:8890", 100)]},
            [("shop", "item-debug")],
            id="drained-backend-may-lack-ports",
        ),
        pytest.param(
            [_b("item", 1), _b("item-v2", 99)],
            {8890, 9090, 5432},
            {8890: [("shop/item:8890", 1), ("shop/item-v2:8890", 99)]},
            [("shop", "item-v2")],
            id="weights-1-99",
        ),
    ],
)
def test_valid_specs(
    backends: list[model.CanaryBackend],
    ports: set[int],
    splits: dict[int, list[tuple[str, int]]],
    visible: list[tuple[str, str]],
) -> None:
    canaries, diags = canary.resolve([_release(*backends)], SERVICES)
    assert diags == []
    found = canaries[("shop", "item")]
    assert found.ports == ports
    assert found.backends == tuple(sorted(backends, key=lambda b: (b.namespace, b.name)))
    assert sum(b.weight for b in found.backends) == 100
    for port, expected in splits.items():
        assert list(found.split(port)) == expected
    assert list(canary.backend_services(found)) == visible


def test_port_missing_in_a_backend_keeps_that_port_plain() -> None:
    canaries, diags = canary.resolve([_release(_b("item", 90), _b("item-canary", 10))], SERVICES)
    found = canaries[("shop", "item")]
    assert found.ports == {8890, 5432}
    assert found.split(9090) == ()
    assert _reasons(diags) == [("canaryreleases/shop/item@east", canary.BACKEND_PORT_MISSING, WARN)]
    assert "shop/item-canary has no port 9090" in diags[0].message


def test_no_release_no_canary() -> None:
    assert canary.resolve([], SERVICES) == ({}, [])


# --- invalid specs: skipped with a diagnostic --------------------------------------------


@pytest.mark.parametrize(
    ("release", "reasons"),
    [
        pytest.param(
            _release(_b("item", 90), _b("item-v2", 20)), [canary.WEIGHTS_NOT_100], id="sum-110"
        ),
        pytest.param(
            _release(_b("item", 50), _b("item-v2", 40)), [canary.WEIGHTS_NOT_100], id="sum-90"
        ),
        pytest.param(
            _release(_b("item", 0), _b("item-v2", 0)), [canary.WEIGHTS_NOT_100], id="all-zero"
        ),
        pytest.param(
            _release(_b("item", 110), _b("item-v2", -10)),
            [canary.INVALID_WEIGHT],
            id="negative-weight",
        ),
        pytest.param(
            _release(_b("item", 50.0), _b("item-v2", 50)),  # type: ignore[arg-type]
            [canary.INVALID_WEIGHT],
            id="float-weight",
        ),
        pytest.param(
            _release(_b("item", True), _b("item-v2", 99)),
            [canary.INVALID_WEIGHT],
            id="bool-weight",
        ),
        pytest.param(_release(), [canary.NO_BACKENDS], id="empty-backends"),
        pytest.param(
            _release(_b("item", 90), _b("nope", 10)), [canary.UNKNOWN_BACKEND], id="unknown-backend"
        ),
        pytest.param(
            _release(_b("item", 100), _b("item", 0, namespace="nowhere")),
            [canary.UNKNOWN_BACKEND],
            id="unknown-drained-backend",
        ),
        pytest.param(
            _release(_b("item-v2", 50), _b("item-v2", 50)),
            [canary.DUPLICATE_BACKEND],
            id="duplicate-backend",
        ),
        pytest.param(
            _release(_b("item", 90), _b("item-v2", 10), name="ghost"),
            [canary.UNKNOWN_SERVICE],
            id="unknown-service",
        ),
        pytest.param(
            _release(_b("item", 90), _b("item-debug", 10)),
            [canary.BACKEND_PORT_MISSING],
            id="no-port-can-be-split",
        ),
        pytest.param(
            _release(_b("nope", 60), _b("nope", 60)),
            [canary.DUPLICATE_BACKEND, canary.UNKNOWN_BACKEND, canary.WEIGHTS_NOT_100],
            id="every-problem-reported",
        ),
    ],
)
def test_invalid_specs(release: model.CanaryRelease, reasons: list[str]) -> None:
    canaries, diags = canary.resolve([release], SERVICES)
    assert canaries == {}
    errors = [d for d in diags if d.severity == ERR]
    assert sorted({d.reason for d in errors}) == sorted(reasons)
    assert {d.object for d in diags} == {f"canaryreleases/shop/{release.name}@east"}


def test_an_invalid_release_does_not_affect_others() -> None:
    good = model.CanaryRelease(
        cluster=E, namespace="blue", name="item", backends=(_b("item", 100, namespace="shop"),)
    )
    canaries, diags = canary.resolve([_release(_b("nope", 100)), good], SERVICES)
    assert list(canaries) == [("blue", "item")]
    assert _reasons(diags) == [("canaryreleases/shop/item@east", canary.UNKNOWN_BACKEND, ERR)]


# --- several clusters --------------------------------------------------------------------

A = (_b("item", 90), _b("item-v2", 10))
B = (_b("item", 50), _b("item-v2", 50))
BAD = (_b("item", 50), _b("item-v2", 60))
C = model.ClusterName("central")


@pytest.mark.parametrize(
    ("releases", "weights", "reasons"),
    [
        pytest.param(
            [_release(*A, cluster=E), _release(*reversed(A), cluster=W)],
            (90, 10),
            [],
            id="identical-specs-merged",
        ),
        pytest.param(
            [_release(*A, cluster=W), _release(*B, cluster=E)],
            (50, 50),
            [("canaryreleases/shop/item@west", canary.CONFLICT, WARN)],
            id="first-cluster-by-name-wins",
        ),
        pytest.param(
            [_release(*A, cluster=E), _release(*B, cluster=W), _release(*A, cluster=C)],
            (90, 10),
            [("canaryreleases/shop/item@west", canary.CONFLICT, WARN)],
            id="three-clusters-one-differs",
        ),
        pytest.param(
            [_release(*BAD, cluster=E), _release(*A, cluster=W)],
            None,
            [
                ("canaryreleases/shop/item@east", canary.WEIGHTS_NOT_100, ERR),
                ("canaryreleases/shop/item@west", canary.CONFLICT, WARN),
            ],
            id="invalid-winner-skips-the-release",
        ),
        pytest.param(
            [_release(*BAD, cluster=E), _release(*BAD, cluster=W)],
            None,
            [("canaryreleases/shop/item", canary.WEIGHTS_NOT_100, ERR)],
            id="invalid-everywhere-no-cluster-at-fault",
        ),
    ],
)
def test_several_clusters(
    releases: list[model.CanaryRelease],
    weights: tuple[int, ...] | None,
    reasons: list[tuple[str, str, translate.Severity]],
) -> None:
    canaries, diags = canary.resolve(releases, SERVICES)
    assert _reasons(diags) == reasons
    found = canaries.get(("shop", "item"))
    if weights is None:
        assert found is None
    else:
        assert found is not None
        assert tuple(b.weight for b in found.backends) == weights
    # NOTE: deterministic: the order in which the clusters' objects arrive does not matter.
    assert canary.resolve(reversed(releases), SERVICES) == (canaries, diags)


# --- visibility --------------------------------------------------------------------------


def test_with_backends_adds_backends_of_wanted_services_only() -> None:
    canaries, _ = canary.resolve(
        [
            _release(_b("item", 90), _b("item-v2", 10)),
            _release(_b("item-canary", 100), name="item-v2"),
            _release(_b("item-v2", 100), name="item-debug"),
        ],
        {**SERVICES, ("shop", "item-debug"): {8890}},
    )
    assert canary.with_backends([("shop", "item")], canaries) == [
        ("shop", "item"),
        ("shop", "item-v2"),
    ]  # not item-canary: splits do not chain
    assert canary.with_backends([("blue", "item")], canaries) == [("blue", "item")]


# --- Envoy fields ------------------------------------------------------------------------

SPLIT = canary.Canary(
    namespace="shop",
    name="item",
    backends=(_b("item", 30), _b("item-canary", 70), _b("item-v2", 0)),
    ports=frozenset({8890, 5432}),
)


def _port(number: int, protocol: model.Protocol) -> translate.MeshPort:
    return translate.MeshPort(
        namespace="shop",
        service="item",
        name="p",
        port=number,
        protocol=protocol,
        cluster_ips={E: "127.0.0.1"},
        endpoints=(),
    )


def test_apply_route_sets_weighted_clusters() -> None:
    action = translate.route(_port(8890, model.Protocol.HTTP)).virtual_hosts[0].routes[0].route
    assert action.cluster == "shop/item:8890"
    canary.apply_route(action, SPLIT, 8890)
    assert action.WhichOneof("cluster_specifier") == "weighted_clusters"
    assert action.cluster == ""
    got = [(c.name, c.weight.value) for c in action.weighted_clusters.clusters]
    assert got == [("shop/item:8890", 30), ("shop/item-canary:8890", 70)]
    assert sum(w for _, w in got) == 100
    assert not action.weighted_clusters.HasField("total_weight")  # deprecated: the sum is used
    again = route_components_pb2.RouteAction()
    again.CopyFrom(action)
    assert canary.apply_route(again, SPLIT, 8890) == action


def test_apply_route_leaves_unsplit_ports_alone() -> None:
    action = translate.route(_port(9090, model.Protocol.HTTP)).virtual_hosts[0].routes[0].route
    before = route_components_pb2.RouteAction()
    before.CopyFrom(action)
    assert canary.apply_route(action, SPLIT, 9090) == before
    assert canary.apply_route(action, None, 9090) == before


def test_apply_tcp_proxy_sets_weighted_clusters() -> None:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix="s", cluster="shop/item:5432")
    canary.apply_tcp_proxy(proxy, SPLIT, 5432)
    assert proxy.WhichOneof("cluster_specifier") == "weighted_clusters"
    got = [(c.name, c.weight) for c in proxy.weighted_clusters.clusters]
    assert got == [("shop/item:5432", 30), ("shop/item-canary:5432", 70)]
    plain = tcp_proxy_pb2.TcpProxy(stat_prefix="s", cluster="shop/item:1")
    assert canary.apply_tcp_proxy(plain, SPLIT, 1).cluster == "shop/item:1"


# --- Envoy's own verdict -----------------------------------------------------------------


def _any(msg: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def _http_listener(
    port: translate.MeshPort, found: canary.Canary, listen: int
) -> listener_pb2.Listener:
    """The generated route (with the split) inlined into the generated HTTP listener."""
    routes = translate.route(port)
    canary.apply_route(routes.virtual_hosts[0].routes[0].route, found, port.port)
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=port.envoy_name,
        route_config=route_pb2.RouteConfiguration(
            name=routes.name, virtual_hosts=routes.virtual_hosts
        ),
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=_any(router_pb2.Router())
            )
        ],
    )
    generated = translate.listener(port, "127.0.0.1", translate.Options())
    return listener_pb2.Listener(
        name=generated.name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=listen)
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
    )


def _tcp_listener(port: translate.MeshPort, found: canary.Canary) -> listener_pb2.Listener:
    generated = translate.listener(port, "127.0.0.1", translate.Options())
    [filt] = generated.filter_chains[0].filters
    proxy = tcp_proxy_pb2.TcpProxy()
    filt.typed_config.Unpack(proxy)
    filt.typed_config.CopyFrom(_any(canary.apply_tcp_proxy(proxy, found, port.port)))
    return listener_pb2.Listener(
        name=generated.name,
        address=generated.address,
        filter_chains=[listener_components_pb2.FilterChain(filters=[filt])],
    )


def _bootstrap(found: canary.Canary, *, skip: str = "") -> bootstrap_pb2.Bootstrap:
    boot = bootstrap_pb2.Bootstrap()
    http, tcp = _port(8890, model.Protocol.HTTP), _port(5432, model.Protocol.TCP)
    boot.static_resources.listeners.extend(
        [_http_listener(http, found, 8890), _tcp_listener(tcp, found)]
    )
    for number in (8890, 5432):
        for name, _ in found.split(number):
            if name != skip:
                boot.static_resources.clusters.append(static_envoy.cluster(name, "127.0.0.1", 9))
    return boot


def test_envoy_accepts_the_split(tmp_path: Path) -> None:
    out = static_envoy.validate(_bootstrap(SPLIT), tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_envoy_checks_the_split_cluster_names(tmp_path: Path) -> None:
    """Negative control: validation does look at the weighted clusters' names."""
    out = static_envoy.validate(_bootstrap(SPLIT, skip="shop/item-canary:8890"), tmp_path)
    assert out.returncode != 0
    assert "shop/item-canary:8890" in out.stdout + out.stderr


# --- real traffic through a real Envoy ---------------------------------------------------

Serve = Callable[[str], Awaitable[int]]
REAL = canary.Canary(
    namespace="shop",
    name="item",
    backends=(_b("item", 30), _b("item-canary", 70)),
    ports=frozenset({8890, 5432}),
)
HOSTS = {"shop/item": "127.0.0.2", "shop/item-canary": "127.0.0.3"}


@pytest.fixture
async def http_backend() -> AsyncIterator[Serve]:
    """``await http_backend("127.0.0.2")`` starts an HTTP server answering its own address."""
    runners: list[web.AppRunner] = []

    async def start(host: str) -> int:
        async def hello(_: web.Request) -> web.Response:
            return web.Response(text=host)

        app = web.Application()
        app.router.add_get("/{tail:.*}", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        port = procs.free_port(host)
        await web.TCPSite(runner, host, port).start()
        return port

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def tcp_backend() -> AsyncIterator[Serve]:
    """``await tcp_backend("127.0.0.2")`` starts a TCP server that writes its address and
    closes the connection."""
    servers: list[asyncio.Server] = []

    async def start(host: str) -> int:
        async def hello(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(host.encode())
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

        server = await asyncio.start_server(hello, host, 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    try:
        yield start
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


@contextlib.asynccontextmanager
async def _real_envoy(
    listener: listener_pb2.Listener, port: int, serve: Serve, tmp_path: Path
) -> AsyncIterator[None]:
    """A real Envoy with ``listener`` and a STATIC cluster per backend of REAL, started on
    ``serve``'s servers; yields once Envoy is ready."""
    boot = bootstrap_pb2.Bootstrap()
    boot.static_resources.listeners.append(listener)
    for name, _ in REAL.split(port):
        host = HOSTS[name.rsplit(":", 1)[0]]
        boot.static_resources.clusters.append(static_envoy.cluster(name, host, await serve(host)))
    async with static_envoy.running(boot, tmp_path):
        yield


def _assert_shares(answers: collections.Counter[str]) -> None:
    assert sum(answers.values()) == 1000
    assert set(answers) == {"127.0.0.2", "127.0.0.3"}, answers
    assert abs(answers["127.0.0.2"] / 10 - 30) <= 5, answers
    assert abs(answers["127.0.0.3"] / 10 - 70) <= 5, answers


async def test_real_http_traffic_follows_the_weights(http_backend: Serve, tmp_path: Path) -> None:
    listen = procs.free_port()
    listener = _http_listener(_port(8890, model.Protocol.HTTP), REAL, listen)
    async with (
        _real_envoy(listener, 8890, http_backend, tmp_path),
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=20), timeout=aiohttp.ClientTimeout(total=5)
        ) as http,
    ):

        async def one() -> str:
            async with http.get(f"http://127.0.0.1:{listen}/") as resp:
                assert resp.status == 200
                return await resp.text()

        answers = collections.Counter(await asyncio.gather(*(one() for _ in range(1000))))
    assert sum(answers.values()) == 1000
    _assert_shares(answers)


async def test_real_tcp_connections_follow_the_weights(tcp_backend: Serve, tmp_path: Path) -> None:
    listen = procs.free_port()
    listener = _tcp_listener(_port(5432, model.Protocol.TCP), REAL)
    listener.address.socket_address.port_value = listen
    limit = asyncio.Semaphore(20)

    async def one() -> str:
        async with limit:
            reader, writer = await asyncio.open_connection("127.0.0.1", listen)
            try:
                return (await asyncio.wait_for(reader.read(), 5)).decode()
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    async with _real_envoy(listener, 5432, tcp_backend, tmp_path):
        answers = collections.Counter(await asyncio.gather(*(one() for _ in range(1000))))
    assert sum(answers.values()) == 1000
    _assert_shares(answers)
