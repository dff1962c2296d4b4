"""Many simulated Envoy sidecars in one process, for ``bench_endpoint_change.py`` and
``bench_frontend.py``.

Why it exists: the end-to-end benchmarks need hundreds to thousands of sidecars subscribed to
the xDS front-end, and one real Envoy per app would not fit on a small machine. Each simulated
sidecar opens its own ADS stream (real gRPC through ``grpc.aio`` and the generated
``xds-protos`` stubs), identifies itself as Envoy does (node id, ``cluster`` = app, metadata
``app`` / ``k8s_cluster``, locality), subscribes to CDS, then to EDS for the clusters it
received, and ACKs every response. LDS and RDS are not requested. Two protocol variants:

- State of the World (default): ``StreamAggregatedResources``; every response holds the whole
  subscribed set, and an EDS resource missing from a response is left as it was;
- incremental (``--delta``): ``DeltaAggregatedResources`` of the same service; CDS is
  subscribed as a wildcard (no names), EDS by the names of the EDS clusters received; each
  response is ACKed with its nonce, and ``removed_resources`` removes what they name (a
  removed watched cluster holds no endpoints).

Which sidecars: ``--apps`` names the apps, ``--sidecars-per-app K`` gives each of them K
sidecars. They are laid out app-major, round-robin: sidecar ``j`` of the layout belongs to app
``apps[j % len(apps)]`` and is its copy ``j // len(apps)``; its node id is ``sidecar-<app>``
for copy 0 (the names ``bench_endpoint_change.py`` uses), ``sidecar-<app>-<copy>`` for the
others. ``--slice FIRST:END`` runs only those sidecars of the layout, so several processes can
share one layout (and a driver can leave slots to real Envoys).

Every time the set of endpoint addresses a sidecar holds for the watched cluster changes, the
process sends one JSON line to the driver over a loopback TCP connection::

    {"kind": "eds", "sidecar": "sidecar-17", "t": 1718000000.123, "addrs": ["127.21.0.1:8080"]}

``t`` is the wall-clock time (``time.time()``) at which the response was read; the driver runs
on the same machine and compares it with the time of its Kubernetes API write. Stream failures
are reported as ``{"kind": "error", ...}`` and the stream is re-opened after a short delay.

Efficiency: one event loop, streams spread over a few channels (``--streams-per-channel``,
each channel its own TCP connection), reports batched into one write per loop iteration, and
each distinct resource decoded once per process (sidecars of one app receive the same bytes).
The pieces shared with the mesh benchmark's sidecars (node, channel options, reporter, decode
caches) come from ``navigator.bench.sidecars``.

Run (normally started by the driver)::

    .venv/bin/python benchmarks/ads_client.py --xds 127.0.0.1:18000 --report 127.0.0.1:9000 \\
        --apps 0:1000 --cluster east --region r1 --zone r1-a \\
        [--sidecars-per-app 10 --slice 0:2500] [--delta]

The process exits when the driver closes the report connection, or on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

# NOTE: shared with the mesh benchmark's sidecars (one definition of the node, the channel
# options, the batched reporter and the decode caches); ``bench_frontend.py`` reaches
# ``make_node`` and ``CDS`` through this module.
from navigator.bench.sidecars import (
    CDS,
    CHANNEL_OPTIONS,
    EDS,
    RECONNECT_DELAY,
    Reporter,
    assignment_of,
    close_down,
    eds_name_of,
    make_node,
)

DEFAULT_WATCH = "bench/target:8080"


def eds_names(resp: discovery_pb2.DiscoveryResponse) -> tuple[str, ...]:
    """The EDS resource names of the clusters in a CDS response, sorted."""
    names = {eds_name_of(res.value) for res in resp.resources if res.type_url == CDS}
    return tuple(sorted(n for n in names if n is not None))


def addresses_of(resp: discovery_pb2.DiscoveryResponse, watch: str) -> tuple[str, ...] | None:
    """The sorted ``ip:port`` of ``watch`` in an EDS response; None if it is not in it.

    NOTE: in SotW an EDS resource missing from a response is not a deletion (Envoy keeps what
    it had), so None means "unchanged", not "empty".
    """
    for res in resp.resources:
        if res.type_url != EDS:
            continue
        name, addrs = assignment_of(res.value)
        if name == watch:
            return addrs
    return None


class Sidecar:
    """One simulated sidecar: one ADS stream (SotW or delta), re-opened when it fails."""

    def __init__(
        self,
        *,
        name: str,
        node: base_pb2.Node,
        stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub,
        reporter: Reporter,
        watch: str,
        delta: bool = False,
    ) -> None:
        self.name = name
        self.node = node
        self.stub = stub
        self.reporter = reporter
        self.watch = watch
        self.delta = delta
        self.held: tuple[str, ...] | None = None
        self.responses = 0

    async def run(self) -> None:
        while True:
            call: Any = (
                self.stub.DeltaAggregatedResources()
                if self.delta
                else self.stub.StreamAggregatedResources()
            )
            try:
                await (self._delta_stream(call) if self.delta else self._stream(call))
                error = "stream ended by the server"
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            finally:
                call.cancel()
            self.reporter.send({"kind": "error", "sidecar": self.name, "error": error})
            await asyncio.sleep(RECONNECT_DELAY)

    def _hold(self, held: tuple[str, ...], received: float) -> None:
        if held != self.held:
            self.held = held
            self.reporter.send({"kind": "eds", "sidecar": self.name, "t": received, "addrs": held})

    async def _stream(self, call: Any) -> None:
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
                if held is not None:
                    self._hold(held, received)
            else:
                # An unrequested type: ACK it so the front-end does not wait on us.
                await call.write(
                    discovery_pb2.DiscoveryRequest(
                        type_url=resp.type_url,
                        version_info=resp.version_info,
                        response_nonce=resp.nonce,
                    )
                )

    async def _delta_stream(self, call: Any) -> None:
        # NOTE: an empty resource_names_subscribe on the first CDS request is a wildcard
        # subscription (every cluster of the app), as Envoy sends it.
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=self.node, type_url=CDS))
        # CDS resource name -> its EDS name (None: not an EDS cluster), and EDS resource
        # name -> its addresses: what this sidecar holds, as delta responses update it.
        clusters: dict[str, str | None] = {}
        assignments: dict[str, tuple[str, ...]] = {}
        subscribed: set[str] = set()
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            received = time.time()
            self.responses += 1
            await call.write(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=resp.type_url, response_nonce=resp.nonce
                )
            )
            if resp.type_url == CDS:
                for removed in resp.removed_resources:
                    clusters.pop(removed, None)
                for res in resp.resources:
                    if res.resource.type_url == CDS:
                        clusters[res.name] = eds_name_of(res.resource.value)
                wanted = {n for n in clusters.values() if n is not None}
                if wanted != subscribed:
                    # NOTE: a subscription change is a request of its own, without nonce
                    # (the ACK above went first), as Envoy sends it.
                    await call.write(
                        discovery_pb2.DeltaDiscoveryRequest(
                            type_url=EDS,
                            resource_names_subscribe=sorted(wanted - subscribed),
                            resource_names_unsubscribe=sorted(subscribed - wanted),
                        )
                    )
                    for gone in subscribed - wanted:
                        assignments.pop(gone, None)
                    subscribed = wanted
            elif resp.type_url == EDS:
                for removed in resp.removed_resources:
                    assignments.pop(removed, None)
                for res in resp.resources:
                    if res.resource.type_url != EDS:
                        continue
                    cluster_name, addrs = assignment_of(res.resource.value)
                    assignments[res.name or cluster_name] = addrs
                if self.watch in assignments:
                    self._hold(assignments[self.watch], received)
                elif self.held is not None and self.watch in resp.removed_resources:
                    self._hold((), received)


def layout(apps: range, per_app: int) -> list[tuple[int, int]]:
    """(app index, copy) of every sidecar of the layout, app-major round-robin."""
    return [(apps[j % len(apps)], j // len(apps)) for j in range(len(apps) * per_app)]


def sidecar_name(app: int, copy: int) -> str:
    return f"sidecar-{app}" if copy == 0 else f"sidecar-{app}-{copy}"


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


def parse_slice(value: str) -> slice:
    first, sep, end = value.partition(":")
    try:
        if not sep:
            raise ValueError(value)
        return slice(int(first), int(end))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected FIRST:END, got {value!r}") from exc


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Simulated Envoy sidecars (SotW or delta ADS) reporting their endpoints."
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
    parser.add_argument(
        "--sidecars-per-app",
        type=int,
        default=1,
        help="sidecars (distinct node ids) per app of --apps (default %(default)s)",
    )
    parser.add_argument(
        "--slice",
        type=parse_slice,
        default=None,
        help="run only sidecars FIRST..END-1 of the layout (default: all)",
    )
    parser.add_argument(
        "--delta",
        action="store_true",
        help="incremental xDS (DeltaAggregatedResources) instead of State of the World",
    )
    args = parser.parse_args(argv)
    if args.sidecars_per_app < 1:
        parser.error("--sidecars-per-app must be >= 1")
    return args


async def amain(args: argparse.Namespace) -> int:
    host, _, port = args.report.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    reporter = Reporter(writer)
    apps: range = args.apps
    chosen = layout(apps, args.sidecars_per_app)
    if args.slice is not None:
        chosen = chosen[args.slice]
    per_channel = max(1, int(args.streams_per_channel))
    channels = [
        grpc.aio.insecure_channel(args.xds, options=CHANNEL_OPTIONS)
        for _ in range((len(chosen) + per_channel - 1) // per_channel)
    ]
    stubs = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch) for ch in channels]
    sidecars = [
        Sidecar(
            name=sidecar_name(app, copy),
            node=make_node(
                node_id=sidecar_name(app, copy),
                app=f"app-{app}",
                k8s_cluster=args.cluster,
                region=args.region,
                zone=args.zone,
            ),
            stub=stubs[n // per_channel],
            reporter=reporter,
            watch=args.watch,
            delta=args.delta,
        )
        for n, (app, copy) in enumerate(chosen)
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
        await close_down([*tasks, driver_gone, stopped], channels, reporter, writer)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
