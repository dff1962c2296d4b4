"""Leader election with fencing tokens, on one etcd key per role.

Leadership of a role (a cluster's watcher, a translator shard) is one key created under the
candidate's session lease, only if absent (a transaction comparing its create revision with 0).
The key's create revision is the leader's *fencing token*: every write the leader makes
compares it (``coordinator.etcd.Fence``), so once the key is gone (lease expired, resigned) or
re-created by another candidate, the old leader's writes are refused by etcd itself, however
late they arrive. Candidates wait for the key's deletion with a watch, not by polling.

A leader stops acting when the first of these happens: its key is deleted or replaced (seen by
a watch), its session is lost, or the session's local deadline passes (``coordinator.session``:
measured on the monotonic clock, with a margin). ``lead`` runs a body for exactly as long as
leadership lasts, and resigns (deletes the key, fenced) when cancelled, so a clean shutdown
hands over at once instead of after the TTL.

Exceptions: ``coordinator.etcd.EtcdError`` from etcd calls; losing leadership is not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import prometheus_client

from coordinator import etcd as etcd_mod
from coordinator import session as session_mod

log = logging.getLogger(__name__)

ELECTED = prometheus_client.Counter(
    "navigator_leader_elected_total", "Times this process became leader", ["role"]
)
LEADING = prometheus_client.Gauge(
    "navigator_leader_terms", "Leadership terms this process holds now, by role", ["role"]
)


@dataclasses.dataclass
class Leadership:
    """One term of leadership: the key, its fencing token and the session holding it."""

    key: str
    token: int
    """The create revision of ``key``: the fencing token of every write of this term."""
    session: session_mod.Session
    lost: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    @property
    def fence(self) -> etcd_mod.Fence:
        return etcd_mod.Fence(self.key, self.token)

    def valid(self) -> bool:
        return not self.lost.is_set() and self.session.valid()


def leader_value(member_id: str) -> bytes:
    """What a leadership key holds: who leads, since when (for people and ``navigator state``)."""
    return json.dumps(
        {"id": member_id, "since": round(time.time(), 3)}, sort_keys=True, separators=(",", ":")
    ).encode()


def leader_id(value: bytes) -> str:
    """The member id in a leadership key's value ("" if unreadable)."""
    try:
        doc = json.loads(value)
        return str(doc.get("id", "")) if isinstance(doc, dict) else ""
    except ValueError:
        return ""


async def campaign(
    etcd: etcd_mod.Etcd, session: session_mod.Session, key: str, value: bytes
) -> Leadership | None:
    """Waits until this session holds ``key``; None if the session is lost first."""
    while session.valid():
        try:
            created, current = await etcd.create(key, value, lease=session.lease)
        except asyncio.CancelledError:
            # NOTE: the create may have landed before the cancellation (a rebalance stops
            # campaigns): a key of ours that nobody leads would keep every other candidate
            # out until our lease ends. Drop it if it is ours.
            await asyncio.shield(_drop_if_ours(etcd, session, key))
            raise
        if created or current.lease == session.lease:
            # NOTE: not created but under our lease: an earlier create of ours landed and its
            # answer was lost (then retried). The key is ours; its create revision is the token.
            return Leadership(key=key, token=current.create_revision, session=session)
        await _until_deleted(etcd, session, key, after=current.mod_revision)
    return None


async def _drop_if_ours(etcd: etcd_mod.Etcd, session: session_mod.Session, key: str) -> None:
    try:
        current = await etcd.get(key)
        if current is not None and current.lease == session.lease:
            await etcd.delete(key, fence=etcd_mod.Fence(key, current.create_revision))
            log.info("dropped a leadership key created as its campaign stopped", extra={"key": key})
    except etcd_mod.Deposed:
        pass
    except etcd_mod.EtcdError as exc:
        log.warning(
            "could not drop a leadership key of a stopped campaign; it goes with the lease",
            extra={"key": key, "error": str(exc)},
        )


async def _until_deleted(
    etcd: etcd_mod.Etcd, session: session_mod.Session, key: str, *, after: int
) -> None:
    """Returns once ``key`` is deleted after revision ``after``, or the session is lost."""

    async def deleted() -> None:
        try:
            async for ev in etcd.watch_key(key, start_revision=after + 1):
                if ev.value is None:
                    return
        except etcd_mod.Compacted:
            return  # NOTE: history gone: the caller looks at the key again.

    await _first(deleted(), session_mod.wait_expired(session))


async def hold(etcd: etcd_mod.Etcd, leadership: Leadership) -> None:
    """Returns (and sets ``leadership.lost``) when the term ends; see the module docstring."""

    async def key_gone() -> None:
        start = leadership.token + 1
        while True:
            try:
                async for ev in etcd.watch_key(leadership.key, start_revision=start):
                    # NOTE: a put on our own key (same term) is harmless; a delete ends the
                    # term (a new candidate's key can only be created after it).
                    if ev.value is None:
                        return
            except etcd_mod.Compacted:
                # NOTE: a resumed watch fell below the compaction; look at the key itself.
                listing = await etcd.get_prefix(leadership.key)
                current = listing.items.get(leadership.key)
                if current is None or current.create_revision != leadership.token:
                    return
                start = listing.revision + 1

    try:
        # NOTE: ``lost`` may also be set by the leader itself (a fenced write was refused).
        await _first(
            key_gone(), session_mod.wait_expired(leadership.session), leadership.lost.wait()
        )
    finally:
        leadership.lost.set()


async def resign(etcd: etcd_mod.Etcd, leadership: Leadership) -> None:
    """Deletes the leadership key if this term still holds it; never raises."""
    leadership.lost.set()
    try:
        await etcd.delete(leadership.key, fence=leadership.fence)
    except etcd_mod.Deposed:
        pass
    except etcd_mod.EtcdError as exc:
        log.warning(
            "could not resign; the key goes with the lease",
            extra={"key": leadership.key, "error": str(exc)},
        )


Body = Callable[[Leadership], Coroutine[Any, Any, None]]


async def lead(
    etcd: etcd_mod.Etcd,
    session: session_mod.Session,
    *,
    key: str,
    value: bytes,
    role: str,
    body: Body,
) -> None:
    """Campaigns for ``key`` and runs ``body(leadership)`` while leading, again and again.

    Returns when the session is lost. ``body`` is cancelled the moment its term ends; if it
    returns or raises, the term is resigned (and the exception re-raised). Cancelling ``lead``
    resigns too.
    """
    while session.valid():
        leadership = await campaign(etcd, session, key, value)
        if leadership is None:
            return
        ELECTED.labels(role=role).inc()
        LEADING.labels(role=role).inc()
        log.info("elected", extra={"role": role, "key": key, "token": leadership.token})
        holder = asyncio.create_task(hold(etcd, leadership), name=f"hold-{key}")
        worker = asyncio.create_task(body(leadership), name=f"lead-{key}")
        try:
            await asyncio.wait([holder, worker], return_when=asyncio.FIRST_COMPLETED)
        finally:
            LEADING.labels(role=role).dec()
            holder.cancel()
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await holder
            try:
                await worker
            except asyncio.CancelledError:
                pass
            finally:
                # NOTE: also on our own cancellation (shutdown): hand over now, not after TTL.
                await asyncio.shield(resign(etcd, leadership))
        log.warning("leadership ended", extra={"role": role, "key": key})


async def _first(*aws: Awaitable[object]) -> None:
    """Runs the awaitables until the first returns (or raises); cancels the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
