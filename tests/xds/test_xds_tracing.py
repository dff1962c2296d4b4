"""Tracing end to end: the mesh-wide setting reaches a real Envoy, which reports spans.

A Service is translated with a Zipkin setting (100% sampling), published as the translator
publishes it, and served to a real Envoy; requests through its listener produce spans that a
Zipkin collector of the test's own receives, named after the sidecar's app.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import xds_helpers as h
from aiohttp import web
from xds_helpers import Backend, StartEnvoy, http_get

from coordinator import etcd as etcd_mod
from navigator import keys, model, snapshot
from navigator.lab import procs
from navigator.xds import server as xds_server
from shards import translate

C1 = model.ClusterName("c1")


@pytest.fixture
async def collector() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A Zipkin v2 collector on loopback: its address and the spans it received."""
    spans: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        spans.extend(json.loads(await request.read()))
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/api/v2/spans", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = procs.free_port("127.0.0.9")
    await web.TCPSite(runner, "127.0.0.9", port).start()
    try:
        yield f"127.0.0.9:{port}", spans
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b'{"provider":"jaeger","collector":"a:1"}', id="unknown-provider"),
        pytest.param(b'{"provider":"zipkin","collector":"nohost"}', id="collector-not-host-port"),
        pytest.param(b'{"provider":"zipkin","collector":"a:99999"}', id="port-out-of-range"),
        pytest.param(b'{"provider":"zipkin","collector":"a:1","sampling":101}', id="sampling"),
        pytest.param(b"[]", id="not-an-object"),
    ],
)
def test_bad_tracing_settings_are_refused(value: bytes) -> None:
    with pytest.raises(model.DecodeError):
        model.decode_tracing(value)


async def test_spans_reach_the_collector(
    etcd: etcd_mod.Etcd,
    xds: xds_server.Handle,
    envoy: StartEnvoy,
    backend: Backend,
    collector: tuple[str, list[dict[str, Any]]],
) -> None:
    address, spans = collector
    host, port = await backend("127.0.0.2")
    listen = procs.free_port()
    svc = model.Service(
        cluster=C1,
        namespace="shop",
        name="item",
        type=model.ServiceType.CLUSTER_IP,
        cluster_ip="127.0.0.1",
        ports=(model.ServicePort("http", listen, model.Protocol.HTTP, port),),
    )
    eps = model.Endpoints(
        C1, "shop", "item", (model.Endpoint(host, True, (model.EndpointPort("http", port),)),)
    )
    setting = model.Tracing(model.TracingProvider.ZIPKIN, address, sampling=100.0)
    options = translate.Options(tracing=setting, health_port=0)
    mesh, _ = translate.mesh_service([svc], [eps], {})
    assert mesh is not None
    res = translate.service_resources(mesh, options)
    for name, variants in res.endpoints.items():
        await etcd.put(keys.eds_key(name), variants[keys.DEFAULT_VARIANT])
    app = model.AppName("web")
    revision = await etcd.put(
        keys.app_snapshot_key(app, C1),
        snapshot.encode_app(translate.app_snapshot(app, C1, [res], options)),
    )
    await h.applied(xds.cache, revision)
    envoy(app="web", k8s_cluster="c1")

    async def served() -> bool:
        status, _ = await http_get(f"http://127.0.0.1:{listen}/")
        return status == 200

    await h.eventually(served, what="traffic through the traced listener")
    for _ in range(10):  # NOTE: Envoy sends spans in batches (5 by default) or on a timer.
        await http_get(f"http://127.0.0.1:{listen}/")

    async def reported() -> bool:
        return any(s.get("localEndpoint", {}).get("serviceName") == "web" for s in spans)

    await h.eventually(reported, within=15, what="spans of app web at the collector")
