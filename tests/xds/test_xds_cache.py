"""SnapshotCache against real etcd: loading, notification, bad values and relisting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import xds_helpers as h

from coordinator import etcd as etcd_mod
from navigator import keys, model, runtime, snapshot
from navigator.xds import cache as cache_mod
from navigator.xds import resources

APP_KEY = keys.app_snapshot_key(model.AppName("shop"), model.ClusterName("c1"))


@pytest.fixture
async def loaded(
    etcd: etcd_mod.Etcd,
) -> AsyncIterator[tuple[cache_mod.SnapshotCache, runtime.Health]]:
    await h.publish_app(etcd, h.app_snapshot("shop", "c1", [h.Service("one", 1)]))
    health = runtime.Health()
    cache = cache_mod.SnapshotCache(etcd, health=health)
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.wait_loaded(), 10)
        yield cache, health
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_ready_after_the_first_listing_and_notifies_dependents(
    etcd: etcd_mod.Etcd, loaded: tuple[cache_mod.SnapshotCache, runtime.Health]
) -> None:
    cache, health = loaded
    assert cache.ready and health.ready
    entry = cache.app("shop", "c1")
    assert entry is not None and set(entry.of_type(snapshot.CLUSTER)) == {"one"}
    sub = cache.subscribe()
    other = cache.subscribe()
    sub.set_keys({keys.eds_key("one")})
    other.set_keys({keys.eds_key("two")})
    await h.publish_eds(etcd, "one", ("10.0.0.1", 80))
    await asyncio.wait_for(sub.changed.wait(), 5)
    assert not other.changed.is_set()
    found = cache.eds("one", keys.DEFAULT_VARIANT)
    assert found is not None and found.name == "one"
    sub.close()
    other.close()


async def test_an_undecodable_snapshot_keeps_the_previous_one(
    etcd: etcd_mod.Etcd,
    loaded: tuple[cache_mod.SnapshotCache, runtime.Health],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache, _ = loaded
    before = cache.app("shop", "c1")
    rev = await etcd.put(APP_KEY, b"{not json")
    await h.eventually(lambda: _value(cache.revision >= rev), what="the bad value applied")
    assert cache.app("shop", "c1") is before
    assert any(APP_KEY in str(r.__dict__.get("key")) for r in caplog.records)


async def test_relisting_unchanged_state_notifies_nobody(
    etcd: etcd_mod.Etcd, loaded: tuple[cache_mod.SnapshotCache, runtime.Health]
) -> None:
    cache, _ = loaded
    sub = cache.subscribe()
    sub.set_keys({APP_KEY})
    cache._replace(await etcd.get_prefix(keys.SNAPSHOTS))
    assert not sub.changed.is_set()
    await h.publish_app(etcd, h.app_snapshot("shop", "c1", [h.Service("two", 2)]))
    listing = await etcd.get_prefix(keys.SNAPSHOTS)
    cache._replace(listing)
    assert sub.changed.is_set()
    sub.close()


async def _value(value: bool) -> bool:
    return value


async def test_a_snapshot_in_parts_is_served_only_once_every_part_is_here(
    etcd: etcd_mod.Etcd, loaded: tuple[cache_mod.SnapshotCache, runtime.Health]
) -> None:
    cache, _ = loaded
    before = cache.app("shop", "c1")
    assert before is not None
    big = h.app_snapshot("shop", "c1", [h.Service(f"s{i}", 20000 + i) for i in range(3)])
    body = snapshot.encode_app(big)
    parts = snapshot.split_app(body, chunk_size=len(body) // 3 + 1)
    assert len(parts.chunks) == 3
    app, k8s = model.AppName("shop"), model.ClusterName("c1")
    # The head first, one part missing: the previous snapshot stays.
    await etcd.apply(
        puts={keys.chunk_key(app, k8s, d): c for d, c in parts.chunks[:2]} | {APP_KEY: parts.head}
    )
    rev = await etcd.put("/navigator/v1/snapshots/eds/x/y:1/_default", b"")
    await h.applied(cache, rev)
    assert cache.app("shop", "c1") is before
    sub = cache.subscribe()
    sub.set_keys({APP_KEY})
    digest, last = parts.chunks[2]
    await h.applied(cache, await etcd.put(keys.chunk_key(app, k8s, digest), last))
    await asyncio.wait_for(sub.changed.wait(), 5)
    entry = cache.app("shop", "c1")
    assert entry == cache_mod.encode_app(snapshot.decode_app(body))
    sub.close()


async def test_a_listing_assembles_a_snapshot_in_parts(etcd: etcd_mod.Etcd) -> None:
    big = h.app_snapshot("shop", "c1", [h.Service(f"s{i}", 20000 + i) for i in range(3)])
    body = snapshot.encode_app(big)
    parts = snapshot.split_app(body, chunk_size=len(body) // 2 + 1)
    app, k8s = model.AppName("shop"), model.ClusterName("c1")
    await etcd.apply(
        puts={keys.chunk_key(app, k8s, d): c for d, c in parts.chunks} | {APP_KEY: parts.head}
    )
    cache = cache_mod.SnapshotCache(etcd)
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(cache.wait_loaded(), 10)
        # NOTE: a listing is sorted by key: the head comes before its parts.
        entry = cache.app("shop", "c1")
        assert entry == cache_mod.encode_app(snapshot.decode_app(body))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_cache_of_hashes_only_gives_the_versions_of_the_full_one(
    etcd: etcd_mod.Etcd,
) -> None:
    item, echo = h.Service("shop/item:8080", 18080), h.Service("shop/echo:7000", 17000)
    await h.publish_app(etcd, h.app_snapshot("shop", "c1", [item, echo]))
    await h.publish_eds(etcd, item.name, ("10.0.0.1", 8080))
    await h.publish_eds(etcd, item.name, ("10.0.0.2", 8080), variant="z2")
    await h.publish_eds(etcd, echo.name, ("10.0.0.3", 7000))
    listing = await etcd.get_prefix(keys.SNAPSHOTS)
    full, light = cache_mod.SnapshotCache(etcd), cache_mod.SnapshotCache(etcd, bodies=False)
    full.load(listing)
    light.load(listing)
    for zone in ("", "z1", "z2"):
        node = resources.NodeInfo(id="n", app="shop", k8s_cluster="c1", region="", zone=zone)
        for type_url in snapshot.TYPE_URLS:
            want, have = (resources.expected(c, node, type_url) for c in (full, light))
            assert want is not None and have is not None
            assert want[0] == have[0] != resources.EMPTY_VERSION, (zone, type_url)
            assert {n: e.hash for n, e in want[1].items()} == {
                n: e.hash for n, e in have[1].items()
            }
    # NOTE: the light cache holds no bytes to serve.
    entry = light.app("shop", "c1")
    assert entry is not None and all(
        e.entry == b"" for by_name in entry.resources.values() for e in by_name.values()
    )


async def test_a_zones_view_follows_its_variant_then_the_default(
    etcd: etcd_mod.Etcd, loaded: tuple[cache_mod.SnapshotCache, runtime.Health]
) -> None:
    cache, _ = loaded
    view = cache.zone_view("z1")  # NOTE: made before the writes: it must follow them.
    default = cache.zone_view("")
    await h.applied(cache, await h.publish_eds(etcd, "one", ("10.0.0.1", 80)))
    assert view["one"] is cache.eds("one", keys.DEFAULT_VARIANT) is default["one"]
    await h.applied(cache, await h.publish_eds(etcd, "one", ("10.0.1.1", 80), variant="z1"))
    assert view["one"] is cache.eds("one", "z1")
    assert default["one"] is cache.eds("one", keys.DEFAULT_VARIANT)
    assert cache.zone_view("z2")["one"] is default["one"], "a zone without its variant"
    await h.applied(cache, await etcd.delete(keys.eds_key("one", "z1")))
    assert view["one"] is default["one"]
    await h.applied(cache, await etcd.delete(keys.eds_key("one")))
    assert "one" not in view and "one" not in default
    # Zones are what sidecars say: past a bound, views are looked up, not built.
    await h.applied(cache, await h.publish_eds(etcd, "one", ("10.0.0.9", 80)))
    views = [cache.zone_view(f"made-up-{i}") for i in range(cache_mod.ZONE_VIEWS_MAX + 5)]
    assert all(v["one"] is cache.eds("one", keys.DEFAULT_VARIANT) for v in views)
    assert len(cache._zone_views) == cache_mod.ZONE_VIEWS_MAX


async def test_endpoints_derived_from_the_last_answer_equal_a_fresh_computation(
    etcd: etcd_mod.Etcd, loaded: tuple[cache_mod.SnapshotCache, runtime.Health]
) -> None:
    """A stream's assignments are updated from its last answer and the names changed since;
    after any sequence of changes they must be what a computation from scratch gives."""
    import random

    from envoy.config.core.v3 import base_pb2

    cache, _ = loaded
    services = [h.Service(f"s{i}", 21000 + i) for i in range(5)]
    await h.applied(cache, await h.publish_app(etcd, h.app_snapshot("shop", "c1", services)))
    entry = cache.app("shop", "c1")
    assert entry is not None
    names = frozenset(s.name for s in services[:4]) | {"not-in-the-app"}
    pb = base_pb2.Node(id="n", cluster="shop", locality=base_pb2.Locality(zone="z1"))
    pb.metadata.update({"app": "shop", "k8s_cluster": "c1"})
    node = resources.NodeInfo.from_proto(pb)
    rnd = random.Random(3)
    seen_versions = set()
    for step in range(40):
        name = rnd.choice([s.name for s in services])
        variant = rnd.choice([keys.DEFAULT_VARIANT, "z1", "z2"])
        if rnd.random() < 0.3:
            rev = await etcd.delete(keys.eds_key(name, variant))
        else:
            rev = await h.publish_eds(etcd, name, (f"10.0.{step}.1", 80), variant=variant)
        await h.applied(cache, rev)
        got = resources.desired(cache, node, snapshot.ENDPOINT, names)
        fresh = resources._named(cache, entry, "z1", snapshot.ENDPOINT, names)
        assert got is not None
        assert got[0] == fresh[0] and dict(got[1]) == dict(fresh[1]), f"step {step}"
        assert list(got[1]) == sorted(got[1]), "in name order"
        seen_versions.add(got[0])
    assert len(seen_versions) > 10, "the changes did change what the node holds"
