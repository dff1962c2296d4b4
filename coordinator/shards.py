"""Translator shards shared among translator replicas, one elected leader per shard.

Every replica registers as a member (``coordinator.membership``) once it is ready to lead,
watches the other translator members, and computes the same assignment from the same member
list (``assign``: balanced within one, and sticky, so a member joining or leaving moves few
shards). It campaigns only for the shards assigned to it and resigns the ones that are not any
more; election (``coordinator.election``) guarantees a single leader per shard whatever the
replicas believe, so a moment of disagreement costs a short hand-over, never two writers.

The translator itself is told through two callbacks: ``gained(shard, leadership)`` before it
writes for a shard, ``lost(shard)`` the moment it must stop.

Exceptions: ``coordinator.etcd.EtcdError`` from etcd calls that outlast their retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence

from coordinator import election, membership
from coordinator import etcd as etcd_mod
from coordinator import session as session_mod
from navigator import keys

log = logging.getLogger(__name__)

ROLE = "translator"


def assign(shards: int, members: Sequence[str]) -> dict[str, frozenset[int]]:
    """Which shards each member leads: every shard exactly once, counts within one.

    NOTE: a pure function of the shard count and the member ids, so every replica computes
    the same answer. Each shard prefers members by a rendezvous hash of (shard, member);
    a member takes its preferred shards until it holds its share (``shards // n``, and one
    more for the first ``shards % n`` members to reach it), so a membership change moves
    about one share of shards, not all of them.
    """
    ids = sorted(set(members))
    if not ids:
        return {}
    base, extra = divmod(shards, len(ids))
    held: dict[str, set[int]] = {m: set() for m in ids}
    extras_given = 0
    for shard in range(shards):
        # NOTE: capacity left always equals shards left, so some member takes every shard.
        for member in sorted(ids, key=lambda m: _rank(shard, m)):
            if len(held[member]) < base:
                held[member].add(shard)
                break
            if len(held[member]) == base and extras_given < extra:
                held[member].add(shard)
                extras_given += 1
                break
    return {m: frozenset(s) for m, s in held.items()}


def _rank(shard: int, member: str) -> bytes:
    return hashlib.sha256(f"{shard}/{member}".encode()).digest()


async def shard_count(etcd: etcd_mod.Etcd, wanted: int) -> int:
    """The mesh's shard count: ``wanted`` if this is the first translator, else what etcd says.

    WARNING: every translator must use the same count (it decides who writes which keys), so
    the first one to start writes it and the others follow, whatever their flag says.
    """
    created, current = await etcd.create(keys.SHARD_COUNT, json.dumps({"shards": wanted}).encode())
    try:
        count = int(json.loads(current.value)["shards"])
        if count < 1:
            raise ValueError(count)
    except (ValueError, TypeError, KeyError) as exc:
        raise etcd_mod.EtcdError(f"{keys.SHARD_COUNT} holds an invalid shard count") from exc
    if not created and count != wanted:
        log.warning(
            "the mesh already has another shard count; using it",
            extra={"wanted": wanted, "shards": count},
        )
    return count


Gained = Callable[[int, election.Leadership], Awaitable[None]]
Lost = Callable[[int], None]


class ShardRunner:
    """Campaigns for this member's share of the shards and resigns the rest; see the module."""

    def __init__(
        self,
        etcd: etcd_mod.Etcd,
        *,
        shards: int,
        member: membership.Member,
        gained: Gained,
        lost: Lost,
    ) -> None:
        self.etcd = etcd
        self.shards = shards
        self.registration = membership.Registration(etcd, member)
        self._gained = gained
        self._lost = lost
        self._campaigns: dict[int, asyncio.Task[None]] = {}
        self.leading: set[int] = set()
        self.assigned: frozenset[int] = frozenset()
        self.changed = asyncio.Event()
        """Pulsed whenever ``leading`` changes (for tests and readiness)."""

    @property
    def member_id(self) -> str:
        return self.registration.member.id

    async def run(self, session: session_mod.Session) -> None:
        """Registers, follows the membership and leads the assigned shards, until the session
        is lost or this is cancelled (every shard is resigned then)."""
        registration = asyncio.create_task(self.registration.run(session), name="register")
        try:
            watching = asyncio.create_task(self._follow(session), name="shard-assignment")
            await election._first(watching, session_mod.wait_expired(session), registration)
        finally:
            registration.cancel()
            await self._stop_all()
            with contextlib.suppress(asyncio.CancelledError):
                await registration

    async def _follow(self, session: session_mod.Session) -> None:
        async for members in membership.watch(self.etcd, ROLE):
            ids = list(members)
            if self.member_id not in ids:
                # NOTE: our own record may not be visible yet; we count ourselves anyway.
                ids.append(self.member_id)
            assigned = assign(self.shards, ids).get(self.member_id, frozenset())
            if assigned != self.assigned:
                log.info(
                    "shard assignment",
                    extra={"members": sorted(ids), "assigned": sorted(assigned)},
                )
            self.assigned = assigned
            for shard in sorted(set(self._campaigns) - self.assigned):
                await self._stop(shard)
            for shard in sorted(self.assigned - set(self._campaigns)):
                self._campaigns[shard] = asyncio.create_task(
                    self._campaign(session, shard), name=f"shard-{shard}"
                )

    async def _campaign(self, session: session_mod.Session, shard: int) -> None:
        async def body(leadership: election.Leadership) -> None:
            try:
                await self._gained(shard, leadership)
                self._set_leading(shard, True)
                await leadership.lost.wait()
            finally:
                self._set_leading(shard, False)
                self._lost(shard)

        await election.lead(
            self.etcd,
            session,
            key=keys.shard_leader_key(shard),
            value=election.leader_value(self.member_id),
            role="shard",
            body=body,
        )

    def _set_leading(self, shard: int, leading: bool) -> None:
        if leading:
            self.leading.add(shard)
        else:
            self.leading.discard(shard)
        self.registration.set_leads(f"shard/{s}" for s in self.leading)
        self.changed.set()
        self.changed.clear()

    async def _stop(self, shard: int) -> None:
        task = self._campaigns.pop(shard)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _stop_all(self) -> None:
        for shard in list(self._campaigns):
            await self._stop(shard)
