"""The front-end's in-memory copy of every stored snapshot, kept current by one etcd watch.

Every sidecar stream reads from here and never from etcd, so a front-end holds one etcd watch
however many Envoys it serves (go-control-plane's ``ConfigWatcher`` plays the same role). The
stream code depends only on ``ConfigSource``; ``SnapshotCache`` is its etcd-backed
implementation:

- it lists ``keys.SNAPSHOTS`` once, then watches from the listing's revision + 1; on
  ``Compacted`` it relists and diffs, so unchanged resources cause no push;
- each resource is wrapped into a ``google.protobuf.Any`` and framed as a response entry ONCE,
  when loaded (``Encoded.entry``); responses are concatenations of these bytes;
- subscribers are told when a key they depend on changes (an app snapshot, an EDS blob);
  notifications are coalesced and delivered after a whole etcd revision has been applied,
  so a stream never sees half of a change;
- ``ready`` is true once the first listing is loaded and while etcd answers; after losing
  etcd the last state keeps being served (``loaded`` stays true) but ``ready`` turns false;
- an app snapshot stored in parts (``snapshot.split_app``) replaces the previous one only once
  every part named by its head is here, so a stream never sees a torn snapshot;
- ``caught_up(since)`` tells whether the cache has, since local time ``since``, been checked
  to hold everything etcd held (a linearizable read, then a progress notification on the
  watch): what a stream needs before answering a sidecar that resumes with a version this
  front-end does not know, so that no sidecar is ever moved to an older version.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import sys
import time
import weakref
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from coordinator import etcd as etcd_mod
from navigator import keys, model, runtime, snapshot
from navigator.xds import wire

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True, weakref_slot=True)
class Encoded:
    """One resource as it goes on the wire; built once when the snapshot is loaded."""

    name: str
    hash: str
    entry: bytes
    """A ``DiscoveryResponse.resources`` field holding the resource's ``Any``."""


@dataclasses.dataclass(frozen=True, slots=True)
class AppEntry:
    """A decoded app snapshot with its resources pre-encoded, by type URL then name.

    NOTE: the decoded snapshot itself is not kept: at a mesh's scale its base64-decoded bodies
    and JSON strings were a third of a front-end's memory, and nothing reads them once the
    resources are encoded.
    """

    app: str
    cluster: str
    resources: Mapping[str, Mapping[str, Encoded]]
    endpoints: frozenset[str]
    versions: Mapping[str, str]
    """By type URL: the version of all its resources (a wildcard response), computed once
    here rather than by every stream of the app."""

    def of_type(self, type_url: str) -> Mapping[str, Encoded]:
        return self.resources.get(type_url, {})


def _name(r: snapshot.Resource) -> str:
    return r.name


Pool = weakref.WeakValueDictionary[tuple[str, str, str], Encoded]
"""Encoded resources by (type URL, name, hash), while some app holds them."""


def encode_app(
    snap: snapshot.AppSnapshot, *, bodies: bool = True, pool: Pool | None = None
) -> AppEntry:
    """``pool``: reuse an equal resource another app already holds. The cluster, listener
    and route of a service are the same bytes in every app that sees it: at a mesh's scale
    (1,000 apps x 20 services) one object each instead of one per app."""

    def encoded(type_url: str, r: snapshot.Resource) -> Encoded:
        key = (type_url, r.name, r.hash)
        found = pool.get(key) if pool is not None else None
        if found is None:
            found = Encoded(
                sys.intern(r.name), r.hash, wire.resource_entry(type_url, r.body) if bodies else b""
            )
            if pool is not None:
                pool[key] = found
        return found

    resources = {
        type_url: {e.name: e for e in (encoded(type_url, r) for r in sorted(items, key=_name))}
        for type_url, items in snap.resources.items()
    }
    versions = {
        type_url: snapshot.version_of((e.name, e.hash) for e in by_name.values())
        for type_url, by_name in resources.items()
    }
    return AppEntry(
        app=snap.app,
        cluster=snap.cluster,
        resources=resources,
        endpoints=frozenset(map(sys.intern, snap.endpoints)),
        versions=versions,
    )


def encode_eds(name: str, body: bytes) -> Encoded:
    return Encoded(name, snapshot.content_hash(body), wire.resource_entry(snapshot.ENDPOINT, body))


def _seen(key: str, value: bytes) -> bytes:
    """What the cache keeps of a value to tell whether it changed: a snapshot part itself (it
    is joined into its head later), a 16-byte digest of anything else."""
    if key.startswith(keys.CHUNKS):
        return value
    return b"#" + hashlib.blake2b(value, digest_size=16).digest()


HISTORY_MAX = 65536
ZONE_VIEWS_MAX = 64
EDS_LOG_KEPT = 50000


def _pick(by_variant: Mapping[str, Encoded], zone: str) -> Encoded | None:
    return (by_variant.get(zone) if zone else None) or by_variant.get(keys.DEFAULT_VARIANT)


class ZoneView(Mapping[str, Encoded]):
    """``ConfigSource.zone_view`` for a source that keeps no index: looked up per name."""

    def __init__(self, source: ConfigSource, zone: str) -> None:
        self._source = source
        self._zone = zone

    def __getitem__(self, name: str) -> Encoded:
        eds = self._source.eds
        found = (eds(name, self._zone) if self._zone else None) or eds(name, keys.DEFAULT_VARIANT)
        if found is None:
            raise KeyError(name)
        return found

    def __iter__(self) -> Iterator[str]:
        raise TypeError("a ZoneView is for lookups only")

    def __len__(self) -> int:
        raise TypeError("a ZoneView is for lookups only")


class Subscription:
    """What one stream depends on; ``changed`` is set when any of those keys changes.

    NOTE: the stream may also set ``changed`` itself (a new request): it is the stream's one
    wake-up signal, so a burst of changes costs a single re-evaluation.
    """

    def __init__(self, owner: SnapshotCache) -> None:
        self._owner = owner
        self.keys: frozenset[str] = frozenset()
        self.changed = asyncio.Event()
        self.since: float | None = None
        """When (monotonic) the cache first saw a change the stream has not answered yet."""

    def set_keys(self, new_keys: Iterable[str]) -> None:
        self._owner._reindex(self, frozenset(new_keys))

    def close(self) -> None:
        self._owner._reindex(self, frozenset())
        self._owner._subs.discard(self)


class ConfigSource(Protocol):
    """The narrow interface the ADS stream code depends on."""

    @property
    def loaded(self) -> bool:
        """The first full listing has been applied: an absent snapshot really is absent."""
        ...

    @property
    def ready(self) -> bool: ...

    def app(self, app: str, cluster: str) -> AppEntry | None: ...

    def eds(self, name: str, variant: str) -> Encoded | None: ...

    def zone_view(self, zone: str) -> Mapping[str, Encoded]:
        """Every endpoint assignment as a sidecar of ``zone`` gets it: the zone's variant,
        else the default; ``""``: the default only."""
        ...

    def locality(self, cluster: str, node: str) -> tuple[str, str] | None:
        """(region, zone) of a Kubernetes node of ``cluster``, if the translators published it."""
        ...

    def subscribe(self) -> Subscription: ...

    def memo(self) -> dict[Hashable, object]:
        """A dict for results derived from the current state, emptied whenever it changes."""
        ...

    def history(self) -> dict[Hashable, Any]:
        """A dict for results kept across changes (bounded; emptied when it grows too big)."""
        ...

    def eds_epoch(self) -> int:
        """A counter of endpoint assignment changes applied."""
        ...

    def eds_changed_since(self, epoch: int) -> Sequence[str] | None:
        """The names of the endpoint assignments changed since ``eds_epoch()`` was ``epoch``
        (any variant), or None when that is no longer known."""
        ...

    def caught_up(self, since: float) -> bool:
        """Checked against etcd since local monotonic time ``since``; if not, a check is
        started and every subscription is woken when it completes."""
        ...


class SnapshotCache:
    """``ConfigSource`` fed by one list + watch of ``keys.SNAPSHOTS``; run it with ``run()``."""

    def __init__(
        self,
        etcd: etcd_mod.Etcd,
        *,
        health: runtime.Health | None = None,
        ping_interval: float = 5.0,
        ping_timeout: float = 3.0,
        retry_delay: float = 1.0,
        bodies: bool = True,
    ) -> None:
        """Without ``bodies`` the cache holds names and hashes only (empty wire entries):
        versions and ``resources.expected`` work, serving does not (``proxy-status``)."""
        self._bodies = bodies
        self._etcd = etcd
        self._health = health
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._retry_delay = retry_delay
        self._raw: dict[str, bytes] = {}
        """What each key holds: the value of a snapshot part (a head is joined from its
        parts), a digest of the others (``_seen``), enough to tell a change."""
        self._memo: dict[Hashable, object] = {}
        self._apps: dict[str, AppEntry] = {}
        self._eds: dict[str, Encoded] = {}
        self._pool: Pool = weakref.WeakValueDictionary()
        self._eds_variants: dict[str, dict[str, Encoded]] = {}
        """The same assignments by name then variant: what ``eds`` looks up per stream and
        push, without building a key string."""
        self._zone_views: dict[str, dict[str, Encoded]] = {}
        self._eds_log: list[str] = []
        """The name of every endpoint assignment change applied, oldest first (bounded)."""
        self._eds_log_base = 0
        self._history: dict[Hashable, Any] = {}
        self._localities: dict[str, dict[str, tuple[str, str]]] = {}
        self._subs: set[Subscription] = set()
        self._index: dict[str, set[Subscription]] = {}
        self._pending: set[str] = set()
        self._flush_scheduled = False
        self._loaded = False
        self._etcd_ok = False
        self._loaded_event = asyncio.Event()
        self._waiting: dict[str, bytes] = {}
        """App keys whose newest head names parts not here yet: that head."""
        self.revision = 0
        """The etcd revision the state reflects (listing, watch event or progress applied)."""
        self._progress = etcd_mod.ProgressRequests()
        self._verified_at = -float("inf")
        self._check: asyncio.Task[None] | None = None
        self._revision_moved = asyncio.Event()
        self._report()

    # -- ConfigSource ---------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def ready(self) -> bool:
        return self._loaded and self._etcd_ok

    def app(self, app: str, cluster: str) -> AppEntry | None:
        return self._apps.get(keys.app_snapshot_key(model.AppName(app), model.ClusterName(cluster)))

    def eds(self, name: str, variant: str) -> Encoded | None:
        found = self._eds_variants.get(name)
        return found.get(variant) if found is not None else None

    def zone_view(self, zone: str) -> Mapping[str, Encoded]:
        # NOTE: kept up to date on every EDS change (one entry per view touched): a stream's
        # subscription of 40 names then costs 40 dict lookups per push, nothing more.
        view = self._zone_views.get(zone)
        if view is None:
            if len(self._zone_views) >= ZONE_VIEWS_MAX:
                # NOTE: zones come from what sidecars say: past a mesh's own few, no index
                # (a full copy of the assignments each) is built for one.
                return ZoneView(self, zone)
            view = self._zone_views[zone] = {}
            for name, by_variant in self._eds_variants.items():
                found = _pick(by_variant, zone)
                if found is not None:
                    view[name] = found
        return view

    def _update_views(self, name: str) -> None:
        by_variant = self._eds_variants.get(name, {})
        for zone, view in self._zone_views.items():
            found = _pick(by_variant, zone)
            if found is None:
                view.pop(name, None)
            else:
                view[name] = found

    def locality(self, cluster: str, node: str) -> tuple[str, str] | None:
        return self._localities.get(cluster, {}).get(node)

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self._subs.add(sub)
        return sub

    def memo(self) -> dict[Hashable, object]:
        return self._memo

    def history(self) -> dict[Hashable, Any]:
        if len(self._history) > HISTORY_MAX:
            self._history.clear()
        return self._history

    def eds_epoch(self) -> int:
        return self._eds_log_base + len(self._eds_log)

    def eds_changed_since(self, epoch: int) -> Sequence[str] | None:
        if epoch < self._eds_log_base:
            return None
        return self._eds_log[epoch - self._eds_log_base :]

    def _log_eds(self, name: str) -> None:
        self._eds_log.append(name)
        if len(self._eds_log) > 2 * EDS_LOG_KEPT:
            del self._eds_log[:EDS_LOG_KEPT]
            self._eds_log_base += EDS_LOG_KEPT

    def load(self, listing: etcd_mod.Listing) -> None:
        """Takes ``listing`` (of ``keys.SNAPSHOTS``) as the whole state, without a watch: for
        tools that read etcd once (``navigator state snapshot``, ``navigator proxy-status``)."""
        self._replace(listing)

    def apps(self) -> list[tuple[str, str]]:
        """(app, cluster) of every app snapshot held, sorted."""
        return sorted(
            (str(app), str(k8s)) for app, k8s in map(keys.parse_app_snapshot_key, self._apps)
        )

    async def wait_loaded(self) -> None:
        await self._loaded_event.wait()

    def caught_up(self, since: float) -> bool:
        if self._verified_at >= since:
            return True
        # NOTE: one check at a time; a stream that opened after the running one started is
        # woken when it ends (every subscription is), asks again and gets a new check.
        if self._check is None:
            self._check = asyncio.create_task(self._verify(), name="xds-catch-up")
        return False

    async def _verify(self) -> None:
        """One catch-up check (coalesced: streams arriving meanwhile wait for the next)."""
        started = time.monotonic()
        try:
            newest, current = await self._etcd.latest_mod_revision(keys.SNAPSHOTS)
            self._progress.request()
            async with asyncio.timeout(self._ping_timeout):
                # NOTE: the progress notification covers deletions; the newest mod revision
                # guards against etcd versions whose notifications could run ahead.
                while self.revision < max(newest, current):
                    self._revision_moved.clear()
                    await self._revision_moved.wait()
        except (etcd_mod.EtcdError, TimeoutError) as exc:
            log.warning(
                "cannot check that the snapshots are current; resuming sidecars wait",
                extra={"error": str(exc) or type(exc).__name__},
            )
            return
        finally:
            self._check = None
        self._verified_at = started
        for sub in self._subs:
            sub.changed.set()

    # -- loading --------------------------------------------------------------------------

    async def run(self) -> None:
        """List, then watch, forever; relist on compaction; retry while etcd is unreachable."""
        pinger = asyncio.create_task(self._ping_loop(), name="xds-etcd-ping")
        try:
            await self._load_loop()
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
            if self._check is not None:
                self._check.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._check

    async def _load_loop(self) -> None:
        unavailable_logged = False
        while True:
            try:
                listing = await self._etcd.get_prefix(keys.SNAPSHOTS)
            except etcd_mod.EtcdError as exc:
                if not unavailable_logged:
                    log.error(
                        "cannot list snapshots from etcd; retrying, not ready until it answers",
                        extra={"endpoints": ",".join(self._etcd.endpoints), "error": str(exc)},
                    )
                    unavailable_logged = True
                self._set_etcd_ok(False)
                await asyncio.sleep(self._retry_delay)
                continue
            unavailable_logged = False
            self._replace(listing)
            try:
                async for ev in self._etcd.watch_progress(
                    keys.SNAPSHOTS, start_revision=listing.revision + 1, progress=self._progress
                ):
                    if isinstance(ev, etcd_mod.Progress):
                        self.revision = max(self.revision, ev.revision)
                    else:
                        self._apply(ev.key, ev.value)
                        self.revision = ev.revision
                        self._schedule_flush()
                    self._revision_moved.set()
            except etcd_mod.Compacted as exc:
                log.warning("snapshot watch compacted, relisting", extra={"revision": exc.revision})
            except etcd_mod.EtcdError as exc:
                log.warning("snapshot watch failed, relisting", extra={"error": str(exc)})
                await asyncio.sleep(self._retry_delay)

    async def _ping_loop(self) -> None:
        """Tracks whether etcd answers: the watch resumes silently, so readiness needs this."""
        while True:
            await asyncio.sleep(self._ping_interval if self._etcd_ok else self._retry_delay)
            if not self._loaded:
                continue
            try:
                await asyncio.wait_for(self._etcd.ping(), self._ping_timeout)
            except (etcd_mod.EtcdError, TimeoutError) as exc:
                if self._etcd_ok:
                    log.error(
                        "lost etcd; serving the last loaded snapshots, not ready",
                        extra={"error": str(exc) or type(exc).__name__},
                    )
                self._set_etcd_ok(False)
            else:
                if not self._etcd_ok:
                    log.info("etcd reachable again")
                self._set_etcd_ok(True)

    def _replace(self, listing: etcd_mod.Listing) -> None:
        """Applies a full listing as a diff against the current state, then notifies."""
        for key in [k for k in self._raw if k not in listing.items]:
            self._apply(key, None)
        for key, kv in listing.items.items():
            seen = _seen(key, kv.value)
            if self._raw.get(key) != seen:
                self._apply(key, kv.value, seen)
        self.revision = listing.revision
        self._revision_moved.set()
        first = not self._loaded
        self._loaded = True
        self._etcd_ok = True
        self._loaded_event.set()
        self._report()
        if first:
            # NOTE: streams waiting for the first listing (an absent snapshot means an empty
            # config only once the listing is complete) are woken all at once.
            for sub in self._subs:
                sub.changed.set()
        log.info(
            "snapshots loaded",
            extra={"revision": listing.revision, "apps": len(self._apps), "eds": len(self._eds)},
        )
        self._flush()

    def _apply(self, key: str, value: bytes | None, seen: bytes | None = None) -> None:
        """``seen``: ``_seen(key, value)`` if the caller has it already."""
        if value is not None:
            value_seen = seen if seen is not None else _seen(key, value)
        if self._raw.get(key) != (None if value is None else value_seen):
            # NOTE: derived results (e.g. a zone's endpoint response) are stale from now on.
            self._memo = {}
        if value is None:
            if self._raw.pop(key, None) is not None:
                self._apps.pop(key, None)
                if self._eds.pop(key, None) is not None:
                    name, variant = keys.parse_eds_key(key)
                    by_variant = self._eds_variants.get(name, {})
                    by_variant.pop(variant, None)
                    if not by_variant:
                        self._eds_variants.pop(name, None)
                    self._update_views(name)
                    self._log_eds(name)
                if key.startswith(keys.LOCALITIES):
                    self._localities.pop(key[len(keys.LOCALITIES) :], None)
                self._waiting.pop(key, None)
                self._pending.add(key)
            return
        if self._raw.get(key) == value_seen:
            return
        self._raw[key] = value_seen
        if key.startswith(keys.APP_SNAPSHOTS):
            if not self._load_app(key, value):
                return
        elif key.startswith(keys.CHUNKS):
            # NOTE: on the watch a part arrives before its head (the translator writes parts
            # first); in a listing (sorted by key) heads come first and wait for their parts.
            app, k8s = key[len(keys.CHUNKS) :].split("/")[:2]
            head_key = keys.app_snapshot_key(model.AppName(app), model.ClusterName(k8s))
            head = self._waiting.get(head_key)
            if head is None or not self._load_app(head_key, head):
                return
            key = head_key
        elif key.startswith(keys.EDS_SNAPSHOTS):
            try:
                name, variant = keys.parse_eds_key(key)
            except keys.SchemaError as exc:
                log.error("malformed EDS key, ignored", extra={"key": key, "error": str(exc)})
                return
            encoded = self._eds[key] = (
                encode_eds(name, value)
                if self._bodies
                else Encoded(name, snapshot.content_hash(value), b"")
            )
            self._eds_variants.setdefault(name, {})[variant] = encoded
            self._update_views(name)
            self._log_eds(name)
        elif key.startswith(keys.LOCALITIES):
            # NOTE: streams of sidecars not placed yet wait for this key (``Stream._place``).
            self._load_localities(key, value)
        else:
            return
        self._pending.add(key)

    def _load_localities(self, key: str, value: bytes) -> None:
        try:
            cluster = keys.parse_localities_key(key)
            nodes = json.loads(value)["nodes"]
            self._localities[cluster] = {
                str(name): (str(region), str(zone)) for name, (region, zone) in nodes.items()
            }
        except (keys.SchemaError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error(
                "unreadable node localities, keeping the previous ones",
                extra={"key": key, "error": str(exc)},
            )

    def _load_app(self, key: str, value: bytes) -> bool:
        """Decodes an app snapshot (joining its parts); False keeps the previous one."""
        try:
            app, k8s = keys.parse_app_snapshot_key(key)
            parts = snapshot.head_chunks(value)
            if parts is not None:
                chunks = [self._raw.get(keys.chunk_key(app, k8s, digest)) for digest in parts]
                if any(c is None for c in chunks):
                    self._waiting[key] = value
                    return False
                value = snapshot.join_chunks(value, [c for c in chunks if c is not None])
            self._waiting.pop(key, None)
            self._apps[key] = encode_app(
                snapshot.decode_app(value, bodies=self._bodies),
                bodies=self._bodies,
                pool=self._pool,
            )
        except (keys.SchemaError, snapshot.SnapshotError) as exc:
            log.error(
                "undecodable app snapshot, keeping the previous one",
                extra={"key": key, "error": str(exc)},
            )
            return False
        return True

    def _schedule_flush(self) -> None:
        # NOTE: all events of one etcd revision arrive before the watch consumer yields to the
        # loop, so a flush scheduled with call_soon never exposes half of a revision.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, set()
        now = time.monotonic()
        for key in pending:
            for sub in self._index.get(key, ()):
                if sub.since is None:
                    sub.since = now
                sub.changed.set()

    def _reindex(self, sub: Subscription, new_keys: frozenset[str]) -> None:
        for key in sub.keys - new_keys:
            subs = self._index.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._index[key]
        for key in new_keys - sub.keys:
            self._index.setdefault(key, set()).add(sub)
        sub.keys = new_keys

    def _set_etcd_ok(self, ok: bool) -> None:
        if ok != self._etcd_ok:
            self._etcd_ok = ok
            self._report()

    def _report(self) -> None:
        if self._health is None:
            return
        if self.ready:
            self._health.set_ready(True, "")
        elif not self._loaded:
            self._health.set_ready(False, "loading snapshots from etcd")
        else:
            self._health.set_ready(False, "etcd unreachable; serving the last loaded snapshots")
