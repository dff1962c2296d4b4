"""The SotW ADS protocol rules, driven by a raw gRPC client against the real server and etcd.

A raw client can observe what Envoy hides: which responses were (not) sent. "Nothing was
sent" is proven without sleeping: the client then asks for another type and checks that the
next response is that one (a stream handles requests in order).
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import xds_helpers as h
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from coordinator import etcd as etcd_mod
from navigator import snapshot
from navigator.lab import procs
from navigator.xds import server as xds_server
from navigator.xds import streams

METHOD = f"/{xds_server.SERVICE}/{xds_server.METHOD}"


AdsClient = h.SotwClient


def node(app: str = "shop", k8s_cluster: str = "c1", zone: str = "z1") -> Any:
    n = base_pb2.Node(id=f"{app}-raw", cluster=app, locality=base_pb2.Locality(zone=zone))
    n.metadata.update({"app": app, "k8s_cluster": k8s_cluster})
    return n


@pytest.fixture
async def channel(xds: xds_server.Handle) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{xds.port}") as ch:
        yield ch


def names_of(resp: Any) -> list[str]:
    out = []
    for item in resp.resources:
        cla = endpoint_pb2.ClusterLoadAssignment()
        item.Unpack(cla)
        out.append(cla.cluster_name)
    return out


async def test_absent_snapshot_serves_empty_clusters_and_listeners(
    channel: grpc.aio.Channel,
) -> None:
    client = AdsClient(channel, node(app="no-nexus"))
    await client.send(snapshot.CLUSTER)
    cds = await client.recv()
    assert (cds.type_url, len(cds.resources)) == (snapshot.CLUSTER, 0)
    await client.send(snapshot.LISTENER)
    lds = await client.recv()
    assert (lds.type_url, len(lds.resources)) == (snapshot.LISTENER, 0)
    assert lds.nonce != cds.nonce


async def test_eds_resubscription_with_the_previous_nonce_and_zone_variants(
    etcd: etcd_mod.Etcd, channel: grpc.aio.Channel, xds: xds_server.Handle
) -> None:
    one, two = h.Service("one", 10001), h.Service("two", 10002)
    await h.publish_app(etcd, h.app_snapshot("shop", "c1", [one, two]))
    await h.publish_eds(etcd, "one", ("10.0.0.1", 80))
    await h.publish_eds(etcd, "one", ("10.0.1.1", 80), variant="z1")
    await h.applied(xds.cache, await h.publish_eds(etcd, "two", ("10.0.0.2", 80)))
    client = AdsClient(channel, node(zone="z1"))

    await client.send(snapshot.ENDPOINT, ["one"])
    first = await client.recv()
    cla = endpoint_pb2.ClusterLoadAssignment()
    first.resources[0].Unpack(cla)
    assert cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address == "10.0.1.1"
    await client.send(snapshot.ENDPOINT, ["one"], nonce=first.nonce, version=first.version_info)

    # Envoy's behaviour when CDS adds a cluster: same (previous) nonce, new names.
    await client.send(
        snapshot.ENDPOINT, ["one", "two", "missing"], nonce=first.nonce, version=first.version_info
    )
    second = await client.recv()
    assert names_of(second) == ["one", "two"]  # unknown names are omitted
    assert second.version_info != first.version_info

    # A stale nonce with an unchanged subscription is ignored.
    await client.send(snapshot.ENDPOINT, ["one", "two", "missing"], nonce=first.nonce)
    await client.send(snapshot.CLUSTER)
    assert (await client.recv()).type_url == snapshot.CLUSTER


async def test_an_endpoint_change_sends_only_the_changed_assignment(
    etcd: etcd_mod.Etcd, channel: grpc.aio.Channel, xds: xds_server.Handle
) -> None:
    one, two, three = h.Service("one", 10001), h.Service("two", 10002), h.Service("three", 10003)
    await h.publish_app(etcd, h.app_snapshot("shop", "c1", [one, two, three]))
    await h.publish_eds(etcd, "one", ("10.0.0.1", 80))
    await h.publish_eds(etcd, "three", ("10.0.0.4", 80))
    await h.applied(xds.cache, await h.publish_eds(etcd, "two", ("10.0.0.2", 80)))
    client = AdsClient(channel, node())
    await client.send(snapshot.ENDPOINT, ["one", "two"])
    first = await client.recv()
    assert names_of(first) == ["one", "two"]
    await client.send(
        snapshot.ENDPOINT, ["one", "two"], nonce=first.nonce, version=first.version_info
    )

    # SotW lets an EDS response carry part of the set: Envoy keeps the assignments absent
    # from it. The version still names the whole set.
    await h.publish_eds(etcd, "two", ("10.0.0.2", 80), ("10.0.0.3", 80))
    changed = await client.recv()
    assert names_of(changed) == ["two"]
    assert changed.version_info != first.version_info
    await client.send(
        snapshot.ENDPOINT, ["one", "two"], nonce=changed.nonce, version=changed.version_info
    )

    # After a NACK what the sidecar holds is not known: the next push carries the whole set.
    await h.publish_eds(etcd, "two", ("10.0.0.2", 80), ("10.0.0.5", 80))
    rejected = await client.recv()
    assert names_of(rejected) == ["two"]
    await client.send(snapshot.ENDPOINT, ["one", "two"], nonce=rejected.nonce, error="bad endpoint")
    await h.publish_eds(etcd, "one", ("10.0.0.1", 80), ("10.0.0.6", 80))
    after_nack = await client.recv()
    assert names_of(after_nack) == ["one", "two"]
    await client.send(
        snapshot.ENDPOINT, ["one", "two"], nonce=after_nack.nonce, version=after_nack.version_info
    )

    # A changed subscription gets the whole set again.
    await client.send(
        snapshot.ENDPOINT,
        ["one", "two", "three"],
        nonce=after_nack.nonce,
        version=after_nack.version_info,
    )
    full = await client.recv()
    assert names_of(full) == ["one", "three", "two"]


async def test_nack_is_not_resent_until_the_content_changes(
    etcd: etcd_mod.Etcd, channel: grpc.aio.Channel, xds: xds_server.Handle
) -> None:
    snap = h.app_snapshot("shop", "c1", [h.Service("one", 10001)])
    await h.applied(xds.cache, await h.publish_app(etcd, snap))
    client = AdsClient(channel, node())
    await client.send(snapshot.CLUSTER)
    cds = await client.recv()
    await client.send(snapshot.CLUSTER, nonce=cds.nonce, error="rejected (token 1234)")
    await client.send(snapshot.LISTENER)
    assert (await client.recv()).type_url == snapshot.LISTENER
    assert [(n.type_url, n.rejected_version) for n in xds.ads.nacks] == [
        (snapshot.CLUSTER, cds.version_info)
    ]

    await h.publish_app(
        etcd, h.app_snapshot("shop", "c1", [h.Service("one", 10001), h.Service("two", 10002)])
    )
    again = await client.recv()
    assert again.type_url == snapshot.CLUSTER
    assert again.version_info != cds.version_info
    assert len(again.resources) == 2


async def test_a_resumed_stream_gets_nothing_it_already_has(
    etcd: etcd_mod.Etcd, channel: grpc.aio.Channel, xds: xds_server.Handle
) -> None:
    snap = h.app_snapshot("shop", "c1", [h.Service("one", 10001)])
    await h.applied(xds.cache, await h.publish_app(etcd, snap))
    first = AdsClient(channel, node())
    await first.send(snapshot.CLUSTER)
    cds = await first.recv()
    first.call.cancel()

    # As after a fail-over to another front-end: the versions are content hashes.
    resumed = AdsClient(channel, node())
    await resumed.send(snapshot.CLUSTER, version=cds.version_info)
    await resumed.send(snapshot.LISTENER)
    lds = await resumed.recv()
    assert lds.type_url == snapshot.LISTENER


async def test_a_node_without_identity_is_refused(channel: grpc.aio.Channel) -> None:
    refused = xds_server.STREAM_ERRORS.labels("invalid_node")._value.get()
    client = AdsClient(channel, base_pb2.Node(id="anonymous"))
    await client.send(snapshot.CLUSTER)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.recv()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert xds_server.STREAM_ERRORS.labels("invalid_node")._value.get() == refused + 1


async def test_a_resuming_sidecar_with_an_unknown_version_waits_until_the_front_end_caught_up(
    tmp_path: Path,
) -> None:
    proc, url = procs.start_etcd(tmp_path / "etcd", log_file=tmp_path / "etcd.log")
    etcd = etcd_mod.Etcd(etcd_mod.parse_endpoints(url), timeout=1.0, retry_for=1.0)
    try:
        snap = h.app_snapshot("shop", "c1", [h.Service("one", 10001)])
        async with xds_server.serve(etcd=etcd, listen="127.0.0.1:0", grace=0.2) as xds:
            await h.applied(xds.cache, await h.publish_app(etcd, snap))
            held = streams.HELD.labels("cds")._value.get()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{xds.port}") as channel:
                proc.send_signal(signal.SIGSTOP)  # NOTE: this front-end cannot check etcd now
                try:
                    # A version from a front-end that may be ahead of this one.
                    client = AdsClient(channel, node())
                    await client.send(snapshot.CLUSTER, version="0123456789abcdef")
                    await client.send(snapshot.LISTENER)
                    # CDS goes before LDS when both are due: LDS first means CDS was held.
                    assert (await client.recv()).type_url == snapshot.LISTENER
                    assert streams.HELD.labels("cds")._value.get() > held
                finally:
                    proc.send_signal(signal.SIGCONT)
                cds = await client.recv()
                assert cds.type_url == snapshot.CLUSTER
                assert [r.type_url for r in cds.resources] == [snapshot.CLUSTER]
    finally:
        await etcd.close()
        procs.stop(proc)
