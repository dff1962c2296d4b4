"""Fixtures for the local API server tests: a started server, an official client bound to it,
and a kubectl runner with a private HOME so kubectl never touches the real cache."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import kubernetes
import pytest

from navigator.kubeapi import server as kubeapi_server

Kubectl = Callable[..., Awaitable[tuple[int, str, str]]]


@pytest.fixture
async def kube() -> AsyncIterator[kubeapi_server.KubeApiServer]:
    srv = kubeapi_server.KubeApiServer(host="127.0.0.1", port=0, name="test",
                                       bookmark_interval=0.2, control_port=0)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
def api(kube: kubeapi_server.KubeApiServer) -> Iterator[kubernetes.client.ApiClient]:
    cfg = kubernetes.client.Configuration()
    cfg.host = kube.url
    client = kubernetes.client.ApiClient(cfg)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def kubectl(kube: kubeapi_server.KubeApiServer, tmp_path: Path) -> Kubectl:
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.skip("kubectl is not installed")
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "kubeconfig"
    kubeapi_server.write_kubeconfig(config, {"test": kube.url})
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "KUBECONFIG": str(config),
           "KUBECACHEDIR": str(home / "cache")}

    async def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            binary, *args, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    return run
