"""Fixtures of the watcher tests: the local Kubernetes API server of cluster ``east``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from navigator.kubeapi import server as kubeapi_server


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[kubeapi_server.KubeApiServer, Path]]:
    srv = kubeapi_server.KubeApiServer(name="east", bookmark_interval=0.5)
    await srv.start()
    path = tmp_path / "kubeconfig"
    kubeapi_server.write_kubeconfig(path, {"east": srv.url})
    try:
        yield srv, path
    finally:
        await srv.stop()
