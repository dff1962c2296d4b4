"""The sync store: the only writer of one cluster's normalized state in etcd.

Modelled on Cilium's ``SyncStore``: the informers hand it upserts and deletions of model
objects as fast as they come; it coalesces them (a 500-pod roll-out becomes a few
transactions), skips values etcd already holds byte for byte, retries failed writes without
losing what is pending, reconciles what etcd holds with what the API has, and only then
writes the cluster's synced marker.

Invariants:

- ``_written`` mirrors etcd under ``keys.state_prefix(cluster)``: it is loaded from etcd at
  start and updated only after a successful write. (The watcher is the only writer of that
  prefix; leader election keeps it so across replicas.)
- ``_pending`` holds the newest wanted state of each changed object (bytes to put, or
  ``_DELETE``); a failed batch is merged back under newer changes, never over them.
- Nothing is deleted because of a listing until every kind has been listed once, and a kind
  whose listing is ``None`` (an optional resource the API server does not serve) keeps its keys:
  absence of evidence is not evidence of absence.
- The synced marker is written once, after the first reconcile, when nothing is pending.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Iterable

from coordinator import etcd as etcd_mod
from navigator import keys, model
from navigator.watcher import convert, metrics

log = logging.getLogger(__name__)


class _Delete:
    """Marker of a pending deletion."""

    def __repr__(self) -> str:
        return "DELETE"


_DELETE = _Delete()


@dataclasses.dataclass(frozen=True, slots=True)
class _Put:
    key: str
    value: bytes


_Op = _Put | _Delete


class SyncStore:
    """Coalescing, skipping, retrying writer of one cluster's state; see the module docstring.

    ``upsert``, ``delete``, ``keep`` and ``listed`` never block: they record what is wanted and
    wake the writer task (``run``).
    """

    def __init__(
        self,
        *,
        cluster: model.ClusterName,
        etcd: etcd_mod.Etcd,
        kinds: Iterable[model.Kind],
        delay: float = 0.01,
        max_backoff: float = 5.0,
    ) -> None:
        self.cluster = cluster
        self._etcd = etcd
        self._kinds = frozenset(kinds)
        self._delay = delay
        self._max_backoff = max_backoff
        self._written: dict[keys.StateKey, _Put] = {}
        self._pending: dict[keys.StateKey, _Op] = {}
        # What the API has, per kind, since that kind's last listing; None = not served.
        self._live: dict[model.Kind, set[keys.StateKey] | None] = {}
        self._dirty_kinds: set[model.Kind] = set()
        self._revision = 0
        self._wake = asyncio.Event()
        self._etcd_ok = False
        self._failing = False
        self.loaded = asyncio.Event()
        """Set once the previous contents of etcd are known."""
        self.synced = asyncio.Event()
        """Set once the synced marker is written."""
        metrics.SYNCED.labels(cluster).set(0)

    # --- what the informers call ------------------------------------------------------------

    def upsert(self, obj: model.Object) -> None:
        ident = convert.identity_of(obj)
        self._mark_live(ident)
        self._pending[ident] = _Put(keys.state_key(obj), model.encode(obj))
        self._wake.set()

    def delete(self, ident: keys.StateKey) -> None:
        live = self._live.get(ident.kind)
        if live is not None:
            live.discard(ident)
        self._pending[ident] = _DELETE
        self._wake.set()

    def keep(self, ident: keys.StateKey) -> None:
        """The API has this object but it cannot be converted: keep its last good value."""
        self._mark_live(ident)
        # NOTE: an upsert still pending for it was a good value; let it be written.

    def listed(self, kind: model.Kind, present: Iterable[keys.StateKey] | None) -> None:
        """A full listing of ``kind`` was handed over (its objects upserted or kept before).

        Everything of that kind that etcd holds and the listing lacks will be deleted, once
        every kind has been listed. ``None``: the kind is not served; its keys are kept.
        """
        self._live[kind] = None if present is None else set(present)
        self._dirty_kinds.add(kind)
        self._wake.set()

    def _mark_live(self, ident: keys.StateKey) -> None:
        live = self._live.get(ident.kind)
        if live is not None:
            live.add(ident)

    # --- state for readiness and tests --------------------------------------------------------

    @property
    def etcd_ok(self) -> bool:
        """The last etcd call succeeded."""
        return self._etcd_ok

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def all_listed(self) -> bool:
        return self._kinds <= self._live.keys()

    # --- the writer ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Loads what etcd holds, then writes pending changes until cancelled."""
        await self._load()
        backoff = 0.0
        while True:
            await self._wake.wait()
            # NOTE: the delay lets a burst of events accumulate into one batch.
            await asyncio.sleep(max(self._delay, backoff))
            self._wake.clear()
            self._reconcile()
            try:
                await self._flush()
                await self._maybe_mark_synced()
            except Exception as exc:  # NOTE: anything etcd raises; retried, never fatal.
                metrics.ETCD_ERRORS.labels(self.cluster).inc()
                self._etcd_ok = False
                if not self._failing:
                    log.warning(
                        "etcd write failed, retrying; pending changes are kept",
                        extra={"cluster": self.cluster, "error": str(exc) or type(exc).__name__},
                    )
                self._failing = True
                backoff = min(self._max_backoff, max(0.1, backoff * 2))
                self._wake.set()
                continue
            if self._failing:
                log.info("etcd writes succeed again", extra={"cluster": self.cluster})
            self._failing = False
            self._etcd_ok = True
            backoff = 0.0

    async def _load(self) -> None:
        prefix = keys.state_prefix(self.cluster)
        attempt = 0
        while True:
            try:
                listing = await self._etcd.get_prefix(prefix)
                break
            except Exception as exc:  # NOTE: etcd down at start: wait for it, never give up.
                if attempt == 0:
                    log.warning(
                        "cannot read the cluster's state from etcd, retrying",
                        extra={"cluster": self.cluster, "error": str(exc) or type(exc).__name__},
                    )
                attempt += 1
                await asyncio.sleep(min(self._max_backoff, 0.1 * 2**attempt))
        for key, kv in listing.items.items():
            try:
                ident = keys.parse_state_key(key)
            except keys.SchemaError:
                log.warning("ignoring a key outside the schema", extra={"key": key})
                continue
            self._written[ident] = _Put(key, kv.value)
        self._revision = listing.revision
        self._etcd_ok = True
        if attempt:
            log.info("etcd reachable", extra={"cluster": self.cluster})
        self.loaded.set()
        log.info(
            "loaded the cluster's state from etcd",
            extra={"cluster": self.cluster, "keys": len(self._written), "revision": self._revision},
        )

    def _reconcile(self) -> None:
        """Deletes what etcd holds (or is about to) for a listed kind that the API lacks."""
        if not self.all_listed:
            return
        for kind in self._dirty_kinds:
            live = self._live[kind]
            if live is None:
                continue
            candidates = {i for i in self._written if i.kind is kind}
            candidates |= {
                i for i, op in self._pending.items() if i.kind is kind and isinstance(op, _Put)
            }
            for ident in candidates - live:
                self._pending[ident] = _DELETE
        self._dirty_kinds.clear()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, {}
        puts: dict[str, bytes] = {}
        deletes: list[str] = []
        skipped = 0
        for ident, op in batch.items():
            current = self._written.get(ident)
            if isinstance(op, _Put):
                if current == op:
                    skipped += 1
                    continue
                if current is not None and current.key != op.key:  # pragma: no cover
                    deletes.append(current.key)
                puts[op.key] = op.value
            elif current is not None:
                deletes.append(current.key)
        if skipped:
            metrics.SKIPPED.labels(self.cluster).inc(skipped)
        if not puts and not deletes:
            return
        try:
            revision = await self._etcd.apply(puts=puts, deletes=deletes)
        except BaseException:
            # NOTE: newer changes that arrived meanwhile win over the failed batch.
            for ident, op in batch.items():
                self._pending.setdefault(ident, op)
            raise
        self._revision = max(self._revision, revision)
        for ident, op in batch.items():
            if isinstance(op, _Put):
                self._written[ident] = op
            else:
                self._written.pop(ident, None)
        metrics.TRANSACTIONS.labels(self.cluster).inc()
        metrics.WRITES.labels(self.cluster, "put").inc(len(puts))
        metrics.WRITES.labels(self.cluster, "delete").inc(len(deletes))
        log.debug(
            "wrote state",
            extra={"cluster": self.cluster, "puts": len(puts), "deletes": len(deletes)},
        )

    async def _maybe_mark_synced(self) -> None:
        if self.synced.is_set() or not self.all_listed or self._dirty_kinds or self._pending:
            return
        marker = json.dumps(
            {"cluster": self.cluster, "time": int(time.time()), "revision": self._revision},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        await self._etcd.put(keys.synced_key(self.cluster), marker)
        self.synced.set()
        metrics.SYNCED.labels(self.cluster).set(1)
        log.info(
            "cluster synced",
            extra={"cluster": self.cluster, "keys": len(self._written), "revision": self._revision},
        )
