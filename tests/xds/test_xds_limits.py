"""Limits on the front-end (``navigator.xds.limits``): one client's oversized requests, excess
streams or request flood end its own streams, counted, while other sidecars, on the same HTTP/2
connection as a node-local balancer would carry them, go on being served.

Real etcd and the real front-end (``xds_server.serve``) with small limits, raw gRPC clients;
the bookkeeping (token bucket, per-client counts, who a client is) with a controllable clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import xds_helpers as h
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from coordinator import etcd as etcd_mod
from navigator import snapshot, tokenreview
from navigator.kubeapi import server as kubeapi_server
from navigator.xds import authn, resources, streams
from navigator.xds import limits as limits_mod
from navigator.xds import server as xds_server

APP = "web"
K8S = "c1"
CDS_METHOD = "/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters"
DELTA_METHOD = f"/{xds_server.SERVICE}/{xds_server.DELTA_METHOD}"


def node(node_id: str, app: str = APP, k8s_cluster: str = K8S) -> Any:
    n = base_pb2.Node(id=node_id, cluster=app, locality=base_pb2.Locality(zone="z1"))
    n.metadata.update({"app": app, "k8s_cluster": k8s_cluster})
    return n


def limited(reason: str) -> float:
    return float(limits_mod.LIMITED.labels(reason)._value.get())


Running = tuple[xds_server.Handle, grpc.aio.Channel]
Serve = Callable[[limits_mod.Limits], contextlib.AbstractAsyncContextManager[Running]]


@pytest.fixture
async def front(etcd: etcd_mod.Etcd) -> Serve:
    """``async with front(limits) as (handle, channel)``: the front-end with these limits and
    one channel to it (one HTTP/2 connection, as from a balancer)."""
    await h.publish_app(etcd, h.app_snapshot(APP, K8S, [h.Service("web-out", 8080)]))

    @contextlib.asynccontextmanager
    async def start(limits: limits_mod.Limits) -> AsyncIterator[Running]:
        async with xds_server.serve(
            etcd=etcd, listen="127.0.0.1:0", grace=0.2, limits=limits
        ) as handle:
            await asyncio.wait_for(handle.cache.wait_loaded(), 10)
            async with grpc.aio.insecure_channel(handle.address) as channel:
                yield handle, channel

    return start


async def served(client: h.SotwClient) -> Any:
    """Asks for clusters; the response (fails if the stream was refused)."""
    await client.send(snapshot.CLUSTER)
    cds = await client.recv()
    assert h.cluster_names(cds) == ["web-out"]
    return cds


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async with asyncio.timeout(5):
            await call.read()
    return err.value


async def still_served(etcd: etcd_mod.Etcd, client: h.SotwClient, cds: Any) -> None:
    """The stream that was not limited gets the next change."""
    await client.ack(cds)
    await h.publish_app(
        etcd, h.app_snapshot(APP, K8S, [h.Service("web-out", 8080), h.Service("web-new", 8081)])
    )
    pushed = await client.recv()
    assert h.cluster_names(pushed) == ["web-new", "web-out"]


def delta_call(channel: grpc.aio.Channel) -> Any:
    return channel.stream_stream(
        DELTA_METHOD,
        request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
        response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
    )()


# -- message size ----------------------------------------------------------------------------

LIMIT = 16 * 1024


def names_of_size(size: int) -> list[str]:
    return [f"ns/service-{i:06d}:8080" for i in range(size // 24 + 1)]


@pytest.mark.parametrize(
    ("first", "size", "counted"),
    [
        pytest.param(False, 2 * LIMIT - 1024, True, id="later-request-over-the-limit"),
        pytest.param(True, 2 * LIMIT - 1024, True, id="first-request-over-the-limit"),
        pytest.param(False, 4 * LIMIT, False, id="over-grpcs-own-cap-not-counted"),
    ],
)
async def test_an_oversized_request_ends_only_its_stream(
    etcd: etcd_mod.Etcd, front: Serve, first: bool, size: int, counted: bool
) -> None:
    async with front(limits_mod.Limits(max_message_bytes=LIMIT)) as (_, channel):
        other = h.SotwClient(channel, node("web-other"))
        other_cds = await served(other)
        big = h.SotwClient(channel, node("web-big"))
        if not first:
            await served(big)
        before = limited(limits_mod.MESSAGE_SIZE)
        names = names_of_size(size)
        await big.send(snapshot.ENDPOINT, names)
        err = await refused(big.call)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert limited(limits_mod.MESSAGE_SIZE) == before + (1 if counted else 0)
        # A request just under the limit is served.
        fits = h.SotwClient(channel, node("web-fits"))
        await served(fits)
        await fits.send(snapshot.ENDPOINT, names_of_size(LIMIT - 2048))
        assert (await fits.recv()).type_url == snapshot.ENDPOINT
        await still_served(etcd, other, other_cds)


# -- resource names --------------------------------------------------------------------------


def eds_names(count: int) -> list[str]:
    return [f"ns/service-{i:06d}:8080" for i in range(count)]


async def test_a_request_naming_too_many_resources_ends_its_stream(
    etcd: etcd_mod.Etcd, front: Serve
) -> None:
    async with front(limits_mod.Limits(max_resource_names=50)) as (_, channel):
        other = h.SotwClient(channel, node("web-other"))
        other_cds = await served(other)
        many = h.SotwClient(channel, node("web-many"))
        await served(many)
        await many.send(snapshot.ENDPOINT, eds_names(50))
        assert (await many.recv()).type_url == snapshot.ENDPOINT
        before = limited(limits_mod.RESOURCE_NAMES)
        await many.send(snapshot.ENDPOINT, eds_names(51))
        err = await refused(many.call)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "subscribed to 51 resource names, more than the 50 allowed" in (err.details() or "")
        assert limited(limits_mod.RESOURCE_NAMES) == before + 1
        await still_served(etcd, other, other_cds)


async def test_delta_subscriptions_count_together(front: Serve) -> None:
    async with front(limits_mod.Limits(max_resource_names=50)) as (_, channel):
        delta = delta_call(channel)

        async def subscribe(names: list[str], **kw: Any) -> None:
            await delta.write(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=snapshot.ENDPOINT, resource_names_subscribe=names, **kw
                )
            )

        await subscribe(eds_names(30), node=node("web-delta"))
        async with asyncio.timeout(5):
            assert (await delta.read()).type_url == snapshot.ENDPOINT
        before = limited(limits_mod.RESOURCE_NAMES)
        # 30 more, each request within the limit: the subscription is not.
        await subscribe([f"more/service-{i}:8080" for i in range(30)])
        err = await refused(delta)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "subscribed to 60 resource names" in (err.details() or "")
        assert limited(limits_mod.RESOURCE_NAMES) == before + 1


async def test_a_refused_request_is_let_go_at_once(front: Serve) -> None:
    """With the cyclic collector off, nothing of a refused request outlives its stream: not the
    bytes gRPC's request iterator read, not the parsed request in the handler's frame, not the
    state of a stream ended after it was served."""
    limits = limits_mod.Limits(max_message_bytes=256 * 1024, max_resource_names=1000)
    request = discovery_pb2.DiscoveryRequest
    node_ = node("web-big")
    # 400 KiB (over the size, under gRPC's own cap) or 2,000 names in 48 KB (over the names),
    # sent as bytes so that every DiscoveryRequest naming them is the front-end's.
    too_big, too_many = (
        request(node=node_, type_url=snapshot.ENDPOINT, resource_names=names).SerializeToString()
        for names in (names_of_size(400 * 1024), eds_names(2000))
    )

    def parsed_and_kept() -> int:
        return sum(
            1 for o in gc.get_objects() if isinstance(o, request) and len(o.resource_names) > 1000
        )

    def ended_and_kept() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, streams.Stream) and o.closed)

    gc.disable()
    tracemalloc.start()
    try:
        async with front(limits) as (_, channel):
            await served(h.SotwClient(channel, node("web-warm")))
            start = tracemalloc.get_traced_memory()[0]
            for i in range(8):
                call = channel.stream_stream(
                    h.SOTW_METHOD, request_serializer=None, response_deserializer=None
                )()
                await call.write(too_big if i % 2 else too_many)
                assert (await refused(call)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                del call
            for i in range(4):
                # Served first, then ended by a request naming too many.
                client = h.SotwClient(channel, node(f"web-served-{i}"))
                await served(client)
                await client.send(snapshot.ENDPOINT, eds_names(2000))
                assert (await refused(client.call)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                del client
            grown = tracemalloc.get_traced_memory()[0] - start
            assert parsed_and_kept() == 0
            assert ended_and_kept() == 0
            assert grown < 1024 * 1024, f"{grown} bytes more after 1.8 MB of refused requests"
    finally:
        tracemalloc.stop()
        gc.enable()


# -- streams ---------------------------------------------------------------------------------


async def test_the_streams_of_one_node_beyond_its_cap_are_refused(
    etcd: etcd_mod.Etcd, front: Serve
) -> None:
    async with front(limits_mod.Limits(max_streams_per_client=3)) as (handle, channel):
        # ADS SotW, per-type CDS and ADS Delta all count for the one node.
        ads = h.SotwClient(channel, node("web-0"))
        await served(ads)
        per_type = h.SotwClient(channel, node("web-0"), method=CDS_METHOD)
        await served(per_type)
        delta = delta_call(channel)
        await delta.write(
            discovery_pb2.DeltaDiscoveryRequest(node=node("web-0"), type_url=snapshot.CLUSTER)
        )
        async with asyncio.timeout(5):
            assert (await delta.read()).type_url == snapshot.CLUSTER
        before = limited(limits_mod.STREAMS_PER_CLIENT)
        excess = h.SotwClient(channel, node("web-0"))
        await excess.send(snapshot.CLUSTER)
        err = await refused(excess.call)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "node c1/web-0 has its maximum of 3 streams open" in (err.details() or "")
        assert limited(limits_mod.STREAMS_PER_CLIENT) == before + 1
        # Another node, on the same connection, connects and is served.
        other = h.SotwClient(channel, node("web-1"))
        other_cds = await served(other)
        # When one of its streams ends, the node may open another.
        delta.cancel()

        async def one_freed() -> bool:
            return handle.ads.admission.served == 3

        await h.eventually(one_freed, what="the cancelled stream to end")
        await served(h.SotwClient(channel, node("web-0")))
        await still_served(etcd, other, other_cds)


async def test_streams_beyond_the_process_cap_are_refused(front: Serve) -> None:
    async with front(limits_mod.Limits(max_streams=2)) as (_, channel):
        await served(h.SotwClient(channel, node("web-0")))
        await served(h.SotwClient(channel, node("web-1")))
        before = limited(limits_mod.STREAMS)
        third = h.SotwClient(channel, node("web-2"))
        await third.send(snapshot.CLUSTER)
        err = await refused(third.call)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert limited(limits_mod.STREAMS) == before + 1


async def test_a_stream_without_a_first_request_is_ended(
    front: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits_mod, "FIRST_REQUEST_TIMEOUT", 0.3)
    async with front(limits_mod.Limits()) as (handle, channel):
        before = limited(limits_mod.FIRST_REQUEST)
        silent = h.SotwClient(channel, node("web-silent"))
        err = await refused(silent.call)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert limited(limits_mod.FIRST_REQUEST) == before + 1
        assert handle.ads.admission.served == 0
        await served(h.SotwClient(channel, node("web-0")))


# -- request rate ----------------------------------------------------------------------------


BURST = limits_mod.STREAM_TOKENS + 5.5
"""A stream and five requests and a half: the first request and four ACKs fit, whatever the
small extra charges for their bytes and the keys watched; a fifth ACK does not."""
RATE = 0.2
"""A token every 5 s: what the tests send after the burst comes well within one."""


async def test_a_stream_sending_requests_too_fast_is_ended(
    etcd: etcd_mod.Etcd, front: Serve
) -> None:
    limits = limits_mod.Limits(requests_per_second=RATE, request_burst=BURST)
    async with front(limits) as (handle, channel):
        normal = h.SotwClient(channel, node("web-normal"))
        normal_cds = await served(normal)
        flood = h.SotwClient(channel, node("web-flood"))
        flood_cds = await served(flood)
        before = limited(limits_mod.REQUEST_RATE)
        # The same ACK again and again, each a request the front-end must read: the fifth is
        # one too many.
        # NOTE: nothing is written after it: a write racing the server's status would end
        # the call with the client's own INTERNAL error instead.
        for _ in range(5):
            await flood.ack(flood_cds)
        err = await refused(flood.call)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "node c1/web-flood sends requests faster than the 0.2 a second (burst 15.5)" in (
            err.details() or ""
        )
        assert limited(limits_mod.REQUEST_RATE) == before + 1

        # The bucket is the node's, not the stream's: reconnecting at once buys no new burst.
        again = h.SotwClient(channel, node("web-flood"))
        await again.send(snapshot.CLUSTER)
        assert (await refused(again.call)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert limited(limits_mod.REQUEST_RATE) == before + 2
        await still_served(etcd, normal, normal_cds)
        assert handle.ads.admission.clients() == 1


# -- who a client is: the verified pod --------------------------------------------------------

NS = "shop"


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[kubeapi_server.KubeApiServer, Path]]:
    srv = kubeapi_server.KubeApiServer(name="east")
    await srv.start()
    srv.store.create(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"namespace": NS, "name": APP}}
    )
    for pod in ("web-a", "web-b"):
        srv.store.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"namespace": NS, "name": pod},
                "spec": {"serviceAccountName": APP, "containers": [{"name": "app"}]},
            }
        )
    path = tmp_path / "kubeconfig"
    kubeapi_server.write_kubeconfig(path, {"east": srv.url})
    try:
        yield srv, path
    finally:
        await srv.stop()


async def test_with_tokens_a_client_is_its_pod_not_the_node_id_it_claims(
    etcd: etcd_mod.Etcd, kube: tuple[kubeapi_server.KubeApiServer, Path]
) -> None:
    srv, kubeconfig = kube
    await h.publish_app(etcd, h.app_snapshot(APP, "east", [h.Service("web-out", 8080)]))
    args = argparse.Namespace(
        review_kubeconfig=str(kubeconfig), review_context=[], review_in_cluster=None
    )
    tokens = {p: srv.issue_token(NS, APP, audiences=["navigator"], pod=f"web-{p}") for p in "ab"}
    async with (
        tokenreview.reviewers(args) as clusters,
        xds_server.serve(
            etcd=etcd,
            listen="127.0.0.1:0",
            grace=0.2,
            authenticator=authn.TokenAuthenticator(clusters),
            limits=limits_mod.Limits(max_streams_per_client=2),
        ) as handle,
    ):
        await asyncio.wait_for(handle.cache.wait_loaded(), 10)
        async with grpc.aio.insecure_channel(handle.address) as channel:

            def client(pod: str, node_id: str) -> h.SotwClient:
                bearer = [("authorization", f"Bearer {tokens[pod]}")]
                return h.SotwClient(channel, node(node_id, k8s_cluster="east"), metadata=bearer)

            # Pod a's streams count as pod a's whatever node ids they claim...
            await served(client("a", "claim-1"))
            await served(client("a", "claim-2"))
            excess = client("a", "claim-3")
            await excess.send(snapshot.CLUSTER)
            err = await refused(excess.call)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "pod east/shop/web-a has its maximum" in (err.details() or "")
            # ...and pod b, claiming the very node id pod a used, is not counted with it.
            await served(client("b", "claim-1"))


# -- the bookkeeping, with a controllable clock ------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param([(0.0, 1.0)] * 5, [True] * 4 + [False], id="burst-then-refused"),
        pytest.param([(0.0, 1.0)] * 4 + [(0.5, 1.0)], [True] * 5, id="refills-at-the-rate"),
        pytest.param([(10.0, 1.0)] * 2 + [(0.0, 4.0)], [True, True, False], id="never-above-burst"),
        pytest.param([(0.0, 3.0), (0.0, 2.0), (0.0, 1.0)], [True, False, True],
                     id="refusal-takes-none"),
    ],
)  # fmt: skip
def test_bucket(steps: Sequence[tuple[float, float]], expected: list[bool]) -> None:
    clock = Clock()
    bucket = limits_mod.Bucket(rate=2.0, burst=4.0, now=clock())
    got = []
    for advance, cost in steps:
        clock.now += advance
        got.append(bucket.take(cost, clock()))
    assert got == expected


def test_what_a_request_made_a_stream_watch_is_charged_after_it_into_debt() -> None:
    clock = Clock()
    admission = limits_mod.Admission(
        limits_mod.Limits(requests_per_second=10, request_burst=20), clock=clock
    )
    quota = admission.join(limits_mod.Client("node", "c1", "n"))
    assert quota.allow(0)
    quota.watched(100 * limits_mod.KEYS_PER_TOKEN)  # 100 tokens: 19 left, then at most -20
    assert quota.bucket.tokens == -20
    clock.now += 2.0  # 20 tokens back: 0
    assert not quota.allow(0)
    clock.now += 0.1
    assert quota.allow(0)


def test_a_request_costs_one_token_plus_one_per_64_kib_plus_a_new_streams() -> None:
    clock = Clock()
    admission = limits_mod.Admission(
        limits_mod.Limits(requests_per_second=1, request_burst=limits_mod.STREAM_TOKENS + 4),
        clock=clock,
    )
    quota = admission.join(limits_mod.Client("node", "c1", "n"))
    assert quota.allow(0, limits_mod.STREAM_TOKENS)  # 11 tokens
    assert quota.allow(limits_mod.BYTES_PER_TOKEN)  # 2 tokens
    assert not quota.allow(limits_mod.BYTES_PER_TOKEN)  # 2 more: only 1 left
    assert quota.allow(0)


def test_admission_counts_per_client_and_keeps_a_bucket_until_it_is_full() -> None:
    clock = Clock()
    limits = limits_mod.Limits(
        max_streams=3, max_streams_per_client=2, requests_per_second=10, request_burst=10
    )
    admission = limits_mod.Admission(limits, clock=clock)
    a, b, c = (limits_mod.Client("node", "c1", n) for n in "abc")
    qa = admission.join(a)
    assert admission.join(a) is qa
    with pytest.raises(limits_mod.Limited) as err:
        admission.join(a)
    assert err.value.reason == limits_mod.STREAMS_PER_CLIENT
    admission.join(b)
    with pytest.raises(limits_mod.Limited) as err:
        admission.join(c)
    assert err.value.reason == limits_mod.STREAMS
    assert admission.served == 3
    # a spends its burst, closes both streams and comes back at once: the same, empty bucket.
    while qa.allow(0):
        pass
    admission.part(qa)
    admission.part(qa)
    assert admission.clients() == 1
    clock.now += 0.5
    back = admission.join(a)
    assert back is qa
    assert back.allow(4.0 * limits_mod.BYTES_PER_TOKEN - 1)  # 5 tokens, refilled in 0.5 s
    assert not back.allow(0)
    # Gone for 2 * burst / rate (2 s, the time to refill from the deepest debt): forgotten, a
    # new client with a full bucket.
    admission.part(back)
    clock.now += 1.5
    assert admission.join(a) is qa
    admission.part(qa)
    clock.now += 2.01
    fresh = admission.join(a)
    assert fresh is not qa
    assert fresh.bucket.tokens == 10


def identity(pod: str = "") -> authn.Identity:
    return authn.Identity(cluster="east", namespace="shop", service_account="web", pod=pod)


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        pytest.param(None, "node c1/web-7f-abc", id="no-authn-the-node-id"),
        pytest.param(identity("web-7f-abc"), "pod east/shop/web-7f-abc", id="token-with-pod"),
        pytest.param(identity(), "service-account east/shop/web node web-7f-abc",
                     id="token-without-pod"),
    ],
)  # fmt: skip
def test_who_a_client_is(who: authn.Identity | None, expected: str) -> None:
    info = resources.NodeInfo(id="web-7f-abc", app="web", k8s_cluster="c1", region="", zone="")
    assert str(limits_mod.client_of(info, who)) == expected


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--max-streams", "0"], id="zero-streams"),
        pytest.param(["--max-requests-per-second", "-1"], id="negative-rate"),
        pytest.param(["--request-burst", "0.5"], id="burst-below-one-request"),
    ],
)
def test_bad_limits_are_refused_at_start(argv: list[str]) -> None:
    code = "import sys; from navigator.xds import server; sys.exit(server.main(sys.argv[1:]))"
    # NOTE: close_fds=False: posix_spawn, not fork (see xds_helpers.spawn).
    done = subprocess.run(
        [sys.executable, "-c", code, "--etcd", "127.0.0.1:1", *argv],
        capture_output=True,
        close_fds=False,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert b"bad limits" in done.stderr
