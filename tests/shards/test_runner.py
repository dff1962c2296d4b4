"""The translator runner against real etcd: publication, gating on synced, no rewrites."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from coordinator import etcd as etcd_mod
from navigator import keys, model, snapshot
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


async def test_publishes_only_after_every_cluster_is_synced(etcd: etcd_mod.Etcd) -> None:
    await _put(etcd, _service(EAST, "127.31.0.10"), _service(WEST, "127.32.0.10"), NEXUS)
    await _put(etcd, _endpoints(EAST, "127.21.0.5"), _endpoints(WEST, "127.22.0.5"))
    await etcd.put(keys.synced_key(EAST), b"{}")
    async with runner.running(etcd, debounce=0.0) as tr:
        await asyncio.wait_for(tr.loaded.wait(), 10)
        assert not tr.all_synced()
        assert tr.generation == 0
        assert (await etcd.get_prefix(keys.SNAPSHOTS)).items == {}
        await etcd.put(keys.synced_key(WEST), b"{}")
        await asyncio.wait_for(tr.published.wait(), 10)
    listing = await etcd.get_prefix(keys.SNAPSHOTS)
    assert set(listing.items) == {
        keys.app_snapshot_key(model.AppName("web"), EAST),
        keys.app_snapshot_key(model.AppName("web"), WEST),
        keys.eds_key("shop/item:8890"),
    }
    west_key = keys.app_snapshot_key(model.AppName("web"), WEST)
    west = snapshot.decode_app(listing.items[west_key].value)
    lds = [
        snapshot.resource_to_dict(snapshot.LISTENER, r.body)
        for r in west.resources[snapshot.LISTENER]
    ]
    assert lds[0]["address"]["socket_address"]["address"] == "127.32.0.10"


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
    for name, body in full.endpoints.items():
        assert listing.items[keys.eds_key(name)].value == body
