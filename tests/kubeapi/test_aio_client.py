"""The asyncio flavour of the official client (``kubernetes.aio``) against the server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from navigator.kubeapi.server import KubeApiServer

aio_client = pytest.importorskip("kubernetes.aio.client")
aio_watch = pytest.importorskip("kubernetes.aio.watch")


async def test_aio_watch_resumes_after_drop(kube: KubeApiServer) -> None:
    cfg = aio_client.Configuration()
    cfg.host = kube.url
    async with aio_client.ApiClient(cfg) as api:
        core = aio_client.CoreV1Api(api)
        rv = (await core.list_namespaced_service("apps")).metadata.resource_version
        names: list[str] = []
        bookmarks = 0
        first = asyncio.Event()

        async def consume() -> None:
            nonlocal bookmarks
            w = aio_watch.Watch()
            async for ev in w.stream(core.list_namespaced_service, "apps", resource_version=rv,
                                     allow_watch_bookmarks=True):
                if ev["type"] == "BOOKMARK":
                    bookmarks += 1
                else:
                    names.append(ev["object"].metadata.name)
                    first.set()
                if len(names) == 4:
                    w.stop()

        task = asyncio.create_task(consume())
        body: dict[str, Any] = {"metadata": {"name": "s0"}, "spec": {"ports": [{"port": 80}]}}
        await core.create_namespaced_service("apps", body)
        await asyncio.wait_for(first.wait(), 5)
        kube.drop_watches()
        for i in range(1, 4):
            body["metadata"]["name"] = f"s{i}"
            await core.create_namespaced_service("apps", body)
        await asyncio.wait_for(task, 10)
    assert names == ["s0", "s1", "s2", "s3"] and bookmarks >= 1
