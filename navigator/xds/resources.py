"""What a sidecar should hold, per type, and the response bodies shared between streams.

Both protocol variants (State of the World and Delta) start from ``desired``: for one node
and type, the resources it should hold now (by name, pre-encoded by the cache) and their
version. The version is a content hash of every (name, resource hash) pair, so it is the same
on every front-end and in both variants: a sidecar moving between front-ends, or a SotW and a
Delta sidecar of the same app and zone, report the same versions for the same config.
"""

from __future__ import annotations

import collections
import dataclasses
import typing
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from navigator import keys, snapshot
from navigator.xds import cache as cache_mod
from navigator.xds import wire

WILDCARD_TYPES = frozenset({snapshot.CLUSTER, snapshot.LISTENER})
"""Types whose responses hold every resource of the app snapshot, whatever was requested."""

EMPTY_VERSION = snapshot.version_of(())


@dataclasses.dataclass(frozen=True, slots=True)
class NodeInfo:
    """Who is at the other end of a stream, from the Envoy ``Node`` of its first request."""

    id: str
    app: str
    k8s_cluster: str
    region: str
    zone: str
    admin: str = ""
    """``host:port`` of the sidecar's admin, as its bootstrap says (``metadata.admin``)."""
    node_name: str = ""
    """The Kubernetes node the sidecar's pod runs on (``metadata.node_name``), if it says."""

    @classmethod
    def from_proto(cls, node: Any) -> NodeInfo:
        fields = node.metadata.fields
        app = fields["app"].string_value if "app" in fields else node.cluster
        k8s_cluster = fields["k8s_cluster"].string_value if "k8s_cluster" in fields else ""
        if not node.id or not app or not k8s_cluster:
            raise ValueError(
                "the Envoy node must carry id, metadata.app (or cluster) and "
                f"metadata.k8s_cluster; got id={node.id!r} app={app!r} "
                f"k8s_cluster={k8s_cluster!r}"
            )
        return cls(
            id=node.id,
            app=app,
            k8s_cluster=k8s_cluster,
            region=node.locality.region,
            zone=node.locality.zone,
            admin=fields["admin"].string_value if "admin" in fields else "",
            node_name=fields["node_name"].string_value if "node_name" in fields else "",
        )


def placed(source: cache_mod.ConfigSource, node: NodeInfo) -> NodeInfo:
    """A node that names its Kubernetes node and no zone gets that node's region and zone,
    as the translators published them: a pod cannot see its node's topology labels."""
    if node.zone or not node.node_name:
        return node
    found = source.locality(node.k8s_cluster, node.node_name)
    if found is None:
        return node
    region, zone = found
    return dataclasses.replace(node, region=node.region or region, zone=zone)


Desired = tuple[str, Mapping[str, cache_mod.Encoded]]
"""(version, resources by name) a node should hold for one type."""


def desired(
    source: cache_mod.ConfigSource, node: NodeInfo, type_url: str, names: frozenset[str]
) -> Desired | None:
    """What ``node`` should hold of ``type_url``; None = not known yet (no listing loaded).

    ``names`` is the subscription of a non-wildcard type (EDS, RDS); names the app snapshot
    does not have are left out (the caller says how its variant answers for them).
    """
    if not source.loaded:
        return None
    entry = _entry_of(source, node)
    if entry is None:
        return EMPTY_VERSION, {}
    if type_url in WILDCARD_TYPES:
        # NOTE: the app entry's own mapping and version, shared by every stream of the app.
        return entry.versions.get(type_url, EMPTY_VERSION), entry.of_type(type_url)
    # NOTE: every sidecar of an app and zone with the same subscription gets the same answer:
    # computed once per state, not once per stream (5,000 streams of 100 apps: 50 times fewer).
    memo = source.memo()
    key = (type_url, node.app, node.k8s_cluster, node.zone, names)
    found = memo.get(key)
    if found is None:
        if type_url == snapshot.ENDPOINT:
            found = _eds_since(source, entry, node.zone, names, key)
        else:
            found = _named(source, entry, node.zone, type_url, names)
        memo[key] = found
    return typing.cast(Desired, found)


def _eds_since(
    source: cache_mod.ConfigSource,
    entry: cache_mod.AppEntry,
    zone: str,
    names: frozenset[str],
    key: Hashable,
) -> Desired:
    """EDS ``desired`` from the last answer for ``key`` and the assignments changed since.

    NOTE: the per-state memo is emptied by every change, and at a mesh's scale a stream's
    subscription is 40 names (4,000 for a sidecar that sees the whole mesh) of which one
    changed: looking them all up again on every push was a third of a front-end's CPU.
    """
    epoch = source.eds_epoch()
    last = source.history().get(key)
    result: Desired | None = None
    if last is not None and last[0] is entry:
        changed = source.eds_changed_since(last[1])
        if changed is not None:
            version, items = last[2]
            touched = [n for n in changed if n in names and n in entry.endpoints]
            if not touched:
                result = version, items
            else:
                view = source.zone_view(zone)
                updated = dict(items)  # NOTE: a copy: streams hold the previous mapping.
                reorder = False
                for name in touched:
                    found = view.get(name)
                    if found is None:
                        updated.pop(name, None)
                    else:
                        reorder = reorder or name not in updated
                        updated[name] = found
                if reorder:
                    updated = dict(sorted(updated.items()))
                result = (
                    snapshot.version_of_sorted([(e.name, e.hash) for e in updated.values()]),
                    updated,
                )
    if result is None:
        result = _named(source, entry, zone, snapshot.ENDPOINT, names)
    source.history()[key] = (entry, epoch, result)
    return result


def expected(source: cache_mod.ConfigSource, node: NodeInfo, type_url: str) -> Desired | None:
    """``desired`` for a node that subscribes, as Envoy does, to every endpoint assignment its
    clusters name and every route its listeners name: what ``navigator proxy-status`` and
    ``proxy-diff`` hold a sidecar's config against."""
    entry = _entry_of(source, node)
    names: frozenset[str] = frozenset()
    if entry is not None and type_url == snapshot.ENDPOINT:
        names = entry.endpoints
    elif entry is not None and type_url == snapshot.ROUTE:
        names = frozenset(entry.of_type(snapshot.ROUTE))
    return desired(source, node, type_url, names)


def _entry_of(source: cache_mod.ConfigSource, node: NodeInfo) -> cache_mod.AppEntry | None:
    # NOTE: an app without a snapshot (no Nexus) gets the default one: its health listener.
    return source.app(node.app, node.k8s_cluster) or source.app(keys.DEFAULT_APP, node.k8s_cluster)


def body_of(encoded: cache_mod.Encoded) -> bytes:
    """The serialized resource inside an ``Encoded`` entry (for people and tools, not streams)."""
    from envoy.service.discovery.v3 import discovery_pb2

    response = discovery_pb2.DiscoveryResponse.FromString(encoded.entry)
    value: bytes = response.resources[0].value
    return value


def _named(
    source: cache_mod.ConfigSource,
    entry: cache_mod.AppEntry,
    zone: str,
    type_url: str,
    names: frozenset[str],
) -> Desired:
    items: dict[str, cache_mod.Encoded] = {}
    if type_url == snapshot.ROUTE:
        routes = entry.of_type(snapshot.ROUTE)
        for name in sorted(names):
            if name in routes:
                items[name] = routes[name]
    elif type_url == snapshot.ENDPOINT:
        # NOTE: per stream and push at a mesh's scale (40 names, thousands of streams): names
        # sorted once per subscription, the zone's assignments in one dict.
        endpoints = entry.endpoints
        get = source.zone_view(zone).get
        for name in _sorted(names):
            if name in endpoints and (found := get(name)) is not None:
                items[name] = found
        # NOTE: the items are in name order already: no sort of the pairs again.
        return snapshot.version_of_sorted([(e.name, e.hash) for e in items.values()]), items
    return snapshot.version_of((e.name, e.hash) for e in items.values()), items


_SORTED: dict[frozenset[str], tuple[str, ...]] = {}


def _sorted(names: frozenset[str]) -> tuple[str, ...]:
    found = _SORTED.get(names)
    if found is None:
        if len(_SORTED) > 65536:
            _SORTED.clear()
        found = _SORTED[names] = tuple(sorted(names))
    return found


def build(
    source: cache_mod.ConfigSource, node: NodeInfo, type_url: str, names: frozenset[str]
) -> tuple[str, list[cache_mod.Encoded]] | None:
    """``desired`` as (version, resources in name order)."""
    found = desired(source, node, type_url, names)
    if found is None:
        return None
    version, items = found
    return version, list(items.values())


class ResponseCache:
    """Response bodies (a response without its nonce) shared by every stream, LRU-bounded.

    NOTE: a SotW body is keyed by (type URL, version): the version hashes every (name,
    resource hash) pair, so equal keys mean byte-identical resources, whichever app, cluster
    or zone asked. A Delta body is keyed by what it carries (the (name, hash) pairs sent and
    the names removed), so the sidecars of one app and zone that receive the same change share
    one body.
    """

    def __init__(self, *, max_entries: int = 4096, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._entries: collections.OrderedDict[Hashable, bytes] = collections.OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def body(self, type_url: str, version: str, items: list[cache_mod.Encoded]) -> bytes:
        """A SotW DiscoveryResponse body."""
        return self.get(
            (type_url, version),
            lambda: wire.response_body(
                type_url=type_url, version=version, entries=[item.entry for item in items]
            ),
        )

    def partial_body(self, type_url: str, version: str, items: list[cache_mod.Encoded]) -> bytes:
        """A SotW body of a named type carrying only ``items``, the changed part of the set
        ``version`` names: keyed by what it carries too."""
        return self.get(
            (type_url, version, tuple((item.name, item.hash) for item in items)),
            lambda: wire.response_body(
                type_url=type_url, version=version, entries=[item.entry for item in items]
            ),
        )

    def get(self, key: Hashable, make: Callable[[], bytes]) -> bytes:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return found
        self.misses += 1
        body = make()
        self._entries[key] = body
        self._bytes += len(body)
        while self._entries and (
            len(self._entries) > self._max_entries or self._bytes > self._max_bytes
        ):
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted)
        return body
