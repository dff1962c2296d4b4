"""Shard leadership shared by replicas against a real etcd: balance, take-over, hand-over."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable

from coordinator import election, membership, session, shards
from coordinator import etcd as etcd_mod

SHARDS = 6


@dataclasses.dataclass
class Replica:
    name: str
    runner: shards.ShardRunner
    session: session.Session
    tasks: list[asyncio.Task[None]]
    events: list[tuple[str, int]]


async def _start(etcd: etcd_mod.Etcd, name: str) -> Replica:
    events: list[tuple[str, int]] = []

    async def gained(shard: int, term: election.Leadership) -> None:
        events.append(("gained", shard))

    def lost(shard: int) -> None:
        events.append(("lost", shard))

    s = await session.Session.open(etcd, ttl=3, margin=0.5)
    runner = shards.ShardRunner(
        etcd,
        shards=SHARDS,
        member=membership.Member(role=shards.ROLE, id=name),
        gained=gained,
        lost=lost,
    )
    tasks = [asyncio.create_task(s.run()), asyncio.create_task(runner.run(s))]
    return Replica(name, runner, s, tasks, events)


async def _stop(r: Replica, *, clean: bool) -> None:
    for t in r.tasks:
        t.cancel()
    for t in r.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    if clean:
        await r.session.close()


async def _until(cond: Callable[[], bool], *replicas: Replica, limit: float = 10.0) -> None:
    """Waits until ``cond()`` holds, re-checking whenever a replica's leadership changes."""
    async with asyncio.timeout(limit):
        while not cond():
            waits = [asyncio.ensure_future(r.runner.changed.wait()) for r in replicas]
            try:
                await asyncio.wait(waits, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()


def _balanced(replicas: list[Replica]) -> bool:
    held = [r.runner.leading for r in replicas]
    every = sorted(s for h in held for s in h)
    sizes = [len(h) for h in held]
    return every == list(range(SHARDS)) and max(sizes) - min(sizes) <= 1


async def test_replicas_share_shards_within_one_and_take_over_a_dead_ones(
    etcd: etcd_mod.Etcd,
) -> None:
    a = await _start(etcd, "a")
    await _until(lambda: a.runner.leading == set(range(SHARDS)), a)
    b = await _start(etcd, "b")
    c = await _start(etcd, "c")
    try:
        await _until(lambda: _balanced([a, b, c]), a, b, c)
        listed = {m.id: m for m in await membership.members(etcd, shards.ROLE)}
        assert set(listed) == {"a", "b", "c"}
        assert {m.lease for m in listed.values()} == {
            a.session.lease,
            b.session.lease,
            c.session.lease,
        }

        async def leads_of_b() -> set[str]:
            return set((await membership.members(etcd, shards.ROLE))[1].leads)

        want = {f"shard/{s}" for s in b.runner.leading}
        deadline = asyncio.get_running_loop().time() + 5
        while await leads_of_b() != want:
            assert asyncio.get_running_loop().time() < deadline, "b's record lacks its shards"
            await asyncio.sleep(0.05)

        # c dies without a word: its lease expires, a and b take its shards.
        await _stop(c, clean=False)
        await _until(lambda: _balanced([a, b]), a, b)
        assert {m.id for m in await membership.members(etcd, shards.ROLE)} == {"a", "b"}
    finally:
        for r in (a, b, c):
            await _stop(r, clean=True)


async def test_a_shard_moves_only_after_its_old_leader_let_go(etcd: etcd_mod.Etcd) -> None:
    a = await _start(etcd, "a")
    try:
        await _until(lambda: a.runner.leading == set(range(SHARDS)), a)
        b = await _start(etcd, "b")
        try:
            await _until(lambda: _balanced([a, b]), a, b)
            for shard in b.runner.leading:
                # The old leader was told to stop before the new one was told to start.
                assert ("lost", shard) in a.events
        finally:
            await _stop(b, clean=True)
        await _until(lambda: a.runner.leading == set(range(SHARDS)), a)
    finally:
        await _stop(a, clean=True)
