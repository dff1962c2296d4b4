"""Per-sidecar status in etcd: what each front-end sent, and what each sidecar accepted.

For every connected sidecar (Envoy node id), the front-end serving it keeps one record under
``keys.sidecar_key(front-end, node)``, bound to the front-end's lease: node, app, cluster,
locality, the sidecar's admin address, the front-end, and per type (cds, eds, lds, rds) the
version sent, the version acknowledged and a rejected version with Envoy's error. A
front-end that dies takes its records with it when the lease expires; the sidecar's new
front-end writes its own.

Writes are coalesced: changes mark a node dirty and the writer puts what is dirty at most every
``interval`` seconds, in batched transactions (``Etcd.apply``), so a push to thousands of
sidecars costs a few transactions, not one per sidecar. The writer also caps its rate
(``max_per_second`` records): after a push to 5,000 sidecars their records catch up over a
few seconds instead of adding megabytes per change to etcd; a record is never more than a few
seconds behind. A new session (lease) rewrites every record. Serving never waits for this:
while etcd is unreachable records are simply late.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import prometheus_client

from coordinator import etcd as etcd_mod
from coordinator import session as session_mod
from navigator import keys
from navigator.xds import streams

log = logging.getLogger(__name__)

SIDECARS = prometheus_client.Gauge(
    "navigator_xds_sidecars", "Distinct sidecars (Envoy node ids) connected"
)
STATUS_WRITES = prometheus_client.Counter(
    "navigator_xds_status_writes_total", "Sidecar status records written or deleted in etcd"
)


def encode(frontend: str, node_streams: Iterable[streams.Stream[Any]]) -> bytes:
    """One sidecar's record from its streams on this front-end (ADS: one; per-type: up to 4)."""
    items = list(node_streams)
    first = items[0]
    types: dict[str, Any] = {}
    for stream in items:
        types.update(stream.record())
    doc = {
        "node": first.node.id,
        "app": first.node.app,
        "cluster": first.node.k8s_cluster,
        "region": first.node.region,
        "zone": first.node.zone,
        "admin": first.node.admin,
        "frontend": frontend,
        "variant": first.variant,
        "ads": first.only_type is None,
        "connected": min(s.connected_at for s in items),
        "updated": time.time(),
        "types": types,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode(value: bytes) -> dict[str, Any]:
    doc = json.loads(value)
    if not isinstance(doc, dict) or "node" not in doc or "types" not in doc:
        raise ValueError("not a sidecar status record")
    return doc


class StatusBoard:
    """The connected sidecars of one front-end; ``run`` writes their records in etcd."""

    def __init__(
        self,
        etcd: etcd_mod.Etcd,
        frontend: str,
        *,
        interval: float = 0.5,
        max_per_second: int = 2000,
    ) -> None:
        self._etcd = etcd
        self.frontend = frontend
        self._interval = interval
        self._per_cycle = max(1, int(max_per_second * interval))
        self._nodes: dict[str, set[streams.Stream[Any]]] = {}
        self._dirty: set[str] = set()
        self._changed = asyncio.Event()

    def opened(self, stream: streams.Stream[Any]) -> None:
        self._nodes.setdefault(stream.node.id, set()).add(stream)
        SIDECARS.set(len(self._nodes))
        self.touched(stream)

    def closed(self, stream: streams.Stream[Any]) -> None:
        found = self._nodes.get(stream.node.id)
        if found is not None:
            found.discard(stream)
            if not found:
                del self._nodes[stream.node.id]
        SIDECARS.set(len(self._nodes))
        self.touched(stream)

    def touched(self, stream: streams.Stream[Any]) -> None:
        self._dirty.add(stream.node.id)
        self._changed.set()

    def record(self, node_id: str) -> bytes | None:
        found = self._nodes.get(node_id)
        return encode(self.frontend, found) if found else None

    async def run(self, session: session_mod.Session) -> None:
        """Writes dirty records under ``session``'s lease until the session is lost."""
        # NOTE: a new lease: every record is rewritten under it (the old lease's are gone or
        # going), and whatever an earlier process with this id left is cleared.
        self._dirty |= set(self._nodes)
        try:
            stale = await self._etcd.get_prefix(keys.sidecar_prefix(self.frontend), keys_only=True)
            gone = [k for k in stale.items if keys.parse_sidecar_key(k)[1] not in self._nodes]
            if gone:
                await self._etcd.apply(puts={}, deletes=gone)
        except (etcd_mod.EtcdError, keys.SchemaError) as exc:
            # NOTE: not fatal: what an earlier process left goes with its lease anyway.
            log.warning("cannot clear old sidecar status records", extra={"error": str(exc)})
        self._changed.set()
        while session.valid():
            await session_mod.wait_event(self._changed, None)
            await asyncio.sleep(self._interval)
            self._changed.clear()
            if len(self._dirty) <= self._per_cycle:
                dirty, self._dirty = self._dirty, set()
            else:
                # NOTE: over the cap: the rest waits for the next cycle, still dirty.
                dirty = {self._dirty.pop() for _ in range(self._per_cycle)}
                self._changed.set()
            puts: dict[str, bytes] = {}
            deletes: list[str] = []
            for node_id in dirty:
                key = keys.sidecar_key(self.frontend, node_id)
                value = self.record(node_id)
                if value is None:
                    deletes.append(key)
                else:
                    puts[key] = value
            try:
                await self._etcd.apply(puts=puts, deletes=deletes, lease=session.lease)
            except etcd_mod.EtcdError as exc:
                log.warning(
                    "cannot write sidecar status, retrying",
                    extra={"error": str(exc), "records": len(dirty)},
                )
                self._dirty |= dirty
                self._changed.set()
                continue
            STATUS_WRITES.inc(len(puts) + len(deletes))


async def read(etcd: etcd_mod.Etcd) -> list[dict[str, Any]]:
    """Every sidecar status record in etcd (unreadable ones skipped), by node then front-end."""
    listing = await etcd.get_prefix(keys.SIDECARS)
    out = []
    for key, kv in listing.items.items():
        try:
            keys.parse_sidecar_key(key)
            out.append(decode(kv.value))
        except (keys.SchemaError, ValueError) as exc:
            log.warning("unreadable sidecar status, skipped", extra={"key": key, "error": str(exc)})
    return sorted(out, key=lambda d: (d["node"], d.get("frontend", "")))
