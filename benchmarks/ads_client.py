"""Many simulated Envoy sidecars in one process, for ``bench_endpoint_change.py``.

Why it exists: the end-to-end benchmark needs hundreds to thousands of sidecars subscribed to
the xDS front-end, and one real Envoy per app would not fit on a small machine. Each simulated
sidecar opens its own ADS stream (State of the World, real gRPC through ``grpc.aio`` and the
generated ``xds-protos`` stubs), identifies itself as Envoy does (node id, ``cluster`` = app,
metadata ``app`` / ``k8s_cluster``, locality), subscribes to CDS, then to EDS for the clusters
it received, and ACKs every response. LDS and RDS are not requested.

Every time the set of endpoint addresses a sidecar holds for the watched cluster changes, the
process sends one JSON line to the driver over a loopback TCP connection::

    {"kind": "eds", "sidecar": "sidecar-17", "t": 1718000000.123, "addrs": ["127.21.0.1:8080"]}

``t`` is the wall-clock time (``time.time()``) at which the response was read; the driver runs
on the same machine and compares it with the time of its Kubernetes API write. Stream failures
are reported as ``{"kind": "error", ...}`` and the stream is re-opened after a short delay.

Efficiency: one event loop, streams spread over a few channels (``--streams-per-channel``,
each channel its own TCP connection), reports batched into one write per loop iteration.

Run (normally started by the driver)::

    .venv/bin/python benchmarks/ads_client.py --xds 127.0.0.1:18000 --report 127.0.0.1:9000 \\
        --apps 0:1000 --cluster east --region r1 --zone r1-a

The process exits when the driver closes the report connection, or on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
DEFAULT_WATCH = "bench/target:8080"
RECONNECT_DELAY = 0.5

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # NOTE: without a local subchannel pool every channel to the same target would share one
    # TCP connection, and "a few channels" would be one.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
]


class Reporter:
    """JSON lines to the driver, batched: at most one socket write per loop iteration."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._lines: list[bytes] = []
        self._scheduled = False

    def send(self, message: dict[str, Any]) -> None:
        self._lines.append(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        lines, self._lines = self._lines, []
        if lines and not self._writer.is_closing():
            self._writer.write(b"".join(lines))

    async def drain(self) -> None:
        self._flush()
        if not self._writer.is_closing():
            await self._writer.drain()


def make_node(*, node_id: str, app: str, k8s_cluster: str, region: str, zone: str) -> base_pb2.Node:
    metadata = struct_pb2.Struct()
    metadata.update({"app": app, "k8s_cluster": k8s_cluster})
    return base_pb2.Node(
        id=node_id,
        cluster=app,
        metadata=metadata,
        locality=base_pb2.Locality(region=region, zone=zone),
    )


def eds_names(resp: discovery_pb2.DiscoveryResponse) -> tuple[str, ...]:
    """The EDS resource names of the clusters in a CDS response, sorted."""
    names: set[str] = set()
    for res in resp.resources:
        cluster = cluster_pb2.Cluster()
        if not res.Unpack(cluster):
            continue
        if cluster.WhichOneof("cluster_discovery_type") != "type":
            continue
        if cluster.type != cluster_pb2.Cluster.EDS:
            continue
        names.add(cluster.eds_cluster_config.service_name or cluster.name)
    return tuple(sorted(names))


def addresses_of(resp: discovery_pb2.DiscoveryResponse, watch: str) -> tuple[str, ...] | None:
    """The sorted ``ip:port`` of ``watch`` in an EDS response; None if it is not in it.

    NOTE: in SotW an EDS resource missing from a response is not a deletion (Envoy keeps what
    it had), so None means "unchanged", not "empty".
    """
    for res in resp.resources:
        cla = endpoint_pb2.ClusterLoadAssignment()
        if not res.Unpack(cla) or cla.cluster_name != watch:
            continue
        out: set[str] = set()
        for locality in cla.endpoints:
            for lb in locality.lb_endpoints:
                sock = lb.endpoint.address.socket_address
                out.add(f"{sock.address}:{sock.port_value}")
        return tuple(sorted(out))
    return None


class Sidecar:
    """One simulated sidecar: one ADS stream, re-opened when it fails."""

    def __init__(
        self,
        *,
        name: str,
        node: base_pb2.Node,
        stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub,
        reporter: Reporter,
        watch: str,
    ) -> None:
        self.name = name
        self.node = node
        self.stub = stub
        self.reporter = reporter
        self.watch = watch
        self.held: tuple[str, ...] | None = None
        self.responses = 0

    async def run(self) -> None:
        while True:
            try:
                await self._stream()
                error = "stream ended by the server"
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            self.reporter.send({"kind": "error", "sidecar": self.name, "error": error})
            await asyncio.sleep(RECONNECT_DELAY)

    async def _stream(self) -> None:
        call: Any = self.stub.StreamAggregatedResources()
        try:
            # NOTE: the node goes on the first request only, as with Envoy's
            # set_node_on_first_message_only; the front-end reads it from there.
            await call.write(discovery_pb2.DiscoveryRequest(node=self.node, type_url=CDS))
            names: tuple[str, ...] | None = None
            eds_version = ""
            eds_nonce = ""
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return
                received = time.time()
                self.responses += 1
                if resp.type_url == CDS:
                    new_names = eds_names(resp)
                    await call.write(
                        discovery_pb2.DiscoveryRequest(
                            type_url=CDS, version_info=resp.version_info, response_nonce=resp.nonce
                        )
                    )
                    if new_names != names:
                        # NOTE: like Envoy, a changed EDS subscription goes out with the last
                        # EDS nonce; the front-end compares resource_names on every request.
                        names = new_names
                        await call.write(
                            discovery_pb2.DiscoveryRequest(
                                type_url=EDS,
                                resource_names=names,
                                version_info=eds_version,
                                response_nonce=eds_nonce,
                            )
                        )
                elif resp.type_url == EDS:
                    eds_version, eds_nonce = resp.version_info, resp.nonce
                    held = addresses_of(resp, self.watch)
                    await call.write(
                        discovery_pb2.DiscoveryRequest(
                            type_url=EDS,
                            resource_names=names or (),
                            version_info=eds_version,
                            response_nonce=eds_nonce,
                        )
                    )
                    if held is not None and held != self.held:
                        self.held = held
                        self.reporter.send(
                            {"kind": "eds", "sidecar": self.name, "t": received, "addrs": held}
                        )
                else:
                    # An unrequested type: ACK it so the front-end does not wait on us.
                    await call.write(
                        discovery_pb2.DiscoveryRequest(
                            type_url=resp.type_url,
                            version_info=resp.version_info,
                            response_nonce=resp.nonce,
                        )
                    )
        finally:
            call.cancel()


def parse_range(value: str) -> range:
    """``FIRST:END`` (end exclusive) or a count ``N`` (= ``0:N``)."""
    first, sep, end = value.partition(":")
    try:
        out = range(int(first), int(end)) if sep else range(int(first))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected N or FIRST:END, got {value!r}") from exc
    if len(out) == 0:
        raise argparse.ArgumentTypeError(f"empty app range {value!r}")
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Simulated Envoy sidecars (ADS SotW clients) reporting their endpoints."
    )
    parser.add_argument("--xds", required=True, help="front-end HOST:PORT")
    parser.add_argument("--report", required=True, help="driver's HOST:PORT for JSON lines")
    parser.add_argument(
        "--apps", type=parse_range, required=True, help="apps to simulate: N or FIRST:END"
    )
    parser.add_argument("--cluster", default="east", help="the sidecars' Kubernetes cluster")
    parser.add_argument("--region", default="", help="the sidecars' region")
    parser.add_argument("--zone", default="", help="the sidecars' zone")
    parser.add_argument("--watch", default=DEFAULT_WATCH, help="EDS cluster name to report")
    parser.add_argument(
        "--streams-per-channel", type=int, default=100, help="ADS streams sharing one channel"
    )
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    host, _, port = args.report.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    reporter = Reporter(writer)
    apps: range = args.apps
    per_channel = max(1, int(args.streams_per_channel))
    channels = [
        grpc.aio.insecure_channel(args.xds, options=CHANNEL_OPTIONS)
        for _ in range((len(apps) + per_channel - 1) // per_channel)
    ]
    stubs = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch) for ch in channels]
    sidecars = [
        Sidecar(
            name=f"sidecar-{i}",
            node=make_node(
                node_id=f"sidecar-{i}",
                app=f"app-{i}",
                k8s_cluster=args.cluster,
                region=args.region,
                zone=args.zone,
            ),
            stub=stubs[n // per_channel],
            reporter=reporter,
            watch=args.watch,
        )
        for n, i in enumerate(apps)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reporter.send({"kind": "hello", "sidecars": [s.name for s in sidecars]})
    tasks = [asyncio.create_task(s.run(), name=s.name) for s in sidecars]
    # NOTE: the driver closing its end (or dying) ends this process.
    driver_gone = asyncio.create_task(reader.read())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({driver_gone, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [*tasks, driver_gone, stopped]:
            task.cancel()
        await asyncio.gather(*tasks, driver_gone, stopped, return_exceptions=True)
        for ch in channels:
            await ch.close(grace=None)
        with contextlib.suppress(ConnectionError):
            await reporter.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        # NOTE: the driver may send SIGTERM as we exit on its closed connection. Closing the
        # loop closes its wakeup fd before it removes its signal handlers, and a signal in
        # between prints "Exception ignored ... signal wakeup fd". Done here: ignore them.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
