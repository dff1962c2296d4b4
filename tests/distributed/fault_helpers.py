"""What the fault tests share: reading Envoys, metrics and etcd, and changing Kubernetes.

Every wait has a deadline and says what it waited for; samples are taken on a fixed period by
a task that the test stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import kubernetes
from prometheus_client.parser import text_string_to_metric_families

from coordinator import election
from coordinator import etcd as etcd_mod
from navigator import keys, model
from navigator.lab import main as lab_main

T = TypeVar("T")


async def until(
    check: Callable[[], Awaitable[T | None]], *, within: float, what: str, every: float = 0.05
) -> T:
    """Polls ``check`` until it returns something truthy; fails with ``what`` after ``within``."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        try:
            got = await check()
            if got:
                return got
            last = got
        except (OSError, aiohttp.ClientError, etcd_mod.EtcdError, AssertionError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(every)


def etcd_of(lab: lab_main.Lab) -> etcd_mod.Etcd:
    return lab.etcd_client(timeout=2.0, retry_for=20.0)


async def leader(etcd: etcd_mod.Etcd, key: str) -> str:
    """The member id holding a leadership key ("" if nobody)."""
    kv = await etcd.get(key)
    return election.leader_id(kv.value) if kv is not None else ""


def sidecar(lab: lab_main.Lab, app: str, cluster: str) -> dict[str, Any]:
    return next(s for s in lab.sidecars if s["app"] == app and s["cluster"] == cluster)


async def envoy_hosts(admin: str, envoy_cluster: str) -> set[str]:
    """``ip:port`` of every host an Envoy holds for one of its clusters."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
        session.get(f"{admin}/clusters?format=json") as resp,
    ):
        doc = await resp.json(content_type=None)
    for c in doc.get("cluster_statuses", []):
        if c.get("name") == envoy_cluster:
            return {
                f"{h['address']['socket_address']['address']}:"
                f"{h['address']['socket_address']['port_value']}"
                for h in c.get("host_statuses", [])
            }
    return set()


async def metric(http: str, name: str, **labels: str) -> float:
    """One sample of a process's Prometheus metrics (0 when absent)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
        session.get(f"http://{http}/metrics") as resp,
    ):
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@dataclasses.dataclass
class Samples:
    """Periodic samples of an async reading, with the time each was taken."""

    values: list[tuple[float, Any]] = dataclasses.field(default_factory=list)
    errors: int = 0


@contextlib.asynccontextmanager
async def sampling(
    read: Callable[[], Awaitable[Any]], every: float = 0.02
) -> AsyncIterator[Samples]:
    out = Samples()

    async def loop() -> None:
        while True:
            try:
                out.values.append((time.monotonic(), await read()))
            except (OSError, aiohttp.ClientError, TimeoutError):
                out.errors += 1
            await asyncio.sleep(every)

    task = asyncio.create_task(loop())
    try:
        yield out
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def core(lab: lab_main.Lab, cluster: str) -> kubernetes.client.CoreV1Api:
    api = kubernetes.config.new_client_from_config(config_file=str(lab.kubeconfig), context=cluster)
    return kubernetes.client.CoreV1Api(api)


async def set_endpoint_ips(
    lab: lab_main.Lab, cluster: str, namespace: str, name: str, ips: list[str]
) -> None:
    """Replaces the addresses of an Endpoints object through the cluster's API server."""

    def change() -> None:
        api = core(lab, cluster)
        eps = api.read_namespaced_endpoints(name, namespace)
        template = eps.subsets[0].addresses[0]
        eps.subsets[0].addresses = [
            kubernetes.client.V1EndpointAddress(ip=ip, node_name=template.node_name) for ip in ips
        ]
        api.replace_namespaced_endpoints(name, namespace, eps)

    # NOTE: the official client is synchronous: off the loop, so samplers keep sampling.
    await asyncio.to_thread(change)


async def endpoint_ips(lab: lab_main.Lab, cluster: str, namespace: str, name: str) -> list[str]:
    def read() -> list[str]:
        eps = core(lab, cluster).read_namespaced_endpoints(name, namespace)
        return [a.ip for s in eps.subsets or [] for a in s.addresses or []]

    return await asyncio.to_thread(read)


async def state_objects(etcd: etcd_mod.Etcd) -> list[model.Object]:
    """The normalized state in etcd, decoded."""
    listing = await etcd.get_prefix(keys.STATE)
    out: list[model.Object] = []
    for key, kv in listing.items.items():
        out.append(model.decode(keys.parse_state_key(key).kind, kv.value))
    return out


async def set_reachable(lab: lab_main.Lab, cluster: str, reachable: bool) -> None:
    """Opens or closes a cluster's API port (the local API server's test hook)."""
    url = f"{lab.control_urls[cluster]}/_navigator/unreachable?value={str(not reachable).lower()}"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.post(url) as resp,
    ):
        assert resp.status == 200, await resp.text()


def stale_since(value: bytes | None) -> float | None:
    if value is None:
        return None
    since: float = json.loads(value)["since"]
    return since
