"""Sidecar identity at the front-end: a service-account token, reviewed by the cluster's
TokenReview API, decides which app a sidecar may ask for.

Real parts: the local Kubernetes API server (it issues and reviews tokens as Kubernetes does),
the official client's TokenReview call (``navigator.tokenreview``), a real etcd and the real
front-end; the sidecar is a raw gRPC client, so a refusal's status code can be read.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import xds_helpers as h
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from coordinator import etcd as etcd_mod
from navigator import snapshot, tokenreview
from navigator.kubeapi import server as kubeapi_server
from navigator.xds import authn
from navigator.xds import server as xds_server

NS = "shop"
AUDIENCE = "navigator"


def node(app: str, k8s_cluster: str = "east") -> Any:
    meta = struct_pb2.Struct()
    meta.update({"app": app, "k8s_cluster": k8s_cluster})
    return base_pb2.Node(
        id=f"{app}-pod", cluster=app, metadata=meta, locality=base_pb2.Locality(zone="z1")
    )


def denied(reason: str) -> float:
    return float(authn.DENIED.labels(reason)._value.get())


def reviews() -> float:
    return sum(float(authn.REVIEWS.labels(r)._value.get()) for r in ("authenticated", "rejected"))


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[kubeapi_server.KubeApiServer, Path]]:
    srv = kubeapi_server.KubeApiServer(name="east")
    await srv.start()
    for namespace, account in ((NS, "web"), (NS, "checkout"), ("edge", "public")):
        srv.store.create(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"namespace": namespace, "name": account},
            }
        )
    path = tmp_path / "kubeconfig"
    kubeapi_server.write_kubeconfig(path, {"east": srv.url})
    try:
        yield srv, path
    finally:
        await srv.stop()


@pytest.fixture
async def channel(
    etcd: etcd_mod.Etcd, kube: tuple[kubeapi_server.KubeApiServer, Path]
) -> AsyncIterator[grpc.aio.Channel]:
    _, kubeconfig = kube
    args = argparse.Namespace(
        review_kubeconfig=str(kubeconfig), review_context=[], review_in_cluster=None
    )
    for app in ("web", "checkout", "gateway:edge:public"):
        await h.publish_app(etcd, h.app_snapshot(app, "east", [h.Service(f"{app}-out", 8080)]))
    async with (
        tokenreview.reviewers(args) as clusters,
        xds_server.serve(
            etcd=etcd,
            listen="127.0.0.1:0",
            grace=0.2,
            authenticator=authn.TokenAuthenticator(clusters, audience=AUDIENCE),
        ) as handle,
    ):
        await asyncio.wait_for(handle.cache.wait_loaded(), 10)
        async with grpc.aio.insecure_channel(handle.address) as ch:
            yield ch


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def refused(
    channel: grpc.aio.Channel, app: str, metadata: list[tuple[str, str]], k8s_cluster: str = "east"
) -> grpc.aio.AioRpcError:
    client = h.SotwClient(channel, node(app, k8s_cluster), metadata=metadata)
    await client.send(snapshot.CLUSTER)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.recv()
    return err.value


async def test_a_valid_identity_is_served_its_own_app(
    channel: grpc.aio.Channel, kube: tuple[kubeapi_server.KubeApiServer, Path]
) -> None:
    srv, _ = kube
    token = srv.issue_token(NS, "web", audiences=[AUDIENCE])
    before = reviews()
    client = h.SotwClient(channel, node("web"), metadata=bearer(token))
    await client.send(snapshot.CLUSTER)
    cds = await client.recv()
    assert h.cluster_names(cds) == ["web-out"]
    # A second stream with the same token is not reviewed again.
    again = h.SotwClient(channel, node("web"), metadata=bearer(token))
    await again.send(snapshot.CLUSTER)
    assert h.cluster_names(await again.recv()) == ["web-out"]
    assert reviews() == before + 1


async def test_a_sidecar_claiming_another_app_gets_nothing_and_is_logged(
    channel: grpc.aio.Channel,
    kube: tuple[kubeapi_server.KubeApiServer, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    srv, _ = kube
    caplog.set_level(logging.WARNING, logger="navigator.xds.authn")
    token = srv.issue_token(NS, "web", audiences=[AUDIENCE])
    before = denied("wrong_app")
    err = await refused(channel, "checkout", bearer(token))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may ask for app 'web', not 'checkout'" in (err.details() or "")
    assert denied("wrong_app") == before + 1
    lines = [r for r in caplog.records if r.getMessage().startswith("sidecar refused")]
    assert lines and getattr(lines[-1], "reason", "") == "wrong_app"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no credentials", "no_token"),
        ("expired", "invalid_token"),
        ("wrong audience", "invalid_token"),
        ("tampered", "invalid_token"),
        ("another cluster", "unknown_cluster"),
    ],
)
async def test_no_valid_credentials_get_nothing(
    channel: grpc.aio.Channel,
    kube: tuple[kubeapi_server.KubeApiServer, Path],
    case: str,
    reason: str,
) -> None:
    srv, _ = kube
    good = srv.issue_token(NS, "web", audiences=[AUDIENCE])
    metadata, cluster = {
        "no credentials": ([], "east"),
        "expired": (
            bearer(srv.issue_token(NS, "web", audiences=[AUDIENCE], expires_in=-3600)),
            "east",
        ),
        "wrong audience": (bearer(srv.issue_token(NS, "web", audiences=["other"])), "east"),
        "tampered": (bearer(good[:-2] + ("AA" if not good.endswith("AA") else "BB")), "east"),
        "another cluster": (bearer(good), "west"),
    }[case]
    before = denied(reason)
    err = await refused(channel, "web", metadata, k8s_cluster=cluster)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert denied(reason) == before + 1


async def test_a_gateway_runs_as_the_service_account_named_after_its_gateway(
    channel: grpc.aio.Channel, kube: tuple[kubeapi_server.KubeApiServer, Path]
) -> None:
    srv, _ = kube
    token = srv.issue_token("edge", "public", audiences=[AUDIENCE])
    client = h.SotwClient(channel, node("gateway:edge:public"), metadata=bearer(token))
    await client.send(snapshot.CLUSTER)
    assert h.cluster_names(await client.recv()) == ["gateway:edge:public-out"]
    # The same name in another namespace is another identity.
    other = srv.issue_token(NS, "web", audiences=[AUDIENCE])
    err = await refused(channel, "gateway:edge:public", bearer(other))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
