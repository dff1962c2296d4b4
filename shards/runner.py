"""The translator process: watches normalized state in etcd and publishes snapshots.

All I/O of translation lives here; ``shards.translate`` stays pure. The runner keeps the state
in memory, marks what each change touches (services, apps), recomputes only that after a short
debounce, and writes only keys whose bytes changed, so work and etcd writes per change are
proportional to the change. A new runner deriving the same state writes nothing: it compares
against what etcd already holds.

An app is published only once every Kubernetes cluster that has state has written its synced
marker, so a half-listed cluster never makes sidecars drop endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TypeVar

import prometheus_client

from coordinator import etcd as etcd_mod
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

ServiceKey = tuple[str, str]
SliceId = tuple[model.ClusterName, str]
"""An EndpointSlice within its Service: (cluster, slice name)."""
K = TypeVar("K")
J = TypeVar("J")
V = TypeVar("V")


class Translator:
    """In-memory state, dirty tracking and publication for one shard (all apps, for now)."""

    def __init__(
        self, etcd: etcd_mod.Etcd, *, options: translate.Options, debounce: float = 0.02
    ) -> None:
        self.etcd = etcd
        self.options = options
        self.debounce = debounce
        self.published = asyncio.Event()
        """Set after the first publication (every cluster synced)."""
        self.generation = 0
        """Incremented after every flush that completed; see ``wait_until``."""
        self.loaded = asyncio.Event()
        """Set once the state in etcd has been listed."""
        self._flushed = asyncio.Condition()
        self._written: dict[str, bytes] = {}
        """What etcd holds under the snapshot and diagnostics prefixes, as we last saw it."""
        self._changed = asyncio.Event()
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
        self._dirty_apps: set[model.AppName] = set()
        self._all_apps_dirty = True
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
        """Per service: the (Envoy cluster name, variant) of its published EDS keys."""
        self._published_clusters: set[model.ClusterName] = set()
        self._mesh_diags_dirty = True

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
                self._synced.discard(cluster)
            else:
                self._synced.add(cluster)
            self._all_apps_dirty = True
            self._changed.set()
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
        self._all_apps_dirty = True
        self._changed.set()

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
        return set(self._per_cluster) | self._synced

    def all_synced(self) -> bool:
        clusters = self.clusters()
        return bool(clusters) and clusters <= self._synced

    def compute(self) -> tuple[dict[str, bytes], set[str]]:
        """Recomputes what is dirty; returns the keys to put and to delete.

        NOTE: work is proportional to what changed: only dirty services are translated, an
        app is rebuilt only when a service it sees changed what apps hold (clusters,
        listeners, routes: not endpoints, which live in shared keys), and only the keys of
        those services and apps are compared with what etcd holds.
        """
        puts: dict[str, bytes] = {}
        deletes: set[str] = set()
        dirty_apps = set(self._dirty_apps)
        self._dirty_apps.clear()

        regenerate = set(self._dirty_services)
        for skey in sorted(self._dirty_services):
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
            variants = {
                (name, variant): body
                for name, by_variant in (new.endpoints.items() if new is not None else ())
                for variant, body in by_variant.items()
            }
            for name, variant in self._eds_names.get(skey, set()) - set(variants):
                deletes.add(keys.eds_key(name, variant))
            for (name, variant), body in variants.items():
                key = keys.eds_key(name, variant)
                if self._written.get(key) != body:
                    puts[key] = body
            if variants:
                self._eds_names[skey] = set(variants)
            else:
                self._eds_names.pop(skey, None)
            if _app_facing(old) != _app_facing(new):
                dirty_apps |= self._service_apps.get(skey, set())
                # NOTE: a service appearing may resolve an Ingress path that was skipped.
                if skey in self._gateway_services or old is None or new is None:
                    self._gateways_dirty = self._gateways_dirty or bool(self._gateways)
        self._dirty_services.clear()

        clusters = self.clusters()
        if clusters != self._published_clusters:
            self._all_apps_dirty = True
        if self._all_apps_dirty:
            dirty_apps |= set(self._nexuses) | set(self._app_wanted)
        for ns in self._dirty_namespaces:
            dirty_apps |= self._app_namespaces.get(ns, set())
        self._dirty_namespaces.clear()

        by_ns: dict[str, list[str]] = {}
        if dirty_apps:
            for ns, name in self._services:
                by_ns.setdefault(ns, []).append(name)
        for app in sorted(dirty_apps):
            self._forget_app(app)
            if app not in self._nexuses:
                deletes |= {keys.app_snapshot_key(app, k8s) for k8s in self._published_clusters}
                deletes.add(keys.diagnostics_key(app))
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
            visible = [self._resources[k] for k in wanted if k in self._resources]
            for k8s in sorted(clusters):
                body = snapshot.encode_app(translate.app_snapshot(app, k8s, visible, self.options))
                key = keys.app_snapshot_key(app, k8s)
                if self._written.get(key) != body:
                    puts[key] = body
            for k8s in self._published_clusters - clusters:
                deletes.add(keys.app_snapshot_key(app, k8s))
            self._diagnostics_of(keys.diagnostics_key(app), diags, puts, deletes)

        if self._all_apps_dirty or self._gateways_dirty:
            self._compute_gateways(clusters, puts, deletes)

        if self._all_apps_dirty:
            # NOTE: after a restart or a change of clusters, drop what no app or service owns.
            live_apps = {keys.app_snapshot_key(a, k) for a in self._app_wanted for k in clusters}
            live_apps |= {keys.app_snapshot_key(a, k) for a in self._gateway_apps for k in clusters}
            # NOTE: what sidecars of an app without a snapshot get (their health listener).
            for k8s in sorted(clusters):
                key = keys.app_snapshot_key(keys.DEFAULT_APP, k8s)
                live_apps.add(key)
                body = snapshot.encode_app(
                    translate.app_snapshot(keys.DEFAULT_APP, k8s, [], self.options)
                )
                if self._written.get(key) != body:
                    puts[key] = body
            live_eds = {keys.eds_key(*n) for names in self._eds_names.values() for n in names}
            live_diags = {
                keys.diagnostics_key(a) for a in (*self._app_diags, *self._gateway_apps)
            } | {keys.MESH_DIAGNOSTICS}
            deletes |= {
                key
                for key in self._written
                if (key.startswith(keys.APP_SNAPSHOTS) and key not in live_apps)
                or (key.startswith(keys.EDS_SNAPSHOTS) and key not in live_eds)
                or (key.startswith(keys.DIAGNOSTICS) and key not in live_diags)
            }
            self._mesh_diags_dirty = True
            self._all_apps_dirty = False
        self._published_clusters = clusters

        if self._mesh_diags_dirty:
            every = (
                [d for ds in self._service_diags.values() for d in ds]
                + self._zone_diags
                + self._canary_diags
                + self._gateway_diags
            )
            self._diagnostics_of(keys.MESH_DIAGNOSTICS, every, puts, deletes)
            self._mesh_diags_dirty = False
            DIAGNOSTICS.clear()
            for d in every + [d for ds in self._app_diags.values() for d in ds]:
                DIAGNOSTICS.labels(reason=d.reason).inc()
        deletes = {k for k in deletes if k in self._written and k not in puts}
        return puts, deletes

    def _compute_gateways(
        self, clusters: set[model.ClusterName], puts: dict[str, bytes], deletes: set[str]
    ) -> None:
        """Every gateway's snapshot, rebuilt when a Gateway, an Ingress or a backend changed.

        NOTE: gateways are few (one per ingress class and port), so all are rebuilt together;
        unchanged bytes are not written.
        """
        resolved, diags = gateway.resolve(
            self._gateways.values(), self._ingresses.values(), self._mesh
        )
        if diags.get("", []) != self._gateway_diags:
            self._gateway_diags = diags.get("", [])
            self._mesh_diags_dirty = True
        for app in set(self._gateway_apps) - set(resolved):
            deletes |= {keys.app_snapshot_key(app, k8s) for k8s in self._published_clusters}
            deletes.add(keys.diagnostics_key(app))
        self._gateway_services = set()
        for app, res in resolved.items():
            self._gateway_services.update(res.services)
            backends = [self._resources[k] for k in res.services if k in self._resources]
            for k8s in sorted(clusters):
                body = snapshot.encode_app(gateway.gateway_snapshot(res, k8s, backends))
                key = keys.app_snapshot_key(app, k8s)
                if self._written.get(key) != body:
                    puts[key] = body
            for k8s in self._published_clusters - clusters:
                deletes.add(keys.app_snapshot_key(app, k8s))
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
        if self._written.get(key) != body:
            puts[key] = body

    def record_written(self, puts: dict[str, bytes], deletes: Iterable[str]) -> None:
        """Remembers what etcd now holds, after ``puts`` and ``deletes`` landed."""
        for key, body in puts.items():
            self._written[key] = body
            KEYS_WRITTEN.labels(kind=_kind_of_key(key)).inc()
        for key in deletes:
            self._written.pop(key, None)
            KEYS_WRITTEN.labels(kind="delete").inc()

    async def flush(self) -> None:
        """Publishes what changed, if every cluster is synced."""
        if not self.all_synced():
            return
        started = time.perf_counter()
        puts, deletes = self.compute()
        if puts or deletes:
            await self.etcd.apply(puts=_make_before_break(puts), deletes=sorted(deletes))
            self.record_written(puts, deletes)
            log.info("published", extra={"puts": len(puts), "deletes": len(deletes)})
        TRANSLATIONS.inc()
        FLUSH_SECONDS.observe(time.perf_counter() - started)
        self.generation += 1
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
        written = await self.etcd.get_prefix(keys.SNAPSHOTS)
        diags = await self.etcd.get_prefix(keys.DIAGNOSTICS)
        self._written = {k: kv.value for k, kv in {**written.items, **diags.items}.items()}
        state = await self.etcd.get_prefix(keys.STATE)
        synced = await self.etcd.get_prefix(keys.SYNCED)
        config = await self.etcd.get_prefix(keys.CONFIG)
        self._clear_state()
        self.load(state)
        self.load(synced)
        self.load(config)
        self.loaded.set()
        self._changed.set()
        health.set_ready(True)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._follow(keys.STATE, state.revision + 1))
            tasks.create_task(self._follow(keys.SYNCED, synced.revision + 1))
            tasks.create_task(self._follow(keys.CONFIG, config.revision + 1))
            tasks.create_task(self._publisher())

    async def _follow(self, prefix: str, revision: int) -> None:
        async for ev in self.etcd.watch_prefix(prefix, start_revision=revision):
            self.apply(ev.key, ev.value)

    async def _publisher(self) -> None:
        while True:
            await self._changed.wait()
            # NOTE: the debounce coalesces a burst (a roll-out) into one publication.
            await asyncio.sleep(self.debounce)
            self._changed.clear()
            # NOTE: a failed write raises out of here: ``run`` relists, since what landed is
            # unknown and the computed state has moved on.
            await self.flush()


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
    return "diagnostics"


def _pop_nested(outer: dict[K, dict[J, V]], key: K, inner: J) -> None:
    bucket = outer.get(key)
    if bucket is not None:
        bucket.pop(inner, None)
        if not bucket:
            del outer[key]


@contextlib.asynccontextmanager
async def running(
    etcd: etcd_mod.Etcd, *, options: translate.Options | None = None, debounce: float = 0.02
) -> AsyncIterator[Translator]:
    """Runs a translator in the background for as long as the context is open."""
    translator = Translator(etcd, options=options or translate.Options(), debounce=debounce)
    task = asyncio.create_task(translator.run(runtime.Health()))
    try:
        yield translator
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="navigator translator",
        description="Translate normalized mesh state in etcd into per-app Envoy snapshots.",
    )
    parser.add_argument(
        "--etcd",
        default=os.environ.get("NAVIGATOR_ETCD", "http://127.0.0.1:2379"),
        help="etcd endpoints, comma-separated (default: $NAVIGATOR_ETCD or %(default)s)",
    )
    parser.add_argument("--http", default="127.0.0.1:9101", help="health and metrics address")
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
    parser.add_argument("--debounce", type=float, default=0.02, help="seconds to coalesce changes")
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.setup_logging(args.log_level, component="translator")
    try:
        endpoints = etcd_mod.parse_endpoints(args.etcd)
    except ValueError as exc:
        log.error(f"navigator translator: --etcd: {exc}")
        return 2

    async def amain(stop: asyncio.Event) -> int:
        health = runtime.Health()
        options = translate.Options(
            bind_to_port=not args.no_bind_to_port, health_port=args.health_port
        )
        async with (
            etcd_mod.Etcd(endpoints) as client,
            runtime.http_server(args.http, health) as addr,
        ):
            log.info("translator started", extra={"etcd": args.etcd, "http": addr})
            translator = Translator(client, options=options, debounce=args.debounce)
            task = asyncio.create_task(translator.run(health))
            await runtime.wait_stop(stop, task)
        log.info("translator stopped")
        return 0

    return runtime.run(amain)
