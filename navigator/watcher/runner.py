"""``run_watcher``: one running watcher (store + informers) as an async context manager.

The small async API the command, the lab and the tests share::

    async with runner.run_watcher(cluster="east", kube_config=path, etcd=client) as w:
        await w.synced.wait()

Without ``replica`` the watcher writes unconditionally (tests of one watcher). With it, the
watcher is one replica among several of its cluster: its informers always run (warm), it
registers as a member and campaigns for the cluster's leadership key, and its store writes
only during its terms, fenced (``navigator.watcher.store``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from coordinator import election, membership, session
from coordinator import etcd as etcd_mod
from navigator import keys, model
from navigator.watcher import informer, metrics, store

log = logging.getLogger(__name__)

ROLE = "watcher"


@dataclasses.dataclass(frozen=True, slots=True)
class Replica:
    """How this watcher takes part in its cluster's election."""

    member_id: str
    lease_ttl: int = 5
    http: str = ""


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


async def _as_replica(
    sync: store.SyncStore,
    informers: Sequence[informer.Informer],
    etcd: etcd_mod.Etcd,
    replica: Replica,
    s: session.Session,
) -> None:
    """One session of a replica: registered, campaigning, writing while it leads."""
    cluster = sync.cluster
    registration = membership.Registration(
        etcd, membership.Member(role=ROLE, id=replica.member_id, http=replica.http)
    )
    registering = asyncio.create_task(registration.run(s), name=f"watcher-register-{cluster}")

    async def term(leadership: election.Leadership) -> None:
        registration.set_leads([f"{ROLE}/{cluster}"])
        metrics.LEADING.labels(cluster).set(1)
        # NOTE: a term starts from the API's state now, not from what the warm informers
        # gathered while another replica wrote: one listing per kind, and whatever a watch
        # missed during the standby (an event lost across an outage) is written in this term.
        for inf in informers:
            inf.relist()
        try:
            await sync.lead(leadership.fence)
        except etcd_mod.Deposed as exc:
            log.warning(
                "deposed: another replica writes the cluster now",
                extra={"cluster": cluster, "error": str(exc)},
            )
        finally:
            metrics.LEADING.labels(cluster).set(0)
            registration.set_leads([])

    try:
        await election.lead(
            etcd,
            s,
            key=keys.watcher_leader_key(cluster),
            value=election.leader_value(replica.member_id),
            role=ROLE,
            body=term,
        )
    finally:
        registering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await registering


@contextlib.asynccontextmanager
async def run_watcher(
    *,
    cluster: str,
    kube_config: str | Path | None,
    etcd: etcd_mod.Etcd,
    context: str | None = None,
    resources: Sequence[informer.Resource] = informer.RESOURCES,
    watch_timeout: int = 30,
    max_backoff: float = 5.0,
    not_served_retry: float = 30.0,
    write_delay: float = 0.01,
    replica: Replica | None = None,
) -> AsyncIterator[Watcher]:
    """Runs a watcher for ``cluster`` until the block exits; every task is ended on exit.

    ``context`` defaults to the cluster name (the lab names kubeconfig contexts after their
    clusters). Without ``kube_config`` the watcher uses the service account of the pod it
    runs in (``informer.KubeApi.in_cluster``; ``context`` is then unused). Raises
    ``informer.KubeConfigError`` before starting anything if the configuration is unusable.
    """
    name = model.ClusterName(cluster)
    if kube_config is None:
        api = informer.KubeApi.in_cluster()
    else:
        api = await informer.KubeApi.from_kubeconfig(kube_config, context or cluster)
    sync = store.SyncStore(
        cluster=name,
        etcd=etcd,
        kinds=[r.kind for r in resources],
        delay=write_delay,
        max_backoff=max_backoff,
        member_id=replica.member_id if replica is not None else "",
    )
    reach = informer.Reachability(name, sync)
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
    if replica is None:
        writer = sync.run()
    else:
        writer = session.run_sessions(
            etcd,
            ttl=replica.lease_ttl,
            body=lambda s: _as_replica(sync, informers, etcd, replica, s),
        )
    tasks = [asyncio.create_task(writer, name=f"watcher-store-{cluster}")]
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
