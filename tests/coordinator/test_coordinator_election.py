"""Leases, elections and fencing against a real etcd: one leader, fenced writes, hand-over."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from coordinator import election, session
from coordinator import etcd as etcd_mod
from navigator import keys
from navigator.lab import procs

KEY = keys.shard_leader_key(0)


def _rejected() -> float:
    return etcd_mod.FENCED_TXNS.labels(result="rejected")._value.get()


async def test_one_candidate_leads_and_a_deposed_leaders_write_is_refused(
    etcd: etcd_mod.Etcd,
) -> None:
    a = await session.Session.open(etcd, ttl=5)
    b = await session.Session.open(etcd, ttl=5)
    first = await election.campaign(etcd, a, KEY, b"a")
    assert first is not None
    await etcd.put("/t/x", b"from-a", fence=first.fence)

    second = asyncio.create_task(election.campaign(etcd, b, KEY, b"b"))
    # NOTE: a negative: the candidate must still be waiting when this deadline passes.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(second), 0.5)
    assert not second.done(), "a second candidate must wait while the key is held"

    await etcd.revoke(a.lease)  # NOTE: what etcd does when a's lease expires
    taken = await asyncio.wait_for(second, 5)
    assert taken is not None and taken.token > first.token

    before = _rejected()
    with pytest.raises(etcd_mod.Deposed):
        await etcd.apply(puts={"/t/x": b"late-a", "/t/y": b"late-a"}, fence=first.fence)
    assert _rejected() == before + 1
    assert (await etcd.get("/t/x")).value == b"from-a"  # type: ignore[union-attr]
    assert await etcd.get("/t/y") is None
    late = await etcd.get(keys.fence_mark_key(KEY))
    assert late is not None and keys.fence_mark_token(late.value) == first.token
    rev = await etcd.put("/t/x", b"from-b", fence=taken.fence)
    assert (await etcd.get("/t/x")).value == b"from-b"  # type: ignore[union-attr]
    # The same transaction records which term wrote: a history can tell the writers apart.
    mark = await etcd.get(keys.fence_mark_key(KEY))
    assert mark is not None and keys.fence_mark_token(mark.value) == taken.token
    assert mark.mod_revision == rev


async def test_a_fenced_change_of_exactly_the_operation_limit_still_fits(
    etcd: etcd_mod.Etcd,
) -> None:
    s = await session.Session.open(etcd, ttl=5)
    term = await election.campaign(etcd, s, KEY, b"s")
    assert term is not None
    puts = {f"/many/{i:03}": b"v" for i in range(etcd_mod.MAX_TXN_OPS)}
    await etcd.apply(puts=puts, fence=term.fence)  # NOTE: etcd refuses a 129-op transaction
    listing = await etcd.get_prefix("/many/")
    assert len(listing.items) == etcd_mod.MAX_TXN_OPS
    assert len({kv.mod_revision for kv in listing.items.values()}) == 2


async def test_a_large_fenced_change_is_split_and_every_part_is_fenced(
    etcd: etcd_mod.Etcd,
) -> None:
    s = await session.Session.open(etcd, ttl=5)
    term = await election.campaign(etcd, s, KEY, b"s")
    assert term is not None
    big = {f"/big/{i}": bytes([i]) * 400_000 for i in range(6)}
    rev = await etcd.apply(puts=big, fence=term.fence)
    listing = await etcd.get_prefix("/big/")
    assert {k: kv.value for k, kv in listing.items.items()} == big
    revisions = {kv.mod_revision for kv in listing.items.values()}
    assert len(revisions) >= 3, "2.4 MB cannot go in one transaction under etcd's request limit"
    assert max(revisions) == rev


async def test_resigning_on_cancel_hands_over_at_once(etcd: etcd_mod.Etcd) -> None:
    a = await session.Session.open(etcd, ttl=10)
    b = await session.Session.open(etcd, ttl=10)
    leading = asyncio.Event()
    terms: list[str] = []

    async def body_of(name: str) -> election.Body:
        async def body(term: election.Leadership) -> None:
            terms.append(name)
            leading.set()
            await asyncio.Future()

        return body

    lead_a = asyncio.create_task(
        election.lead(etcd, a, key=KEY, value=b"a", role="test", body=await body_of("a"))
    )
    await asyncio.wait_for(leading.wait(), 5)
    leading.clear()
    lead_b = asyncio.create_task(
        election.lead(etcd, b, key=KEY, value=b"b", role="test", body=await body_of("b"))
    )
    started = time.monotonic()
    lead_a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lead_a
    await asyncio.wait_for(leading.wait(), 5)
    assert time.monotonic() - started < 2.0, "a clean stop must not make the standby wait a TTL"
    assert terms == ["a", "b"]
    lead_b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lead_b
    assert await etcd.get(KEY) is None


async def test_a_campaign_stopped_as_its_create_lands_leaves_no_key_behind(
    etcd: etcd_mod.Etcd,
) -> None:
    """A rebalance cancels campaigns; one whose create landed but was not answered yet must
    not leave a key under its (live) lease that keeps every other candidate out."""
    a = await session.Session.open(etcd, ttl=10)
    b = await session.Session.open(etcd, ttl=10)
    landed = asyncio.Event()

    class SlowAnswer(etcd_mod.Etcd):
        """The create lands in etcd; its answer reaches the campaign only much later."""

        async def create(
            self, key: str, value: bytes, *, lease: int = 0
        ) -> tuple[bool, etcd_mod.KeyValue]:
            await super().create(key, value, lease=lease)
            landed.set()
            await asyncio.Future()  # NOTE: the answer never comes; the campaign is cancelled
            raise AssertionError("unreachable")

    slow = SlowAnswer(etcd.endpoints, timeout=2.0, retry_for=5.0)
    try:
        campaign_a = asyncio.create_task(election.campaign(slow, a, KEY, b"a"))
        await asyncio.wait_for(landed.wait(), 5)
        current = await etcd.get(KEY)
        assert current is not None and current.lease == a.lease
        campaign_a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await campaign_a
        assert await etcd.get(KEY) is None
        # The other candidate gets it at once, not after a's lease.
        async with asyncio.timeout(2):
            term = await election.campaign(etcd, b, KEY, b"b")
        assert term is not None and term.session is b
    finally:
        await slow.close()


async def test_a_leader_cut_off_from_etcd_stops_at_its_local_deadline(tmp_path: Path) -> None:
    proc, url = procs.start_etcd(tmp_path / "etcd")
    client = etcd_mod.Etcd(etcd_mod.parse_endpoints(url), timeout=1.0, retry_for=1.0)
    try:
        s = await session.Session.open(client, ttl=3, margin=0.5)
        keeper = asyncio.create_task(s.run())
        term = await election.campaign(client, s, KEY, b"s")
        assert term is not None
        holder = asyncio.create_task(election.hold(client, term))
        await asyncio.wait_for(s.renewed.wait(), 5)  # NOTE: one keepalive answered first
        paused_at = time.monotonic()
        proc.send_signal(signal.SIGSTOP)  # NOTE: etcd stops answering
        try:
            await asyncio.wait_for(holder, 6)
            stopped_at = time.monotonic()
            assert term.lost.is_set() and not term.valid()
            # It stops by its own clock, at the deadline the last answered keepalive gave
            # (send time + TTL - margin), not when some error finally shows up.
            assert s.clock.deadline - 0.05 <= stopped_at <= s.clock.deadline + 0.3
            assert stopped_at - paused_at <= 3 - 0.5 + 0.3
            await asyncio.wait_for(keeper, 2)
            assert s.lost.is_set()
        finally:
            proc.send_signal(signal.SIGCONT)
    finally:
        await client.close()
        procs.stop(proc)
