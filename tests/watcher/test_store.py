"""The sync store against a real etcd: skipping, coalescing, reconciling, surviving outages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

from coordinator import etcd as etcd_mod
from navigator import keys, model
from navigator.lab import procs
from navigator.watcher import convert, metrics, store

C = model.ClusterName("east")


def node(name: str, zone: str = "z1") -> model.Node:
    return model.Node(cluster=C, name=name, region="r1", zone=zone)


def gateway(name: str) -> model.Gateway:
    return model.Gateway(cluster=C, namespace="ns", name=name, ingress_class="public", port=80)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(s: store.SyncStore) -> AsyncIterator[store.SyncStore]:
    task = asyncio.create_task(s.run())
    try:
        yield s
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def counter(metric: object, *labels: str) -> float:
    return float(metric.labels(*labels)._value.get())  # type: ignore[attr-defined]


async def test_synced_marker_after_listing_and_unchanged_values_not_rewritten(
    etcd: etcd_mod.Etcd,
) -> None:
    s = store.SyncStore(cluster=C, etcd=etcd, kinds=[model.Kind.NODE], delay=0.005)
    async with running(s):
        s.upsert(node("a"))
        s.upsert(node("b"))

        async def both_written() -> bool:
            written = [await etcd.get(keys.state_key(node(n))) for n in ("a", "b")]
            return all(written) and s.pending == 0

        # NOTE: once it has written what it has, it had its chance to (wrongly) mark synced.
        await eventually(both_written)
        assert await etcd.get(keys.synced_key(C)) is None
        s.listed(model.Kind.NODE, {convert.identity_of(node("a")), convert.identity_of(node("b"))})
        await asyncio.wait_for(s.synced.wait(), 10)

        marker = await etcd.get(keys.synced_key(C))
        assert marker is not None
        doc = json.loads(marker.value)
        key_a = keys.state_key(node("a"))
        first = await etcd.get(key_a)
        assert first is not None
        assert doc["cluster"] == "east"
        assert doc["revision"] >= first.mod_revision
        assert isinstance(doc["time"], int)
        assert model.decode(model.Kind.NODE, first.value) == node("a")

        skipped = counter(metrics.SKIPPED, C)
        s.upsert(node("a"))  # unchanged
        s.upsert(node("b", zone="z2"))  # changed
        key_b = keys.state_key(node("b"))

        async def b_changed() -> bool:
            kv = await etcd.get(key_b)
            return kv is not None and model.decode(model.Kind.NODE, kv.value) == node("b", "z2")

        await eventually(b_changed)
        after = await etcd.get(key_a)
        assert after is not None
        assert after.mod_revision == first.mod_revision
        assert counter(metrics.SKIPPED, C) == skipped + 1


async def test_a_burst_is_coalesced_into_few_transactions(etcd: etcd_mod.Etcd) -> None:
    s = store.SyncStore(cluster=C, etcd=etcd, kinds=[model.Kind.NODE], delay=0.02)
    async with running(s):
        await asyncio.wait_for(s.loaded.wait(), 10)
        before = counter(metrics.TRANSACTIONS, C)
        nodes = [node(f"n{i:03d}") for i in range(500)]
        for n in nodes:
            s.upsert(n)
        s.listed(model.Kind.NODE, {convert.identity_of(n) for n in nodes})
        await asyncio.wait_for(s.synced.wait(), 10)
        listing = await etcd.get_prefix(keys.state_prefix(C))
        assert len(listing.items) == 500
        # NOTE: one batch (split by Etcd.apply into 128-op transactions), maybe two.
        assert counter(metrics.TRANSACTIONS, C) - before <= 2


async def test_reconcile_deletes_only_what_the_api_lacks(etcd: etcd_mod.Etcd) -> None:
    other = model.Node(cluster=model.ClusterName("west"), name="gone", region="", zone="")
    seed: list[model.Object] = [node("kept"), node("gone"), gateway("g"), other]
    await etcd.apply(puts={keys.state_key(o): model.encode(o) for o in seed})
    kept_rev = await etcd.get(keys.state_key(node("kept")))
    assert kept_rev is not None

    s = store.SyncStore(
        cluster=C, etcd=etcd, kinds=[model.Kind.NODE, model.Kind.GATEWAY], delay=0.005
    )
    async with running(s):
        s.upsert(node("kept"))
        s.listed(model.Kind.NODE, {convert.identity_of(node("kept"))})
        skipped = counter(metrics.SKIPPED, C)

        async def compared() -> bool:
            return counter(metrics.SKIPPED, C) > skipped

        # NOTE: once it has compared what it has with etcd (kept is skipped, unchanged), it
        # had its chance to (wrongly) delete; nothing is deleted before every kind is listed.
        await eventually(compared)
        assert await etcd.get(keys.state_key(node("gone"))) is not None
        # Gateways not served (CRD not installed): their keys are kept.
        s.listed(model.Kind.GATEWAY, None)
        await asyncio.wait_for(s.synced.wait(), 10)

    assert await etcd.get(keys.state_key(node("gone"))) is None
    assert await etcd.get(keys.state_key(gateway("g"))) is not None
    assert await etcd.get(keys.state_key(other)) is not None  # another cluster: untouched
    kept = await etcd.get(keys.state_key(node("kept")))
    assert kept is not None
    assert kept.mod_revision == kept_rev.mod_revision  # unchanged value: not rewritten


async def test_a_relist_deletes_what_went_away_and_keeps_malformed(etcd: etcd_mod.Etcd) -> None:
    s = store.SyncStore(cluster=C, etcd=etcd, kinds=[model.Kind.NODE], delay=0.005)
    async with running(s):
        for n in ("a", "b", "c"):
            s.upsert(node(n))
        s.listed(model.Kind.NODE, {convert.identity_of(node(n)) for n in "abc"})
        await asyncio.wait_for(s.synced.wait(), 10)
        # The relist after a 410: "a" is fine, "b" is gone, "c" is now malformed (kept).
        s.upsert(node("a"))
        s.keep(convert.identity_of(node("c")))
        s.listed(model.Kind.NODE, {convert.identity_of(node("a")), convert.identity_of(node("c"))})

        async def b_gone() -> bool:
            return await etcd.get(keys.state_key(node("b"))) is None

        await eventually(b_gone)
        assert await etcd.get(keys.state_key(node("c"))) is not None


async def test_etcd_down_then_up_loses_nothing(tmp_path: Path) -> None:
    client_port, peer_port = procs.free_port(), procs.free_port()
    data = tmp_path / "etcd"

    def start() -> subprocess.Popen[bytes]:
        proc, _ = procs.start_etcd(
            data, client_port=client_port, peer_port=peer_port, log_file=tmp_path / "etcd.log"
        )
        return proc

    proc = start()
    client = etcd_mod.Etcd([f"127.0.0.1:{client_port}"], timeout=0.5, retry_for=0.5)
    try:
        s = store.SyncStore(
            cluster=C, etcd=client, kinds=[model.Kind.NODE], delay=0.005, max_backoff=0.2
        )
        async with running(s):
            s.upsert(node("before"))
            s.listed(model.Kind.NODE, {convert.identity_of(node("before"))})
            await asyncio.wait_for(s.synced.wait(), 10)

            procs.stop(proc)
            errors = counter(metrics.ETCD_ERRORS, C)
            s.upsert(node("during"))
            s.delete(convert.identity_of(node("before")))

            async def failed_once() -> bool:
                return counter(metrics.ETCD_ERRORS, C) > errors

            await eventually(failed_once)
            assert not s.etcd_ok
            assert s.pending == 2
            proc = start()

            async def converged() -> bool:
                try:
                    listing = await client.get_prefix(keys.state_prefix(C))
                except etcd_mod.EtcdUnavailable:
                    return False
                return set(listing.items) == {keys.state_key(node("during"))}

            await eventually(converged, within=20)
            await eventually(lambda: _true(s.etcd_ok and s.pending == 0))
    finally:
        await client.close()
        procs.stop(proc)


async def _true(value: bool) -> bool:
    return value


async def test_a_new_term_reconciles_against_etcd_and_the_old_term_cannot_write(
    etcd: etcd_mod.Etcd,
) -> None:
    from coordinator import election, session

    kinds = [model.Kind.NODE]
    a = store.SyncStore(cluster=C, etcd=etcd, kinds=kinds, delay=0.005, member_id="a")
    b = store.SyncStore(cluster=C, etcd=etcd, kinds=kinds, delay=0.005, member_id="b")
    sa = await session.Session.open(etcd, ttl=5)
    sb = await session.Session.open(etcd, ttl=5)
    key = keys.watcher_leader_key(C)
    term_a = await election.campaign(etcd, sa, key, b"a")
    assert term_a is not None
    for s in (a, b):
        for n in ("kept", "gone", "bad"):
            s.upsert(node(n))
        s.listed(model.Kind.NODE, {convert.identity_of(node(n)) for n in ("kept", "gone", "bad")})
    writing_a = asyncio.create_task(a.lead(term_a.fence))
    await asyncio.wait_for(a.synced.wait(), 10)
    before = {
        k: kv.mod_revision for k, kv in (await etcd.get_prefix(keys.state_prefix(C))).items.items()
    }

    # While a leads, b (a warm standby) sees "gone" deleted and "bad" become malformed.
    b.delete(convert.identity_of(node("gone")))
    b.keep(convert.identity_of(node("bad")))
    b.listed(model.Kind.NODE, {convert.identity_of(node(n)) for n in ("kept", "bad")})
    assert await etcd.get(keys.state_key(node("gone"))) is not None, "a standby never writes"
    assert b.warm.is_set()

    await etcd.revoke(sa.lease)  # a's lease ends (as when a dies); b is elected
    term_b = await election.campaign(etcd, sb, key, b"b")
    assert term_b is not None
    writing_b = asyncio.create_task(b.lead(term_b.fence))
    try:
        await asyncio.wait_for(b.synced.wait(), 10)
        after = {
            k: kv.mod_revision
            for k, kv in (await etcd.get_prefix(keys.state_prefix(C))).items.items()
        }
        # Deleted: what the API no longer has. Kept untouched: the rest, the malformed one too.
        assert set(after) == {keys.state_key(node("kept")), keys.state_key(node("bad"))}
        assert all(after[k] == before[k] for k in after)

        # The old term writes again (it did not notice): etcd refuses it.
        a.upsert(node("kept", zone="z9"))
        with pytest.raises(etcd_mod.Deposed):
            await asyncio.wait_for(writing_a, 10)
        kept = await etcd.get(keys.state_key(node("kept")))
        assert kept is not None
        assert model.decode(model.Kind.NODE, kept.value) == node("kept")
    finally:
        writing_b.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writing_b


async def test_an_unreachable_api_marks_the_cluster_stale_and_keeps_its_state(
    etcd: etcd_mod.Etcd,
) -> None:
    s = store.SyncStore(cluster=C, etcd=etcd, kinds=[model.Kind.NODE], delay=0.005, member_id="w")
    async with running(s):
        s.api_reachable(True)
        s.upsert(node("a"))
        s.listed(model.Kind.NODE, {convert.identity_of(node("a"))})
        await asyncio.wait_for(s.synced.wait(), 10)
        assert await etcd.get(keys.stale_key(C)) is None

        s.api_reachable(False, "connection refused")

        async def marked() -> bool:
            return await etcd.get(keys.stale_key(C)) is not None

        await eventually(marked)
        doc = json.loads((await etcd.get(keys.stale_key(C))).value)  # type: ignore[union-attr]
        assert doc["error"] == "connection refused" and doc["leader"] == "w"
        await eventually(lambda: _true(_stale_seconds() > 0.0))
        assert _stale_seconds() > 0.0
        assert await etcd.get(keys.state_key(node("a"))) is not None, "stale state is kept"

        s.api_reachable(True)

        async def cleared() -> bool:
            return await etcd.get(keys.stale_key(C)) is None

        await eventually(cleared)
        assert _stale_seconds() == 0.0


def _stale_seconds() -> float:
    value = prometheus_client.REGISTRY.get_sample_value(
        "navigator_watcher_stale_seconds", {"cluster": C}
    )
    assert value is not None
    return value


async def test_a_lone_change_after_a_quiet_period_does_not_wait_out_the_delay(
    etcd: etcd_mod.Etcd,
) -> None:
    # NOTE: a delay far longer than the wait below: only a write at once can pass.
    s = store.SyncStore(cluster=C, etcd=etcd, kinds=[model.Kind.NODE], delay=30.0)
    async with running(s):
        await asyncio.wait_for(s.loaded.wait(), 10)
        start = await etcd.ping() + 1
        s.upsert(node("first"))

        async def written(name: str) -> None:
            async for _ in etcd.watch_key(keys.state_key(node(name)), start_revision=start):
                return

        await asyncio.wait_for(written("first"), 5)
        # The next change comes within the delay of that write: it waits for the rest of its
        # burst, so it is not in etcd yet.
        s.upsert(node("second"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(written("second"), 1.0)


async def test_a_write_reported_failed_that_landed_is_read_back_before_the_next(
    etcd: etcd_mod.Etcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = model.ClusterName("lost-answer")
    s = store.SyncStore(cluster=cluster, etcd=etcd, kinds=[model.Kind.NODE], delay=0.005)

    def zoned(zone: str) -> model.Node:
        return model.Node(cluster=cluster, name="a", region="r1", zone=zone)

    key = keys.state_key(zoned("z1"))

    async def zone_in_etcd() -> str:
        kv = await etcd.get(key)
        return "" if kv is None else str(json.loads(kv.value)["zone"])

    real = etcd._kv
    lost: list[Any] = []

    async def answer_lost(method: str, request: Any, retry_for: float | None = None) -> Any:
        if method == "Txn" and not lost and zone_of(request) == "z2":
            lost.append(await real(method, request, retry_for))  # NOTE: it lands ...
            s.upsert(zoned("z1"))  # ... while the API goes back to what etcd held before
            raise etcd_mod.EtcdUnavailable("the answer was lost")
        return await real(method, request, retry_for)

    def zone_of(request: Any) -> str:
        for op in request.success:
            if op.request_put.key == key.encode():
                return str(json.loads(op.request_put.value)["zone"])
        return ""

    async with running(s):
        s.upsert(zoned("z1"))
        s.listed(model.Kind.NODE, {convert.identity_of(zoned("z1"))})
        await asyncio.wait_for(s.synced.wait(), 10)
        monkeypatch.setattr(etcd, "_kv", answer_lost)
        s.upsert(zoned("z2"))

        async def back_to_z1() -> bool:
            return bool(lost) and s.pending == 0 and await zone_in_etcd() == "z1"

        # NOTE: believing z2 never landed, a store that skips values etcd "already holds"
        # would leave z2 there for good.
        await eventually(back_to_z1)
