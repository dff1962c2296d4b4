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


def _ranges_then(etcd: etcd_mod.Etcd, after_first: object) -> list[int]:
    """Wraps ``etcd._kv``: once the first Range of a listing answered, runs ``after_first``."""
    calls: list[int] = []
    real = etcd._kv

    async def kv(method: str, request: object, retry_for: float | None = None) -> object:
        resp = await real(method, request, retry_for)
        if method == "Range":
            calls.append(int(getattr(request, "revision", 0)))
            if len(calls) == 1:
                await after_first()  # type: ignore[operator]
        return resp

    etcd._kv = kv  # type: ignore[method-assign]
    return calls


async def test_a_listing_in_pages_is_one_consistent_cut(etcd: etcd_mod.Etcd) -> None:
    before = {f"/p/k{i:04d}": b"v1" for i in range(250)}
    await etcd.apply(puts=before)

    async def overwrite() -> None:
        await etcd.apply(puts=dict.fromkeys(before, b"v2") | {"/p/new": b"x"})

    calls = _ranges_then(etcd, overwrite)
    listing = await etcd.get_prefix("/p/")
    assert len(calls) >= 2, "the listing took one page"
    # Every page after the first asked for the first one's revision: nothing written since.
    assert set(calls[1:]) == {listing.revision}
    assert {k: kv.value for k, kv in listing.items.items()} == before


async def test_a_compaction_between_pages_starts_the_listing_over(
    etcd: etcd_mod.Etcd,
) -> None:
    await etcd.apply(puts={f"/q/k{i:04d}": b"v" for i in range(250)})

    async def compact() -> None:
        await etcd.put("/q/late", b"x")
        await etcd.compact((await etcd.get_prefix("/none/")).revision)

    _ranges_then(etcd, compact)
    listing = await etcd.get_prefix("/q/")
    assert len(listing.items) == 251
    assert listing.items["/q/late"].value == b"x"


async def test_pages_refused_for_their_size_are_asked_again_smaller(
    etcd_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(etcd_mod, "MAX_RECEIVE", 256 * 1024)
    monkeypatch.setattr(etcd_mod, "PAGE_BYTES", 128 * 1024)
    values = {f"/big/k{i:04d}": bytes([i % 256]) * 8192 for i in range(300)}
    async with etcd_mod.Etcd(etcd_mod.parse_endpoints(etcd_url), retry_for=5.0) as etcd:
        await etcd.apply(puts=values)
        # NOTE: 100 values of 8 KiB (the first page) are more than this client takes at once.
        listing = await etcd.get_prefix("/big/")
    assert {k: kv.value for k, kv in listing.items.items()} == values
