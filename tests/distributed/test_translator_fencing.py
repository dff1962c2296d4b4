"""SIGSTOP of a translator shard leader for longer than its lease, then SIGCONT: every write
it attempts after the pause is refused by its fence (none lands), and the snapshots the new
leader wrote stay as they are."""

from __future__ import annotations

import os
import signal

import fault_helpers as f
from conftest import StartLab

from navigator import keys, model


async def test_a_paused_shard_leader_cannot_write_after_it_wakes(start_lab: StartLab) -> None:
    # NOTE: a debounce of a second leaves the paused leader a publication due when it wakes.
    lab = await start_lab(translator_debounce=1.0)
    shard = keys.service_shard("shop", "item", lab.shape.shards)
    eds_key = keys.eds_key("shop/item:8890", "r1-a")
    async with f.etcd_of(lab) as etcd:

        async def settled() -> bool:
            leaders = {
                await f.leader(etcd, keys.shard_leader_key(n)) for n in range(lab.shape.shards)
            }
            return leaders == {"translator-0", "translator-1"} and bool(await etcd.get(eds_key))

        await f.until(settled, within=20, what="the shards shared and item's endpoints published")
        paused = lab.proc(
            await f.until(
                lambda: f.leader(etcd, keys.shard_leader_key(shard)),
                within=20,
                what="a leader of item's shard",
            )
        )
        http = paused.extra["http"]
        landed = await f.metric(http, "navigator_etcd_fenced_txns_total", result="landed")
        rejected = await f.metric(http, "navigator_etcd_fenced_txns_total", result="rejected")
        ips = await f.endpoint_ips(lab, "east", "shop", "item")
        new_ip = ips[0].rsplit(".", 1)[0] + ".98"
        old_eds = (await etcd.get(eds_key)).value  # type: ignore[union-attr]

        await f.set_endpoint_ips(lab, "east", "shop", "item", [*ips, new_ip])
        state_key = keys.state_key(
            model.Endpoints(
                cluster=model.ClusterName("east"), namespace="shop", name="item", endpoints=()
            )
        )

        async def written() -> int | None:
            kv = await etcd.get(state_key)
            return kv.mod_revision if kv is not None and new_ip.encode() in kv.value else None

        revision = await f.until(written, within=10, what="the watcher to write the change")

        async def received() -> bool:
            seen = await f.metric(http, "navigator_translator_state_revision")
            return seen >= revision

        # NOTE: now the leader holds the change and waits out its one-second debounce.
        await f.until(received, within=5, what="the leader to receive the change", every=0.01)
        os.kill(paused.popen.pid, signal.SIGSTOP)
        try:

            async def taken_over() -> str | None:
                holder = await f.leader(etcd, keys.shard_leader_key(shard))
                return holder if holder and holder != paused.name else None

            await f.until(taken_over, within=lab.shape.lease_ttl + 5, what="a new shard leader")

            async def published() -> bytes | None:
                kv = await etcd.get(eds_key)
                return kv.value if kv is not None and new_ip.encode() in kv.value else None

            await f.until(published, within=10, what="the new leader to publish the change")
            intact = await etcd.get_prefix(keys.SNAPSHOTS)
        finally:
            os.kill(paused.popen.pid, signal.SIGCONT)

        async def refused() -> float | None:
            got = await f.metric(http, "navigator_etcd_fenced_txns_total", result="rejected")
            return got if got > rejected else None

        await f.until(refused, within=10, what="the woken leader's write to be refused")

        async def rejoined() -> bool:
            leaders = {
                await f.leader(etcd, keys.shard_leader_key(n)) for n in range(lab.shape.shards)
            }
            return paused.name in leaders

        # It comes back with a new session and new terms, re-derives the same state: a full
        # publication of its shards after which nothing more may have landed.
        await f.until(rejoined, within=lab.shape.lease_ttl + 15, what="it to lead shards again")
        flushes = await f.metric(http, "navigator_translator_flushes_total")

        async def flushed() -> bool:
            return await f.metric(http, "navigator_translator_flushes_total") > flushes

        await f.until(flushed, within=10, what="a publication under its new terms")
        after = await etcd.get_prefix(keys.SNAPSHOTS)
        assert await f.metric(http, "navigator_etcd_fenced_txns_total", result="landed") == landed
        assert {k: (v.value, v.mod_revision) for k, v in after.items.items()} == {
            k: (v.value, v.mod_revision) for k, v in intact.items.items()
        }, "the new leader's snapshots must stay intact"
        assert old_eds != intact.items[eds_key].value
        assert paused.popen.poll() is None, "the deposed translator keeps running"
