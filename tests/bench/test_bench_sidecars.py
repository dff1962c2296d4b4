"""``navigator.bench.sidecars`` against a tiny in-test ADS server (SotW and Delta).

The process runs for real (``python -m navigator.bench.sidecars``) and reports to a TCP
server of the test; the ADS server here serves a few EDS clusters (and one static cluster)
per app and pushes changes: an added address, a removed cluster, a killed stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from navigator.bench.sidecars import CDS, EDS, digest

TIMEOUT = 5.0
KICK = object()

# app -> its clusters: (cluster name, EDS service name or "" for the cluster's own name, or
# None for a STATIC cluster).
APPS: dict[str, list[tuple[str, str | None]]] = {
    "app0": [("svc-a", "eds/svc-a"), ("svc-b", ""), ("static-x", None)],
    "app1": [("svc-a", "eds/svc-a"), ("svc-b", ""), ("svc-c", "eds/svc-c"), ("static-x", None)],
}
SIDECARS = [
    {"id": "sc-0", "app": "app0", "cluster": "east", "region": "east-r", "zone": "r1-a"},
    {"id": "sc-1", "app": "app1", "cluster": "west", "region": "west-r", "zone": "r2-b"},
    {"id": "sc-2", "app": "app0", "cluster": "east", "region": "east-r", "zone": "r1-c"},
]


def eds_name(cluster: str, service: str | None) -> str | None:
    return None if service is None else (service or cluster)


def cluster_msg(name: str, service: str | None) -> cluster_pb2.Cluster:
    if service is None:
        return cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    c.eds_cluster_config.service_name = service
    return c


def cla_msg(name: str, addrs: list[str]) -> endpoint_pb2.ClusterLoadAssignment:
    """Half the addresses at priority 0 and the rest at priority 1, in two localities."""
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    half = (len(addrs) + 1) // 2
    for priority, part in ((0, addrs[:half]), (1, addrs[half:])):
        loc = cla.endpoints.add(priority=priority)
        loc.locality.zone = f"z{priority}"
        for a in part:
            host, _, port = a.rpartition(":")
            sock = address_pb2.SocketAddress(address=host, port_value=int(port))
            loc.lb_endpoints.append(
                endpoint_components_pb2.LbEndpoint(
                    endpoint=endpoint_components_pb2.Endpoint(
                        address=address_pb2.Address(socket_address=sock)
                    )
                )
            )
    return cla


def packed(msg: Any, type_url: str) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=msg.SerializeToString())


@dataclass
class Stream:
    delta: bool
    peer: str
    out: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    node: Any = None
    requests: list[Any] = field(default_factory=list)
    eds: set[str] = field(default_factory=set)
    sent_nonces: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)


class Mesh(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """The ADS server: the same config in both variants, pushes to every open stream."""

    def __init__(self) -> None:
        self.apps = {app: list(cs) for app, cs in APPS.items()}
        self.addrs: dict[str, list[str]] = {
            "eds/svc-a": ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.1.1:8080"],
            "svc-b": ["10.0.2.1:9090"],
            "eds/svc-c": ["10.0.3.1:80", "10.0.3.2:80"],
        }
        self.versions: dict[str, int] = dict.fromkeys(self.addrs, 1)
        self.streams: list[Stream] = []
        self.nonce = 0
        self.cond = asyncio.Condition()

    # -- the config ----------------------------------------------------------------------

    def clusters_of(self, node: Any) -> list[tuple[str, str | None]]:
        return self.apps[node.cluster]

    def eds_names_of(self, app: str) -> set[str]:
        return {n for c, s in self.apps[app] if (n := eds_name(c, s)) is not None}

    def _next_nonce(self, st: Stream) -> str:
        self.nonce += 1
        nonce = str(self.nonce)
        st.sent_nonces.add(nonce)
        return nonce

    def cds_sotw(self, st: Stream) -> Any:
        return discovery_pb2.DiscoveryResponse(
            type_url=CDS,
            version_info=f"cds-{len(self.clusters_of(st.node))}",
            resources=[packed(cluster_msg(c, s), CDS) for c, s in self.clusters_of(st.node)],
            nonce=self._next_nonce(st),
        )

    def eds_sotw(self, st: Stream, names: list[str]) -> Any:
        return discovery_pb2.DiscoveryResponse(
            type_url=EDS,
            version_info=f"eds-{sum(self.versions.values())}",
            resources=[packed(cla_msg(n, self.addrs[n]), EDS) for n in names if n in self.addrs],
            nonce=self._next_nonce(st),
        )

    def cds_delta(self, st: Stream, known: dict[str, str], removed: list[str]) -> Any:
        resources = [
            discovery_pb2.Resource(name=c, version="1", resource=packed(cluster_msg(c, s), CDS))
            for c, s in self.clusters_of(st.node)
            if known.get(c) != "1"
        ]
        if not resources and not removed:
            return None
        return discovery_pb2.DeltaDiscoveryResponse(
            type_url=CDS, resources=resources, removed_resources=removed, nonce=self._next_nonce(st)
        )

    def eds_delta(self, st: Stream, names: list[str], known: dict[str, str]) -> Any:
        resources = [
            discovery_pb2.Resource(
                name=n,
                version=str(self.versions[n]),
                resource=packed(cla_msg(n, self.addrs[n]), EDS),
            )
            for n in names
            if n in self.addrs and known.get(n) != str(self.versions[n])
        ]
        if not resources:
            return None
        return discovery_pb2.DeltaDiscoveryResponse(
            type_url=EDS, resources=resources, nonce=self._next_nonce(st)
        )

    # -- changes pushed to the open streams ---------------------------------------------

    def add_address(self, name: str, addr: str) -> None:
        self.addrs[name].append(addr)
        self.versions[name] += 1
        for st in self.streams:
            if name in st.eds:
                # NOTE: SotW gets only the changed resource: the others must be kept.
                resp = self.eds_delta(st, [name], {}) if st.delta else self.eds_sotw(st, [name])
                st.out.put_nowait(resp)

    def remove_cluster(self, app: str, cluster: str) -> None:
        self.apps[app] = [(c, s) for c, s in self.apps[app] if c != cluster]
        for st in self.streams:
            if st.node is not None and st.node.cluster == app:
                resp = self.cds_delta(st, {}, [cluster]) if st.delta else self.cds_sotw(st)
                st.out.put_nowait(resp)

    def kick(self, node_id: str) -> None:
        for st in self.streams:
            if st.node is not None and st.node.id == node_id:
                st.out.put_nowait(KICK)

    async def until(self, predicate: Callable[[], bool], within: float = TIMEOUT) -> None:
        async with self.cond:
            await asyncio.wait_for(self.cond.wait_for(predicate), within)

    # -- the service ---------------------------------------------------------------------

    async def _serve(self, st: Stream, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        self.streams.append(st)

        async def read() -> None:
            async for req in request_iterator:
                if req.HasField("node"):
                    st.node = req.node
                st.requests.append(req)
                if req.response_nonce in st.sent_nonces:
                    st.acked.add(req.response_nonce)
                resp = self._on_request(st, req)
                if resp is not None:
                    st.out.put_nowait(resp)
                async with self.cond:
                    self.cond.notify_all()

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await st.out.get()
                if item is KICK:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "kicked")
                yield item
        finally:
            reader.cancel()
            self.streams.remove(st)

    def _on_request(self, st: Stream, req: Any) -> Any:
        if st.delta:
            if req.type_url == CDS and not req.response_nonce and req.HasField("node"):
                return self.cds_delta(st, dict(req.initial_resource_versions), [])
            if req.type_url == EDS:
                st.eds -= set(req.resource_names_unsubscribe)
                added = set(req.resource_names_subscribe) - st.eds
                st.eds |= added
                if added:
                    return self.eds_delta(st, sorted(added), dict(req.initial_resource_versions))
            return None
        if req.type_url == CDS and req.HasField("node"):
            return self.cds_sotw(st)
        if req.type_url == EDS and set(req.resource_names) != st.eds:
            st.eds = set(req.resource_names)
            return self.eds_sotw(st, sorted(st.eds))
        return None

    async def StreamAggregatedResources(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[Any]:
        async for item in self._serve(Stream(False, context.peer()), request_iterator, context):
            yield item

    async def DeltaAggregatedResources(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[Any]:
        async for item in self._serve(Stream(True, context.peer()), request_iterator, context):
            yield item


class Report:
    """The test's end of the report connection: events and replies as they arrive."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.events: list[list[Any]] = []
        self.replies: list[dict[str, Any]] = []

    async def line(self, within: float = TIMEOUT) -> Any:
        raw = await asyncio.wait_for(self.reader.readline(), within)
        assert raw, "the sidecars process closed the report connection"
        assert raw.endswith(b"\n")
        data = json.loads(raw)
        if isinstance(data, list):
            assert data, "an empty batch of events"
            self.events.extend(data)
        else:
            self.replies.append(data)
        return data

    async def until(self, predicate: Callable[[], bool], within: float = TIMEOUT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                pytest.fail(f"timed out; events so far: {self.events}")
            with contextlib.suppress(TimeoutError):
                await self.line(remaining)

    async def command(self, command: str) -> Any:
        self.writer.write(command.encode() + b"\n")
        await self.writer.drain()
        await self.until(lambda: any(command in r for r in self.replies))
        reply = next(r for r in self.replies if command in r)
        self.replies.remove(reply)
        return reply[command]

    def of(self, kind: str, idx: int | None = None) -> list[list[Any]]:
        return [e for e in self.events if e[0] == kind and (idx is None or e[1] == idx)]


def expected_dump(mesh: Mesh) -> list[Any]:
    out = []
    for s in SIDECARS:
        clusters = mesh.apps[s["app"]]
        eds = {n: digest(mesh.addrs[n]) for n in mesh.eds_names_of(s["app"])}
        out.append([s["id"], digest(c for c, _ in clusters), eds])
    return out


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_sidecars_report_ready_added_addresses_and_dump(tmp_path: Path, delta: bool) -> None:
    mesh = Mesh()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(mesh, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    connected: asyncio.Future[Report] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set_result(Report(reader, writer))

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0, limit=1 << 24)
    report_port = listener.sockets[0].getsockname()[1]
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "xds": f"127.0.0.1:{port}",
                "delta": delta,
                "streams_per_channel": 2,
                "sidecars": SIDECARS,
            }
        )
    )
    stderr = (tmp_path / "stderr").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "navigator.bench.sidecars",
        "--spec",
        str(spec),
        "--report",
        f"127.0.0.1:{report_port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )
    try:
        report = await asyncio.wait_for(connected, 15)
        assert await report.line() == {"hello": 3, "token": ""}

        # Ready: once each, with the number of EDS names of its app; nothing else.
        ns = {0: 2, 1: 3, 2: 2}
        await report.until(lambda: all(report.of("r", i) for i in ns))
        for i, n in ns.items():
            [event] = report.of("r", i)
            assert event[3] == n and isinstance(event[2], float)
        assert not report.of("a") and not report.of("e")

        # Node identity and channels: 3 streams over 2 TCP connections.
        nodes = {st.node.id: st.node for st in mesh.streams}
        assert set(nodes) == {"sc-0", "sc-1", "sc-2"}
        for s in SIDECARS:
            node = nodes[s["id"]]
            assert node.cluster == s["app"]
            assert node.metadata.fields["app"].string_value == s["app"]
            assert node.metadata.fields["k8s_cluster"].string_value == s["cluster"]
            assert (node.locality.region, node.locality.zone) == (s["region"], s["zone"])
        assert len({st.peer for st in mesh.streams}) == 2

        # One more address: an "a" event naming exactly it, from every sidecar watching it.
        mesh.add_address("eds/svc-a", "10.0.9.9:8080")
        await report.until(lambda: len(report.of("a")) == 3)
        assert sorted(e[1] for e in report.of("a")) == [0, 1, 2]
        for e in report.of("a"):
            assert e[3:] == ["eds/svc-a", ["10.0.9.9:8080"]]
        assert await report.command("dump") == expected_dump(mesh)

        stats = await report.command("stats")
        assert stats["errors"] == 0 and stats["ready"] == 3
        assert stats["responses"] >= 9  # CDS + EDS + the push, per sidecar

        # A cluster removed: complete with one name fewer, and unsubscribed.
        mesh.remove_cluster("app1", "svc-c")
        await report.until(lambda: len(report.of("r", 1)) == 2)
        assert report.of("r", 1)[-1][3] == 2
        [st1] = [st for st in mesh.streams if st.node.id == "sc-1"]
        await mesh.until(lambda: st1.eds == {"eds/svc-a", "svc-b"})
        assert await report.command("dump") == expected_dump(mesh)

        # A failed stream: reported, re-opened, resumed with what the sidecar holds.
        [kicked] = [st for st in mesh.streams if st.node.id == "sc-0"]

        def resumed() -> Any:
            for st in mesh.streams:
                if st.node is not None and st.node.id == "sc-0" and st is not kicked:
                    return st
            return None

        mesh.kick("sc-0")
        await report.until(lambda: bool(report.of("e", 0)))
        assert report.of("e", 0)[0][3] == "UNAVAILABLE: kicked"
        await mesh.until(lambda: resumed() is not None and len(resumed().requests) >= 2)
        first, second = resumed().requests[:2]
        assert first.type_url == CDS and second.type_url == EDS
        if delta:
            assert dict(first.initial_resource_versions) == {
                "svc-a": "1",
                "svc-b": "1",
                "static-x": "1",
            }
            assert dict(second.initial_resource_versions) == {"eds/svc-a": "2", "svc-b": "1"}
            assert sorted(second.resource_names_subscribe) == ["eds/svc-a", "svc-b"]
        else:
            assert first.version_info == "cds-3"
            assert sorted(second.resource_names) == ["eds/svc-a", "svc-b"]
            assert second.version_info
            # The server answers CDS and EDS again: wait for the sidecar's ACKs of both.
            st0 = resumed()
            await mesh.until(lambda: len(st0.acked) == 2 and len(st0.sent_nonces) == 2)
        stats = await report.command("stats")
        assert stats["errors"] == 1 and stats["ready"] == 3
        assert len(report.of("r", 0)) == 1 and len(report.of("a", 0)) == 1
        assert await report.command("dump") == expected_dump(mesh)

        # The driver closing the connection ends the process.
        report.writer.close()
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        assert proc.stdout is not None
        assert await proc.stdout.read() == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr.close()
        listener.close()
        await server.stop(None)
    assert "Traceback" not in (tmp_path / "stderr").read_text()
