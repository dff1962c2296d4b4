"""The sync store: the only writer of one cluster's normalized state in etcd.

Modelled on Cilium's ``SyncStore``: the informers hand it upserts and deletions of model
objects as fast as they come; it coalesces them (a 500-pod roll-out becomes a few
transactions), skips values etcd already holds byte for byte, retries failed writes without
losing what is pending, reconciles what etcd holds with what the API has, and only then
writes the cluster's synced marker.

Replicas: every watcher replica of a cluster feeds its own store from warm informers, but
only the elected one writes. A store writes during a *term* (``lead``): it reads what etcd
holds for the cluster, writes what differs from what its informers have, and carries the
term's fence on every transaction, so a deposed replica can never write. Between terms it
keeps following the API, ready to take over.

Invariants:

- ``_desired`` is what the API has (converted), newest first; ``_live`` is, per kind, what
  its last listing (and the watch since) says exists, malformed objects included.
- ``_written`` mirrors etcd under ``keys.state_prefix(cluster)`` during a term: it is read
  from etcd when the term starts and updated only after a successful write.
- ``_dirty`` holds the objects whose desired state may differ from ``_written``; a failed
  batch stays dirty, and what is written is always the newest desired state.
- Nothing is deleted because of a listing until every kind has been listed once, and a kind
  whose listing is ``None`` (an optional resource the API server does not serve) keeps its
  keys: absence of evidence is not evidence of absence. A malformed object keeps its last
  good value.
- While the API server is unreachable the cluster's state is kept as it is and a stale marker
  (``keys.stale_key``) says since when; it goes once the API answers again.
- The synced marker is written once per term, after the first reconcile, when nothing is
  dirty; its ``revision`` is that of the cluster's newest state write, so a reader can tell
  when it has seen all the state the marker vouches for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterable

from coordinator import etcd as etcd_mod
from navigator import keys, model
from navigator.watcher import convert, metrics

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class _Put:
    key: str
    value: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Stale:
    """The cluster's API server has not answered since ``since`` (Unix time)."""

    since: float
    error: str

    def encode(self, leader: str) -> bytes:
        doc = {"since": round(self.since, 3), "error": self.error, "leader": leader}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class SyncStore:
    """Coalescing, skipping, retrying, fenced writer of one cluster's state (module docstring).

    ``upsert``, ``delete``, ``keep``, ``listed`` and ``api_reachable`` never block: they
    record what is wanted and wake the writer of the current term, if any.
    """

    def __init__(
        self,
        *,
        cluster: model.ClusterName,
        etcd: etcd_mod.Etcd,
        kinds: Iterable[model.Kind],
        delay: float = 0.01,
        max_backoff: float = 5.0,
        member_id: str = "",
    ) -> None:
        self.cluster = cluster
        self._etcd = etcd
        self._kinds = frozenset(kinds)
        self._delay = delay
        self._max_backoff = max_backoff
        self._member_id = member_id
        self._desired: dict[keys.StateKey, _Put] = {}
        self._written: dict[keys.StateKey, _Put] = {}
        self._dirty: set[keys.StateKey] = set()
        # What the API has, per kind, since that kind's last listing; None = not served.
        self._live: dict[model.Kind, set[keys.StateKey] | None] = {}
        self._stale: Stale | None = None
        self._stale_written: bytes | None = None
        self._stale_dirty = False
        self._api_confirmed = False
        """The API server answered at least once since this process started."""
        self._revision = 0
        self._wake = asyncio.Event()
        self._fence: etcd_mod.Fence | None = None
        self._leading = False
        self._etcd_ok = False
        self._failing = False
        self.loaded = asyncio.Event()
        """Set once the current term has read what etcd holds."""
        self.synced = asyncio.Event()
        """Set once the current term has written the synced marker; cleared when it ends."""
        self.warm = asyncio.Event()
        """Set once every kind has been listed: ready to take over."""
        metrics.SYNCED.labels(cluster).set(0)
        metrics.STALE_SECONDS.labels(cluster).set_function(self._stale_age)

    # --- what the informers call ------------------------------------------------------------

    def upsert(self, obj: model.Object) -> None:
        ident = convert.identity_of(obj)
        self._mark_live(ident)
        self._desired[ident] = _Put(keys.state_key(obj), model.encode(obj))
        self._dirty.add(ident)
        self._wake.set()

    def delete(self, ident: keys.StateKey) -> None:
        live = self._live.get(ident.kind)
        if live is not None:
            live.discard(ident)
        self._desired.pop(ident, None)
        self._dirty.add(ident)
        self._wake.set()

    def keep(self, ident: keys.StateKey) -> None:
        """The API has this object but it cannot be converted: keep its last good value."""
        self._mark_live(ident)
        # NOTE: a desired value still unwritten for it was a good value; let it be written.

    def listed(self, kind: model.Kind, present: Iterable[keys.StateKey] | None) -> None:
        """A full listing of ``kind`` was handed over (its objects upserted or kept before).

        Everything of that kind that etcd holds and the listing lacks will be deleted, once
        every kind has been listed. ``None``: the kind is not served; its keys are kept.
        """
        live = None if present is None else set(present)
        self._live[kind] = live
        if live is not None:
            gone = {i for i in self._desired if i.kind is kind and i not in live}
            for ident in gone:
                del self._desired[ident]
        self._dirty |= {i for i in self._written if i.kind is kind}
        if self.all_listed:
            self.warm.set()
        self._wake.set()

    def api_reachable(self, reachable: bool, error: str = "") -> None:
        """The cluster's API server answered (True) or stopped answering (False)."""
        if reachable:
            self._api_confirmed = True
            if self._stale is not None:
                self._stale = None
                self._stale_dirty = True
                self._wake.set()
        elif self._stale is None:
            self._stale = Stale(since=time.time(), error=error)
            self._stale_dirty = True
            self._wake.set()

    def _mark_live(self, ident: keys.StateKey) -> None:
        live = self._live.get(ident.kind)
        if live is not None:
            live.add(ident)

    # --- state for readiness, metrics and tests -----------------------------------------------

    @property
    def etcd_ok(self) -> bool:
        """The last etcd call succeeded."""
        return self._etcd_ok

    @property
    def leading(self) -> bool:
        return self._leading

    @property
    def pending(self) -> int:
        """Objects whose state in etcd may still have to change."""
        return len(self._dirty)

    @property
    def all_listed(self) -> bool:
        return self._kinds <= self._live.keys()

    @property
    def stale(self) -> Stale | None:
        return self._stale

    def _stale_age(self) -> float:
        return 0.0 if self._stale is None else max(0.0, time.time() - self._stale.since)

    # --- the writer ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Writes as the cluster's only writer, without election, until cancelled."""
        await self.lead(None)

    async def lead(self, fence: etcd_mod.Fence | None) -> None:
        """One term: reads etcd, then writes what differs until cancelled.

        Raises ``etcd_mod.Deposed`` when a write is refused: the term is over. Any other etcd
        error is retried with backoff, keeping everything dirty.
        """
        self._fence = fence
        self._leading = True
        try:
            await self._load()
            backoff = 0.0
            loop = asyncio.get_running_loop()
            flushed = -math.inf
            while True:
                await self._wake.wait()
                # NOTE: the delay lets a burst of events accumulate into one batch. A change
                # after a quiet period (no state written for the delay) is written at once: a
                # lone endpoint change does not wait, and the rest of a burst that follows it
                # waits for the delay and goes as one batch.
                if backoff or loop.time() - flushed < self._delay:
                    await asyncio.sleep(max(self._delay, backoff))
                else:
                    await asyncio.sleep(0)
                self._wake.clear()
                try:
                    if self._failing:
                        # NOTE: a write reported failed may have landed (its answer lost) or
                        # may still land: what etcd holds is read again before writing.
                        await self._load()
                    if await self._flush():
                        flushed = loop.time()
                    await self._maybe_mark_synced()
                except etcd_mod.Deposed:
                    raise
                except Exception as exc:  # NOTE: anything etcd raises; retried, never fatal.
                    metrics.ETCD_ERRORS.labels(self.cluster).inc()
                    self._etcd_ok = False
                    if not self._failing:
                        log.warning(
                            "etcd write failed, retrying; pending changes are kept",
                            extra={
                                "cluster": self.cluster,
                                "error": str(exc) or type(exc).__name__,
                            },
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
        finally:
            self._leading = False
            self._fence = None
            self.loaded.clear()
            self.synced.clear()
            metrics.SYNCED.labels(self.cluster).set(0)

    async def _load(self) -> None:
        prefix = keys.state_prefix(self.cluster)
        attempt = 0
        while True:
            try:
                listing = await self._etcd.get_prefix(prefix)
                stale = await self._etcd.get(keys.stale_key(self.cluster))
                break
            except etcd_mod.EtcdError as exc:  # NOTE: etcd down at start: wait for it.
                if attempt == 0:
                    log.warning(
                        "cannot read the cluster's state from etcd, retrying",
                        extra={"cluster": self.cluster, "error": str(exc) or type(exc).__name__},
                    )
                attempt += 1
                await asyncio.sleep(min(self._max_backoff, 0.1 * 2**attempt))
        self._written = {}
        for key, kv in listing.items.items():
            try:
                ident = keys.parse_state_key(key)
            except keys.SchemaError:
                log.warning("ignoring a key outside the schema", extra={"key": key})
                continue
            self._written[ident] = _Put(key, kv.value)
        self._stale_written = stale.value if stale is not None else None
        if stale is not None and self._stale is not None:
            # NOTE: an outage that began under the previous leader keeps its start time.
            with contextlib.suppress(ValueError, TypeError, KeyError):
                since = float(json.loads(stale.value)["since"])
                self._stale = dataclasses.replace(self._stale, since=min(since, self._stale.since))
        self._stale_dirty = True
        self._dirty |= set(self._written) | set(self._desired)
        # NOTE: the synced marker names the revision of the cluster's newest state key: a
        # translator counts the cluster as synced once its state watch has reached it.
        self._revision = max((kv.mod_revision for kv in listing.items.values()), default=0)
        self._etcd_ok = True
        if attempt:
            log.info("etcd reachable", extra={"cluster": self.cluster})
        self.loaded.set()
        self._wake.set()
        log.info(
            "loaded the cluster's state from etcd",
            extra={"cluster": self.cluster, "keys": len(self._written), "revision": self._revision},
        )

    def _may_delete(self, ident: keys.StateKey) -> bool:
        """A key etcd holds and the informers do not want: deleted only on evidence."""
        if not self.all_listed:
            return False
        live = self._live.get(ident.kind)
        return live is not None and ident not in live

    async def _flush(self) -> int:
        """Writes what is dirty; returns how many state keys it put or deleted."""
        puts: dict[str, bytes] = {}
        deletes: list[str] = []
        # NOTE: per ident, what etcd will hold once this batch lands (None: nothing), and the
        # desired value it was computed from, to tell what changed while we were writing.
        outcome: dict[keys.StateKey, _Put | None] = {}
        basis: dict[keys.StateKey, _Put | None] = {}
        skipped = 0
        for ident in self._dirty:
            want = self._desired.get(ident)
            have = self._written.get(ident)
            if want is not None:
                if want == have:
                    skipped += 1
                else:
                    puts[want.key] = want.value
                outcome[ident] = want
            elif have is None:
                outcome[ident] = None
            elif self._may_delete(ident):
                deletes.append(have.key)
                outcome[ident] = None
            elif self.all_listed:
                outcome[ident] = have  # NOTE: malformed in the API, or a kind not served: kept.
            else:
                continue  # NOTE: no evidence yet; decided once every kind is listed.
            basis[ident] = want
        if skipped:
            metrics.SKIPPED.labels(self.cluster).inc(skipped)
        if puts or deletes:
            revision = await self._etcd.apply(puts=puts, deletes=deletes, fence=self._fence)
            self._revision = max(self._revision, revision)
            metrics.TRANSACTIONS.labels(self.cluster).inc()
            metrics.WRITES.labels(self.cluster, "put").inc(len(puts))
            metrics.WRITES.labels(self.cluster, "delete").inc(len(deletes))
            log.debug(
                "wrote state",
                extra={"cluster": self.cluster, "puts": len(puts), "deletes": len(deletes)},
            )
        for ident, now in outcome.items():
            if now is None:
                self._written.pop(ident, None)
            else:
                self._written[ident] = now
            # NOTE: what changed while we were writing stays dirty (compared again next time).
            if self._desired.get(ident) == basis[ident]:
                self._dirty.discard(ident)
        # NOTE: apart from the state, so that ``_revision`` stays a state write's revision.
        stale_op = self._stale_op()
        if stale_op is not None:
            key = keys.stale_key(self.cluster)
            await self._etcd.apply(
                puts={key: stale_op} if stale_op else {},
                deletes=[] if stale_op else [key],
                fence=self._fence,
            )
            self._stale_written = stale_op or None
            self._stale_dirty = False
        return len(puts) + len(deletes)

    def _stale_op(self) -> bytes | None:
        """The stale marker to put (bytes), delete (b""), or None for nothing to do."""
        if not self._stale_dirty:
            return None
        if self._stale is not None:
            body = self._stale.encode(self._member_id)
            if body == self._stale_written:
                self._stale_dirty = False
                return None
            return body
        if self._stale_written is None:
            self._stale_dirty = False
            return None
        # NOTE: the marker of an earlier outage goes only once the API is known to answer.
        return b"" if self._api_confirmed else None

    async def _maybe_mark_synced(self) -> None:
        if self.synced.is_set() or not self.all_listed or self._dirty:
            return
        marker = json.dumps(
            {
                "cluster": self.cluster,
                "time": int(time.time()),
                "revision": self._revision,
                "leader": self._member_id,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        await self._etcd.put(keys.synced_key(self.cluster), marker, fence=self._fence)
        self.synced.set()
        metrics.SYNCED.labels(self.cluster).set(1)
        log.info(
            "cluster synced",
            extra={"cluster": self.cluster, "keys": len(self._written), "revision": self._revision},
        )
