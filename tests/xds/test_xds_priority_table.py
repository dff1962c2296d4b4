"""The design's spill-over table, end to end, driven by real active health checks.

DESIGN.md ("Balancing across clusters, keeping locality") promises, with Envoy's
overprovisioning factor 1.4, this split of traffic by the healthy share of priority 0:
100%→100/0, 72%→100/0, 71%→99/1, 50%→70/30, 25%→35/65, 0%→0/100. This test checks every row
through the whole path, with nothing simulated:

* normalized model objects (a Service annotated with an HTTP health check on ``/healthz``, in
  two Kubernetes clusters, its Endpoints in zone z1 (cluster c1, the sidecar's) and zone z2
  (cluster c2) of region r1, and the Nodes that give those zones) are
  translated as the runner does (``translate.mesh_service``, ``translate.mesh_zones``,
  ``translate.service_resources``, ``translate.app_snapshot``) and published under the
  runner's keys; the real xDS front-end serves them to one real Envoy sidecar in zone z1;
* the backends are real HTTP servers (one per loopback IP) answering their own address; the
  test makes some of them answer 503 on ``/healthz`` and waits until Envoy's own active
  health checks mark exactly those hosts ``failed_active_hc``;
* then real requests go through the sidecar's listener and are counted by backend, hence by
  priority (z1 = P0, z2 = P1).

Envoy computes a priority's health as ``min(100, 140 * healthy // total)`` (integer
arithmetic) and sends that share to P0, the rest to P1. With 100 endpoints in P0 every row is
realised exactly: 100, 72, 71, 50, 25 and 0 healthy give 100, 100 (100.8), 99 (99.4), 70, 35
and 0. One sidecar and one set of backends serve all rows; only health changes between rows
(P0 hosts only ever go from healthy to unhealthy, so each step needs one failed check).

Two Envoy behaviours shape the waits (both noted where they apply): a cluster that has never
carried traffic is health-checked every ``no_traffic_interval`` (60s), so the z1 endpoints
become ready only after a first request; and workers see health changes up to 1s after the
admin does (``update_merge_window``), so each row also waits until the requests reach exactly
the healthy P0 hosts before it counts.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Awaitable, Callable

import aiohttp
import xds_helpers as h
from aiohttp import web
from xds_helpers import StartEnvoy

from coordinator import etcd as etcd_mod
from navigator import keys, model, snapshot
from navigator.lab import procs
from navigator.xds import server as xds_server
from shards import translate

K8S = model.ClusterName("c1")
OTHER_K8S = model.ClusterName("c2")
APP = model.AppName("shop")
NAMESPACE, SERVICE = "shop", "item"
REGION, SIDECAR_ZONE, OTHER_ZONE = "r1", "z1", "z2"
P0_HOSTS = 100
"""Every row of the table is exact with 100 endpoints at priority 0."""
P1_HOSTS = 4
ANNOTATIONS = (
    ("navigator.avito.ru/health-check-path", "/healthz"),
    ("navigator.avito.ru/health-check-interval", "200ms"),
    ("navigator.avito.ru/unhealthy-threshold", "1"),
    ("navigator.avito.ru/healthy-threshold", "1"),
)
ROWS = [(100, 100), (72, 100), (71, 99), (50, 70), (25, 35), (0, 0)]
"""(healthy P0 endpoints of ``P0_HOSTS`` = healthy %, expected % of traffic to P0)."""
REQUESTS = 3000
"""Per row. NOTE: Envoy picks a priority per request at random; at 70/30 (the widest row),
3000 requests give a standard deviation of 0.84 points, so ±5 points is a 6-sigma bound."""
PROBE = 300
"""Requests of one probe of the data plane: more than P0 hosts, so round robin reaches each
healthy P0 host whenever P0 gets at least a third of them."""
TOLERANCE = 5.0
CONCURRENCY = 32


@dataclasses.dataclass
class Backends:
    """HTTP servers on many loopback IPs in this process; ``/healthz`` fails for ``failing``."""

    runner: web.AppRunner
    zone_of: dict[str, str]
    """``ip:port`` → zone."""
    failing: set[str] = dataclasses.field(default_factory=set)

    def of_zone(self, zone: str) -> list[str]:
        return sorted((a for a, z in self.zone_of.items() if z == zone), key=_addr_key)


def _addr_key(addr: str) -> tuple[int, ...]:
    ip, port = addr.rsplit(":", 1)
    return (*(int(part) for part in ip.split(".")), int(port))


async def _start_backends() -> Backends:
    backends = Backends(runner=web.AppRunner(web.Application(), access_log=None), zone_of={})

    def own_name(request: web.Request) -> str:
        assert request.transport is not None
        ip, port = request.transport.get_extra_info("sockname")[:2]
        return f"{ip}:{port}"

    async def healthz(request: web.Request) -> web.Response:
        name = own_name(request)
        return web.Response(status=503 if name in backends.failing else 200, text=name)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=own_name(request))

    backends.runner.app.router.add_get("/healthz", healthz)
    backends.runner.app.router.add_get("/{tail:.*}", hello)
    await backends.runner.setup()
    hosts = [(f"127.0.1.{i + 1}", SIDECAR_ZONE) for i in range(P0_HOSTS)]
    hosts += [(f"127.0.2.{i + 1}", OTHER_ZONE) for i in range(P1_HOSTS)]
    for ip, zone in hosts:
        port = procs.free_port(ip)
        await web.TCPSite(backends.runner, ip, port).start()
        backends.zone_of[f"{ip}:{port}"] = zone
    return backends


def _translate(
    backends: Backends, listen_port: int, options: translate.Options, *, ready: set[str]
) -> translate.ServiceResources:
    """The translator's resources for the Service, as the runner computes them; endpoints
    of the zones in ``ready`` are ready."""
    # NOTE: the sidecar's zone is in its own Kubernetes cluster (c1), the other zone in a
    # second one (c2): one Service of the same namespace/name in both, as the mesh joins them.
    cluster_of = {SIDECAR_ZONE: K8S, OTHER_ZONE: OTHER_K8S}
    services = [
        model.Service(
            cluster=k8s,
            namespace=NAMESPACE,
            name=SERVICE,
            type=model.ServiceType.CLUSTER_IP,
            cluster_ip="127.0.0.1",
            ports=(
                model.ServicePort("http", listen_port, model.Protocol.HTTP, target_port="http"),
            ),
            annotations=ANNOTATIONS,
        )
        for k8s in (K8S, OTHER_K8S)
    ]
    nodes = {
        (cluster_of[zone], f"node-{zone}"): model.Node(
            cluster=cluster_of[zone], name=f"node-{zone}", region=REGION, zone=zone
        )
        for zone in (SIDECAR_ZONE, OTHER_ZONE)
    }
    endpoints = [
        model.Endpoints(
            cluster=k8s,
            namespace=NAMESPACE,
            name=SERVICE,
            endpoints=tuple(
                model.Endpoint(
                    ip=addr.rsplit(":", 1)[0],
                    ready=zone in ready,
                    ports=(model.EndpointPort("http", int(addr.rsplit(":", 1)[1])),),
                    node=f"node-{zone}",
                )
                for addr, zone in sorted(backends.zone_of.items())
                if cluster_of[zone] == k8s
            ),
        )
        for k8s in (K8S, OTHER_K8S)
    ]
    svc, diags = translate.mesh_service(services, endpoints, nodes)
    assert svc is not None and not diags, diags
    zones, zone_diags = translate.mesh_zones(
        {(n.region, n.zone) for n in nodes.values()} | translate.zones_of(svc)
    )
    assert not zone_diags, zone_diags
    assert [z.name for z in zones] == [SIDECAR_ZONE, OTHER_ZONE]
    res = translate.service_resources(svc, options, zones=zones)
    assert len(svc.ports) == 1 and svc.ports[0].pol.health_check.http_path == "/healthz"
    return res


async def _publish(
    etcd: etcd_mod.Etcd, res: translate.ServiceResources, options: translate.Options
) -> int:
    """Writes the app snapshot and every endpoint variant under the runner's keys."""
    snap = translate.app_snapshot(APP, K8S, [res], options)
    revision = await etcd.put(keys.app_snapshot_key(APP, K8S), snapshot.encode_app(snap))
    for name, variants in res.endpoints.items():
        for variant, body in variants.items():
            revision = await etcd.put(keys.eds_key(name, variant), body)
    return revision


async def _hosts(sidecar: h.Envoy, cluster: str) -> dict[str, dict[str, str]]:
    """``ip:port`` → {stat: value} from Envoy's ``/clusters``, for one cluster."""
    out: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for line in (await sidecar.admin("/clusters")).splitlines():
        parts = line.split("::")
        # NOTE: host lines are ``<cluster>::<ip>:<port>::<stat>::<value>``.
        if len(parts) == 4 and parts[0] == cluster and parts[1][:1].isdigit():
            out[parts[1]][parts[2]] = parts[3]
    return out


async def _send(session: aiohttp.ClientSession, url: str, n: int) -> collections.Counter[str]:
    """Sends ``n`` requests through the sidecar; counts them by the backend that answered."""
    counts: collections.Counter[str] = collections.Counter()
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            async with session.get(url) as resp:
                assert resp.status == 200, (resp.status, await resp.text())
                counts[await resp.text()] += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    assert sum(counts.values()) == n
    return counts


def _answered_by_exactly(
    session: aiohttp.ClientSession, url: str, p0: set[str], want: set[str]
) -> Callable[[], Awaitable[bool]]:
    """A check: a probe of ``PROBE`` requests reaches exactly the ``want`` P0 hosts."""

    async def check() -> bool:
        answered = await _send(session, url, PROBE)
        return {addr for addr in answered if addr in p0} == want

    return check


async def test_spill_over_table_with_active_health_checks(
    etcd: etcd_mod.Etcd, xds: xds_server.Handle, envoy: StartEnvoy
) -> None:
    backends = await _start_backends()
    try:
        listen_port = procs.free_port("127.0.0.1")
        options = translate.Options(health_port=procs.free_port())
        p0, p1 = backends.of_zone(SIDECAR_ZONE), backends.of_zone(OTHER_ZONE)
        assert (len(p0), len(p1)) == (P0_HOSTS, P1_HOSTS)
        url = f"http://127.0.0.1:{listen_port}/"

        # WARNING: until a cluster has carried traffic, Envoy health-checks it every
        # ``no_traffic_interval`` (60s by default; the translator does not set it), and the
        # timer armed then is kept after traffic starts. So the z1 pods become ready only once
        # the cluster has carried a request (a roll-out: z2 first); the P0 hosts, added to a
        # used cluster, are then checked every 200ms as annotated. P1 hosts never change.
        res = _translate(backends, listen_port, options, ready={OTHER_ZONE})
        (name,) = res.endpoints
        await h.applied(xds.cache, await _publish(etcd, res, options))
        sidecar = envoy(app=APP, k8s_cluster=K8S, zone=SIDECAR_ZONE)

        async def health_is(expected: set[str], unhealthy: set[str]) -> bool:
            """Envoy has exactly the ``expected`` hosts, at their priority, and exactly
            ``unhealthy`` of them fail active health checks."""
            hosts = await _hosts(sidecar, name)
            if set(hosts) != expected:
                return False
            p0_present = any(addr in p0 for addr in hosts)
            for addr, stats in hosts.items():
                want = "1" if p0_present and addr in p1 else "0"
                failed = "failed_active_hc" in stats.get("health_flags", "")
                if stats.get("priority") != want or failed != (addr in unhealthy):
                    return False
            return True

        await h.eventually(lambda: health_is(set(p1), set()), within=15, what="the z2 hosts")
        status, _ = await h.http_get(url)
        assert status == 200

        res = _translate(backends, listen_port, options, ready={SIDECAR_ZONE, OTHER_ZONE})
        await h.applied(xds.cache, await _publish(etcd, res, options))
        every = set(backends.zone_of)
        await h.eventually(lambda: health_is(every, set()), within=15, what="every host healthy")

        observed: dict[int, float] = {}
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for healthy, want_p0 in ROWS:
                # NOTE: P0 hosts only go from healthy to unhealthy, row after row.
                backends.failing = set(p0[healthy:])
                started = time.monotonic()
                await h.eventually(
                    lambda: health_is(every, backends.failing),
                    within=10,
                    what=f"{P0_HOSTS - healthy} P0 hosts failing active health checks",
                )
                # NOTE: Envoy merges host updates for up to 1s (``update_merge_window``)
                # before its workers see them, while the admin shows them at once: wait until
                # the requests reach exactly the healthy P0 hosts.
                await h.eventually(
                    _answered_by_exactly(session, url, set(p0), set(p0[:healthy])),
                    within=10,
                    what="Envoy's workers at the new health",
                )
                waited = time.monotonic() - started
                counts = await _send(session, url, REQUESTS)
                share = 100 * sum(n for a, n in counts.items() if a in p0) / REQUESTS
                observed[healthy] = share
                print(
                    f"P0 {healthy}% healthy: P0/P1 = {share:.2f}/{100 - share:.2f}, "
                    f"want {want_p0}/{100 - want_p0} (health applied in {waited:.2f}s)"
                )
                assert abs(share - want_p0) <= TOLERANCE, (healthy, share, want_p0, observed)
    finally:
        await backends.runner.cleanup()
