"""A watcher replica's informers against lost events: a term starts from a fresh listing, and
a list/watch cycle cancelled from outside relists instead of ending the informer.

Real parts: the local Kubernetes API server, a real etcd, the watcher's own tasks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from coordinator import etcd as etcd_mod
from navigator import keys, model
from navigator.kubeapi import server as kubeapi_server
from navigator.watcher import informer, runner

C = model.ClusterName("east")
ITEM = keys.state_key(model.Endpoints(C, "ns", "item", ()))


def endpoints(*ips: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"namespace": "ns", "name": "item"},
        "subsets": [
            {
                "addresses": [{"ip": ip} for ip in ips],
                "ports": [{"name": "http", "port": 8080}],
            }
        ],
    }


async def held_ips(etcd: etcd_mod.Etcd) -> list[str]:
    kv = await etcd.get(ITEM)
    return [] if kv is None else sorted(e["ip"] for e in json.loads(kv.value)["endpoints"])


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_new_term_writes_a_change_the_warm_informer_missed(
    kube: tuple[kubeapi_server.KubeApiServer, Path],
    etcd: etcd_mod.Etcd,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    srv, kubeconfig = kube
    srv.store.create(endpoints("10.1.0.1"))
    dropped: list[str] = []
    original = informer.Informer._on_event

    def lossy(self: informer.Informer, event: dict[str, Any]) -> str:
        # NOTE: a watch that loses one event (as across an outage): the change is seen by
        # the API and by nobody else.
        if self.kind is model.Kind.ENDPOINTS and event.get("type") == "MODIFIED" and not dropped:
            dropped.append(str(event["object"]["metadata"]["resourceVersion"]))
            return str(event["object"]["metadata"]["resourceVersion"])
        return original(self, event)

    async with runner.run_watcher(
        cluster=C,
        kube_config=kubeconfig,
        etcd=etcd,
        replica=runner.Replica(member_id="east-a", lease_ttl=3),
    ) as w:
        await asyncio.wait_for(w.synced.wait(), 15)
        assert await held_ips(etcd) == ["10.1.0.1"]

        monkeypatch.setattr(informer.Informer, "_on_event", lossy)
        srv.store.update(endpoints("10.1.0.1", "10.1.0.2"))

        async def was_dropped() -> bool:
            return bool(dropped)

        await eventually(was_dropped)
        # The lost event left the warm state behind the API; a new term must not trust it.
        leader = await etcd.get(keys.watcher_leader_key(C))
        assert leader is not None
        await etcd.apply(puts={}, deletes=[keys.watcher_leader_key(C)])

        async def reelected() -> bool:
            now = await etcd.get(keys.watcher_leader_key(C))
            return now is not None and now.create_revision > leader.create_revision

        await eventually(reelected)

        async def caught_up() -> bool:
            return await held_ips(etcd) == ["10.1.0.1", "10.1.0.2"]

        await eventually(caught_up)


async def test_an_informer_cancelled_from_outside_relists_and_keeps_watching(
    kube: tuple[kubeapi_server.KubeApiServer, Path],
    etcd: etcd_mod.Etcd,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    srv, kubeconfig = kube
    srv.store.create(endpoints("10.1.0.1"))
    original = informer.KubeApi.watch
    stray: list[str] = []

    async def cancelled_once(
        self: informer.KubeApi, path: str, query: Any, *, idle_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        if path.endswith("/endpoints") and not stray:
            stray.append(path)
            # NOTE: what a library does when it raises CancelledError of its own accord.
            raise asyncio.CancelledError
        async for event in original(self, path, query, idle_timeout=idle_timeout):
            yield event

    monkeypatch.setattr(informer.KubeApi, "watch", cancelled_once)
    async with runner.run_watcher(cluster=C, kube_config=kubeconfig, etcd=etcd) as w:
        await asyncio.wait_for(w.synced.wait(), 15)

        async def was_cancelled() -> bool:
            return bool(stray)

        await eventually(was_cancelled)
        srv.store.update(endpoints("10.1.0.3"))

        async def followed() -> bool:
            return await held_ips(etcd) == ["10.1.0.3"]

        await eventually(followed)
    assert any("cancelled from outside" in r.getMessage() for r in caplog.records)
