"""The xDS front-end against real etcd and real Envoy, with real HTTP traffic.

Each test publishes snapshots the way a translator does and waits (polling Envoy's admin API
or its listener, with a deadline) for the sidecar to act on them.
"""

from __future__ import annotations

import json

import aiohttp
import pytest
import xds_helpers as h
from prometheus_client import REGISTRY
from xds_helpers import Backend, StartEnvoy, http_get

from coordinator import etcd as etcd_mod
from navigator import keys, proxy, snapshot
from navigator.lab import procs
from navigator.xds import server as xds_server
from navigator.xds import streams


def _responses(type_name: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "navigator_xds_responses_total", {"type": type_name, "variant": "sotw"}
        )
        or 0.0
    )


async def _reaches(port: int, expected: str) -> bool:
    status, text = await http_get(f"http://127.0.0.1:{port}/")
    return status == 200 and text == expected


async def test_traffic_flows_and_follows_eds_changes(
    etcd: etcd_mod.Etcd, xds: xds_server.Handle, envoy: StartEnvoy, backend: Backend
) -> None:
    a = await backend("127.0.0.2")
    b = await backend("127.0.0.3")
    svc = h.Service("web", procs.free_port())
    await h.publish_eds(etcd, "web", a)
    await h.publish_app(etcd, h.app_snapshot("shop", "c1", [svc]))
    envoy(app="shop")

    await h.eventually(lambda: _reaches(svc.port, f"{a[0]}:{a[1]}"), what="traffic to a")
    await h.publish_eds(etcd, "web", b)
    await h.eventually(lambda: _reaches(svc.port, f"{b[0]}:{b[1]}"), what="traffic to b")
    # Once moved, every request goes to b: a is no longer an endpoint.
    for _ in range(5):
        assert await _reaches(svc.port, f"{b[0]}:{b[1]}")


async def test_added_service_becomes_reachable_and_removed_one_disappears(
    etcd: etcd_mod.Etcd, xds: xds_server.Handle, envoy: StartEnvoy, backend: Backend
) -> None:
    a = await backend("127.0.0.2")
    b = await backend("127.0.0.3")
    one = h.Service("one", procs.free_port())
    two = h.Service("two", procs.free_port())
    await h.publish_eds(etcd, "one", a)
    await h.publish_eds(etcd, "two", b)
    await h.publish_app(etcd, h.app_snapshot("shop", "c1", [one]))
    sidecar = envoy(app="shop")
    await h.eventually(lambda: _reaches(one.port, f"{a[0]}:{a[1]}"), what="service one")

    # NOTE: Envoy asks for the new cluster's endpoints re-using the previous EDS nonce.
    await h.publish_app(etcd, h.app_snapshot("shop", "c1", [one, two]))
    await h.eventually(lambda: _reaches(two.port, f"{b[0]}:{b[1]}"), what="service two")

    await h.publish_app(etcd, h.app_snapshot("shop", "c1", [one]))

    async def two_gone() -> bool:
        return "two" not in await sidecar.cluster_names() and (
            "two" not in await sidecar.listener_names()
        )

    await h.eventually(two_gone, what="service two removed")
    with pytest.raises(aiohttp.ClientError):
        await http_get(f"http://127.0.0.1:{two.port}/", limit=1.0)
    assert await _reaches(one.port, f"{a[0]}:{a[1]}")


async def test_nack_is_recorded_not_resent_and_last_good_config_keeps_serving(
    etcd: etcd_mod.Etcd, xds: xds_server.Handle, envoy: StartEnvoy, backend: Backend
) -> None:
    a = await backend("127.0.0.2")
    b = await backend("127.0.0.3")
    svc = h.Service("web", procs.free_port())
    await h.publish_eds(etcd, "web", a)
    good = h.app_snapshot("shop", "c1", [svc])
    await h.publish_app(etcd, good)
    sidecar = envoy(app="shop", node_id="shop-nacked")
    await h.eventually(lambda: _reaches(svc.port, f"{a[0]}:{a[1]}"), what="traffic to a")

    # A second listener on the same address: Envoy rejects the LDS update.
    bad = h.app_snapshot(
        "shop", "c1", [svc], extra=[(snapshot.LISTENER, h.listener("dup", svc.port, "web"))]
    )
    await h.publish_app(etcd, bad)

    async def nacked() -> streams.Nack | None:
        return next((n for n in xds.ads.nacks if n.node_id == "shop-nacked"), None)

    nack = await h.eventually(nacked, what="the LDS NACK")
    assert nack.type_url == snapshot.LISTENER
    assert nack.rejected_version != nack.accepted_version
    # Visible to operators: the sidecar's status record in etcd names the rejected version.
    record = await h.eventually(
        lambda: _lds_status(etcd, "shop-nacked", "nacked"), what="the NACK in the status record"
    )
    assert record["nacked"] == nack.rejected_version
    assert record["acked"] == nack.accepted_version
    assert record["error"]
    # ...and `navigator proxy-status` shows it against the latest snapshot.
    row = next(r for r in await proxy.status(etcd) if r["node"] == "shop-nacked")
    assert row["types"]["lds"]["status"] == proxy.NACKED
    assert row["types"]["lds"]["error"] == record["error"]
    assert row["types"]["cds"]["status"] == proxy.SYNCED
    lds_sent = _responses("lds")

    # The stream keeps working: an endpoint change still moves traffic...
    await h.publish_eds(etcd, "web", b)
    await h.eventually(lambda: _reaches(svc.port, f"{b[0]}:{b[1]}"), what="traffic to b")
    # ...and the rejected listeners were not sent again.
    assert _responses("lds") == lds_sent
    assert [n for n in xds.ads.nacks if n.node_id == "shop-nacked"] == [nack]
    assert "dup" not in await sidecar.listener_names()

    # Fixing the snapshot sends LDS again, and it is accepted.
    await h.publish_app(etcd, good)
    await h.eventually(
        lambda: _async_value(_responses("lds") > lds_sent), what="LDS sent after the fix"
    )
    assert await _reaches(svc.port, f"{b[0]}:{b[1]}")
    assert len([n for n in xds.ads.nacks if n.node_id == "shop-nacked"]) == 1
    # The good snapshot again: the same content, so the version accepted before the NACK.
    fixed = await h.eventually(
        lambda: _lds_status(etcd, "shop-nacked", "acked", without="nacked"),
        what="the fixed LDS acknowledged, the rejection cleared",
    )
    assert fixed["acked"] == nack.accepted_version
    row = next(r for r in await proxy.status(etcd) if r["node"] == "shop-nacked")
    assert {t: v["status"] for t, v in row["types"].items()} == dict.fromkeys(
        ("cds", "lds", "eds", "rds"), proxy.SYNCED
    )


async def _lds_status(
    etcd: etcd_mod.Etcd, node_id: str, field: str, without: str = ""
) -> dict[str, str] | None:
    kv = await etcd.get(keys.sidecar_key("xds-test", node_id))
    if kv is None:
        return None
    lds: dict[str, str] = json.loads(kv.value)["types"].get("lds", {})
    return lds if lds.get(field) and without not in lds else None


async def _async_value(value: bool) -> bool:
    return value


async def test_sidecars_of_different_apps_get_their_own_snapshots(
    etcd: etcd_mod.Etcd, xds: xds_server.Handle, envoy: StartEnvoy, backend: Backend
) -> None:
    a = await backend("127.0.0.2")
    b = await backend("127.0.0.3")
    cart = h.Service("cart", procs.free_port())
    auth = h.Service("auth", procs.free_port())
    await h.publish_eds(etcd, "cart", a)
    await h.publish_eds(etcd, "auth", b)
    await h.publish_app(etcd, h.app_snapshot("shop", "c1", [cart]))
    await h.publish_app(etcd, h.app_snapshot("login", "c1", [auth]))
    shop = envoy(app="shop")
    login = envoy(app="login")

    await h.eventually(lambda: _reaches(cart.port, f"{a[0]}:{a[1]}"), what="shop's cart")
    await h.eventually(lambda: _reaches(auth.port, f"{b[0]}:{b[1]}"), what="login's auth")
    assert "cart" in await shop.cluster_names()
    assert "auth" not in await shop.cluster_names()
    assert "auth" in await login.cluster_names()
    assert "cart" not in await login.cluster_names()
    assert await shop.listener_names() == {"cart"}
    assert await login.listener_names() == {"auth"}
