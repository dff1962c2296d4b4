"""The translator runner against real etcd: publication, gating on synced, no rewrites."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import pytest

from coordinator import etcd as etcd_mod
from navigator import keys, model, snapshot
from navigator.lab import procs
from shards import runner, translate

EAST = model.ClusterName("east")
WEST = model.ClusterName("west")


def _service(cluster: model.ClusterName, ip: str) -> model.Service:
    return model.Service(
        cluster=cluster,
        namespace="shop",
        name="item",
        type=model.ServiceType.CLUSTER_IP,
        cluster_ip=ip,
        ports=(model.ServicePort(name="http", port=8890, protocol=model.Protocol.HTTP),),
    )


def _endpoints(cluster: model.ClusterName, *ips: str) -> model.Endpoints:
    return model.Endpoints(
        cluster=cluster,
        namespace="shop",
        name="item",
        endpoints=tuple(
            model.Endpoint(ip=ip, ready=True, ports=(model.EndpointPort("http", 8080),))
            for ip in ips
        ),
    )


NEXUS = model.Nexus(
    cluster=EAST,
    namespace="web",
    name="web",
    app_name=model.AppName("web"),
    services=(model.ServiceRef("shop", "item"),),
)


async def _put(etcd: etcd_mod.Etcd, *objs: model.Object) -> None:
    await etcd.apply(puts={keys.state_key(o): model.encode(o) for o in objs})


async def _flushed_until(tr: runner.Translator, cond: Callable[[], bool]) -> None:
    await asyncio.wait_for(tr.wait_until(cond), 10)


async def test_publishes_an_app_only_once_every_contributing_cluster_is_synced(
    etcd: etcd_mod.Etcd,
) -> None:
    await _put(etcd, _service(EAST, "127.31.0.10"), _service(WEST, "127.32.0.10"), NEXUS)
    await _put(etcd, _endpoints(EAST, "127.21.0.5"), _endpoints(WEST, "127.22.0.5"))
    # An app that sees only a service of the synced cluster is not held back by the other.
    await _put(
        etcd,
        dataclasses.replace(_service(EAST, "127.31.0.11"), name="cart"),
        dataclasses.replace(_endpoints(EAST, "127.21.0.7"), name="cart"),
        dataclasses.replace(
            NEXUS,
            name="shop",
            app_name=model.AppName("shop"),
            services=(model.ServiceRef("shop", "cart"),),
        ),
    )
    await etcd.put(keys.synced_key(EAST), b"{}")
    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.loaded.wait(), 10)
        await _flushed_until(tr, lambda: tr.generation > 0)
        assert not tr.all_synced()
        held = await etcd.get_prefix(keys.SNAPSHOTS)
        assert set(held.items) == {
            keys.app_snapshot_key(model.AppName("shop"), EAST),
            keys.app_snapshot_key(keys.DEFAULT_APP, EAST),
            keys.eds_key("shop/cart:8890"),
        }, "web sees shop/item, which west (not synced) contributes to: nothing of it yet"
        gen = tr.generation
        await etcd.put(keys.synced_key(WEST), b"{}")
        await _flushed_until(tr, lambda: tr.generation > gen and tr.all_synced())
    listing = await etcd.get_prefix(keys.SNAPSHOTS)
    for gone in ("shop/cart:8890", "shop"):
        listing.items.pop(keys.eds_key(gone), None)
        listing.items.pop(keys.app_snapshot_key(model.AppName(gone), EAST), None)
        listing.items.pop(keys.app_snapshot_key(model.AppName(gone), WEST), None)
    assert set(listing.items) == {
        keys.app_snapshot_key(model.AppName("web"), EAST),
        keys.app_snapshot_key(model.AppName("web"), WEST),
        keys.app_snapshot_key(keys.DEFAULT_APP, EAST),
        keys.app_snapshot_key(keys.DEFAULT_APP, WEST),
        keys.eds_key("shop/item:8890"),
    }
    west_key = keys.app_snapshot_key(model.AppName("web"), WEST)
    west = snapshot.decode_app(listing.items[west_key].value)
    lds = {
        r.name: snapshot.resource_to_dict(snapshot.LISTENER, r.body)
        for r in west.resources[snapshot.LISTENER]
    }
    assert set(lds) == {"shop/item:8890", translate.HEALTH_LISTENER}
    assert lds["shop/item:8890"]["address"]["socket_address"]["address"] == "127.32.0.10"


async def test_endpoint_change_writes_one_key_and_restart_writes_none(etcd: etcd_mod.Etcd) -> None:
    await _put(etcd, _service(EAST, "127.31.0.10"), NEXUS, _endpoints(EAST, "127.21.0.5"))
    await etcd.put(keys.synced_key(EAST), b"{}")
    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.published.wait(), 10)
        before = await etcd.get_prefix(keys.SNAPSHOTS)
        gen = tr.generation
        await _put(etcd, _endpoints(EAST, "127.21.0.5", "127.21.0.6"))
        await _flushed_until(tr, lambda: tr.generation > gen)
        after = await etcd.get_prefix(keys.SNAPSHOTS)
    changed = {k for k, v in after.items.items() if v.mod_revision != before.items[k].mod_revision}
    assert changed == {keys.eds_key("shop/item:8890")}

    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.published.wait(), 10)
    again = await etcd.get_prefix(keys.SNAPSHOTS)
    assert {k: v.mod_revision for k, v in again.items.items()} == {
        k: v.mod_revision for k, v in after.items.items()
    }


async def test_incremental_runner_agrees_with_full_translation(etcd: etcd_mod.Etcd) -> None:
    objs: list[model.Object] = [
        _service(EAST, "127.31.0.10"),
        _service(WEST, "127.32.0.10"),
        NEXUS,
        _endpoints(EAST, "127.21.0.5"),
        _endpoints(WEST, "127.22.0.5", "127.22.0.9"),
    ]
    await _put(etcd, *objs[:3])
    await etcd.apply(puts={keys.synced_key(EAST): b"{}", keys.synced_key(WEST): b"{}"})
    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.published.wait(), 10)
        gen = tr.generation
        await _put(etcd, *objs[3:])
        # NOTE: one transaction is one etcd revision, delivered and flushed as one batch.
        await _flushed_until(tr, lambda: tr.generation > gen)
    full = translate.translate(objs, [EAST, WEST])
    listing = await etcd.get_prefix(keys.SNAPSHOTS)
    for (app, cluster), snap in full.apps.items():
        assert listing.items[keys.app_snapshot_key(app, cluster)].value == snapshot.encode_app(snap)
    for (name, variant), body in full.endpoints.items():
        assert listing.items[keys.eds_key(name, variant)].value == body


def _slice(
    cluster: model.ClusterName, name: str, service: str, *eps: tuple[str, str, str]
) -> model.EndpointSlice:
    """``eps`` are (ip, node, zone)."""
    return model.EndpointSlice(
        cluster=cluster,
        namespace="shop",
        name=name,
        service=service,
        endpoints=tuple(
            model.Endpoint(
                ip=ip, ready=True, ports=(model.EndpointPort("http", 8080),), node=n, zone=z
            )
            for ip, n, z in eps
        ),
    )


async def _assert_agrees_with_full_translation(
    etcd: etcd_mod.Etcd, objs: dict[str, model.Object], clusters: list[model.ClusterName]
) -> None:
    """Etcd holds exactly what ``translate.translate`` makes of ``objs``, nothing more."""
    full = translate.translate(objs.values(), clusters)
    want = {keys.app_snapshot_key(a, c): snapshot.encode_app(s) for (a, c), s in full.apps.items()}
    want |= {keys.eds_key(*name_variant): body for name_variant, body in full.endpoints.items()}
    want |= _localities(objs.values())
    listing = await etcd.get_prefix(keys.SNAPSHOTS)
    assert {k: kv.value for k, kv in listing.items.items()} == want


def _localities(objs: Iterable[model.Object]) -> dict[str, bytes]:
    """The ``localities/<cluster>`` keys a translator publishes for these Nodes."""
    nodes: dict[str, dict[str, list[str]]] = {}
    for o in objs:
        if isinstance(o, model.Node):
            nodes.setdefault(o.cluster, {})[o.name] = [o.region, o.zone]
    return {
        keys.localities_key(model.ClusterName(c)): json.dumps(
            {"nodes": by_name}, sort_keys=True, separators=(",", ":")
        ).encode()
        for c, by_name in nodes.items()
    }


async def _change_and_compare(
    etcd: etcd_mod.Etcd,
    *,
    tr: runner.Translator,
    objs: dict[str, model.Object],
    clusters: list[model.ClusterName],
    new: tuple[model.Object, ...],
    gone: model.Object | None,
) -> None:
    """Puts ``new`` and deletes ``gone`` in one transaction, waits for the flush, compares."""
    gen = tr.generation
    objs.update({keys.state_key(o): o for o in new})
    deletes: list[str] = []
    if gone is not None:
        del objs[keys.state_key(gone)]
        deletes.append(keys.state_key(gone))
    await etcd.apply(puts={keys.state_key(o): model.encode(o) for o in new}, deletes=deletes)
    await _flushed_until(tr, lambda: tr.generation > gen)
    await _assert_agrees_with_full_translation(etcd, objs, clusters)


async def test_incremental_runner_agrees_with_full_translation_with_slices(
    etcd: etcd_mod.Etcd,
) -> None:
    cart = dataclasses.replace(_service(EAST, "127.31.0.11"), name="cart")
    everything = model.Nexus(
        cluster=EAST,
        namespace="web",
        name="web",
        app_name=model.AppName("web"),
        services=(model.ServiceRef("shop", ""),),
    )
    objs: dict[str, model.Object] = {}
    clusters = [EAST, WEST]

    async def put(*new: model.Object) -> None:
        objs.update({keys.state_key(o): o for o in new})
        await _put(etcd, *new)

    async def step(tr: runner.Translator, change: Awaitable[None]) -> None:
        """Applies one change (one etcd transaction), waits for its flush, compares."""
        gen = tr.generation
        await change
        await _flushed_until(tr, lambda: tr.generation > gen)
        await _assert_agrees_with_full_translation(etcd, objs, clusters)

    async def delete(old: model.Object) -> None:
        del objs[keys.state_key(old)]
        await etcd.apply(puts={}, deletes=[keys.state_key(old)])

    await put(
        _service(EAST, "127.31.0.10"),
        _service(WEST, "127.32.0.10"),
        cart,
        everything,
        _endpoints(EAST, "127.21.0.5"),
        _endpoints(WEST, "127.22.0.5"),
    )
    await etcd.apply(puts={keys.synced_key(EAST): b"{}", keys.synced_key(WEST): b"{}"})
    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.published.wait(), 10)
        await _assert_agrees_with_full_translation(etcd, objs, clusters)

        # Slices appear in east: they replace east's Endpoints of item; west keeps its own.
        slice_a = _slice(EAST, "item-a", "item", ("127.21.0.7", "", ""))
        slice_b = _slice(EAST, "item-b", "item", ("127.21.0.8", "n1", "z1"))
        await step(tr, put(slice_a))
        await step(tr, put(slice_b))

        # item-b's label moves it to cart: both services change.
        await step(tr, put(dataclasses.replace(slice_b, service="cart")))

        # A Node gives cart's slice-only endpoint its region.
        await step(tr, put(model.Node(cluster=EAST, name="n1", region="r1", zone="z1")))

        # item's last slice in east goes: east falls back to its Endpoints.
        await step(tr, delete(slice_a))
        eds = await etcd.get(keys.eds_key("shop/item:8890"))
        assert eds is not None
        ips = {
            lb["endpoint"]["address"]["socket_address"]["address"]
            for group in snapshot.resource_to_dict(snapshot.ENDPOINT, eds.value)["endpoints"]
            for lb in group["lb_endpoints"]
        }
        assert ips == {"127.21.0.5", "127.22.0.5"}


@pytest.mark.parametrize("apps", [1, 50], ids=["1-app", "50-apps"])
async def test_endpoint_change_writes_the_same_keys_whatever_the_number_of_apps(
    etcd: etcd_mod.Etcd, apps: int
) -> None:
    nexuses = [
        model.Nexus(EAST, "web", f"a{i}", model.AppName(f"a{i}"), (model.ServiceRef("shop", ""),))
        for i in range(apps)
    ]
    await _put(etcd, _service(EAST, "127.31.0.10"), _endpoints(EAST, "127.21.0.5"), *nexuses)
    await etcd.put(keys.synced_key(EAST), b"{}")
    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.published.wait(), 10)
        before = await etcd.get_prefix(keys.ROOT)
        gen = tr.generation
        await _put(etcd, _endpoints(EAST, "127.21.0.5", "127.21.0.6"))
        await _flushed_until(tr, lambda: tr.generation > gen)
        after = await etcd.get_prefix(keys.ROOT)
    written = {
        k
        for k, v in after.items.items()
        if k not in before.items or v.mod_revision != before.items[k].mod_revision
    }
    # The state key the test wrote, and the one shared endpoint assignment.
    assert written == {
        keys.state_key(_endpoints(EAST)),
        keys.eds_key("shop/item:8890"),
    }


async def test_apps_follow_their_nexus_and_namespace(etcd: etcd_mod.Etcd) -> None:
    whole_ns = model.Nexus(
        EAST, "web", "all", model.AppName("all"), (model.ServiceRef("shop", ""),)
    )
    await _put(etcd, _service(EAST, "127.31.0.10"), whole_ns, NEXUS)
    await etcd.put(keys.synced_key(EAST), b"{}")
    app_key = keys.app_snapshot_key(model.AppName("all"), EAST)
    web_key = keys.app_snapshot_key(model.AppName("web"), EAST)

    def clusters_of(listing: etcd_mod.Listing, key: str) -> list[str]:
        snap = snapshot.decode_app(listing.items[key].value)
        return [r.name for r in snap.resources[snapshot.CLUSTER]]

    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.published.wait(), 10)
        listing = await etcd.get_prefix(keys.SNAPSHOTS)
        assert clusters_of(listing, app_key) == ["shop/item:8890"]

        # A new Service in the namespace reaches the namespace-wide app only.
        other = dataclasses.replace(_service(EAST, "127.31.0.11"), name="cart")
        gen = tr.generation
        await _put(etcd, other)
        await _flushed_until(tr, lambda: tr.generation > gen)
        listing = await etcd.get_prefix(keys.SNAPSHOTS)
        assert clusters_of(listing, app_key) == ["shop/cart:8890", "shop/item:8890"]
        assert clusters_of(listing, web_key) == ["shop/item:8890"]

        # Deleting an app's only Nexus removes its snapshots.
        gen = tr.generation
        await etcd.delete(keys.state_key(whole_ns))
        await _flushed_until(tr, lambda: tr.generation > gen)
        listing = await etcd.get_prefix(keys.SNAPSHOTS)
        assert app_key not in listing.items
        assert web_key in listing.items


async def test_translator_survives_an_etcd_restart(tmp_path: Path) -> None:
    port, peer = procs.free_port(), procs.free_port()
    member, url = procs.start_etcd(tmp_path / "etcd", client_port=port, peer_port=peer)
    client = etcd_mod.Etcd(etcd_mod.parse_endpoints(url), retry_for=3.0)
    try:
        await _put(client, _service(EAST, "127.31.0.10"), NEXUS, _endpoints(EAST, "127.21.0.5"))
        await client.put(keys.synced_key(EAST), b"{}")
        async with runner.running(client, debounce=0.0) as tr:
            await asyncio.wait_for(tr.published.wait(), 10)
            procs.stop(member)
            member, _ = procs.start_etcd(tmp_path / "etcd", client_port=port, peer_port=peer)
            await _put(client, _endpoints(EAST, "127.21.0.5", "127.21.0.7"))

            async def published() -> bool:
                kv = await client.get(keys.eds_key("shop/item:8890"))
                return kv is not None and b"127.21.0.7" in kv.value

            async with asyncio.timeout(30):
                while not await published():
                    await tr.wait_until(lambda g=tr.generation: tr.generation > g)
            assert await published()
    finally:
        await client.close()
        procs.stop(member)


def _zoned_endpoints(cluster: model.ClusterName, *eps: tuple[str, str]) -> model.Endpoints:
    """``eps`` are (ip, node); two ports, so each change touches two Envoy clusters."""
    return model.Endpoints(
        cluster=cluster,
        namespace="shop",
        name="item",
        endpoints=tuple(
            model.Endpoint(
                ip=ip,
                ready=True,
                ports=(model.EndpointPort("http", 8080), model.EndpointPort("db", 5432)),
                node=node,
            )
            for ip, node in eps
        ),
    )


def _two_port_service(cluster: model.ClusterName, ip: str) -> model.Service:
    return dataclasses.replace(
        _service(cluster, ip),
        ports=(
            model.ServicePort(name="http", port=8890, protocol=model.Protocol.HTTP),
            model.ServicePort(name="db", port=5432, protocol=model.Protocol.TCP),
        ),
    )


ZONE_NODES = (
    model.Node(cluster=EAST, name="e-a", region="r1", zone="r1-a"),
    model.Node(cluster=EAST, name="e-b", region="r1", zone="r1-b"),
    model.Node(cluster=WEST, name="w-a", region="r2", zone="r2-a"),
)


@pytest.mark.parametrize("apps", [1, 50], ids=["1-app", "50-apps"])
async def test_endpoint_change_writes_one_key_per_port_and_variant_whatever_the_apps(
    etcd: etcd_mod.Etcd, apps: int
) -> None:
    nexuses = [
        model.Nexus(EAST, "web", f"a{i}", model.AppName(f"a{i}"), (model.ServiceRef("shop", ""),))
        for i in range(apps)
    ]
    await _put(
        etcd,
        _two_port_service(EAST, "127.31.0.10"),
        _two_port_service(WEST, "127.32.0.10"),
        *ZONE_NODES,
        _zoned_endpoints(EAST, ("127.21.0.5", "e-a"), ("127.21.0.6", "e-b")),
        _zoned_endpoints(WEST, ("127.22.0.5", "w-a")),
        *nexuses,
    )
    await etcd.apply(puts={keys.synced_key(EAST): b"{}", keys.synced_key(WEST): b"{}"})
    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.published.wait(), 10)
        before = await etcd.get_prefix(keys.ROOT)
        gen = tr.generation
        changed = _zoned_endpoints(
            EAST, ("127.21.0.5", "e-a"), ("127.21.0.6", "e-b"), ("127.21.0.7", "e-b")
        )
        await _put(etcd, changed)
        await _flushed_until(tr, lambda: tr.generation > gen)
        after = await etcd.get_prefix(keys.ROOT)
    written = {
        k
        for k, v in after.items.items()
        if k not in before.items or v.mod_revision != before.items[k].mod_revision
    }
    # The state key the test wrote, and per port: the default and one variant per zone.
    variants = [keys.DEFAULT_VARIANT, "r1-a", "r1-b", "r2-a"]
    assert written == {keys.state_key(changed)} | {
        keys.eds_key(name, v) for name in ("shop/item:8890", "shop/item:5432") for v in variants
    }


async def test_zone_changes_recompute_every_service_and_drop_stale_variants(
    etcd: etcd_mod.Etcd,
) -> None:
    cart = dataclasses.replace(_service(EAST, "127.31.0.11"), name="cart")
    cart_eps = dataclasses.replace(_endpoints(EAST, "127.21.0.9"), name="cart")
    objs: dict[str, model.Object] = {}
    clusters = [EAST, WEST]

    async def step(
        tr: runner.Translator,
        *,
        put: tuple[model.Object, ...] = (),
        delete: tuple[model.Object, ...] = (),
    ) -> None:
        gen = tr.generation
        objs.update({keys.state_key(o): o for o in put})
        for o in delete:
            del objs[keys.state_key(o)]
        await etcd.apply(
            puts={keys.state_key(o): model.encode(o) for o in put},
            deletes=[keys.state_key(o) for o in delete],
        )
        await _flushed_until(tr, lambda: tr.generation > gen)
        await _assert_agrees_with_full_translation(etcd, objs, clusters)

    await etcd.apply(puts={keys.synced_key(EAST): b"{}", keys.synced_key(WEST): b"{}"})
    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.published.wait(), 10)
        await step(
            tr,
            put=(
                _service(EAST, "127.31.0.10"),
                _service(WEST, "127.32.0.10"),
                cart,
                cart_eps,
                NEXUS,
                ZONE_NODES[0],
                _zoned_endpoints(EAST, ("127.21.0.5", "e-a")),
            ),
        )
        assert await etcd.get(keys.eds_key("shop/cart:8890", "r1-a")) is not None
        # A Node in a new zone, with no endpoint: every service gets its variant.
        await step(tr, put=(ZONE_NODES[2],))
        assert await etcd.get(keys.eds_key("shop/cart:8890", "r2-a")) is not None
        # The zone goes: its variants go, for every service.
        await step(tr, delete=(ZONE_NODES[2],))
        assert await etcd.get(keys.eds_key("shop/cart:8890", "r2-a")) is None
        assert await etcd.get(keys.eds_key("shop/item:8890", "r2-a")) is None
        # A zone known only from an endpoint (its Node unknown) counts as well.
        zoned = model.Endpoints(
            cluster=WEST,
            namespace="shop",
            name="item",
            endpoints=(
                model.Endpoint(
                    ip="127.22.0.5",
                    ready=True,
                    ports=(model.EndpointPort("http", 8080),),
                    zone="r2-b",
                ),
            ),
        )
        await step(tr, put=(zoned,))
        assert await etcd.get(keys.eds_key("shop/cart:8890", "r2-b")) is not None


async def test_cluster_weight_drains_and_restores_a_cluster(etcd: etcd_mod.Etcd) -> None:
    objs: list[model.Object] = [
        _service(EAST, "127.31.0.10"),
        _service(WEST, "127.32.0.10"),
        NEXUS,
        _endpoints(EAST, "127.21.0.5"),
        _endpoints(WEST, "127.22.0.5"),
    ]
    await _put(etcd, *objs)
    await etcd.apply(puts={keys.synced_key(EAST): b"{}", keys.synced_key(WEST): b"{}"})
    eds = keys.eds_key("shop/item:8890")

    async def endpoints_now() -> set[str]:
        kv = await etcd.get(eds)
        assert kv is not None
        doc = snapshot.resource_to_dict(snapshot.ENDPOINT, kv.value)
        return {
            lb["endpoint"]["address"]["socket_address"]["address"]
            for group in doc.get("endpoints", [])
            for lb in group["lb_endpoints"]
        }

    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.published.wait(), 10)
        assert await endpoints_now() == {"127.21.0.5", "127.22.0.5"}

        gen = tr.generation
        await etcd.put(keys.cluster_weight_key(WEST), model.encode_weight(0))
        await _flushed_until(tr, lambda: tr.generation > gen)
        assert await endpoints_now() == {"127.21.0.5"}
        full = translate.translate(objs, [EAST, WEST], weights={WEST: 0})
        assert (await etcd.get(eds)).value == full.endpoints[("shop/item:8890", "_default")]  # type: ignore[union-attr]

        gen = tr.generation
        await etcd.delete(keys.cluster_weight_key(WEST))
        await _flushed_until(tr, lambda: tr.generation > gen)
        assert await endpoints_now() == {"127.21.0.5", "127.22.0.5"}


async def test_incremental_runner_agrees_with_full_translation_with_canaries(
    etcd: etcd_mod.Etcd,
) -> None:
    item_canary = dataclasses.replace(_service(EAST, "127.31.0.11"), name="item-canary")
    canary_eps = dataclasses.replace(_endpoints(EAST, "127.21.0.6"), name="item-canary")

    def release(cluster: model.ClusterName, *weights: int) -> model.CanaryRelease:
        return model.CanaryRelease(
            cluster=cluster,
            namespace="shop",
            name="item",
            backends=(
                model.CanaryBackend("shop", "item", weights[0]),
                model.CanaryBackend("shop", "item-canary", weights[1]),
            ),
        )

    objs: dict[str, model.Object] = {}
    clusters = [EAST, WEST]

    async def step(
        tr: runner.Translator, *new: model.Object, gone: model.Object | None = None
    ) -> None:
        await _change_and_compare(etcd, tr=tr, objs=objs, clusters=clusters, new=new, gone=gone)

    base = [
        _service(EAST, "127.31.0.10"),
        _service(WEST, "127.32.0.10"),
        NEXUS,
        _endpoints(EAST, "127.21.0.5"),
        item_canary,
        canary_eps,
    ]
    objs.update({keys.state_key(o): o for o in base})
    await _put(etcd, *base)
    await etcd.apply(puts={keys.synced_key(EAST): b"{}", keys.synced_key(WEST): b"{}"})
    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.published.wait(), 10)
        await _assert_agrees_with_full_translation(etcd, objs, clusters)
        snap = await etcd.get(keys.app_snapshot_key(model.AppName("web"), EAST))
        assert snap is not None and b"item-canary" not in snap.value
        await step(tr, release(EAST, 90, 10))
        snap = await etcd.get(keys.app_snapshot_key(model.AppName("web"), EAST))
        assert snap is not None and b"item-canary" in snap.value
        await step(tr, release(WEST, 90, 10))
        await step(tr, release(EAST, 50, 50))  # conflict: east wins
        await step(tr, release(EAST, 50, 60))  # invalid: plain route
        await step(tr, release(EAST, 30, 70), release(WEST, 30, 70))
        await step(tr, gone=item_canary)  # unknown backend: plain route
        await step(tr, item_canary)
        await step(tr, gone=release(EAST, 30, 70))
        await step(tr, gone=release(WEST, 30, 70))
        snap = await etcd.get(keys.app_snapshot_key(model.AppName("web"), EAST))
        assert snap is not None and b"item-canary" not in snap.value


async def test_incremental_runner_agrees_with_full_translation_with_gateways(
    etcd: etcd_mod.Etcd,
) -> None:
    gw = model.Gateway(EAST, "edge", "public", "public", 8080)

    def ingress(path: str, service: str = "item") -> model.Ingress:
        return model.Ingress(
            cluster=EAST,
            namespace="shop",
            name="shop",
            ingress_class="public",
            rules=(
                model.IngressRule(
                    host="shop.example.com",
                    paths=(model.IngressPath(path, model.PathType.PREFIX, service, 8890),),
                ),
            ),
        )

    objs: dict[str, model.Object] = {}
    clusters = [EAST]

    async def step(
        tr: runner.Translator, *new: model.Object, gone: model.Object | None = None
    ) -> None:
        await _change_and_compare(etcd, tr=tr, objs=objs, clusters=clusters, new=new, gone=gone)

    base: list[model.Object] = [_service(EAST, "127.31.0.10"), _endpoints(EAST, "127.21.0.5")]
    objs.update({keys.state_key(o): o for o in base})
    await _put(etcd, *base)
    await etcd.put(keys.synced_key(EAST), b"{}")
    gw_key = keys.app_snapshot_key(model.AppName("gateway:edge:public"), EAST)
    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.published.wait(), 10)
        await step(tr, gw)
        await step(tr, ingress("/"))
        assert await etcd.get(gw_key) is not None
        await step(tr, ingress("/v2"))  # an Ingress changes
        await step(tr, _endpoints(EAST, "127.21.0.5", "127.21.0.6"))  # endpoints only
        await step(tr, gone=base[0])  # the backend service goes: reported, route skipped
        await step(tr, base[0])
        await step(tr, gone=gw)  # the Gateway goes: its snapshot goes
        assert await etcd.get(gw_key) is None


async def test_a_diagnostic_is_logged_once_when_it_appears(
    etcd: etcd_mod.Etcd, caplog: pytest.LogCaptureFixture
) -> None:
    missing = model.Nexus(
        EAST, "web", "web", model.AppName("web"), (model.ServiceRef("shop", "nope"),)
    )
    await _put(etcd, _service(EAST, "127.31.0.10"), missing, _endpoints(EAST, "127.21.0.5"))
    await etcd.put(keys.synced_key(EAST), b"{}")
    caplog.set_level(logging.WARNING, logger="shards.runner")
    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.published.wait(), 10)
        gen = tr.generation
        await _put(etcd, _endpoints(EAST, "127.21.0.5", "127.21.0.6"))
        await _flushed_until(tr, lambda: tr.generation > gen)
    logged = [r for r in caplog.records if getattr(r, "reason", "") == "MissingService"]
    assert len(logged) == 1
    assert "shop/nope" in logged[0].getMessage()
    kv = await etcd.get(keys.diagnostics_key(model.AppName("web")))
    assert kv is not None and b"MissingService" in kv.value
