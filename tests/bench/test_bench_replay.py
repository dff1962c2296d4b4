"""The floor server (``python -m navigator.bench.replay``) against real etcd and a mesh the real
translator wrote: one SotW and one Delta ADS client get what the cache holds, and flips reach
both."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from coordinator import etcd as etcd_mod
from navigator import keys, model, snapshot, state
from navigator.lab import procs
from navigator.xds import cache as cache_mod
from navigator.xds import resources
from navigator.xds.server import DELTA_METHOD, METHOD, SERVICE
from shards import runner, translate

CLUSTER = model.ClusterName("east")
APP = "app-0"
PORT = 8080
SERVICES = ("svc0", "svc1")
FLIPPED = "ns/svc0:8080"
WATCHED = "ns/svc1:8080"
EXTRA = "127.40.0.7"


def mesh() -> list[model.Object]:
    """Two zones (a node in each), two services with endpoints in both, one app naming them."""
    objs: list[model.Object] = [
        model.Node(CLUSTER, "n1", "r1", "r1-a"),
        model.Node(CLUSTER, "n2", "r1", "r1-b"),
        model.Nexus(
            CLUSTER,
            "ns",
            APP,
            model.AppName(APP),
            tuple(model.ServiceRef("ns", s) for s in SERVICES),
        ),
    ]
    for k, name in enumerate(SERVICES):
        port = model.ServicePort("http", PORT, model.Protocol.HTTP, PORT)
        objs.append(
            model.Service(
                CLUSTER, "ns", name, model.ServiceType.CLUSTER_IP, f"127.31.0.{k + 1}", (port,)
            )
        )
        eps = tuple(
            model.Endpoint(
                f"127.22.{k}.{e}",
                True,
                (model.EndpointPort("http", PORT),),
                node="n1" if e < 3 else "n2",
            )
            for e in range(1, 4)
        )
        objs.append(model.Endpoints(CLUSTER, "ns", name, eps))
    return objs


async def seed(etcd: etcd_mod.Etcd) -> None:
    """The state as a watcher writes it, then the real translator's first flush (as
    ``benchmarks/bench_floor.py`` seeds its mesh)."""
    objs = mesh()
    revision = await etcd.apply(puts={keys.state_key(o): model.encode(o) for o in objs})
    marker = {"cluster": str(CLUSTER), "time": int(time.time()), "revision": revision}
    await etcd.put(keys.synced_key(CLUSTER), json.dumps({**marker, "leader": "w0"}).encode())
    tr = runner.Translator(etcd, options=translate.Options(), shards=1)
    listed = await etcd.get_prefix(keys.STATE)
    tr.load(listed)
    tr.load(await etcd.get_prefix(keys.SYNCED))
    tr.state_seen(listed.revision)
    await tr.flush()


def node(node_id: str, zone: str) -> Any:
    n = base_pb2.Node(id=node_id, cluster=APP, locality=base_pb2.Locality(region="r1", zone=zone))
    n.metadata.update({"app": APP, "k8s_cluster": str(CLUSTER)})
    return n


def info(zone: str) -> resources.NodeInfo:
    return resources.NodeInfo(id=zone, app=APP, k8s_cluster=str(CLUSTER), region="r1", zone=zone)


def bodies(items: dict[str, cache_mod.Encoded]) -> dict[str, bytes]:
    return {name: resources.body_of(e) for name, e in items.items()}


def addrs(value: bytes) -> set[str]:
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(value)
    return {
        lb.endpoint.address.socket_address.address
        for loc in cla.endpoints
        for lb in loc.lb_endpoints
    }


def sotw_assignments(resp: Any) -> dict[str, bytes]:
    assert resp.type_url == snapshot.ENDPOINT
    out = {}
    for item in resp.resources:
        cla = endpoint_pb2.ClusterLoadAssignment.FromString(item.value)
        out[cla.cluster_name] = item.value
    return out


async def eventually(what: str, check: Callable[[], Awaitable[bool]], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {limit}s"
        await asyncio.sleep(0.05)


class Clients:
    """One SotW and one Delta ADS stream on one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.sotw = channel.stream_stream(
            f"/{SERVICE}/{METHOD}",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        self.delta = channel.stream_stream(
            f"/{SERVICE}/{DELTA_METHOD}",
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )()
        self.sotw_node = node("sotw-0", "r1-a")
        self.delta_node = node("delta-0", "r1-b")

    async def sotw_request(self, type_url: str, names: list[str], ack: Any = None) -> None:
        req = discovery_pb2.DiscoveryRequest(
            node=self.sotw_node, type_url=type_url, resource_names=names
        )
        if ack is not None:
            req.version_info, req.response_nonce = ack.version_info, ack.nonce
        await self.sotw.write(req)

    async def delta_request(self, type_url: str, subscribe: list[str], nonce: str = "") -> None:
        await self.delta.write(
            discovery_pb2.DeltaDiscoveryRequest(
                node=self.delta_node,
                type_url=type_url,
                resource_names_subscribe=subscribe,
                response_nonce=nonce,
            )
        )

    @staticmethod
    async def recv(call: Any) -> Any:
        async with asyncio.timeout(5):
            resp = await call.read()
        assert resp is not grpc.aio.EOF
        assert resp.nonce
        return resp


async def test_replay_serves_sotw_and_delta_and_flips(
    etcd: etcd_mod.Etcd, etcd_url: str, tmp_path: Path
) -> None:
    await seed(etcd)
    cache: cache_mod.SnapshotCache = await state.load_snapshots(etcd)
    entry = cache.app(APP, str(CLUSTER))
    assert entry is not None
    eds_names = sorted(entry.endpoints)
    assert eds_names == [FLIPPED, WATCHED]
    grpc_address = f"127.0.0.1:{procs.free_port()}"
    http = f"http://127.0.0.1:{procs.free_port()}"
    proc = procs.start(
        [
            sys.executable,
            "-m",
            "navigator.bench.replay",
            "--etcd",
            etcd_url,
            "--listen",
            grpc_address,
            "--http",
            http.removeprefix("http://"),
            "--watch",
            WATCHED,
        ],
        log_file=tmp_path / "replay.log",
    )
    try:
        async with aiohttp.ClientSession() as session:

            async def stats() -> dict[str, Any]:
                async with session.get(f"{http}/stats") as resp:
                    assert resp.status == 200
                    doc: dict[str, Any] = await resp.json()
                    return doc

            async def up() -> bool:
                assert proc.poll() is None, (tmp_path / "replay.log").read_text()
                try:
                    await stats()
                except aiohttp.ClientConnectionError:
                    return False
                return True

            async def flip(body: dict[str, str] | None) -> dict[str, Any]:
                data = None if body is None else json.dumps(body)
                async with session.post(f"{http}/flip", data=data) as resp:
                    assert resp.status == 200, await resp.text()
                    doc: dict[str, Any] = await resp.json()
                    return doc

            await eventually("the replay server answers", up)
            async with grpc.aio.insecure_channel(grpc_address) as channel:
                c = Clients(channel)

                # -- SotW (zone r1-a): CDS, then EDS of every cluster the app names ---------
                want_cds = resources.desired(cache, info("r1-a"), snapshot.CLUSTER, frozenset())
                assert want_cds is not None and want_cds[1]
                await c.sotw_request(snapshot.CLUSTER, [])
                cds = await c.recv(c.sotw)
                assert cds.type_url == snapshot.CLUSTER
                assert cds.version_info == want_cds[0]
                assert [r.value for r in cds.resources] == list(bodies(dict(want_cds[1])).values())
                await c.sotw_request(snapshot.CLUSTER, [], ack=cds)
                await c.sotw_request(snapshot.ENDPOINT, eds_names)
                eds = await c.recv(c.sotw)
                want_a = resources.desired(
                    cache, info("r1-a"), snapshot.ENDPOINT, frozenset(eds_names)
                )
                assert want_a is not None
                assert eds.version_info == want_a[0]
                original_a = bodies(dict(want_a[1]))
                assert sotw_assignments(eds) == original_a
                await c.sotw_request(snapshot.ENDPOINT, eds_names, ack=eds)

                # -- Delta (zone r1-b): wildcard CDS, EDS by subscription ------------------
                await c.delta_request(snapshot.CLUSTER, [])
                dcds = await c.recv(c.delta)
                assert dcds.type_url == snapshot.CLUSTER
                assert {r.name: (r.version, r.resource.value) for r in dcds.resources} == {
                    n: (e.hash, resources.body_of(e)) for n, e in want_cds[1].items()
                }
                await c.delta_request(snapshot.CLUSTER, [], nonce=dcds.nonce)
                await c.delta_request(snapshot.ENDPOINT, eds_names)
                deds = await c.recv(c.delta)
                want_b = resources.desired(
                    cache, info("r1-b"), snapshot.ENDPOINT, frozenset(eds_names)
                )
                assert want_b is not None
                original_b = bodies(dict(want_b[1]))
                assert {r.name: (r.version, r.resource.value) for r in deds.resources} == {
                    n: (e.hash, resources.body_of(e)) for n, e in want_b[1].items()
                }
                # NOTE: the zones get their own variants: the flip must reach both.
                assert original_a != original_b
                await c.delta_request(snapshot.ENDPOINT, [], nonce=deds.nonce)

                async def both_open() -> bool:
                    return bool((await stats())["by_variant"] == {"sotw": 1, "delta": 1})

                await eventually("both streams counted", both_open)

                # -- flip: one more endpoint, on both streams, the ACKs above answered nothing
                answer = await flip({"name": FLIPPED, "address": EXTRA})
                assert answer["pushed"] == 2 and answer["flipped"] is True
                assert answer["variants"] == 3  # NOTE: r1-a, r1-b and the default.
                assert answer["encode_ms"] >= 0 and answer["queue_ms"] >= 0
                got_a = sotw_assignments(await c.recv(c.sotw))
                assert addrs(got_a[FLIPPED]) == addrs(original_a[FLIPPED]) | {EXTRA}
                # NOTE: a SotW EDS push carries only the changed assignment, as the front-end's.
                assert set(got_a) == {FLIPPED}
                got_b = await c.recv(c.delta)
                assert [r.name for r in got_b.resources] == [FLIPPED]
                flipped_b = got_b.resources[0]
                assert addrs(flipped_b.resource.value) == addrs(original_b[FLIPPED]) | {EXTRA}
                assert flipped_b.version == snapshot.content_hash(flipped_b.resource.value)

                # -- the same flip again: the original, byte for byte ----------------------
                answer = await flip({"name": FLIPPED, "address": EXTRA})
                assert answer["pushed"] == 2 and answer["flipped"] is False
                restored = await c.recv(c.sotw)
                assert restored.version_info == want_a[0]
                assert sotw_assignments(restored) == {FLIPPED: original_a[FLIPPED]}
                back_b = await c.recv(c.delta)
                assert [(r.name, r.resource.value) for r in back_b.resources] == [
                    (FLIPPED, original_b[FLIPPED])
                ]

                # -- the --watch flip (no body): the watched name without its last endpoint
                answer = await flip(None)
                assert answer["pushed"] == 2 and answer["flipped"] is True
                dropped_a = sotw_assignments(await c.recv(c.sotw))
                assert len(addrs(dropped_a[WATCHED])) == len(addrs(original_a[WATCHED])) - 1
                assert set(dropped_a) == {WATCHED}
                dropped_b = await c.recv(c.delta)
                assert [r.name for r in dropped_b.resources] == [WATCHED]

                doc = await stats()
                assert doc["responses"] == 10 and doc["flipped"] is True
                assert doc["flips"] == {WATCHED: "-"}

                # -- bad flips are refused, nothing is pushed ------------------------------
                async with session.post(
                    f"{http}/flip", data=json.dumps({"name": "ns/nope:1", "address": EXTRA})
                ) as resp:
                    assert resp.status == 404
                async with session.post(
                    f"{http}/flip", data=json.dumps({"name": FLIPPED, "address": "x"})
                ) as resp:
                    assert resp.status == 400
                assert (await stats())["responses"] == 10

                # -- two names at once (a service's two ports): ONE response per stream ----
                answer = await flip({"names": [FLIPPED, WATCHED], "address": EXTRA})
                assert answer["pushed"] == 2
                both_a = sotw_assignments(await c.recv(c.sotw))
                assert set(both_a) == {FLIPPED, WATCHED}
                assert EXTRA in {a.split(":")[0] for a in addrs(both_a[FLIPPED])}
                assert EXTRA in {a.split(":")[0] for a in addrs(both_a[WATCHED])}
                both_b = await c.recv(c.delta)
                assert sorted(r.name for r in both_b.resources) == sorted([FLIPPED, WATCHED])
                assert (await stats())["responses"] == 12
                c.sotw.cancel()
                c.delta.cancel()
    finally:
        procs.stop(proc)
    assert proc.returncode == 0, (tmp_path / "replay.log").read_text()
