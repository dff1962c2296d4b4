"""The translator process: watches normalized state in etcd and publishes snapshots.

All I/O of translation lives here; ``shards.translate`` stays pure. The runner keeps the whole
normalized state in memory, marks what each change touches (services, apps), recomputes only
that after a short debounce, and writes only keys whose bytes changed, so work and etcd writes
per change are proportional to the change. A new runner deriving the same state writes
nothing: it compares against what etcd already holds.

Shards: every key the translators write belongs to one shard (``keys.owner_shard``: an app's
keys to the app's shard, a service's endpoint assignments to the service's). A translator
replica leads some shards (``coordinator.shards``); it translates every service (any app may
see any service) but builds and writes only what its shards own, each shard's writes carrying
that shard's fence. A shard gained is read back from etcd first, so a new leader re-deriving
the same state writes nothing; a write refused by its fence ends that shard's term.

Gating: a service's endpoint assignments and an app's snapshots are published only when every
Kubernetes cluster contributing to them has written its synced marker (and an app's snapshot
for cluster K only once K is synced), so a half-listed cluster never makes sidecars drop what
they have; the last published version stays in etcd meanwhile.

Large app snapshots are stored in parts (``snapshot.split_app``): the parts first, then the
head that names them, and the parts of the previous version last, so a front-end never sees a
torn snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Sequence
from typing import TypeVar

import prometheus_client

from coordinator import election, membership, session
from coordinator import etcd as etcd_mod
from coordinator import shards as shards_mod
from navigator import keys, model, runtime, snapshot
from shards import canary, gateway, translate

log = logging.getLogger(__name__)

TRANSLATIONS = prometheus_client.Counter(
    "navigator_translator_flushes_total", "Debounced recomputations of changed state"
)
FLUSH_SECONDS = prometheus_client.Histogram(
    "navigator_translator_flush_seconds",
    "Time to recompute and publish one batch of changes",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
KEYS_WRITTEN = prometheus_client.Counter(
    "navigator_translator_keys_written_total", "Snapshot keys written or deleted", ["kind"]
)
DIAGNOSTICS = prometheus_client.Gauge(
    "navigator_translator_diagnostics", "Objects skipped or adjusted by translation", ["reason"]
)
DECODE_ERRORS = prometheus_client.Counter(
    "navigator_translator_decode_errors_total", "State values that could not be decoded"
)
SHARDS_LED = prometheus_client.Gauge(
    "navigator_translator_shards_led", "Shards this translator leads"
)
DEPOSED = prometheus_client.Counter(
    "navigator_translator_deposed_total", "Shard terms ended by a write the fence refused"
)
STATE_REVISION = prometheus_client.Gauge(
    "navigator_translator_state_revision",
    "The etcd revision up to which this translator has applied the normalized state",
)
WITHHELD = prometheus_client.Gauge(
    "navigator_translator_withheld",
    "Apps and services not published because a contributing cluster is not synced",
    ["what"],
)

ServiceKey = tuple[str, str]
SliceId = tuple[model.ClusterName, str]
"""An EndpointSlice within its Service: (cluster, slice name)."""
K = TypeVar("K")
J = TypeVar("J")
V = TypeVar("V")


class Translator:
    """In-memory state, dirty tracking and publication for the shards this replica leads.

    Standalone (``shards=1`` and ``lead_all=True``, as in tests and single-process use) it
    owns everything and writes without a fence; as a replica, ``gain`` and ``lose`` (called by
    ``coordinator.shards.ShardRunner``) decide what it builds and writes.
    """

    def __init__(
        self,
        etcd: etcd_mod.Etcd,
        *,
        options: translate.Options,
        debounce: float = 0.01,
        min_interval: float = 0.05,
        shards: int = 1,
        lead_all: bool = True,
    ) -> None:
        self.etcd = etcd
        self.options = options
        self.debounce = debounce
        self.min_interval = min_interval
        self.shards = shards
        self.published = asyncio.Event()
        """Set after the first flush that wrote or found everything up to date."""
        self.generation = 0
        """Incremented after every flush that completed; see ``wait_until``."""
        self.published_shards: frozenset[int] = frozenset()
        """The shards led when the last flush completed (all of them were published)."""
        self.loaded = asyncio.Event()
        """Set once the state in etcd has been listed."""
        self._flushed = asyncio.Condition()
        self._terms: dict[int, election.Leadership | None] = (
            dict.fromkeys(range(shards)) if lead_all else {}
        )
        """The shards this replica leads, with the term (None: standalone, no fence)."""
        self._written: dict[str, bytes] = {}
        """Digest of what etcd holds for every key our shards own, as we last saw it."""
        self._chunks: dict[str, set[str]] = {}
        """App snapshot key → the chunk keys of it that etcd holds."""
        self._gain_batch: asyncio.Future[dict[str, etcd_mod.KeyValue]] | None = None
        self._gain_lister: asyncio.Task[None] | None = None
        """Held so the running listing task is not garbage-collected (asyncio keeps weak refs)."""
        self._progress = etcd_mod.ProgressRequests()
        self.shard_runner: shards_mod.ShardRunner | None = None
        """Set once this replica takes part in shard elections (``lead_shards``)."""
        self._changed = asyncio.Event()
        self._computing = asyncio.Lock()
        """Held while computing, applying a watch event or adopting a shard."""
        self._clear_state()

    def _clear_state(self) -> None:
        # NOTE: settings come back from the listing that follows; none survives a relist.
        self.options = dataclasses.replace(self.options, tracing=None)
        self._objects: dict[str, model.Object] = {}
        self._weights: dict[model.ClusterName, int] = {}
        """The operator's cluster weights that differ from the default."""
        self._per_cluster: collections.Counter[model.ClusterName] = collections.Counter()
        """Number of objects per Kubernetes cluster: the clusters that have state."""
        self._synced: set[model.ClusterName] = set()
        """Clusters whose synced marker is here and whose state we have seen up to it."""
        self._markers: dict[model.ClusterName, int] = {}
        """Synced markers: the revision of the cluster's state each one vouches for."""
        self._state_seen = 0
        """The ``state/`` watch has delivered every change up to this revision."""
        self._services: dict[ServiceKey, dict[model.ClusterName, model.Service]] = {}
        self._endpoints: dict[ServiceKey, dict[model.ClusterName, model.Endpoints]] = {}
        # NOTE: slices are indexed by their service-name label, not their own name.
        self._slices: dict[ServiceKey, dict[SliceId, model.EndpointSlice]] = {}
        self._nodes: dict[tuple[model.ClusterName, str], model.Node] = {}
        self._nexuses: dict[model.AppName, dict[str, model.Nexus]] = {}
        self._releases: dict[str, model.CanaryRelease] = {}
        self._gateways: dict[str, model.Gateway] = {}
        self._ingresses: dict[str, model.Ingress] = {}
        self._gateways_dirty = True
        self._gateway_apps: dict[model.AppName, gateway.GatewayResources] = {}
        self._gateway_services: set[ServiceKey] = set()
        """Services some gateway routes to: a change of what they offer rebuilds gateways."""
        self._canaries: dict[ServiceKey, canary.Canary] = {}
        self._canary_diags: list[translate.Diagnostic] = []
        self._canaries_dirty = True
        self._gateway_diags: list[translate.Diagnostic] = []
        self._logged: dict[str, set[translate.Diagnostic]] = {}
        """Diagnostics already logged, by diagnostics key."""

        self._resources: dict[ServiceKey, translate.ServiceResources] = {}
        self._service_diags: dict[ServiceKey, list[translate.Diagnostic]] = {}
        self._app_wanted: dict[model.AppName, list[ServiceKey]] = {}
        self._app_diags: dict[model.AppName, list[translate.Diagnostic]] = {}
        self._service_apps: dict[ServiceKey, set[model.AppName]] = {}
        self._dirty_services: set[ServiceKey] = set()
        self._eds_due: set[ServiceKey] = set()
        """Services whose endpoint assignments must be compared with etcd (if we own them)."""
        self._dirty_apps: set[model.AppName] = set()
        self._dirty_shards: set[int] = set(range(self.shards))
        """Shards whose every app is rebuilt and whose keys are swept of orphans."""
        self._dirty_namespaces: set[str] = set()
        self._app_namespaces: dict[str, set[model.AppName]] = {}
        """Apps whose Nexus entries name a namespace: they re-resolve when it changes."""
        self._mesh: dict[ServiceKey, translate.MeshService] = {}
        self._zone_pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        """(region, zone) of every Node and of every service's endpoints: the mesh's zones."""
        self._service_zone_pairs: dict[ServiceKey, set[tuple[str, str]]] = {}
        self._zones: tuple[translate.Zone, ...] = ()
        self._zone_diags: list[translate.Diagnostic] = []
        self._eds_names: dict[ServiceKey, set[tuple[str, str]]] = {}
        """Per owned service: the (Envoy cluster name, variant) of its EDS keys in etcd."""
        self._withheld_services: set[ServiceKey] = set()
        self._withheld_apps: set[model.AppName] = set()
        self._mesh_diags_dirty = True
        self._localities_dirty: set[model.ClusterName] = set()
        """Clusters whose Nodes changed: their ``localities/<cluster>`` key is due."""

    # --- shards ----------------------------------------------------------------------

    def use_shard_count(self, count: int) -> None:
        """Sets the mesh's shard count (before leading any shard)."""
        if self._terms and count != self.shards:
            raise ValueError("the shard count cannot change while leading shards")
        self.shards = count
        self._dirty_shards = set(range(count))

    @property
    def leading(self) -> frozenset[int]:
        return frozenset(self._terms)

    def _owns_key(self, key: str) -> bool:
        owner = keys.owner_shard(key, self.shards)
        return owner is not None and owner in self._terms

    def _owns_app(self, app: model.AppName) -> bool:
        return keys.shard_of(app, self.shards) in self._terms

    def _owns_service(self, skey: ServiceKey) -> bool:
        return keys.service_shard(skey[0], skey[1], self.shards) in self._terms

    async def gain(self, shard: int, term: election.Leadership | None) -> None:
        """Starts building and writing ``shard``: reads back what etcd holds for it first.

        NOTE: the read makes a new leader that derives the same state write nothing (no
        version changes, no push to any sidecar).
        """
        items = await self._listing_for_gain()
        async with self._computing:
            self._gained(shard, term, items)

    def _gained(
        self, shard: int, term: election.Leadership | None, items: dict[str, etcd_mod.KeyValue]
    ) -> None:
        self._adopt(shard, items)
        self._terms[shard] = term
        SHARDS_LED.set(len(self._terms))
        self._dirty_shards.add(shard)
        self._eds_due |= {
            k
            for k in (*self._mesh, *self._eds_names)
            if keys.service_shard(k[0], k[1], self.shards) == shard
        }
        self._mesh_diags_dirty = True
        self._gateways_dirty = True
        self._localities_dirty |= {cluster for cluster, _ in self._nodes}
        log.info("leading shard", extra={"shard": shard, "keys": len(self._written)})
        self._changed.set()

    async def _listing_for_gain(self) -> dict[str, etcd_mod.KeyValue]:
        """What etcd holds under the translators' prefixes, listed after the caller's election.

        NOTE: shards won together share one listing (at a mesh's scale it is tens of MB), but
        a listing is shared only by gains that arrived before it started: one begun before
        an election could miss the previous leader's last writes.
        """
        batch = self._gain_batch
        if batch is None:
            batch = asyncio.get_running_loop().create_future()
            # NOTE: every waiter may have been cancelled; the error is then nobody's.
            batch.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._gain_batch = batch

            async def list_once() -> None:
                self._gain_batch = None
                try:
                    listed = await self.etcd.get_prefix(keys.SNAPSHOTS)
                    diags = await self.etcd.get_prefix(keys.DIAGNOSTICS)
                except BaseException as exc:
                    batch.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    batch.set_result({**listed.items, **diags.items})

            self._gain_lister = asyncio.create_task(list_once(), name="translator-gain-listing")
        return await asyncio.shield(batch)

    def _adopt(self, shard: int, items: dict[str, etcd_mod.KeyValue]) -> None:
        """Takes what etcd holds for ``shard`` as what we have written."""
        for key, kv in items.items():
            if keys.owner_shard(key, self.shards) != shard:
                continue
            self._written[key] = _digest(kv.value)
            if key.startswith(keys.CHUNKS):
                self._chunks.setdefault(_head_of_chunk(key), set()).add(key)
            elif key.startswith(keys.EDS_SNAPSHOTS):
                name, variant = keys.parse_eds_key(key)
                ns, _, rest = name.partition("/")
                skey = (ns, rest.split(":", 1)[0])
                self._eds_names.setdefault(skey, set()).add((name, variant))

    def lose(self, shard: int) -> None:
        """Stops writing ``shard`` at once, and forgets what was known of its keys."""
        self._terms.pop(shard, None)
        SHARDS_LED.set(len(self._terms))
        for key in [k for k in self._written if keys.owner_shard(k, self.shards) == shard]:
            del self._written[key]
        for head in [h for h in self._chunks if keys.owner_shard(h, self.shards) == shard]:
            del self._chunks[head]
        for skey in [k for k in self._eds_names if not self._owns_service(k)]:
            del self._eds_names[skey]
        for app in [a for a in self._app_wanted if not self._owns_app(a)]:
            self._forget_app(app)
        self._withheld_apps = {a for a in self._withheld_apps if self._owns_app(a)}
        self._withheld_services = {k for k in self._withheld_services if self._owns_service(k)}
        log.info("stopped leading shard", extra={"shard": shard})

    # --- input ---------------------------------------------------------------------

    def load(self, listing: etcd_mod.Listing) -> None:
        for kv in listing.items.values():
            self.apply(kv.key, kv.value)

    def apply(self, key: str, value: bytes | None) -> None:
        """Applies one state, synced or cluster weight key change; marks what it touches."""
        if key.startswith(keys.CLUSTER_WEIGHTS):
            self._apply_weight(key, value)
            return
        if key == keys.TRACING:
            self._apply_tracing(value)
            return
        if key.startswith(keys.CONFIG):
            return  # NOTE: a setting of a newer version; ignored.
        if key.startswith(keys.SYNCED):
            cluster = keys.parse_synced_key(key)
            if value is None:
                self._markers.pop(cluster, None)
            else:
                self._markers[cluster] = _marker_revision(value)
            self._refresh_synced()
            return
        try:
            skey = keys.parse_state_key(key)
        except keys.SchemaError:
            log.warning("ignoring key outside the schema", extra={"key": key})
            return
        old = self._objects.pop(key, None)
        if old is not None:
            self._unindex(old)
        if value is not None:
            try:
                obj = model.decode(skey.kind, value)
            except model.DecodeError as exc:
                DECODE_ERRORS.inc()
                log.error(
                    "cannot decode state, keeping the previous value",
                    extra={"key": key, "error": str(exc)},
                )
                if old is not None:
                    self._objects[key] = old
                    self._index(old)
                return
            self._objects[key] = obj
            self._index(obj)
        self._changed.set()

    def _apply_weight(self, key: str, value: bytes | None) -> None:
        try:
            cluster = keys.parse_cluster_weight_key(key)
            weight = model.DEFAULT_WEIGHT if value is None else model.decode_weight(value)
        except (keys.SchemaError, model.DecodeError) as exc:
            DECODE_ERRORS.inc()
            log.error("ignoring a bad cluster weight", extra={"key": key, "error": str(exc)})
            return
        if self._weights.get(cluster, model.DEFAULT_WEIGHT) == weight:
            return
        if weight == model.DEFAULT_WEIGHT:
            self._weights.pop(cluster, None)
        else:
            self._weights[cluster] = weight
        log.info("cluster weight", extra={"cluster": cluster, "weight": weight})
        self._dirty_cluster(cluster)
        self._changed.set()

    def _apply_tracing(self, value: bytes | None) -> None:
        try:
            setting = None if value is None else model.decode_tracing(value)
        except model.DecodeError as exc:
            DECODE_ERRORS.inc()
            log.error("ignoring a bad tracing setting", extra={"error": str(exc)})
            return
        if setting == self.options.tracing:
            return
        log.info("tracing", extra={"setting": str(setting)})
        self.options = dataclasses.replace(self.options, tracing=setting)
        # NOTE: every HTTP listener and every app carries it: all is rebuilt (a rare change).
        self._dirty_services.update(self._services)
        self._dirty_shards |= set(range(self.shards))
        self._changed.set()

    def state_seen(self, revision: int) -> None:
        """Every ``state/`` change up to ``revision`` has been applied (a listing, an event or
        a progress notification of the state watch)."""
        if revision > self._state_seen:
            self._state_seen = revision
            STATE_REVISION.set(revision)
            if len(self._synced) < len(self._markers):
                self._refresh_synced()

    def _refresh_synced(self) -> None:
        """A cluster counts as synced once the state its marker vouches for has arrived.

        NOTE: state and synced markers come on separate watches, so a marker may be applied
        before the last state writes it covers; publishing then would drop what is still on
        its way.
        """
        synced = {c for c, rev in self._markers.items() if rev <= self._state_seen}
        for cluster in synced ^ self._synced:
            # NOTE: what this cluster contributes to may be published (or held) now.
            self._dirty_shards |= set(range(self.shards))
            self._eds_due |= self._services_in(cluster)
            self._gateways_dirty = True
            self._changed.set()
        self._synced = synced
        if len(synced) < len(self._markers):
            # NOTE: no state change may follow the marker's revision: ask the watch where it is.
            self._progress.request()

    def _services_in(self, cluster: model.ClusterName) -> set[ServiceKey]:
        """Every service that has a Service, Endpoints or EndpointSlice in ``cluster``."""
        out = {k for k, by_cluster in self._services.items() if cluster in by_cluster}
        out |= {k for k, by_cluster in self._endpoints.items() if cluster in by_cluster}
        out |= {k for k, by_slice in self._slices.items() if any(c == cluster for c, _ in by_slice)}
        return out

    def _dirty_cluster(self, cluster: model.ClusterName) -> None:
        """Every service with endpoints in ``cluster``."""
        self._dirty_services.update(
            key for key, by_cluster in self._endpoints.items() if cluster in by_cluster
        )
        self._dirty_services.update(
            key
            for key, by_slice in self._slices.items()
            if any(k8s == cluster for k8s, _ in by_slice)
        )

    def _index(self, obj: model.Object) -> None:
        self._touch(obj)
        self._per_cluster[obj.cluster] += 1
        if isinstance(obj, model.Service):
            if (obj.namespace, obj.name) not in self._services:
                self._dirty_namespaces.add(obj.namespace)
            self._services.setdefault((obj.namespace, obj.name), {})[obj.cluster] = obj
        elif isinstance(obj, model.Endpoints):
            self._endpoints.setdefault((obj.namespace, obj.name), {})[obj.cluster] = obj
        elif isinstance(obj, model.EndpointSlice):
            self._slices.setdefault((obj.namespace, obj.service), {})[(obj.cluster, obj.name)] = obj
        elif isinstance(obj, model.Node):
            self._nodes[(obj.cluster, obj.name)] = obj
            self._zone_pairs[(obj.region, obj.zone)] += 1
            self._localities_dirty.add(obj.cluster)
        elif isinstance(obj, model.Nexus):
            self._nexuses.setdefault(obj.app_name, {})[keys.state_key(obj)] = obj
        elif isinstance(obj, model.CanaryRelease):
            self._releases[keys.state_key(obj)] = obj
        elif isinstance(obj, model.Gateway):
            self._gateways[keys.state_key(obj)] = obj
        elif isinstance(obj, model.Ingress):
            self._ingresses[keys.state_key(obj)] = obj

    def _unindex(self, obj: model.Object) -> None:
        self._touch(obj)
        self._per_cluster[obj.cluster] -= 1
        if not self._per_cluster[obj.cluster]:
            del self._per_cluster[obj.cluster]
        if isinstance(obj, model.Service):
            _pop_nested(self._services, (obj.namespace, obj.name), obj.cluster)
            if (obj.namespace, obj.name) not in self._services:
                self._dirty_namespaces.add(obj.namespace)
        elif isinstance(obj, model.Endpoints):
            _pop_nested(self._endpoints, (obj.namespace, obj.name), obj.cluster)
        elif isinstance(obj, model.EndpointSlice):
            _pop_nested(self._slices, (obj.namespace, obj.service), (obj.cluster, obj.name))
        elif isinstance(obj, model.Node):
            self._nodes.pop((obj.cluster, obj.name), None)
            self._localities_dirty.add(obj.cluster)
            self._zone_pairs.subtract([(obj.region, obj.zone)])
            if self._zone_pairs[(obj.region, obj.zone)] <= 0:
                del self._zone_pairs[(obj.region, obj.zone)]
        elif isinstance(obj, model.Nexus):
            _pop_nested(self._nexuses, obj.app_name, keys.state_key(obj))
        elif isinstance(obj, model.CanaryRelease):
            self._releases.pop(keys.state_key(obj), None)
        elif isinstance(obj, (model.Gateway, model.Ingress)):
            self._gateways.pop(keys.state_key(obj), None)
            self._ingresses.pop(keys.state_key(obj), None)

    def _touch(self, obj: model.Object) -> None:
        if isinstance(obj, model.Service):
            # NOTE: a namespace/name appearing or going (see _index/_unindex) also changes
            # what namespace-wide or missing Nexus entries resolve to: _dirty_namespaces.
            self._dirty_services.add((obj.namespace, obj.name))
        elif isinstance(obj, model.Endpoints):
            self._dirty_services.add((obj.namespace, obj.name))
        elif isinstance(obj, model.EndpointSlice):
            # NOTE: called for the old and the new value, so a slice whose service-name label
            # changed dirties both services.
            self._dirty_services.add((obj.namespace, obj.service))
        elif isinstance(obj, model.Node):
            # A node's zone is part of the locality of every endpoint on it.
            self._dirty_cluster(obj.cluster)
        elif isinstance(obj, model.Nexus):
            self._dirty_apps.add(obj.app_name)
        elif isinstance(obj, (model.Gateway, model.Ingress)):
            self._gateways_dirty = True
        elif isinstance(obj, model.CanaryRelease):
            self._canaries_dirty = True

    # --- output --------------------------------------------------------------------

    def clusters(self) -> set[model.ClusterName]:
        """Every Kubernetes cluster the mesh knows: it has state or a synced marker."""
        return set(self._per_cluster) | self._synced

    def all_synced(self) -> bool:
        clusters = self.clusters()
        return bool(clusters) and clusters <= self._synced

    def _service_clusters(self, skey: ServiceKey) -> set[model.ClusterName]:
        out = set(self._services.get(skey, {})) | set(self._endpoints.get(skey, {}))
        out |= {c for c, _ in self._slices.get(skey, {})}
        return out

    def _service_ready(self, skey: ServiceKey) -> bool:
        """Every cluster holding an object of the service has written its synced marker."""
        return self._service_clusters(skey) <= self._synced

    def _app_ready(self, app: model.AppName, wanted: Iterable[ServiceKey]) -> bool:
        if not {n.cluster for n in self._nexuses.get(app, {}).values()} <= self._synced:
            return False
        return all(self._service_ready(k) for k in wanted)

    def _changed_key(self, key: str, body: bytes) -> bool:
        return self._written.get(key) != _digest(body)

    def compute(self) -> tuple[dict[str, bytes], set[str]]:
        """``_compute_steps`` run to its end at once (tests, benchmarks, standalone use)."""
        steps = self._compute_steps()
        while True:
            try:
                next(steps)
            except StopIteration as done:
                result: tuple[dict[str, bytes], set[str]] = done.value
                return result

    async def compute_async(self) -> tuple[dict[str, bytes], set[str]]:
        """``_compute_steps`` giving the event loop a turn every ``COMPUTE_SLICE`` seconds.

        NOTE: the first computation of a large mesh takes seconds of CPU. Run at once it would
        starve the lease keepalives (5 s TTL) and the watches: the translator then loses its
        shards while it computes them (seen at 2,000 services and 1,000 apps). The caller
        holds ``_computing``, so no watch event is applied and no shard adopted between
        steps: the state a computation reads does not move under it.
        """
        steps = self._compute_steps()
        deadline = time.perf_counter() + COMPUTE_SLICE
        while True:
            try:
                next(steps)
            except StopIteration as done:
                result: tuple[dict[str, bytes], set[str]] = done.value
                return result
            if time.perf_counter() >= deadline:
                await asyncio.sleep(0)
                deadline = time.perf_counter() + COMPUTE_SLICE

    def _compute_steps(self) -> Generator[None, None, tuple[dict[str, bytes], set[str]]]:
        """Recomputes what is dirty; returns the keys to put and to delete. Yields between
        services and between apps (see ``compute_async``).

        NOTE: work is proportional to what changed: only dirty services are translated, an
        app is rebuilt only when a service it sees changed what apps hold (clusters,
        listeners, routes: not endpoints, which live in shared keys), and only the keys of
        those services and apps are compared with what etcd holds. Only keys of the shards
        this replica leads are produced.
        """
        puts: dict[str, bytes] = {}
        deletes: set[str] = set()
        dirty_apps = set(self._dirty_apps)
        self._dirty_apps.clear()

        regenerate = set(self._dirty_services)
        for skey in sorted(self._dirty_services):
            yield
            svc, diags = translate.mesh_service(
                list(self._services.get(skey, {}).values()),
                list(self._endpoints.get(skey, {}).values()),
                self._nodes,
                slices=list(self._slices.get(skey, {}).values()),
                weights=self._weights,
            )
            if diags != self._service_diags.get(skey, []):
                self._mesh_diags_dirty = True
            if diags:
                self._service_diags[skey] = diags
            else:
                self._service_diags.pop(skey, None)
            self._zone_pairs.subtract(self._service_zone_pairs.pop(skey, set()))
            if _ports_of(self._mesh.get(skey)) != _ports_of(svc):
                # NOTE: canaries depend on which services exist and on their ports only.
                self._canaries_dirty = True
            if svc is None:
                self._mesh.pop(skey, None)
            else:
                self._mesh[skey] = svc
                pairs = translate.zones_of(svc)
                if pairs:
                    self._service_zone_pairs[skey] = pairs
                    self._zone_pairs.update(pairs)
        self._zone_pairs = +self._zone_pairs

        zones, zone_diags = translate.mesh_zones(self._zone_pairs)
        if zone_diags != self._zone_diags:
            self._zone_diags = zone_diags
            self._mesh_diags_dirty = True
        if zones != self._zones:
            # NOTE: every service has one endpoint variant per zone of the mesh.
            self._zones = zones
            regenerate |= set(self._mesh)

        # NOTE: canaries are resolved again when a release, or the ports of a service, changed
        # (their validity depends on the ports of their backends); a service whose canary
        # changed is regenerated, and its callers re-resolve what they see when its backends
        # changed.
        if self._canaries_dirty:
            canaries, canary_diags = canary.resolve(
                self._releases.values(),
                {key: {p.port for p in svc.ports} for key, svc in self._mesh.items()},
            )
            if canary_diags != self._canary_diags:
                self._canary_diags = canary_diags
                self._mesh_diags_dirty = True
            for skey in set(canaries) | set(self._canaries):
                before, after = self._canaries.get(skey), canaries.get(skey)
                if before == after:
                    continue
                regenerate.add(skey)
                if (canary.backend_services(before) if before else ()) != (
                    canary.backend_services(after) if after else ()
                ):
                    dirty_apps |= self._service_apps.get(skey, set())
            self._canaries = canaries
            self._canaries_dirty = False

        for skey in sorted(regenerate):
            yield
            old = self._resources.get(skey)
            mesh = self._mesh.get(skey)
            new = (
                translate.service_resources(
                    mesh, self.options, zones=zones, split=self._canaries.get(skey)
                )
                if mesh is not None
                else None
            )
            if new is None:
                self._resources.pop(skey, None)
            else:
                self._resources[skey] = new
            self._eds_due.add(skey)
            if _app_facing(old) != _app_facing(new):
                dirty_apps |= self._service_apps.get(skey, set())
                # NOTE: a service appearing may resolve an Ingress path that was skipped.
                if skey in self._gateway_services or old is None or new is None:
                    self._gateways_dirty = self._gateways_dirty or bool(self._gateways)
        self._dirty_services.clear()

        self._emit_endpoints(puts, deletes)

        known = self.clusters()
        publish = sorted(self._synced)
        dirty_shards = self._dirty_shards & set(self._terms)
        self._dirty_shards -= dirty_shards
        if dirty_shards:
            every = set(self._nexuses) | set(self._app_wanted) | self._withheld_apps
            dirty_apps |= {a for a in every if keys.shard_of(a, self.shards) in dirty_shards}
        for ns in self._dirty_namespaces:
            dirty_apps |= self._app_namespaces.get(ns, set())
        self._dirty_namespaces.clear()
        dirty_apps = {a for a in dirty_apps if self._owns_app(a)}

        by_ns: dict[str, list[str]] = {}
        if dirty_apps:
            for ns, name in self._services:
                by_ns.setdefault(ns, []).append(name)
        for app in sorted(dirty_apps):
            yield
            self._forget_app(app)
            self._withheld_apps.discard(app)
            if app not in self._nexuses:
                self._delete_app(app, deletes)
                continue
            nexuses = self._nexuses[app].values()
            wanted, diags = translate.app_services(nexuses, by_ns)
            # NOTE: a caller of a canaried service needs its backends' clusters and endpoints.
            wanted = canary.with_backends(wanted, self._canaries)
            self._app_wanted[app] = wanted
            self._app_diags[app] = diags
            for skey in wanted:
                self._service_apps.setdefault(skey, set()).add(app)
            for ns in {ref.namespace or n.namespace for n in nexuses for ref in n.services}:
                self._app_namespaces.setdefault(ns, set()).add(app)
            if not self._app_ready(app, wanted):
                # NOTE: what etcd holds for it stays as it is until every cluster is synced.
                self._withheld_apps.add(app)
                continue
            visible = [self._resources[k] for k in wanted if k in self._resources]
            for k8s in publish:
                body = snapshot.encode_app(translate.app_snapshot(app, k8s, visible, self.options))
                self._emit_app(keys.app_snapshot_key(app, k8s), body, puts, deletes)
            self._delete_app(app, deletes, keep=known)
            self._diagnostics_of(keys.diagnostics_key(app), diags, puts, deletes)

        if self._gateways_dirty or dirty_shards:
            self._compute_gateways(publish, known, puts, deletes)

        if dirty_shards:
            self._sweep(dirty_shards, publish, known, puts, deletes)

        if self._mesh_diags_dirty and self._owns_key(keys.MESH_DIAGNOSTICS):
            every_diag = (
                [d for ds in self._service_diags.values() for d in ds]
                + self._zone_diags
                + self._canary_diags
                + self._gateway_diags
            )
            self._diagnostics_of(keys.MESH_DIAGNOSTICS, every_diag, puts, deletes)
            self._mesh_diags_dirty = False
            DIAGNOSTICS.clear()
            for d in every_diag + [d for ds in self._app_diags.values() for d in ds]:
                DIAGNOSTICS.labels(reason=d.reason).inc()
        if self._localities_dirty and keys.shard_of(keys.DEFAULT_APP, self.shards) in self._terms:
            self._emit_localities(puts, deletes)
        WITHHELD.labels(what="apps").set(len(self._withheld_apps))
        WITHHELD.labels(what="services").set(len(self._withheld_services))
        deletes = {k for k in deletes if k in self._written and k not in puts}
        return puts, deletes

    def _emit_localities(self, puts: dict[str, bytes], deletes: set[str]) -> None:
        """``localities/<cluster>``: region and zone of each Node, for the front-ends to place a
        sidecar that names its node instead of its zone (a pod sees no node labels)."""
        due, self._localities_dirty = self._localities_dirty, set()
        for cluster in sorted(due):
            key = keys.localities_key(cluster)
            nodes = {
                name: [node.region, node.zone]
                for (c, name), node in sorted(self._nodes.items())
                if c == cluster
            }
            if not nodes:
                deletes.add(key)
                continue
            body = json.dumps({"nodes": nodes}, sort_keys=True, separators=(",", ":")).encode()
            if self._changed_key(key, body):
                puts[key] = body

    def _emit_endpoints(self, puts: dict[str, bytes], deletes: set[str]) -> None:
        """The shared endpoint assignments of owned services that are due, if ready."""
        due, self._eds_due = self._eds_due, set()
        for skey in sorted(due):
            if not self._owns_service(skey):
                continue
            if not self._service_ready(skey):
                self._withheld_services.add(skey)
                continue
            self._withheld_services.discard(skey)
            res = self._resources.get(skey)
            variants = {
                (name, variant): body
                for name, by_variant in (res.endpoints.items() if res is not None else ())
                for variant, body in by_variant.items()
            }
            for name, variant in self._eds_names.get(skey, set()) - set(variants):
                deletes.add(keys.eds_key(name, variant))
            for (name, variant), body in variants.items():
                key = keys.eds_key(name, variant)
                if self._changed_key(key, body):
                    puts[key] = body
            if variants:
                self._eds_names[skey] = set(variants)
            else:
                self._eds_names.pop(skey, None)

    def _emit_app(self, key: str, body: bytes, puts: dict[str, bytes], deletes: set[str]) -> None:
        """An app snapshot (whole, or its parts then its head); parts no longer named go."""
        parts = snapshot.split_app(body)
        app, k8s = keys.parse_app_snapshot_key(key)
        wanted_chunks = {keys.chunk_key(app, k8s, digest) for digest, _ in parts.chunks}
        for digest, chunk in parts.chunks:
            ck = keys.chunk_key(app, k8s, digest)
            if ck not in self._written:
                puts[ck] = chunk
        if self._changed_key(key, parts.head):
            puts[key] = parts.head
        deletes |= self._chunks.get(key, set()) - wanted_chunks

    def _delete_app(
        self,
        app: model.AppName,
        deletes: set[str],
        *,
        keep: set[model.ClusterName] | None = None,
    ) -> None:
        """Deletes the app's snapshots (and their parts) for every cluster not in ``keep``,
        and, when none is kept, its diagnostics."""
        prefix = f"{keys.APP_SNAPSHOTS}{app}/"
        for key in [k for k in self._written if k.startswith(prefix)]:
            _, k8s = keys.parse_app_snapshot_key(key)
            if keep is None or k8s not in keep:
                deletes.add(key)
                deletes |= self._chunks.get(key, set())
        if keep is None:
            deletes.add(keys.diagnostics_key(app))

    def _sweep(
        self,
        shards: set[int],
        publish: Sequence[model.ClusterName],
        known: set[model.ClusterName],
        puts: dict[str, bytes],
        deletes: set[str],
    ) -> None:
        """Keys of ``shards`` that no app, service or gateway owns any more; ``_default``."""
        default_owner = keys.shard_of(keys.DEFAULT_APP, self.shards)
        if default_owner in shards:
            # NOTE: what sidecars of an app without a snapshot get (their health listener).
            for k8s in publish:
                body = snapshot.encode_app(
                    translate.app_snapshot(keys.DEFAULT_APP, k8s, [], self.options)
                )
                self._emit_app(keys.app_snapshot_key(keys.DEFAULT_APP, k8s), body, puts, deletes)
            self._mesh_diags_dirty = True
        apps = set(self._nexuses) | set(self._gateway_apps) | {keys.DEFAULT_APP}
        live_eds = {keys.eds_key(*n) for names in self._eds_names.values() for n in names}
        for key in list(self._written):
            owner = keys.owner_shard(key, self.shards)
            if owner not in shards:
                continue
            if key.startswith(keys.APP_SNAPSHOTS):
                app, k8s = keys.parse_app_snapshot_key(key)
                if app not in apps or k8s not in known:
                    deletes.add(key)
                    deletes |= self._chunks.get(key, set())
            elif key.startswith(keys.CHUNKS):
                head = _head_of_chunk(key)
                if head not in self._written or key not in self._chunks.get(head, set()):
                    deletes.add(key)
            elif key.startswith(keys.EDS_SNAPSHOTS):
                if key not in live_eds:
                    deletes.add(key)
            elif key.startswith(keys.LOCALITIES):
                if not any(c == keys.parse_localities_key(key) for c, _ in self._nodes):
                    deletes.add(key)
            elif key.startswith(keys.DIAGNOSTICS) and key != keys.MESH_DIAGNOSTICS:
                app = model.AppName(key[len(keys.DIAGNOSTICS) :])
                if app not in self._app_diags and app not in self._gateway_apps:
                    deletes.add(key)

    def _compute_gateways(
        self,
        publish: Sequence[model.ClusterName],
        known: set[model.ClusterName],
        puts: dict[str, bytes],
        deletes: set[str],
    ) -> None:
        """Every gateway's snapshot, rebuilt when a Gateway, an Ingress or a backend changed.

        NOTE: gateways are few (one per ingress class and port), so all are rebuilt together;
        unchanged bytes are not written, and only the gateways of our shards are.
        """
        resolved, diags = gateway.resolve(
            self._gateways.values(), self._ingresses.values(), self._mesh
        )
        if diags.get("", []) != self._gateway_diags:
            self._gateway_diags = diags.get("", [])
            self._mesh_diags_dirty = True
        for app in set(self._gateway_apps) - set(resolved):
            if self._owns_app(app):
                self._delete_app(app, deletes)
        self._gateway_services = set()
        sources = {g.cluster for g in self._gateways.values()}
        sources |= {i.cluster for i in self._ingresses.values()}
        for app, res in resolved.items():
            self._gateway_services.update(res.services)
            if not self._owns_app(app):
                continue
            if not (sources <= self._synced and all(map(self._service_ready, res.services))):
                self._withheld_apps.add(app)
                continue
            self._withheld_apps.discard(app)
            backends = [self._resources[k] for k in res.services if k in self._resources]
            for k8s in publish:
                body = snapshot.encode_app(gateway.gateway_snapshot(res, k8s, backends))
                self._emit_app(keys.app_snapshot_key(app, k8s), body, puts, deletes)
            self._delete_app(app, deletes, keep=known)
            self._diagnostics_of(keys.diagnostics_key(app), diags.get(app, []), puts, deletes)
        self._gateway_apps = resolved
        self._gateways_dirty = False

    def _forget_app(self, app: model.AppName) -> None:
        for skey in self._app_wanted.pop(app, []):
            self._service_apps.get(skey, set()).discard(app)
        for apps in self._app_namespaces.values():
            apps.discard(app)
        self._app_diags.pop(app, None)

    def _diagnostics_of(
        self,
        key: str,
        diags: Iterable[translate.Diagnostic],
        puts: dict[str, bytes],
        deletes: set[str],
    ) -> None:
        unique = sorted(set(diags))
        before = self._logged.get(key, set())
        for d in unique:
            if d not in before:
                # NOTE: logged once, when it appears; it stays visible in etcd and metrics.
                log.log(
                    logging.ERROR if d.severity == translate.Severity.ERROR else logging.WARNING,
                    "translation: %s",
                    d.message,
                    extra={"object": d.object, "reason": d.reason},
                )
        self._logged[key] = set(unique)
        if not unique:
            deletes.add(key)
            return
        doc = [
            {"object": d.object, "reason": d.reason, "message": d.message, "severity": d.severity}
            for d in unique
        ]
        body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        if len(body) > MAX_DIAGNOSTICS_BYTES:
            # NOTE: a mesh broken everywhere must not make a value etcd refuses: the first
            # ones are kept (sorted, so stable), the count of the rest is said; every one is
            # still in the metrics and was logged.
            kept: list[dict[str, str]] = []
            size = 2
            for entry in doc:
                size += len(json.dumps(entry, sort_keys=True, separators=(",", ":"))) + 1
                if size > MAX_DIAGNOSTICS_BYTES - 256:
                    break
                kept.append(entry)
            kept.append(
                {
                    "object": "",
                    "reason": "diagnostics-truncated",
                    "message": f"{len(doc) - len(kept)} more diagnostics not stored here",
                    "severity": translate.Severity.WARNING,
                }
            )
            body = json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()
        if self._changed_key(key, body):
            puts[key] = body

    def record_written(self, puts: dict[str, bytes], deletes: Iterable[str]) -> None:
        """Remembers what etcd now holds, after ``puts`` and ``deletes`` landed."""
        for key, body in puts.items():
            self._written[key] = _digest(body)
            KEYS_WRITTEN.labels(kind=_kind_of_key(key)).inc()
            if key.startswith(keys.CHUNKS):
                self._chunks.setdefault(_head_of_chunk(key), set()).add(key)
        for key in deletes:
            self._written.pop(key, None)
            KEYS_WRITTEN.labels(kind="delete").inc()
            if key.startswith(keys.CHUNKS):
                head = _head_of_chunk(key)
                chunks = self._chunks.get(head)
                if chunks is not None:
                    chunks.discard(key)
                    if not chunks:
                        del self._chunks[head]

    async def flush(self) -> None:
        """Publishes what changed: each shard's writes under its fence, make-before-break.

        Across every shard: endpoint assignments and snapshot parts first, then app
        snapshots and diagnostics, then deletions. A shard whose fence is refused is lost
        (its term ends); the other shards' writes go on.
        """
        started = time.perf_counter()
        async with self._computing:
            puts, deletes = await self.compute_async()
        by_shard: dict[int, tuple[dict[str, bytes], dict[str, bytes], list[str]]] = {}
        for key, body in puts.items():
            shard = keys.owner_shard(key, self.shards)
            if shard is None or shard not in self._terms:
                continue
            first, second, _ = by_shard.setdefault(shard, ({}, {}, []))
            early = key.startswith((keys.EDS_SNAPSHOTS, keys.CHUNKS))
            (first if early else second)[key] = body
        for key in sorted(deletes):
            shard = keys.owner_shard(key, self.shards)
            if shard is not None and shard in self._terms:
                by_shard.setdefault(shard, ({}, {}, []))[2].append(key)
        wrote = 0
        for phase in range(3):
            for shard in sorted(by_shard):
                term = self._terms.get(shard, _NOT_LEADING)
                if term is _NOT_LEADING:
                    continue  # NOTE: lost during this flush: its keys are no longer ours.
                ops = by_shard[shard][phase]
                if not ops:
                    continue
                fence = term.fence if isinstance(term, election.Leadership) else None
                try:
                    if phase < 2:
                        assert isinstance(ops, dict)
                        await self.etcd.apply(puts=dict(sorted(ops.items())), fence=fence)
                    else:
                        assert isinstance(ops, list)
                        await self.etcd.apply(puts={}, deletes=ops, fence=fence)
                except etcd_mod.Deposed as exc:
                    DEPOSED.inc()
                    log.warning(
                        "deposed: a write for the shard was refused",
                        extra={"shard": shard, "error": str(exc)},
                    )
                    if isinstance(term, election.Leadership):
                        term.lost.set()
                    self.lose(shard)
                    continue
                if self._terms.get(shard, _NOT_LEADING) is term:
                    if phase < 2:
                        assert isinstance(ops, dict)
                        self.record_written(ops, ())
                    else:
                        assert isinstance(ops, list)
                        self.record_written({}, ops)
                wrote += len(ops)
        if wrote:
            log.info("published", extra={"puts": len(puts), "deletes": len(deletes)})
        TRANSLATIONS.inc()
        FLUSH_SECONDS.observe(time.perf_counter() - started)
        self.generation += 1
        self.published_shards = frozenset(self._terms)
        if self._terms:
            self.published.set()
        async with self._flushed:
            self._flushed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Waits until ``predicate()`` holds after a flush (or already holds)."""
        async with self._flushed:
            await self._flushed.wait_for(predicate)

    async def run(self, health: runtime.Health) -> None:
        """Lists, then watches and publishes until cancelled.

        Any doubt about what etcd holds (a compaction past our revision, a failed write,
        etcd unreachable) starts over from a fresh listing, with backoff while etcd is down;
        what sidecars are served stays in etcd meanwhile.
        """
        delay = 0.5
        while True:
            started = time.monotonic()
            try:
                await self._run_once(health)
            except* etcd_mod.Compacted as group:
                log.warning(
                    "etcd compacted past our revision, relisting",
                    extra={"error": str(group.exceptions[0])},
                )
            except* etcd_mod.FenceMoved as group:
                log.warning(
                    "a write reported failed has landed since, relisting",
                    extra={"error": str(group.exceptions[0])},
                )
            except* etcd_mod.EtcdUnavailable as group:
                if time.monotonic() - started > 10.0:
                    delay = 0.5  # NOTE: a new outage after a healthy run starts over.
                if health.ready or delay == 0.5:
                    log.error(
                        "etcd unavailable, retrying", extra={"error": str(group.exceptions[0])}
                    )
                health.set_ready(False, "etcd unavailable")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _run_once(self, health: runtime.Health) -> None:
        state = await self.etcd.get_prefix(keys.STATE)
        synced = await self.etcd.get_prefix(keys.SYNCED)
        config = await self.etcd.get_prefix(keys.CONFIG)
        self._clear_state()
        self._written = {}
        self._chunks = {}
        self.load(state)
        self.state_seen(state.revision)
        self.load(synced)
        self.load(config)
        if self._terms:
            # NOTE: what our shards hold is read again, by a listing that starts after every
            # term we hold began (a shard gained meanwhile adopts its own, newer, listing).
            items = await self._listing_for_gain()
            for shard in list(self._terms):
                self._adopt(shard, items)
        self.loaded.set()
        self._changed.set()
        health.set_ready(True)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._follow_state(state.revision + 1))
            tasks.create_task(self._follow(keys.SYNCED, synced.revision + 1))
            tasks.create_task(self._follow(keys.CONFIG, config.revision + 1))
            tasks.create_task(self._publisher())

    async def _follow(self, prefix: str, revision: int) -> None:
        async for ev in self.etcd.watch_prefix(prefix, start_revision=revision):
            async with self._computing:
                self.apply(ev.key, ev.value)

    async def _follow_state(self, revision: int) -> None:
        async for ev in self.etcd.watch_progress(
            keys.STATE, start_revision=revision, progress=self._progress
        ):
            async with self._computing:
                if isinstance(ev, etcd_mod.Event):
                    self.apply(ev.key, ev.value)
                self.state_seen(ev.revision)

    async def _publisher(self) -> None:
        loop = asyncio.get_running_loop()
        started = -math.inf
        while True:
            await self._changed.wait()
            # NOTE: the debounce coalesces a burst (a roll-out) into one publication; under
            # sustained changes publications start at most every ``min_interval`` s, so each
            # carries more changes and every sidecar gets fewer pushes. A lone change waits
            # for the debounce only.
            await asyncio.sleep(max(self.debounce, started + self.min_interval - loop.time()))
            started = loop.time()
            self._changed.clear()
            # NOTE: a failed write raises out of here: ``run`` relists, since what landed is
            # unknown and the computed state has moved on.
            await self.flush()


_NOT_LEADING = object()

COMPUTE_SLICE = 0.02
"""Seconds of computing between turns given to the event loop."""

MAX_DIAGNOSTICS_BYTES = 256 * 1024
"""A diagnostics value stays well under etcd's request limit."""


def _marker_revision(value: bytes) -> int:
    """The state revision a synced marker vouches for (0 when it names none)."""
    try:
        doc = json.loads(value)
        revision = doc.get("revision", 0) if isinstance(doc, dict) else 0
        return int(revision) if isinstance(revision, int) else 0
    except ValueError:
        return 0


def _head_of_chunk(key: str) -> str:
    """The app snapshot key whose parts ``key`` (a chunk key) is one of."""
    app, k8s = key[len(keys.CHUNKS) :].split("/")[:2]
    return keys.app_snapshot_key(model.AppName(app), model.ClusterName(k8s))


def _digest(body: bytes) -> bytes:
    """What ``_written`` keeps of a value: enough to tell equal bytes, far smaller."""
    return hashlib.blake2b(body, digest_size=16).digest()


def _ports_of(svc: translate.MeshService | None) -> object:
    return None if svc is None else tuple(p.port for p in svc.ports)


def _app_facing(res: translate.ServiceResources | None) -> object:
    """What app snapshots hold of a service (everything but its endpoint assignments)."""
    if res is None:
        return None
    return (res.clusters, res.routes, sorted(res.listeners.items()))


def _make_before_break(puts: dict[str, bytes]) -> dict[str, bytes]:
    """Shared endpoint assignments before the app snapshots that reference them."""
    return dict(
        sorted(puts.items(), key=lambda kv: (not kv[0].startswith(keys.EDS_SNAPSHOTS), kv[0]))
    )


def _kind_of_key(key: str) -> str:
    if key.startswith(keys.EDS_SNAPSHOTS):
        return "eds"
    if key.startswith(keys.APP_SNAPSHOTS):
        return "app"
    if key.startswith(keys.LOCALITIES):
        return "localities"
    return "diagnostics"


def _pop_nested(outer: dict[K, dict[J, V]], key: K, inner: J) -> None:
    bucket = outer.get(key)
    if bucket is not None:
        bucket.pop(inner, None)
        if not bucket:
            del outer[key]


@dataclasses.dataclass(frozen=True, slots=True)
class Replica:
    """How a translator shares the shards with the other replicas."""

    member_id: str
    lease_ttl: int = 5
    http: str = ""


async def lead_shards(translator: Translator, replica: Replica, *, wanted_shards: int) -> None:
    """Once the state is loaded: fixes the mesh's shard count, then leads this replica's
    share of the shards for as long as it runs (a new session after each lost one)."""
    await translator.loaded.wait()
    delay = 0.5
    while True:
        try:
            count = await shards_mod.shard_count(translator.etcd, wanted_shards)
            break
        except etcd_mod.EtcdError as exc:
            log.warning("cannot read the shard count, retrying", extra={"error": str(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    translator.use_shard_count(count)
    runner = shards_mod.ShardRunner(
        translator.etcd,
        shards=count,
        member=membership.Member(role=shards_mod.ROLE, id=replica.member_id, http=replica.http),
        gained=translator.gain,
        lost=translator.lose,
    )
    translator.shard_runner = runner
    await session.run_sessions(translator.etcd, ttl=replica.lease_ttl, body=runner.run)


@contextlib.asynccontextmanager
async def running(
    etcd: etcd_mod.Etcd,
    *,
    options: translate.Options | None = None,
    debounce: float = 0.01,
    replica: Replica | None = None,
    shards: int = 1,
) -> AsyncIterator[Translator]:
    """Runs a translator in the background for as long as the context is open.

    Without ``replica`` it leads every shard itself, without election (one process).
    """
    translator = Translator(
        etcd,
        options=options or translate.Options(),
        debounce=debounce,
        shards=shards,
        lead_all=replica is None,
    )
    tasks = [asyncio.create_task(translator.run(runtime.Health()))]
    if replica is not None:
        tasks.append(asyncio.create_task(lead_shards(translator, replica, wanted_shards=shards)))
    try:
        yield translator
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="navigator translator",
        description="Translate normalized mesh state in etcd into per-app Envoy snapshots. Run "
        "any number of replicas: they share the shards, one leader per shard.",
    )
    runtime.add_etcd_argument(parser)
    parser.add_argument("--http", default="127.0.0.1:9101", help="health and metrics address")
    parser.add_argument(
        "--shards",
        type=int,
        default=8,
        help="number of shards apps are hashed to; the first translator of a mesh fixes it "
        "(default %(default)s)",
    )
    runtime.add_member_arguments(
        parser, lease_help="seconds before the shards of a dead replica are taken over"
    )
    parser.add_argument(
        "--no-bind-to-port",
        action="store_true",
        help="listeners do not bind (sidecars behind an iptables redirect)",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        default=translate.HEALTH_PORT,
        help="port of every sidecar's /healthz listener, 0 for none (default %(default)s)",
    )
    parser.add_argument(
        "--debounce", type=float, default=0.01, help="seconds to coalesce changes (default 0.01)"
    )
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.setup_logging(args.log_level, component="translator")
    try:
        etcd_client = runtime.etcd_client(args)
    except ValueError as exc:
        log.error(f"navigator translator: {exc}")
        return 2
    if args.shards < 1 or args.lease_ttl < 2:
        log.error("navigator translator: --shards must be >= 1 and --lease-ttl >= 2")
        return 2

    async def amain(stop: asyncio.Event) -> int:
        health = runtime.Health()
        options = translate.Options(
            bind_to_port=not args.no_bind_to_port, health_port=args.health_port
        )
        async with (
            etcd_client as client,
            runtime.http_server(args.http, health) as addr,
        ):
            log.info("translator started", extra={"etcd": args.etcd, "http": addr, "id": args.id})
            translator = Translator(
                client,
                options=options,
                debounce=args.debounce,
                shards=args.shards,
                lead_all=False,
            )
            replica = Replica(member_id=args.id, lease_ttl=args.lease_ttl, http=addr)
            tasks = [
                asyncio.create_task(translator.run(health)),
                asyncio.create_task(lead_shards(translator, replica, wanted_shards=args.shards)),
            ]
            await runtime.wait_stop(stop, *tasks)
        log.info("translator stopped")
        return 0

    return runtime.run(amain)
