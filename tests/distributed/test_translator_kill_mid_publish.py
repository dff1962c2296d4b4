"""SIGKILL of a translator in the middle of publishing: no front-end ever serves a torn
snapshot.

The mesh has an app whose snapshot is over the value limit (stored in parts) and a score of
apps that share its services. Turning mesh-wide tracing on or off rebuilds all of them at
once; the translator leading the big app's shard is killed at varied moments of that
publication. Raw ADS clients on both front-ends, for several apps in both clusters, check
every response they get: its resources hash to its version, and that version is the one a
full translation gives for the state before or after the change, never anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fault_helpers as f
import grpc
import grpc.aio
import yaml
from conftest import StartLab
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2

from coordinator import etcd as etcd_mod
from navigator import keys, model, snapshot
from navigator.xds import server as xds_server
from shards import translate

APPS = ("bulk-all", "bulk-a0", "bulk-a1", "web")
CLUSTERS = (model.ClusterName("east"), model.ClusterName("west"))
TYPES = {snapshot.CLUSTER: cluster_pb2.Cluster, snapshot.LISTENER: listener_pb2.Listener}
TRACING = model.Tracing(provider=model.TracingProvider.ZIPKIN, collector="127.0.0.1:9411")
SERVICES = 220
PORTS = (("http", 8080), ("http-admin", 9090), ("http-metrics", 9100), ("grpc-api", 9200))


def _bulk(examples: Path) -> None:
    """220 four-port services in east and 21 apps calling them, one of them calling all."""
    docs: list[dict[str, Any]] = []
    for i in range(SERVICES):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"s{i}", "namespace": "bulk"},
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": f"198.19.1.{30 + i}",
                    "ports": [
                        {"name": name, "port": port, "targetPort": port} for name, port in PORTS
                    ],
                },
            }
        )
    nexus = [{"namespace": "bulk", "name": ""}]
    docs.append(_nexus("bulk-all", nexus))
    for a in range(20):
        docs.append(
            _nexus(
                f"bulk-a{a}", [{"namespace": "bulk", "name": f"s{a * 10 + j}"} for j in range(10)]
            )
        )
    (examples / "east" / "bulk.yaml").write_text(yaml.safe_dump_all(docs))


def _nexus(app: str, services: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "navigator.avito.ru/v1",
        "kind": "Nexus",
        "metadata": {"name": app, "namespace": "bulk"},
        "spec": {"appName": app, "services": services},
    }


@dataclasses.dataclass
class Seen:
    versions: dict[tuple[str, str, str, str], str] = dataclasses.field(default_factory=dict)
    """(front-end, app, cluster, type) → the last version received."""
    responses: int = 0
    torn: list[str] = dataclasses.field(default_factory=list)


async def _watch(
    address: str, frontend: str, app: str, k8s: str, *, valid: dict[Any, set[str]], seen: Seen
) -> None:
    """One ADS stream (CDS and LDS) that checks and ACKs every response."""
    node = base_pb2.Node(id=f"check-{frontend}-{app}-{k8s}", cluster=app)
    node.metadata.update({"app": app, "k8s_cluster": k8s})
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(
            f"/{xds_server.SERVICE}/{xds_server.METHOD}",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        for type_url in TYPES:
            await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=type_url))
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            seen.responses += 1
            pairs = []
            for item in resp.resources:
                msg = TYPES[resp.type_url].FromString(item.value)
                pairs.append((msg.name, snapshot.content_hash(item.value)))
            where = f"{frontend} {app}/{k8s} {snapshot.SHORT_NAMES[resp.type_url]}"
            if snapshot.version_of(pairs) != resp.version_info:
                seen.torn.append(f"{where}: resources do not hash to {resp.version_info}")
            if resp.version_info not in valid[(app, k8s, resp.type_url)]:
                seen.torn.append(f"{where}: version {resp.version_info} is no state's")
            seen.versions[(frontend, app, k8s, resp.type_url)] = resp.version_info
            await call.write(
                discovery_pb2.DiscoveryRequest(
                    type_url=resp.type_url,
                    version_info=resp.version_info,
                    response_nonce=resp.nonce,
                )
            )


def _versions(objs: list[model.Object], tracing: model.Tracing | None) -> dict[Any, str]:
    full = translate.translate(objs, CLUSTERS, translate.Options(tracing=tracing))
    out = {}
    for app in APPS:
        for k8s in CLUSTERS:
            snap = full.apps[(model.AppName(app), k8s)]
            for type_url in TYPES:
                out[(app, k8s, type_url)] = snapshot.version_of(
                    (r.name, r.hash) for r in snap.resources.get(type_url, ())
                )
    return out


@contextlib.asynccontextmanager
async def _streams(
    lab: Any, valid: dict[Any, set[str]], seen: Seen
) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [
        asyncio.create_task(_watch(fe["address"], fe["name"], app, k8s, valid=valid, seen=seen))
        for fe in lab.frontends
        for app in APPS
        for k8s in CLUSTERS
    ]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await t


async def test_no_front_end_serves_a_torn_snapshot_when_a_translator_dies_mid_publish(
    start_lab: StartLab, examples: Path
) -> None:
    _bulk(examples)
    # NOTE: raw gRPC clients read the front-ends directly, as no sidecar can in a secure lab
    # (no balancer certificate, no token): sidecar identity has its own tests (tests/xds/).
    lab = await start_lab(examples=examples, secure=False)
    async with f.etcd_of(lab) as etcd:
        big_key = keys.app_snapshot_key(model.AppName("bulk-all"), CLUSTERS[0])

        async def big_published() -> bytes | None:
            kv = await etcd.get(big_key)
            return kv.value if kv is not None and snapshot.head_chunks(kv.value) else None

        await f.until(big_published, within=30, what="the big app's snapshot, in parts")
        objs = await f.state_objects(etcd)
        plain, traced = _versions(objs, None), _versions(objs, TRACING)
        valid = {k: {plain[k], traced[k]} for k in plain}
        seen = Seen()
        shard = keys.shard_of("bulk-all", lab.shape.shards)
        mid_publish = 0
        async with _streams(lab, valid, seen):

            async def converged(want: dict[Any, str]) -> bool:
                return len(seen.versions) == len(want) * len(lab.frontends) and all(
                    seen.versions[(fe["name"], *k)] == v
                    for fe in lab.frontends
                    for k, v in want.items()
                )

            await f.until(lambda: converged(plain), within=20, what="every stream at the start")
            for n in range(3):
                setting, want = (TRACING, traced) if n % 2 == 0 else (None, plain)
                victim = lab.proc(
                    await f.until(
                        lambda: f.leader(etcd, keys.shard_leader_key(shard)),
                        within=lab.shape.lease_ttl + 10,
                        what="a leader of the big app's shard",
                    )
                )
                changed_at = await _set_tracing(etcd, setting)
                # NOTE: killed as soon as the publication is seen to have started.
                await f.until(
                    lambda c=changed_at: _started(etcd, c),  # type: ignore[misc]
                    within=10,
                    what="the publication to start",
                    every=0.002,
                )
                os.kill(victim.popen.pid, signal.SIGKILL)
                mid_publish += await _partly_published(etcd, changed_at)
                await f.until(
                    lambda w=want: converged(w),  # type: ignore[misc]
                    within=lab.shape.lease_ttl + 20,
                    what=f"every stream after kill {n}",
                )
                victim.popen.wait()
                lab.procs.remove(victim)
                index = int(victim.name.rsplit("-", 1)[1])
                restarted = lab.start_translator(index)
                await lab.wait_ready([restarted])
        assert not seen.torn, seen.torn[:10]
        assert seen.responses >= 3 * len(lab.frontends) * len(APPS) * len(CLUSTERS)
        assert mid_publish >= 1, "no kill landed in the middle of a publication"


async def _set_tracing(etcd: etcd_mod.Etcd, setting: model.Tracing | None) -> int:
    if setting is None:
        return await etcd.delete(keys.TRACING)
    return await etcd.put(keys.TRACING, model.encode_tracing(setting))


async def _started(etcd: etcd_mod.Etcd, since: int) -> bool:
    """Some app snapshot was rewritten after ``since``."""
    listing = await etcd.get_prefix(keys.APP_SNAPSHOTS, keys_only=True)
    return any(kv.mod_revision > since for kv in listing.items.values())


async def _partly_published(etcd: etcd_mod.Etcd, since: int) -> int:
    """1 if, at the kill, some but not all app snapshots had been rewritten since ``since``."""
    listing = await etcd.get_prefix(keys.APP_SNAPSHOTS)
    rewritten = [kv.mod_revision > since for kv in listing.items.values()]
    return int(any(rewritten) and not all(rewritten))
