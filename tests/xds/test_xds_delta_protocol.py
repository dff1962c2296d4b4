"""Delta (incremental) xDS, per-type streams, ordering, warming, coalescing and status records.

Driven by raw gRPC clients against the real server and etcd, as in
``test_xds_ads_protocol.py``: "nothing was sent" is proven by asking for another type and
getting that one next (a stream answers in order).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import grpc.aio
import pytest
import xds_helpers as h
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from coordinator import etcd as etcd_mod
from coordinator import membership
from navigator import keys, snapshot
from navigator.xds import server as xds_server
from navigator.xds import status as status_mod
from navigator.xds import streams

DELTA = f"/{xds_server.SERVICE}/{xds_server.DELTA_METHOD}"
SOTW = f"/{xds_server.SERVICE}/{xds_server.METHOD}"


def node(node_id: str = "shop-delta", app: str = "shop", zone: str = "z1") -> Any:
    n = base_pb2.Node(id=node_id, cluster=app, locality=base_pb2.Locality(zone=zone))
    n.metadata.update({"app": app, "k8s_cluster": "c1"})
    return n


class DeltaClient:
    def __init__(self, channel: grpc.aio.Channel, method: str = DELTA, **node_kw: Any) -> None:
        self.call = channel.stream_stream(
            method,
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )()
        self.node = node(**node_kw)

    async def send(
        self,
        type_url: str,
        subscribe: Sequence[str] = (),
        *,
        unsubscribe: Sequence[str] = (),
        nonce: str = "",
        error: str = "",
        initial: dict[str, str] | None = None,
    ) -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(
            node=self.node,
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=initial or {},
        )
        if error:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(req)

    async def recv(self) -> Any:
        async with asyncio.timeout(5):
            return await self.call.read()

    async def ack(self, resp: Any) -> None:
        await self.send(resp.type_url, nonce=resp.nonce)


def SotwClient(
    channel: grpc.aio.Channel, method: str = h.SOTW_METHOD, **node_kw: Any
) -> h.SotwClient:
    return h.SotwClient(channel, node(**node_kw), method)


@pytest.fixture
async def channel(xds: xds_server.Handle) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{xds.port}") as ch:
        yield ch


def versions(resp: Any) -> dict[str, str]:
    return {r.name: r.version for r in resp.resources}


async def publish(etcd: etcd_mod.Etcd, xds: xds_server.Handle, *services: h.Service) -> None:
    await h.applied(xds.cache, await h.publish_app(etcd, h.app_snapshot("shop", "c1", services)))


async def test_delta_sends_only_what_changed_and_names_what_was_removed(
    etcd: etcd_mod.Etcd, channel: grpc.aio.Channel, xds: xds_server.Handle
) -> None:
    one, two, three = h.Service("one", 10001), h.Service("two", 10002), h.Service("three", 10003)
    await publish(etcd, xds, one, two)
    client = DeltaClient(channel)
    await client.send(snapshot.CLUSTER)  # NOTE: no names: wildcard, as Envoy subscribes CDS
    first = await client.recv()
    assert sorted(versions(first)) == ["one", "two"]
    assert all(v for v in versions(first).values())
    assert list(first.removed_resources) == []
    await client.ack(first)

    pushed = streams.PUSH_LATENCY.labels("cds")._sum.get()
    await publish(etcd, xds, one, two, three)
    added = await client.recv()
    assert sorted(versions(added)) == ["three"]
    assert added.system_version_info != first.system_version_info
    await client.ack(added)
    # Push latency: from the front-end's receipt of the etcd change to this ACK.
    await h.eventually(
        lambda: _async(streams.PUSH_LATENCY.labels("cds")._sum.get() > pushed),
        what="the push latency observed",
    )

    await publish(etcd, xds, one, three)
    removed = await client.recv()
    assert (len(removed.resources), list(removed.removed_resources)) == (0, ["two"])


async def test_delta_resume_with_initial_versions_is_sent_nothing_it_has(
    etcd: etcd_mod.Etcd, channel: grpc.aio.Channel, xds: xds_server.Handle
) -> None:
    await publish(etcd, xds, h.Service("one", 10001), h.Service("two", 10002))
    first = DeltaClient(channel)
    await first.send(snapshot.CLUSTER)
    held = versions(await first.recv())
    first.call.cancel()

    # As after a fail-over to another front-end: resource versions are content hashes.
    sent = streams.RESOURCES_SENT.labels("cds", "delta")._value.get()
    resumed = DeltaClient(channel)
    await resumed.send(snapshot.CLUSTER, initial=held)
    await resumed.send(snapshot.LISTENER)
    assert (await resumed.recv()).type_url == snapshot.LISTENER
    assert streams.RESOURCES_SENT.labels("cds", "delta")._value.get() == sent

    # One outdated hash: only that resource is sent.
    again = DeltaClient(channel)
    await again.send(snapshot.CLUSTER, initial={**held, "two": "outdated"})
    resp = await again.recv()
    assert (resp.type_url, sorted(versions(resp))) == (snapshot.CLUSTER, ["two"])


async def test_delta_unknown_names_are_reported_removed_once_then_sent_when_they_appear(
    etcd: etcd_mod.Etcd, channel: grpc.aio.Channel, xds: xds_server.Handle
) -> None:
    await publish(etcd, xds, h.Service("one", 10001), h.Service("two", 10002))
    await h.applied(xds.cache, await h.publish_eds(etcd, "one", ("10.0.0.1", 80)))
    client = DeltaClient(channel)
    await client.send(snapshot.ENDPOINT, ["one", "two"])
    first = await client.recv()
    assert sorted(versions(first)) == ["one"]
    await client.ack(first)  # NOTE: one unanswered response per type at a time
    absent = await client.recv()
    assert (len(absent.resources), list(absent.removed_resources)) == (0, ["two"])
    await client.ack(absent)

    await h.publish_eds(etcd, "two", ("10.0.0.2", 80))
    appeared = await client.recv()
    assert sorted(versions(appeared)) == ["two"]

    await client.send(snapshot.ENDPOINT, unsubscribe=["one"], nonce=appeared.nonce)
    await h.publish_eds(etcd, "one", ("10.0.0.9", 80))
    await client.send(snapshot.LISTENER)
    assert (await client.recv()).type_url == snapshot.LISTENER  # nothing for "one" any more


async def test_delta_nack_keeps_the_last_good_version_and_is_not_resent(
    etcd: etcd_mod.Etcd, channel: grpc.aio.Channel, xds: xds_server.Handle
) -> None:
    await publish(etcd, xds, h.Service("one", 10001))
    client = DeltaClient(channel, node_id="shop-delta-nack")
    await client.send(snapshot.CLUSTER)
    good = await client.recv()
    await client.ack(good)

    await publish(etcd, xds, h.Service("one", 10001), h.Service("bad", 10002))
    bad = await client.recv()
    await client.send(snapshot.CLUSTER, nonce=bad.nonce, error="rejected (token 99)")
    await client.send(snapshot.LISTENER)
    assert (await client.recv()).type_url == snapshot.LISTENER
    nacks = [n for n in xds.ads.nacks if n.node_id == "shop-delta-nack"]
    assert [(n.type_url, n.rejected_version) for n in nacks] == [
        (snapshot.CLUSTER, bad.system_version_info)
    ]
    record = xds.board.record("shop-delta-nack")
    assert record is not None
    cds = json.loads(record)["types"]["cds"]
    assert (cds["acked"], cds["nacked"]) == (good.system_version_info, bad.system_version_info)

    # Fixed input: "bad" is gone from the snapshot, so the sidecar, which never took it, is
    # told to remove nothing; a new cluster arrives alone.
    await publish(etcd, xds, h.Service("one", 10001), h.Service("good", 10003))
    fixed = await client.recv()
    assert (sorted(versions(fixed)), list(fixed.removed_resources)) == (["good"], [])


async def test_a_changed_cluster_gets_its_endpoints_again_after_it_in_both_variants(
    etcd: etcd_mod.Etcd, channel: grpc.aio.Channel, xds: xds_server.Handle
) -> None:
    one = h.Service("one", 10001)
    await publish(etcd, xds, one)
    await h.applied(xds.cache, await h.publish_eds(etcd, "one", ("10.0.0.1", 80)))
    sotw, delta = SotwClient(channel, node_id="warm-sotw"), DeltaClient(channel, node_id="warm-d")
    await sotw.send(snapshot.CLUSTER)
    await sotw.ack(await sotw.recv())
    await sotw.send(snapshot.ENDPOINT, ["one"])
    await sotw.ack(await sotw.recv(), ["one"])
    await delta.send(snapshot.CLUSTER)
    await delta.ack(await delta.recv())
    await delta.send(snapshot.ENDPOINT, ["one"])
    await delta.ack(await delta.recv())

    cluster = h.cluster("one")
    cluster.connect_timeout.FromMilliseconds(750)
    snap = h.app_snapshot("shop", "c1", [one])
    changed = dataclasses.replace(
        snap, resources={**snap.resources, snapshot.CLUSTER: (h.res(cluster),)}
    )
    await h.publish_app(etcd, changed)
    for client in (sotw, delta):
        cds = await client.recv()
        assert cds.type_url == snapshot.CLUSTER
        eds = await client.recv()
        assert eds.type_url == snapshot.ENDPOINT
        assert len(eds.resources) == 1


async def test_sotw_removal_comes_after_the_listeners_and_routes_that_stop_using_it(
    etcd: etcd_mod.Etcd, channel: grpc.aio.Channel, xds: xds_server.Handle
) -> None:
    old, new = h.Service("old", 10001), h.Service("new", 10002)
    await publish(etcd, xds, old)
    client = SotwClient(channel, node_id="mbb")
    for type_url in (snapshot.CLUSTER, snapshot.LISTENER):
        await client.send(type_url)
        await client.ack(await client.recv())
    await client.send(snapshot.ROUTE, ["old", "new"])
    await client.ack(await client.recv(), ["old", "new"])

    await publish(etcd, xds, new)
    seen = []
    for _ in range(4):
        resp = await client.recv()
        seen.append(resp.type_url)
        if resp.type_url == snapshot.CLUSTER:
            seen.append(h.cluster_names(resp))
        await client.ack(resp, ["old", "new"] if resp.type_url == snapshot.ROUTE else ())
    assert seen == [
        snapshot.CLUSTER,
        ["new", "old"],  # added, and the old one kept while listeners and routes move
        snapshot.LISTENER,
        snapshot.ROUTE,
        snapshot.CLUSTER,
        ["new"],  # removed last
    ]


async def test_per_type_streams_serve_their_own_type_only(
    etcd: etcd_mod.Etcd, channel: grpc.aio.Channel, xds: xds_server.Handle
) -> None:
    await publish(etcd, xds, h.Service("one", 10001))
    await h.applied(xds.cache, await h.publish_eds(etcd, "one", ("10.0.0.1", 80)))
    cds = SotwClient(
        channel, method="/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters"
    )
    await cds.send(snapshot.LISTENER)  # not this stream's type: ignored
    await cds.send(snapshot.CLUSTER)
    resp = await cds.recv()
    assert (resp.type_url, h.cluster_names(resp)) == (snapshot.CLUSTER, ["one"])

    eds = DeltaClient(
        channel, method="/envoy.service.endpoint.v3.EndpointDiscoveryService/DeltaEndpoints"
    )
    await eds.send(snapshot.ENDPOINT, ["one"])
    resp = await eds.recv()
    assert (resp.type_url, sorted(versions(resp))) == (snapshot.ENDPOINT, ["one"])


async def test_a_burst_of_changes_is_coalesced_into_few_pushes(
    etcd: etcd_mod.Etcd,
) -> None:
    async with xds_server.serve(etcd=etcd, coalesce=0.3, grace=0.2) as xds:
        await asyncio.wait_for(xds.cache.wait_loaded(), 10)
        await publish(etcd, xds, h.Service("one", 10001))
        await h.applied(xds.cache, await h.publish_eds(etcd, "one", ("10.0.0.0", 80)))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{xds.port}") as channel:
            client = DeltaClient(channel, node_id="burst")
            await client.send(snapshot.ENDPOINT, ["one"])
            await client.ack(await client.recv())
            for i in range(1, 11):
                await h.publish_eds(etcd, "one", (f"10.0.0.{i}", 80))
            pushes = 0
            while True:
                resp = await client.recv()
                pushes += 1
                await client.ack(resp)
                if b"10.0.0.10" in resp.resources[0].resource.value:
                    break
            assert pushes < 10


async def test_status_records_say_what_each_sidecar_acknowledged(etcd: etcd_mod.Etcd) -> None:
    member = membership.Member(role="xds", id="fe-test", address="127.0.0.1:0")
    async with xds_server.serve(etcd=etcd, member=member, status_interval=0.05, grace=0.2) as xds:
        await asyncio.wait_for(xds.cache.wait_loaded(), 10)
        await publish(etcd, xds, h.Service("one", 10001))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{xds.port}") as channel:
            client = DeltaClient(channel, node_id="status-1")
            await client.send(snapshot.CLUSTER)
            cds = await client.recv()
            await client.ack(cds)

            async def acked() -> dict[str, Any] | None:
                kv = await etcd.get(keys.sidecar_key("fe-test", "status-1"))
                doc = json.loads(kv.value) if kv else None
                return doc if doc and doc["types"]["cds"]["acked"] else None

            doc = await h.eventually(acked, what="the status record")
            assert (doc["app"], doc["zone"], doc["frontend"], doc["variant"]) == (
                "shop",
                "z1",
                "fe-test",
                "delta",
            )
            assert doc["types"]["cds"]["acked"] == cds.system_version_info
            assert [d["node"] for d in await status_mod.read(etcd)] == ["status-1"]
            client.call.cancel()

            async def gone() -> bool:
                return await etcd.get(keys.sidecar_key("fe-test", "status-1")) is None

            await h.eventually(gone, what="the record removed with the stream")


async def test_a_sidecar_that_stops_reading_holds_up_nobody_and_queues_nothing(
    etcd: etcd_mod.Etcd, channel: grpc.aio.Channel, xds: xds_server.Handle
) -> None:
    # NOTE: ~80 KiB per CDS response: a few fill the HTTP/2 windows of a stream not read.
    def services(generation: int) -> list[h.Service]:
        return [h.Service(f"svc-{generation}-{i:04d}-" + "x" * 120, 20000 + i) for i in range(400)]

    await publish(etcd, xds, *services(0))
    slow, fast = SotwClient(channel, node_id="slow"), SotwClient(channel, node_id="fast")
    await slow.send(snapshot.CLUSTER)
    await fast.send(snapshot.CLUSTER)
    await fast.ack(await fast.recv())
    changes = 15

    async def until_generation(client: SotwClient, generation: int) -> int:
        """Reads (and ACKs) until the clusters are all of ``generation``; returns the count."""
        read = 0
        while True:
            resp = await client.recv()
            read += 1
            await client.ack(resp)
            if all(n.startswith(f"svc-{generation}-") for n in h.cluster_names(resp)):
                return read

    for generation in range(1, changes + 1):
        await h.publish_app(etcd, h.app_snapshot("shop", "c1", services(generation)))
        # The fast sidecar gets every change while "slow" reads nothing.
        await until_generation(fast, generation)
    stream = next(s for s in xds.ads.streams if s.node.id == "slow")
    fast_stream = next(s for s in xds.ads.streams if s.node.id == "fast")
    # The slow stream waits on the transport instead of queueing responses per change...
    assert stream.pushes < changes < fast_stream.pushes
    # ...and once it reads, it gets the current snapshot, not the backlog.
    assert await until_generation(slow, changes) <= stream.pushes < changes


async def _async(value: bool) -> bool:
    return value
