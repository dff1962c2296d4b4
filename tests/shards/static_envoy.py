"""A real Envoy from a static bootstrap, for tests of translation pieces without xDS.

Shared by the policy, canary and gateway tests: STATIC clusters standing in for EDS, Envoy's
own ``--mode validate``, and a running Envoy that is stopped by PID when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import json_format

from navigator.lab import procs

FLAGS = ("--concurrency", "1", "--disable-hot-restart", "-l", "warning")


def assignment(name: str, host: str, port: int) -> endpoint_pb2.ClusterLoadAssignment:
    """One endpoint at ``host:port``."""
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(
                                    address=host, port_value=port
                                )
                            )
                        )
                    )
                ]
            )
        ],
    )


def cluster(name: str, host: str, port: int) -> cluster_pb2.Cluster:
    """The Envoy cluster of a backend port, STATIC with one endpoint instead of EDS."""
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout={"seconds": 1},
        load_assignment=assignment(name, host, port),
    )


def validate(boot: bootstrap_pb2.Bootstrap, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Envoy's own verdict on ``boot`` (``--mode validate``)."""
    path = tmp_path / "bootstrap.json"
    path.write_text(json_format.MessageToJson(boot))
    return subprocess.run(
        [str(procs.envoy_binary()), "--mode", "validate", "-c", str(path), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextlib.asynccontextmanager
async def running(boot: bootstrap_pb2.Bootstrap, tmp_path: Path) -> AsyncIterator[None]:
    """Runs Envoy with ``boot`` (admin on a free loopback port) until the block ends."""
    admin = procs.free_port()
    boot.admin.address.socket_address.address = "127.0.0.1"
    boot.admin.address.socket_address.port_value = admin
    config = tmp_path / "envoy.json"
    config.write_text(json_format.MessageToJson(boot))
    log = tmp_path / "envoy.log"
    envoy = procs.start([str(procs.envoy_binary()), "-c", str(config), *FLAGS], log_file=log)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
            for _ in range(200):
                assert envoy.poll() is None, log.read_text()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"http://127.0.0.1:{admin}/ready") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"Envoy never became ready: {log.read_text()}")
        yield
    finally:
        await asyncio.to_thread(procs.stop, envoy, timeout=5)
