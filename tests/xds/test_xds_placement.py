"""A sidecar that names its Kubernetes node instead of its zone is placed in that node's zone.

A pod cannot see its node's topology labels, so its bootstrap may give ``metadata.node_name``
(the downward API's ``spec.nodeName``) and no zone; the translators publish every node's
region and zone (``snapshots/localities/<cluster>``) and the front-end serves the sidecar the
endpoint variant of that zone, and says so in its status record.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import xds_helpers as h
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from coordinator import etcd as etcd_mod
from navigator import keys, model, proxy, snapshot
from navigator.xds import cache as cache_mod
from navigator.xds import resources
from navigator.xds import server as xds_server

ITEM = h.Service("shop/item:8080", 18080)
LOCALITIES = {"nodes": {"node-b": ["r1", "z2"]}}


def _node(node_id: str, *, zone: str = "", node_name: str = "") -> Any:
    n = base_pb2.Node(id=node_id, cluster="shop", locality=base_pb2.Locality(zone=zone))
    meta = {"app": "shop", "k8s_cluster": "c1"} | ({"node_name": node_name} if node_name else {})
    n.metadata.update(meta)
    return n


@pytest.fixture
async def channel(xds: xds_server.Handle) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{xds.port}") as ch:
        yield ch


async def _endpoints_of(channel: grpc.aio.Channel, node: Any) -> set[str]:
    client = h.SotwClient(channel, node)
    await client.send(snapshot.CLUSTER)
    cds = await client.recv()
    await client.ack(cds)
    await client.send(snapshot.ENDPOINT, [ITEM.name])
    eds = await client.recv()
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(eds.resources[0].value)
    await client.ack(eds, [ITEM.name])
    return {
        lb.endpoint.address.socket_address.address
        for group in cla.endpoints
        for lb in group.lb_endpoints
    }


async def test_a_sidecar_naming_its_node_gets_its_nodes_zone(
    etcd: etcd_mod.Etcd, xds: xds_server.Handle, channel: grpc.aio.Channel
) -> None:
    await h.publish_app(etcd, h.app_snapshot("shop", "c1", [ITEM]))
    await h.publish_eds(etcd, ITEM.name, ("10.0.0.1", 8080))
    await h.publish_eds(etcd, ITEM.name, ("10.0.0.2", 8080), variant="z2")
    key = keys.localities_key(model.ClusterName("c1"))
    await h.applied(xds.cache, await etcd.put(key, json.dumps(LOCALITIES).encode()))

    assert await _endpoints_of(channel, _node("on-b", node_name="node-b")) == {"10.0.0.2"}
    # A zone in the bootstrap wins; an unknown node, or none, gets the default variant.
    assert await _endpoints_of(channel, _node("z-given", zone="z1", node_name="node-b")) == {
        "10.0.0.1"
    }
    assert await _endpoints_of(channel, _node("on-x", node_name="node-x")) == {"10.0.0.1"}
    assert await _endpoints_of(channel, _node("nowhere")) == {"10.0.0.1"}

    # The status record and proxy-status say where it was placed, and that it is SYNCED.
    async def placed() -> dict[str, Any] | None:
        rows = {r["node"]: r for r in await proxy.status(etcd)}
        row = rows.get("on-b")
        return row if row and row["types"]["eds"]["status"] == proxy.SYNCED else None

    row = await h.eventually(placed, what="on-b's status record, SYNCED")
    assert (row["region"], row["zone"]) == ("r1", "z2")


async def test_a_sidecar_connected_before_its_node_is_published_is_placed_when_it_is(
    etcd: etcd_mod.Etcd, xds: xds_server.Handle, channel: grpc.aio.Channel
) -> None:
    # NOTE: found by the chaos suite: a new node's pods (or a mesh starting cold) connect
    # before the translators publish the node's locality; they used to keep no zone.
    await h.publish_app(etcd, h.app_snapshot("shop", "c1", [ITEM]))
    await h.publish_eds(etcd, ITEM.name, ("10.0.0.1", 8080))
    await h.applied(
        xds.cache, await h.publish_eds(etcd, ITEM.name, ("10.0.0.2", 8080), variant="z2")
    )
    client = h.SotwClient(channel, _node("early", node_name="node-b"))
    await client.send(snapshot.CLUSTER)
    await client.ack(await client.recv())
    await client.send(snapshot.ENDPOINT, [ITEM.name])
    eds = await client.recv()
    await client.ack(eds, [ITEM.name])
    assert _addresses(eds) == {"10.0.0.1"}, "no locality yet: the default variant"

    key = keys.localities_key(model.ClusterName("c1"))
    await etcd.put(key, json.dumps(LOCALITIES).encode())
    eds = await client.recv()
    assert _addresses(eds) == {"10.0.0.2"}, "placed in node-b's zone once it is published"
    await client.ack(eds, [ITEM.name])

    async def placed() -> dict[str, Any] | None:
        rows = {r["node"]: r for r in await proxy.status(etcd)}
        row = rows.get("early")
        return row if row and row["zone"] == "z2" else None

    row = await h.eventually(placed, what="early's status record in z2")
    assert row["types"]["eds"]["status"] == proxy.SYNCED


def _addresses(resp: Any) -> set[str]:
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(resp.resources[0].value)
    return {
        lb.endpoint.address.socket_address.address
        for group in cla.endpoints
        for lb in group.lb_endpoints
    }


def test_localities_are_read_and_a_bad_value_keeps_the_last_good_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = cache_mod.SnapshotCache(etcd=None)  # type: ignore[arg-type]
    key = keys.localities_key(model.ClusterName("c1"))
    good = etcd_mod.KeyValue(key, json.dumps(LOCALITIES).encode(), 2)
    cache.load(etcd_mod.Listing(2, {key: good}))
    assert cache.locality("c1", "node-b") == ("r1", "z2")
    assert cache.locality("c2", "node-b") is None
    bad = etcd_mod.KeyValue(key, b'{"nodes": ["not", "a", "map"]}', 3)
    cache.load(etcd_mod.Listing(3, {key: bad}))
    assert cache.locality("c1", "node-b") == ("r1", "z2")
    assert "unreadable node localities" in caplog.text
    cache.load(etcd_mod.Listing(4, {}))
    assert cache.locality("c1", "node-b") is None
    node = resources.NodeInfo(id="n", app="a", k8s_cluster="c1", region="", zone="")
    assert resources.placed(cache, node) == node
