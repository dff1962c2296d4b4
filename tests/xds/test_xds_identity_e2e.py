"""Sidecar identity end to end, with real Envoys: sidecar --TLS + token--> node-local balancer
--mutual TLS--> front-end --TokenReview--> the cluster's API server.

A sidecar whose token names service account ``web`` is served app web's configuration and its
traffic reaches the backend; the same token in a sidecar claiming app ``checkout`` gets
nothing; a client without a certificate cannot reach the front-end at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import xds_helpers as h
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from coordinator import etcd as etcd_mod
from navigator import balancer, bootstrap, pki, runtime, snapshot, tokenreview
from navigator.kubeapi import server as kubeapi_server
from navigator.lab import procs
from navigator.xds import authn
from navigator.xds import server as xds_server

NS = "shop"


@dataclass
class Mesh:
    kube: kubeapi_server.KubeApiServer
    ca: Path
    frontend: xds_server.Handle
    balancer_port: int
    dir: Path


def wrong_app() -> float:
    return float(authn.DENIED.labels("wrong_app")._value.get())


@pytest.fixture
async def mesh(tmp_path: Path, etcd: etcd_mod.Etcd) -> AsyncIterator[Mesh]:
    kube = kubeapi_server.KubeApiServer(name="east")
    await kube.start()
    for account in ("web", "checkout"):
        meta = {"namespace": NS, "name": account}
        kube.store.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta})
    kubeconfig = tmp_path / "kubeconfig"
    kubeapi_server.write_kubeconfig(kubeconfig, {"east": kube.url})

    authority = pki.new_ca("test-mesh-ca")
    ca = pki.write_cert(authority, tmp_path / "ca.pem")
    fe_cert, fe_key = pki.write_pair(
        pki.issue_server(authority, name="xds", hosts=[balancer.DEFAULT_FRONTEND_SAN, "127.0.0.1"]),
        tmp_path,
        "xds",
    )
    bal_cert, bal_key = pki.write_pair(
        pki.issue_server(authority, name="balancer", hosts=["127.0.0.1"]), tmp_path, "balancer"
    )
    client_cert, client_key = pki.write_pair(
        pki.issue_client(authority, user="balancer"), tmp_path, "balancer-client"
    )
    args = argparse.Namespace(
        review_kubeconfig=str(kubeconfig), review_context=[], review_in_cluster=None
    )
    health = runtime.Health()
    balancer_proc: subprocess.Popen[bytes] | None = None
    try:
        async with (
            tokenreview.reviewers(args) as clusters,
            runtime.http_server("127.0.0.1:0", health) as http_address,
            xds_server.serve(
                etcd=etcd,
                listen="127.0.0.1:0",
                health=health,
                grace=0.2,
                authenticator=authn.TokenAuthenticator(clusters),
                tls=xds_server.ServerTls(str(fe_cert), str(fe_key), client_ca=str(ca)),
            ) as handle,
        ):
            await asyncio.wait_for(handle.cache.wait_loaded(), 10)
            port, admin = procs.free_port(), procs.free_port()
            doc = balancer.render(
                [balancer.Frontend("127.0.0.1", handle.port, int(http_address.rpartition(":")[2]))],
                listen="127.0.0.1",
                listen_port=port,
                health_port=procs.free_port(),
                admin_port=admin,
                tls=balancer.Tls(
                    cert=str(bal_cert),
                    key=str(bal_key),
                    frontend_ca=str(ca),
                    client_cert=str(client_cert),
                    client_key=str(client_key),
                ),
            )
            balancer_proc = start_envoy(tmp_path, "balancer", doc, admin)
            procs.wait_tcp("127.0.0.1", port, proc=balancer_proc)
            yield Mesh(kube, ca, handle, port, tmp_path)
    finally:
        if balancer_proc is not None:
            procs.stop(balancer_proc, timeout=5)
        await kube.stop()


def start_envoy(tmp_path: Path, name: str, doc: dict[str, Any], admin_port: int) -> Any:
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps(doc))
    args = [
        str(h.envoy_path()), "-c", str(config), "--concurrency", "1",
        "--disable-hot-restart", "--drain-time-s", "1", "-l", "warning",
        "--base-id", str(admin_port),
    ]  # fmt: skip
    proc = h.spawn(args, tmp_path / f"{name}.log")
    procs.wait_tcp("127.0.0.1", admin_port, proc=proc)
    return proc


@pytest.fixture
def sidecar(mesh: Mesh) -> Iterator[Callable[..., h.Envoy]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*, app: str, account: str) -> h.Envoy:
        token = mesh.dir / f"token-{app}-{len(started)}"
        token.write_text(mesh.kube.issue_token(NS, account, audiences=[authn.DEFAULT_AUDIENCE]))
        admin = procs.free_port()
        doc = bootstrap.render(
            node_id=f"{app}-{len(started)}",
            app=app,
            cluster="east",
            zone="z1",
            xds_host="127.0.0.1",
            xds_port=mesh.balancer_port,
            admin_port=admin,
            xds_ca=str(mesh.ca),
            token_file=str(token),
        )
        proc = start_envoy(mesh.dir, f"sidecar-{app}-{len(started)}", doc, admin)
        started.append(proc)
        return h.Envoy(proc, admin, mesh.dir / f"sidecar-{app}-{len(started) - 1}.log")

    try:
        yield start
    finally:
        for proc in started:
            procs.stop(proc, timeout=5)


async def test_the_sidecar_of_app_web_is_served_web_and_its_traffic_arrives(
    mesh: Mesh, etcd: etcd_mod.Etcd, sidecar: Callable[..., h.Envoy], backend: Any
) -> None:
    host, port = await backend("127.0.0.1")
    listen = procs.free_port()
    await h.publish_app(etcd, h.app_snapshot("web", "east", [h.Service("web-out", listen)]))
    await h.publish_eds(etcd, "web-out", (host, port))
    envoy = sidecar(app="web", account="web")

    async def answers() -> bool:
        try:
            status, body = await h.http_get(f"http://127.0.0.1:{listen}/")
        except OSError:
            return False
        return status == 200 and body == f"{host}:{port}"

    await h.eventually(answers, what="traffic through the authenticated sidecar", within=20)
    assert "web-out" in await envoy.cluster_names()


async def test_a_sidecar_claiming_another_app_gets_nothing(
    mesh: Mesh, etcd: etcd_mod.Etcd, sidecar: Callable[..., h.Envoy]
) -> None:
    await h.publish_app(etcd, h.app_snapshot("checkout", "east", [h.Service("pay", 18099)]))
    before = wrong_app()
    envoy = sidecar(app="checkout", account="web")

    async def refused() -> bool:
        return wrong_app() > before

    await h.eventually(refused, what="the front-end refusing the impostor", within=20)
    assert "pay" not in await envoy.cluster_names()
    assert await envoy.listener_names() == set()


def node(app: str) -> Any:
    meta = struct_pb2.Struct()
    meta.update({"app": app, "k8s_cluster": "east"})
    return base_pb2.Node(id=f"{app}-raw", cluster=app, metadata=meta)


async def test_without_a_client_certificate_the_front_end_is_unreachable(mesh: Mesh) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=mesh.ca.read_bytes())
    options = [("grpc.ssl_target_name_override", balancer.DEFAULT_FRONTEND_SAN)]
    async with grpc.aio.secure_channel(mesh.frontend.address, creds, options=options) as ch:
        client = h.SotwClient(ch, node("web"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            # NOTE: the handshake fails: the write or the read reports it.
            await client.send(snapshot.CLUSTER)
            await client.recv()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_through_the_balancer_without_a_token_nothing_is_served(mesh: Mesh) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=mesh.ca.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{mesh.balancer_port}", creds) as ch:
        client = h.SotwClient(ch, node("web"))
        await client.send(snapshot.CLUSTER)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.recv()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
