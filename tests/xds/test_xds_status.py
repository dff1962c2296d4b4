"""Sidecar status records: written under the front-end's lease, coalesced, rate-capped."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import xds_helpers as h
from envoy.config.core.v3 import base_pb2

from coordinator import etcd as etcd_mod
from coordinator import session
from navigator import keys
from navigator.xds import cache as cache_mod
from navigator.xds import resources, streams
from navigator.xds import status as status_mod


class _Context:
    def __init__(self, source: cache_mod.SnapshotCache) -> None:
        self.source = source
        self.responses = resources.ResponseCache()

    def record_nack(self, nack: streams.Nack) -> None:
        pass

    def touched(self, stream: streams.Stream[Any]) -> None:
        pass


def _stream(ctx: _Context, cache: cache_mod.SnapshotCache, i: int) -> streams.Stream[Any]:
    node = base_pb2.Node(id=f"node-{i}", cluster="shop")
    node.metadata.update({"app": "shop", "k8s_cluster": "c1"})
    return streams.DeltaStream(ctx, resources.NodeInfo.from_proto(node), cache.subscribe())


async def test_records_catch_up_at_the_capped_rate_and_go_with_the_lease(
    etcd: etcd_mod.Etcd,
) -> None:
    cache = cache_mod.SnapshotCache(etcd)
    ctx = _Context(cache)
    board = status_mod.StatusBoard(etcd, "fe-cap", interval=0.1, max_per_second=50)
    for i in range(20):
        board.opened(_stream(ctx, cache, i))
    async with session.running(etcd, ttl=2) as current:
        writer = asyncio.create_task(board.run(current))
        started = time.monotonic()

        async def written() -> int:
            listing = await etcd.get_prefix(keys.sidecar_prefix("fe-cap"), keys_only=True)
            return len(listing.items)

        first = await h.eventually(written, what="the first records")
        # NOTE: 5 records per 0.1 s cycle: 20 cannot all be there after the first cycle.
        assert first < 20

        async def all_written() -> bool:
            return await written() == 20

        await h.eventually(all_written, what="all 20 records")
        assert time.monotonic() - started >= 0.3
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
    # The session is revoked on exit: the records go with its lease.
    assert await written() == 0
