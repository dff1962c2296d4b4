"""Translator replicas against a real etcd: shards split between them, take-over writes
nothing when the state is the same, a deposed replica cannot write, large snapshots in parts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable

from coordinator import election, session
from coordinator import etcd as etcd_mod
from navigator import keys, model, runtime, snapshot
from shards import runner, translate

EAST = model.ClusterName("east")
SHARDS = 4


def _service(namespace: str, name: str, ip: str) -> model.Service:
    return model.Service(
        cluster=EAST,
        namespace=namespace,
        name=name,
        type=model.ServiceType.CLUSTER_IP,
        cluster_ip=ip,
        ports=(model.ServicePort(name="http", port=8080, protocol=model.Protocol.HTTP),),
    )


def _mesh(apps: int) -> list[model.Object]:
    objs: list[model.Object] = []
    for s in range(4):
        objs.append(_service("shop", f"svc{s}", f"127.31.0.{10 + s}"))
        objs.append(
            model.Endpoints(
                cluster=EAST,
                namespace="shop",
                name=f"svc{s}",
                endpoints=(
                    model.Endpoint(
                        ip=f"127.21.0.{10 + s}",
                        ready=True,
                        ports=(model.EndpointPort("http", 8080),),
                    ),
                ),
            )
        )
    for a in range(apps):
        objs.append(
            model.Nexus(
                cluster=EAST,
                namespace="apps",
                name=f"app{a}",
                app_name=model.AppName(f"app{a}"),
                services=(model.ServiceRef("shop", f"svc{a % 4}"),),
            )
        )
    return objs


async def _seed(etcd: etcd_mod.Etcd, objs: list[model.Object]) -> None:
    await etcd.apply(puts={keys.state_key(o): model.encode(o) for o in objs})
    await etcd.put(keys.synced_key(EAST), b"{}")


def _want(objs: list[model.Object]) -> dict[str, bytes]:
    full = translate.translate(objs, [EAST])
    want = {keys.app_snapshot_key(a, c): snapshot.encode_app(s) for (a, c), s in full.apps.items()}
    want |= {keys.eds_key(*nv): body for nv, body in full.endpoints.items()}
    return want


async def _until(
    cond: Callable[[], bool], limit: float = 15.0, what: Callable[[], object] = str
) -> None:
    """Polls ``cond`` (it looks at several translators at once) until it holds."""
    deadline = asyncio.get_running_loop().time() + limit
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, f"not met in time: {what()}"
        await asyncio.sleep(0.05)


async def _etcd_holds(etcd: etcd_mod.Etcd, want: dict[str, bytes], limit: float = 15.0) -> None:
    async with asyncio.timeout(limit):
        while True:
            listing = await etcd.get_prefix(keys.SNAPSHOTS)
            if {k: kv.value for k, kv in listing.items.items()} == want:
                return
            await asyncio.sleep(0.05)


def _state(*trs: runner.Translator) -> object:
    return [
        (tr.leading, tr.shard_runner and (tr.shard_runner.assigned, tr.shard_runner.leading))
        for tr in trs
    ]


@contextlib.asynccontextmanager
async def _replica(etcd: etcd_mod.Etcd, name: str) -> AsyncIterator[runner.Translator]:
    async with runner.running(
        etcd,
        debounce=0.0,
        shards=SHARDS,
        replica=runner.Replica(member_id=name, lease_ttl=3),
    ) as tr:
        yield tr


async def test_two_replicas_split_the_shards_and_publish_the_full_translation(
    etcd: etcd_mod.Etcd,
) -> None:
    objs = _mesh(apps=12)
    await _seed(etcd, objs)
    want = _want(objs)
    async with _replica(etcd, "a") as a, _replica(etcd, "b") as b:
        await _until(
            lambda: len(a.leading) == len(b.leading) == SHARDS // 2, what=lambda: _state(a, b)
        )
        assert a.leading | b.leading == set(range(SHARDS))
        await _etcd_holds(etcd, want)
        for tr in (a, b):
            # Each built only its own apps.
            assert all(tr._owns_app(app) for app in tr._app_wanted)

        # An endpoint change lands through whichever replica owns the service.
        changed = dataclasses.replace(
            objs[1],
            endpoints=(
                *objs[1].endpoints,  # type: ignore[attr-defined]
                model.Endpoint(
                    ip="127.21.0.99", ready=True, ports=(model.EndpointPort("http", 8080),)
                ),
            ),
        )
        objs[1] = changed
        await etcd.put(keys.state_key(changed), model.encode(changed))
        await _etcd_holds(etcd, _want(objs))


async def test_taking_over_the_same_state_writes_nothing(etcd: etcd_mod.Etcd) -> None:
    objs = _mesh(apps=12)
    await _seed(etcd, objs)
    want = _want(objs)
    async with _replica(etcd, "a") as a:
        async with _replica(etcd, "b") as b:
            await _until(
                lambda: len(a.leading) == len(b.leading) == SHARDS // 2, what=lambda: _state(a, b)
            )
            await _etcd_holds(etcd, want)
            before = {
                k: kv.mod_revision
                for k, kv in (await etcd.get_prefix(keys.SNAPSHOTS)).items.items()
            }
        # b stopped: a leads every shard again, re-deriving what b had written.
        every = frozenset(range(SHARDS))
        await asyncio.wait_for(a.wait_until(lambda: a.published_shards == every), 10)
        after = {
            k: kv.mod_revision for k, kv in (await etcd.get_prefix(keys.SNAPSHOTS)).items.items()
        }
    assert after == before, "a new leader deriving the same state must write nothing"


async def test_a_deposed_replica_cannot_write_and_gives_the_shard_up(etcd: etcd_mod.Etcd) -> None:
    objs = _mesh(apps=8)
    await _seed(etcd, objs)
    tr = runner.Translator(etcd, options=translate.Options(), debounce=0.0, lead_all=False)
    task = asyncio.create_task(tr.run(runtime.Health()))
    try:
        await asyncio.wait_for(tr.loaded.wait(), 10)
        mine = await session.Session.open(etcd, ttl=30)
        term = await election.campaign(etcd, mine, keys.shard_leader_key(0), b"a")
        assert term is not None
        await tr.gain(0, term)
        await _etcd_holds(etcd, _want(objs))

        # Its lease ends and someone else's term begins, but nothing tells the translator
        # (no watch on its key here, as when it is paused): it writes with its old fence.
        await etcd.revoke(mine.lease)
        other = await session.Session.open(etcd, ttl=30)
        intruder = await election.campaign(etcd, other, keys.shard_leader_key(0), b"b")
        assert intruder is not None and intruder.token != term.token
        app = next(o for o in objs if isinstance(o, model.Nexus))
        moved = dataclasses.replace(app, services=(model.ServiceRef("shop", "svc3"),))
        snap_key = keys.app_snapshot_key(app.app_name, EAST)
        old_value = (await etcd.get(snap_key)).value  # type: ignore[union-attr]
        deposed = runner.DEPOSED._value.get()
        gen = tr.generation
        await etcd.put(keys.state_key(moved), model.encode(moved))
        await asyncio.wait_for(tr.wait_until(lambda: tr.generation > gen and not tr.leading), 10)
        assert runner.DEPOSED._value.get() == deposed + 1
        assert term.lost.is_set(), "the refused write ends the term"
        assert (await etcd.get(snap_key)).value == old_value  # type: ignore[union-attr]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_snapshot_over_the_value_limit_is_written_in_parts(etcd: etcd_mod.Etcd) -> None:
    big: list[model.Object] = [
        _service("big", f"s{s}", f"127.31.{s // 250}.{s % 250 + 1}") for s in range(700)
    ]
    everything = model.Nexus(
        cluster=EAST,
        namespace="apps",
        name="all",
        app_name=model.AppName("all"),
        services=(model.ServiceRef("big", ""),),
    )
    await _seed(etcd, [*big, everything])
    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.published.wait(), 20)
    listing = await etcd.get_prefix(keys.SNAPSHOTS)
    head_key = keys.app_snapshot_key(everything.app_name, EAST)
    head = listing.items[head_key].value
    parts = snapshot.head_chunks(head)
    assert parts is not None and len(parts) >= 2
    chunks = [listing.items[keys.chunk_key(everything.app_name, EAST, d)].value for d in parts]
    assert all(len(c) <= snapshot.CHUNK_SIZE for c in chunks)
    body = snapshot.join_chunks(head, chunks)
    full = translate.translate([*big, everything], [EAST])
    assert body == snapshot.encode_app(full.apps[(everything.app_name, EAST)])
    assert len(body) > snapshot.CHUNK_SIZE


def test_diagnostics_too_large_for_one_value_are_truncated_with_a_count() -> None:
    tr = runner.Translator(etcd=None, options=translate.Options())  # type: ignore[arg-type]
    refs = tuple(model.ServiceRef("gone", f"missing-{i:05d}") for i in range(6000))
    nexus = model.Nexus(EAST, "apps", "big", model.AppName("big"), refs)
    tr.apply(keys.state_key(nexus), model.encode(nexus))
    tr.apply(keys.synced_key(EAST), b"{}")
    puts, _ = tr.compute()
    body = puts[keys.diagnostics_key(model.AppName("big"))]
    assert len(body) <= runner.MAX_DIAGNOSTICS_BYTES
    doc = json.loads(body)
    assert doc[-1]["reason"] == "diagnostics-truncated"
    assert doc[-1]["message"].startswith(f"{6000 - (len(doc) - 1)} more")
    assert all(d["reason"] != "diagnostics-truncated" for d in doc[:-1])


def test_a_synced_marker_counts_only_once_the_state_it_vouches_for_has_arrived() -> None:
    """State and markers come on two watches: a marker may arrive before the last state
    writes it covers. Publishing then would give apps a mesh with services missing."""
    tr = runner.Translator(etcd=None, options=translate.Options())  # type: ignore[arg-type]
    objs = _mesh(apps=1)
    nexus = next(o for o in objs if isinstance(o, model.Nexus))
    tr.apply(keys.state_key(nexus), model.encode(nexus))
    tr.state_seen(10)
    tr.apply(keys.synced_key(EAST), b'{"cluster":"east","revision":12}')
    puts, _ = tr.compute()
    assert not tr.all_synced()
    assert puts == {}, "nothing is published for a cluster whose state is still on its way"
    for o in objs:
        if not isinstance(o, model.Nexus):
            tr.apply(keys.state_key(o), model.encode(o))
    tr.state_seen(12)
    assert tr.all_synced()
    puts, _ = tr.compute()
    assert set(puts) >= set(_want(objs)), "everything, services included, once it has arrived"
    assert keys.diagnostics_key(nexus.app_name) not in puts, "no service was missing"


async def test_a_marker_ahead_of_every_state_change_is_settled_by_a_progress_notification(
    etcd: etcd_mod.Etcd,
) -> None:
    objs = _mesh(apps=2)
    await etcd.apply(puts={keys.state_key(o): model.encode(o) for o in objs})
    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.loaded.wait(), 10)
        # A revision no state change carries (as a watcher's listing revision would be).
        ahead = await etcd.put("/test/elsewhere", b"x")
        await etcd.put(keys.synced_key(EAST), json.dumps({"revision": ahead}).encode())
        await asyncio.wait_for(tr.wait_until(tr.all_synced), 10)
        assert tr.all_synced()
        await _etcd_holds(etcd, _want(objs))
    listing = await etcd.get_prefix(keys.SNAPSHOTS)
    assert {k: kv.value for k, kv in listing.items.items()} == _want(objs)


async def test_a_long_computation_gives_the_event_loop_turns_and_computes_the_same() -> None:
    """The first computation of a big mesh takes seconds: run at once it would starve the
    lease keepalives and the translator would lose its shards while computing them."""
    objs = _mesh(apps=400)
    done = [runner.Translator(etcd=None, options=translate.Options()) for _ in range(2)]  # type: ignore[arg-type]
    for tr in done:
        for o in objs:
            tr.apply(keys.state_key(o), model.encode(o))
        tr.apply(keys.synced_key(EAST), b"{}")
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    slice_was = runner.COMPUTE_SLICE
    runner.COMPUTE_SLICE = 0.0  # NOTE: a turn after every step, so the test needs no big mesh
    try:
        async_puts, async_deletes = await done[0].compute_async()
    finally:
        runner.COMPUTE_SLICE = slice_was
        stop.set()
        await task
    assert ticks - before > 400, "the loop ran between the apps' steps"
    assert (async_puts, async_deletes) == done[1].compute()
    assert set(async_puts) >= set(_want(objs))


async def test_a_write_reported_failed_that_lands_late_is_caught_and_relisted(
    etcd: etcd_mod.Etcd, etcd_url: str
) -> None:
    objs = _mesh(apps=8)
    await _seed(etcd, objs)
    mine = etcd_mod.Etcd(etcd_mod.parse_endpoints(etcd_url), retry_for=5.0)
    tr = runner.Translator(mine, options=translate.Options(), debounce=0.0, lead_all=False)
    task = asyncio.create_task(tr.run(runtime.Health()))
    try:
        await asyncio.wait_for(tr.loaded.wait(), 10)
        lease = await session.Session.open(etcd, ttl=30)
        term = await election.campaign(etcd, lease, keys.shard_leader_key(0), b"a")
        assert term is not None
        await tr.gain(0, term)
        await _etcd_holds(etcd, _want(objs))

        app = next(o for o in objs if isinstance(o, model.Nexus))
        first = dataclasses.replace(app, services=(model.ServiceRef("shop", "svc2"),))
        second = dataclasses.replace(app, services=(model.ServiceRef("shop", "svc3"),))
        final = [second if o is app else o for o in objs]
        real = mine._kv
        held: list[object] = []
        moved = etcd_mod.FENCED_TXNS.labels(result="moved")._value.get()

        async def kv(method: str, request: object, retry_for: float | None = None) -> object:
            if method == "Txn" and not held:
                # The write of ``first`` is lost on its way; the app changes again meanwhile.
                held.append(request)
                await etcd.put(keys.state_key(second), model.encode(second))
                raise etcd_mod.EtcdUnavailable("no member answered")
            if method == "Txn" and len(held) == 1:
                # ... and it arrives just before the translator's next write: that one is
                # refused (FenceMoved), and the translator must read etcd again.
                held.append(await real("Txn", held[0]))
            return await real(method, request, retry_for)

        mine._kv = kv  # type: ignore[method-assign]
        await etcd.put(keys.state_key(first), model.encode(first))
        await _etcd_holds(etcd, _want(final), limit=20)
        assert len(held) == 2
        assert etcd_mod.FENCED_TXNS.labels(result="moved")._value.get() == moved + 1
        assert not task.done(), "the translator goes on"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await mine.close()
