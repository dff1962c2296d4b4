"""A term's fenced writes are chained, against a real etcd: a write reported failed can land
later only before any newer write of the term; after one, it is refused for good."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from coordinator import etcd as etcd_mod
from navigator import keys

_shards = itertools.count(900)

Send = Callable[[str, Any], Awaitable[Any]]


async def _term(etcd: etcd_mod.Etcd) -> etcd_mod.Fence:
    """A leadership key of its own, held by the test: the fence of a term."""
    key = keys.shard_leader_key(next(_shards))
    created, kv = await etcd.create(key, b"{}")
    assert created
    return etcd_mod.Fence(key, kv.create_revision)


def _intercept(
    etcd: etcd_mod.Etcd, monkeypatch: pytest.MonkeyPatch, on_txn: Callable[[Send, Any], Any]
) -> list[Any]:
    """Routes the next Txn of ``etcd`` through ``on_txn(send, request)``; returns the requests
    it saw. ``send`` is the real call."""
    real = etcd._kv
    seen: list[Any] = []

    async def kv(method: str, request: Any, retry_for: float | None = None) -> Any:
        if method != "Txn" or seen:
            return await real(method, request, retry_for)
        seen.append(request)
        return await on_txn(real, request)

    monkeypatch.setattr(etcd, "_kv", kv)
    return seen


async def _value(etcd: etcd_mod.Etcd, key: str) -> bytes | None:
    kv = await etcd.get(key)
    return None if kv is None else kv.value


async def test_a_lost_write_that_arrives_after_a_newer_one_is_refused(
    etcd: etcd_mod.Etcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    fence = await _term(etcd)
    await etcd.put("/chain/a", b"v1", fence=fence)

    async def lost(send: Send, request: Any) -> Any:
        raise etcd_mod.EtcdUnavailable("no member answered")  # NOTE: it is still on its way

    held = _intercept(etcd, monkeypatch, lost)
    with pytest.raises(etcd_mod.EtcdUnavailable):
        await etcd.put("/chain/a", b"v2-lost", fence=fence)
    await etcd.put("/chain/a", b"v3", fence=fence)

    # The lost request arrives now (a partition healed): the term still holds its key.
    late = await etcd._kv("Txn", held[0])
    assert not late.succeeded
    assert await _value(etcd, "/chain/a") == b"v3"


async def test_a_write_whose_answer_was_lost_moves_the_chain_and_the_next_write_is_told(
    etcd: etcd_mod.Etcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    fence = await _term(etcd)
    await etcd.put("/chain/b", b"v1", fence=fence)

    async def answer_lost(send: Send, request: Any) -> Any:
        await send("Txn", request)
        raise etcd_mod.EtcdUnavailable("the answer was lost")

    _intercept(etcd, monkeypatch, answer_lost)
    with pytest.raises(etcd_mod.EtcdUnavailable):
        await etcd.put("/chain/b", b"v2", fence=fence)
    assert await _value(etcd, "/chain/b") == b"v2"  # NOTE: it landed, reported failed

    with pytest.raises(etcd_mod.FenceMoved):
        await etcd.put("/chain/b", b"v3", fence=fence)
    assert await _value(etcd, "/chain/b") == b"v2"
    # Told, the writer writes again: the chain now follows the write that landed.
    await etcd.put("/chain/b", b"v3", fence=fence)
    assert await _value(etcd, "/chain/b") == b"v3"


async def test_a_retry_of_a_request_that_landed_is_its_success(
    etcd: etcd_mod.Etcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    fence = await _term(etcd)

    async def retried(send: Send, request: Any) -> Any:
        await send("Txn", request)  # NOTE: landed; its answer lost, the client sends it again
        return await send("Txn", request)

    _intercept(etcd, monkeypatch, retried)
    revision = await etcd.put("/chain/c", b"v1", fence=fence)
    mark = await etcd.get(keys.fence_mark_key(fence.key))
    assert mark is not None and mark.mod_revision == revision
    assert keys.fence_mark_token(mark.value) == fence.token
    await etcd.put("/chain/c", b"v2", fence=fence)
    assert await _value(etcd, "/chain/c") == b"v2"


async def test_a_write_of_a_term_that_lost_its_key_is_deposed_not_moved(
    etcd: etcd_mod.Etcd,
) -> None:
    fence = await _term(etcd)
    await etcd.put("/chain/d", b"v1", fence=fence)
    await etcd.delete(fence.key)
    with pytest.raises(etcd_mod.Deposed):
        await etcd.put("/chain/d", b"v2", fence=fence)
    assert await _value(etcd, "/chain/d") == b"v1"
