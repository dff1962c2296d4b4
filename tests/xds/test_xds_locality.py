"""Locality priorities end to end: translator-built endpoint variants, the front-end, real Envoy.

The sidecar (zone z1, region r1) gets the ``z1`` variant of the endpoint assignment: its zone's
four endpoints at priority 0, the four of zone z2 at priority 1. Envoy's priority load with the
overprovisioning factor 1.4 then splits traffic by the healthy share of priority 0 as the design
table says; real HTTP requests are counted per backend zone.

NOTE: active health checks are not translated yet, so the test simulates failing health checks
by setting ``health_status: UNHEALTHY`` on priority-0 endpoints of the assignment it publishes;
the assignment itself comes from the translator's own generator (``translate.load_assignment``).
"""

from __future__ import annotations

import asyncio
import collections

import aiohttp
import pytest
import xds_helpers as h
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from xds_helpers import Backend, StartEnvoy

from coordinator import etcd as etcd_mod
from navigator import keys, model
from navigator.lab import procs
from navigator.xds import server as xds_server
from shards import translate

K8S = model.ClusterName("c1")
SIDECAR_ZONE = translate.Zone(region="r1", name="z1")
REQUESTS = 1000
"""Per row. NOTE: Envoy picks a priority per request at random: at 70/30, 1000 requests give a
standard deviation of 1.4 points, so ±5 points is a 3.4-sigma bound (200: 1.5 sigma, flaky)."""


def _port(backends: dict[tuple[str, int], str]) -> translate.MeshPort:
    return translate.MeshPort(
        namespace="shop",
        service="item",
        name="http",
        port=8080,
        protocol=model.Protocol.HTTP,
        cluster_ips={K8S: "127.0.0.1"},
        endpoints=tuple(
            sorted(
                translate.LbEndpoint(cluster=K8S, region="r1", zone=zone, ip=ip, port=port)
                for (ip, port), zone in backends.items()
            )
        ),
    )


def _with_unhealthy(
    cla: endpoint_pb2.ClusterLoadAssignment, unhealthy: set[tuple[str, int]]
) -> bytes:
    for group in cla.endpoints:
        for lb in group.lb_endpoints:
            addr = lb.endpoint.address.socket_address
            if (addr.address, addr.port_value) in unhealthy:
                lb.health_status = health_check_pb2.UNHEALTHY
    body: bytes = cla.SerializeToString(deterministic=True)
    return body


async def _hosts(sidecar: h.Envoy, cluster: str) -> dict[str, dict[str, str]]:
    """``host:port`` → {stat: value} from Envoy's ``/clusters``, for one cluster."""
    out: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for line in (await sidecar.admin("/clusters")).splitlines():
        parts = line.split("::")
        # NOTE: host lines are ``<cluster>::<ip>:<port>::<stat>::<value>``.
        if len(parts) == 4 and parts[0] == cluster and parts[1][:1].isdigit():
            out[parts[1]][parts[2]] = parts[3]
    return out


async def _count(port: int, zone_of: dict[str, str]) -> collections.Counter[str]:
    """Sends ``REQUESTS`` requests through the sidecar; counts them by backend zone."""
    counts: collections.Counter[str] = collections.Counter()
    url = f"http://127.0.0.1:{port}/"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

        async def one() -> None:
            async with session.get(url) as resp:
                assert resp.status == 200
                counts[zone_of[await resp.text()]] += 1

        for _ in range(REQUESTS // 20):
            await asyncio.gather(*(one() for _ in range(20)))
    return counts


@pytest.mark.parametrize(
    ("healthy", "want_p0"),
    [
        pytest.param(4, 100, id="100pct-healthy-100-0"),
        pytest.param(2, 70, id="50pct-healthy-70-30"),
        pytest.param(0, 0, id="0pct-healthy-0-100"),
    ],
)
async def test_traffic_spills_over_by_priority(
    etcd: etcd_mod.Etcd,
    xds: xds_server.Handle,
    envoy: StartEnvoy,
    backend: Backend,
    *,
    healthy: int,
    want_p0: int,
) -> None:
    backends: dict[tuple[str, int], str] = {}
    for i in range(8):
        backends[await backend(f"127.0.0.{i + 2}")] = "z1" if i < 4 else "z2"
    zone_of = {f"{ip}:{port}": zone for (ip, port), zone in backends.items()}
    port = _port(backends)
    name = port.envoy_name
    svc = h.Service(name, procs.free_port())

    # Only _default first: the sidecar's zone variant appears later.
    default = translate.load_assignment(port).SerializeToString(deterministic=True)
    await etcd.put(keys.eds_key(name), default)
    await h.publish_app(etcd, h.app_snapshot("shop", K8S, [svc]))
    sidecar = envoy(app="shop", k8s_cluster=K8S, zone=SIDECAR_ZONE.name)

    async def all_at_priority_0() -> bool:
        hosts = await _hosts(sidecar, name)
        return len(hosts) == 8 and all(s.get("priority") == "0" for s in hosts.values())

    await h.eventually(all_at_priority_0, what="the _default assignment in Envoy")

    # The front-end re-sends EDS when the variant of the sidecar's zone appears.
    p0 = sorted(addr for addr, zone in backends.items() if zone == "z1")
    unhealthy = set(p0[healthy:])
    region_of = {"z1": "r1", "z2": "r1"}
    variant = translate.load_assignment(port, zone=SIDECAR_ZONE, region_of=region_of)
    await etcd.put(keys.eds_key(name, SIDECAR_ZONE.name), _with_unhealthy(variant, unhealthy))

    async def variant_applied() -> bool:
        hosts = await _hosts(sidecar, name)
        for (ip, p), zone in backends.items():
            stats = hosts.get(f"{ip}:{p}", {})
            if stats.get("priority") != ("0" if zone == "z1" else "1"):
                return False
            is_unhealthy = "failed_eds_health" in stats.get("health_flags", "")
            if is_unhealthy != ((ip, p) in unhealthy):
                return False
        return True

    await h.eventually(variant_applied, what="the z1 variant with its health in Envoy")

    counts = await _count(svc.port, zone_of)
    assert sum(counts.values()) == REQUESTS
    share_p0 = 100 * counts["z1"] / REQUESTS
    assert abs(share_p0 - want_p0) <= 5, dict(counts)
