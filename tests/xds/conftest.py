"""Fixtures of the xDS tests: a running front-end, HTTP backends and real Envoy sidecars.

Every server and process started here is stopped when the test ends.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from xds_helpers import Backend, Envoy, StartEnvoy, envoy_path, spawn

from coordinator import etcd as etcd_mod
from coordinator import membership
from navigator import bootstrap
from navigator.lab import procs
from navigator.xds import server as xds_server


@pytest.fixture
async def xds(etcd: etcd_mod.Etcd) -> AsyncIterator[xds_server.Handle]:
    member = membership.Member(role="xds", id="xds-test", address="127.0.0.1")
    async with xds_server.serve(
        etcd=etcd, listen="127.0.0.1:0", grace=0.2, member=member, status_interval=0.05
    ) as handle:
        await asyncio.wait_for(handle.cache.wait_loaded(), 10)
        yield handle


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    """``await backend("127.0.0.2")`` starts an HTTP server answering its own address."""
    runners: list[web.AppRunner] = []

    async def start(host: str) -> tuple[str, int]:
        port = procs.free_port(host)
        name = f"{host}:{port}"

        async def hello(_: web.Request) -> web.Response:
            return web.Response(text=name)

        app = web.Application()
        app.router.add_get("/{tail:.*}", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, host, port).start()
        return host, port

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
def envoy(tmp_path: Path, xds: xds_server.Handle) -> Iterator[StartEnvoy]:
    """``envoy(app="a", k8s_cluster="c1", zone="z1")`` starts a sidecar of that app."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*, app: str, k8s_cluster: str = "c1", zone: str = "z1", node_id: str = "") -> Envoy:
        n = len(started)
        admin_port = procs.free_port()
        doc = bootstrap.render(
            node_id=node_id or f"{app}-{n}",
            app=app,
            cluster=k8s_cluster,
            region="r1",
            zone=zone,
            xds_host="127.0.0.1",
            xds_port=xds.port,
            admin_port=admin_port,
        )
        config = tmp_path / f"envoy-{n}.json"
        config.write_text(json.dumps(doc))
        log = tmp_path / f"envoy-{n}.log"
        args = [
            str(envoy_path()),
            "-c", str(config),
            "--concurrency", "1",
            "--disable-hot-restart",
            "--drain-time-s", "1",
            "-l", "warning",
        ]  # fmt: skip
        proc = spawn(args, log)
        started.append(proc)
        procs.wait_tcp("127.0.0.1", admin_port, proc=proc)
        return Envoy(proc, admin_port, log)

    try:
        yield start
    finally:
        for proc in started:
            procs.stop(proc, timeout=5)
