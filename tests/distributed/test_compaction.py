"""etcd compaction past the revision of a front-end, a translator and a standby watcher: each
relists (or looks again) and converges.

Their connection to etcd goes through a fault proxy: black-holed, they miss changes while
etcd compacts its history past them; when the connection comes back their watches resume
below the compaction, and they must start over from a fresh listing instead of stalling.
"""

from __future__ import annotations

import os
import signal
import sys

import fault_helpers as f
import grpc
import grpc.aio
from conftest import StartLab
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from chaos import faultproxy
from navigator import keys, model, snapshot
from navigator.lab import main as lab_main
from navigator.lab import procs
from navigator.xds import server as xds_server

EAST = model.ClusterName("east")
ITEM = "shop/item:8890"


async def _served_ips(address: str) -> set[str]:
    """The addresses a front-end gives the east web sidecar for shop/item (one request)."""
    node = base_pb2.Node(id="compaction-check", cluster="web")
    node.metadata.update({"app": "web", "k8s_cluster": "east"})
    node.locality.zone = "r1-a"
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(
            f"/{xds_server.SERVICE}/{xds_server.METHOD}",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        await call.write(
            discovery_pb2.DiscoveryRequest(
                node=node, type_url=snapshot.ENDPOINT, resource_names=[ITEM]
            )
        )
        resp = await call.read()
        call.cancel()
    out: set[str] = set()
    for item in resp.resources:
        cla = endpoint_pb2.ClusterLoadAssignment.FromString(item.value)
        for group in cla.endpoints:
            out |= {lb.endpoint.address.socket_address.address for lb in group.lb_endpoints}
    return out


async def _serving(address: str, ip: str) -> set[str] | None:
    served = await _served_ips(address)
    return served if ip in served else None


def _extra(lab: lab_main.Lab, role: str, name: str, args: list[str], etcd: str) -> lab_main.Proc:
    http = f"127.0.0.1:{procs.free_port()}"
    # NOTE: ``role``'s etcd credentials, with etcd reached at ``etcd`` (the proxy) instead.
    credentials = lab.etcd_args(role)[2:]
    command = [sys.executable, "-m", "navigator", role, *args, "--etcd", etcd, *credentials]
    return lab.spawn(
        role,
        name,
        [*command, "--http", http],
        ready_url=f"http://{http}/readyz",
        extra={"http": http},
    )


def _logged(lab: lab_main.Lab, name: str, text: str) -> bool:
    return text in (lab.logs / f"{name}.log").read_text()


async def test_compaction_past_their_revision_makes_them_relist_and_converge(
    start_lab: StartLab,
) -> None:
    lab = await start_lab()
    ttl = str(lab.shape.lease_ttl)
    west_ips = await f.endpoint_ips(lab, "west", "shop", "item")
    async with (
        f.etcd_of(lab) as etcd,
        faultproxy.proxy(lab.etcd_urls[0].split("//")[1]) as proxy,
    ):
        via = f"{lab.etcd_urls[0].split('//')[0]}//{proxy.address}"
        grpc_port = procs.free_port()
        frontend = _extra(
            lab,
            "xds",
            "xds-behind",
            ["--listen", f"127.0.0.1:{grpc_port}", "--id", "xds-behind"],
            via,
        )
        translator = _extra(
            lab,
            "translator",
            "translator-behind",
            ["--id", "translator-behind", "--lease-ttl", ttl, "--shards", str(lab.shape.shards)],
            via,
        )
        watcher = _extra(
            lab,
            "watcher",
            "watcher-east-behind",
            [
                *("--cluster", "east", "--kubeconfig", str(lab.kubeconfig), "--context", "east"),
                *("--id", "watcher-east-behind", "--lease-ttl", ttl),
            ],
            via,
        )
        await lab.wait_ready([frontend, translator, watcher])
        address = f"127.0.0.1:{grpc_port}"
        # NOTE: the lab is up once its sidecars have listeners; a service spanning both
        # clusters is published once both are synced, which may come a moment later.
        served = await f.until(
            lambda: _serving(address, west_ips[1]), within=20, what="the front-end behind"
        )
        assert west_ips[1] in served

        proxy.set_mode(faultproxy.Mode.BLACKHOLE)
        await f.set_endpoint_ips(lab, "west", "shop", "item", west_ips[:1])
        eds = keys.eds_key(ITEM, "r1-a")

        async def published() -> bool:
            kv = await etcd.get(eds)
            return kv is not None and west_ips[1].encode() not in kv.value

        await f.until(published, within=15, what="the change, published without them")
        await etcd.compact(await etcd.ping())
        proxy.set_mode(faultproxy.Mode.RESET)
        proxy.set_mode(faultproxy.Mode.PASS)

        async def front_end_current() -> bool:
            return west_ips[1] not in await _served_ips(address)

        await f.until(front_end_current, within=30, what="the front-end behind to converge")

        async def relisted() -> bool:
            return _logged(lab, "xds-behind", "snapshot watch compacted, relisting") and _logged(
                lab, "translator-behind", "etcd compacted past our revision, relisting"
            )

        await f.until(relisted, within=30, what="both to relist after the compaction")

        # The standby watcher behind the proxy is still a working candidate.
        for p in [
            p for p in lab.procs if p.role == "watcher" and p.name.startswith("watcher-east-")
        ]:
            if p is not watcher:
                os.kill(p.popen.pid, signal.SIGKILL)

        async def leads() -> bool:
            return await f.leader(etcd, keys.watcher_leader_key(EAST)) == "watcher-east-behind"

        await f.until(leads, within=lab.shape.lease_ttl + 10, what="the watcher behind to lead")
        east_ips = await f.endpoint_ips(lab, "east", "shop", "item")
        new_ip = east_ips[0].rsplit(".", 1)[0] + ".44"
        await f.set_endpoint_ips(lab, "east", "shop", "item", [*east_ips, new_ip])

        async def east_change_served() -> bool:
            return new_ip in await _served_ips(address)

        await f.until(east_change_served, within=20, what="east's change through it")

        async def translator_leads() -> bool:
            return "translator-behind" in {
                await f.leader(etcd, keys.shard_leader_key(s)) for s in range(lab.shape.shards)
            }

        await f.until(translator_leads, within=20, what="the translator behind to lead shards")
