"""Adding and removing translator replicas: the shards are shared within one every time, no
app snapshot is ever deleted meanwhile, and changes keep arriving at the sidecars."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import fault_helpers as f
from conftest import StartLab

from coordinator import etcd as etcd_mod
from coordinator import membership
from navigator import keys
from navigator.lab import main as lab_main

ITEM = "shop/item:8890"


async def _leaders(etcd: etcd_mod.Etcd, shards: int) -> dict[int, str]:
    return {s: await f.leader(etcd, keys.shard_leader_key(s)) for s in range(shards)}


def _balanced(leaders: dict[int, str], members: set[str]) -> bool:
    counts = collections.Counter(leaders.values())
    sizes = [counts.get(m, 0) for m in members]
    return set(counts) == members and max(sizes) - min(sizes) <= 1


@contextlib.asynccontextmanager
async def _deletions(etcd: etcd_mod.Etcd) -> AsyncIterator[list[str]]:
    """App snapshot keys deleted while the block runs."""
    deleted: list[str] = []
    start = await etcd.ping() + 1

    async def follow() -> None:
        async for ev in etcd.watch_prefix(keys.APP_SNAPSHOTS, start_revision=start):
            if ev.value is None:
                deleted.append(ev.key)

    task = asyncio.create_task(follow())
    try:
        yield deleted
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _change_arrives(lab: lab_main.Lab, ips: list[str], n: int) -> None:
    """A change of west's item pods reaches the east web sidecar."""
    web = f.sidecar(lab, "web", "east")
    new = [*ips[:1], ips[0].rsplit(".", 1)[0] + f".{60 + n}"]
    await f.set_endpoint_ips(lab, "west", "shop", "item", new)

    async def arrived() -> bool:
        hosts = await f.envoy_hosts(web["admin"], ITEM)
        return {f"{ip}:8080" for ip in new} <= hosts

    await f.until(arrived, within=lab.shape.lease_ttl + 15, what=f"change {n} at the sidecar")


async def test_translators_joining_and_leaving_share_the_shards_within_one(
    start_lab: StartLab,
) -> None:
    lab = await start_lab()
    shards = lab.shape.shards
    async with f.etcd_of(lab) as etcd:
        ips = await f.endpoint_ips(lab, "west", "shop", "item")

        async def balanced_over(members: set[str]) -> bool:
            return _balanced(await _leaders(etcd, shards), members)

        two = {"translator-0", "translator-1"}
        await f.until(lambda: balanced_over(two), within=20, what="two translators balanced")
        async with _deletions(etcd) as deleted:
            third = lab.start_translator(2)
            await lab.wait_ready([third])
            three = two | {"translator-2"}
            await f.until(lambda: balanced_over(three), within=20, what="three balanced")
            await _change_arrives(lab, ips, 1)

            # A clean stop hands its shards over at once.
            lab.proc("translator-0").popen.send_signal(signal.SIGTERM)
            rest = three - {"translator-0"}
            await f.until(lambda: balanced_over(rest), within=10, what="two left, balanced")
            await _change_arrives(lab, ips, 2)

            # A crash: its shards move once its lease is gone.
            os.kill(lab.proc("translator-1").popen.pid, signal.SIGKILL)
            last = {"translator-2"}
            await f.until(
                lambda: balanced_over(last), within=lab.shape.lease_ttl + 10, what="one left"
            )
            await _change_arrives(lab, ips, 3)
        assert not deleted, f"app snapshots were deleted while shards moved: {deleted}"
        members = await membership.members(etcd, "translator")
        assert {m.id for m in members} == last, "the members left are the live translators"
