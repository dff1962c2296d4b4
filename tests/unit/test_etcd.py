"""coordinator.etcd against a real etcd member: listing, batched writes, resumable watches."""

from __future__ import annotations

import asyncio

import pytest

from coordinator import etcd as etcd_mod


async def test_apply_splits_large_changes_and_lists_them(etcd: etcd_mod.Etcd) -> None:
    puts = {f"/t/k{i:03d}": str(i).encode() for i in range(300)}
    rev = await etcd.apply(puts=puts)
    listing = await etcd.get_prefix("/t/")
    assert listing.revision == rev
    assert {k: kv.value for k, kv in listing.items.items()} == puts
    await etcd.apply(puts={}, deletes=[f"/t/k{i:03d}" for i in range(0, 300, 2)])
    assert len((await etcd.get_prefix("/t/")).items) == 150


async def test_watch_delivers_changes_from_the_listing_revision(etcd: etcd_mod.Etcd) -> None:
    await etcd.put("/w/a", b"1")
    listing = await etcd.get_prefix("/w/")
    await etcd.put("/w/b", b"2")
    await etcd.delete("/w/a")
    seen: list[tuple[str, bytes | None]] = []

    async def consume() -> None:
        async for ev in etcd.watch_prefix("/w/", start_revision=listing.revision + 1):
            seen.append((ev.key, ev.value))
            if len(seen) == 2:
                return

    await asyncio.wait_for(consume(), 10)
    assert seen == [("/w/b", b"2"), ("/w/a", None)]


async def test_watch_below_compaction_raises_compacted(etcd: etcd_mod.Etcd) -> None:
    await etcd.put("/c/a", b"1")
    rev = await etcd.put("/c/a", b"2")
    await etcd.compact(rev)
    with pytest.raises(etcd_mod.Compacted):
        async for _ in etcd.watch_prefix("/c/", start_revision=1):
            pass


async def test_unreachable_etcd_raises_a_clear_error() -> None:
    client = etcd_mod.Etcd(["127.0.0.1:1"], timeout=0.5, retry_for=1.0)
    try:
        with pytest.raises(etcd_mod.EtcdUnavailable, match=r"127\.0\.0\.1:1 unavailable"):
            await client.get_prefix("/x/")
    finally:
        await client.close()
