"""``run_watcher``: one running watcher (store + informers) as an async context manager.

The small async API the command, the lab and the tests share::

    async with runner.run_watcher(cluster="east", kube_config=path, etcd=client) as w:
        await w.synced.wait()

NOTE: leader election between watcher replicas of one cluster is not done here yet: run
exactly one watcher per cluster until it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from coordinator import etcd as etcd_mod
from navigator import model
from navigator.watcher import informer, store

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Watcher:
    """A running watcher: its store (for ``synced`` and state) and its informers."""

    cluster: model.ClusterName
    store: store.SyncStore
    informers: list[informer.Informer]
    reachability: informer.Reachability

    @property
    def synced(self) -> asyncio.Event:
        return self.store.synced


@contextlib.asynccontextmanager
async def run_watcher(
    *,
    cluster: str,
    kube_config: str | Path,
    etcd: etcd_mod.Etcd,
    context: str | None = None,
    resources: Sequence[informer.Resource] = informer.RESOURCES,
    watch_timeout: int = 30,
    max_backoff: float = 5.0,
    not_served_retry: float = 30.0,
    write_delay: float = 0.01,
) -> AsyncIterator[Watcher]:
    """Runs a watcher for ``cluster`` until the block exits; every task is ended on exit.

    ``context`` defaults to the cluster name (the lab names kubeconfig contexts after their
    clusters). Raises ``informer.KubeConfigError`` before starting anything if the
    kubeconfig is unusable.
    """
    name = model.ClusterName(cluster)
    api = await informer.KubeApi.from_kubeconfig(kube_config, context or cluster)
    sync = store.SyncStore(
        cluster=name,
        etcd=etcd,
        kinds=[r.kind for r in resources],
        delay=write_delay,
        max_backoff=max_backoff,
    )
    reach = informer.Reachability(name)
    informers = [
        informer.Informer(
            cluster=name,
            api=api,
            resource=resource,
            sink=sync,
            reachability=reach,
            watch_timeout=watch_timeout,
            max_backoff=max_backoff,
            not_served_retry=not_served_retry,
        )
        for resource in resources
    ]
    tasks = [asyncio.create_task(sync.run(), name=f"watcher-store-{cluster}")]
    tasks += [
        asyncio.create_task(inf.run(), name=f"watcher-{cluster}-{inf.kind.value}")
        for inf in informers
    ]
    try:
        yield Watcher(cluster=name, store=sync, informers=informers, reachability=reach)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
        for result in results:
            if isinstance(result, Exception):
                log.error("watcher task crashed", exc_info=result)
