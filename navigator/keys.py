"""The etcd key schema: the one place where Navigator's keys are built and parsed.

WARNING - STABLE API. Every component, every version in a rolling upgrade and the operators'
tools read these keys. Changing the layout of an existing key breaks a running mesh: add new
keys (or a new ``/navigator/v2`` root) instead. Nothing outside this module builds a key.

Layout (``<ns>`` is ``_`` for cluster-scoped objects)::

    /navigator/v1/state/<cluster>/<kind>/<ns>/<name>   normalized object (navigator.model JSON)
    /navigator/v1/synced/<cluster>                      synced marker (JSON: revision, time)
    /navigator/v1/snapshots/apps/<app>/<cluster>        an app's snapshot for sidecars in <cluster>
    /navigator/v1/snapshots/eds/<ns>/<name>:<port>/<variant>
                                                        a shared ClusterLoadAssignment (protobuf)
    /navigator/v1/diagnostics/<app>                     what translation skipped for an app (JSON)
    /navigator/v1/config/cluster-weights/<cluster>      operator's weight for a cluster (JSON)
    /navigator/v1/config/tracing                        mesh-wide tracing setting (JSON)
    /navigator/v1/config/shards                         number of translator shards (JSON)
    /navigator/v1/diagnostics/_mesh                     ... and for services (any app)
    /navigator/v1/snapshots/localities/<cluster>        region and zone of every Node of <cluster>
                                                        (JSON), for sidecars that name their node
    /navigator/v1/snapshots/chunks/<app>/<cluster>/<hash>
                                                        a part of an app snapshot too large for
                                                        one value (its head names the parts)
    /navigator/v1/watchers/<cluster>/leader             the watcher replica writing <cluster>
                                                        (under that replica's lease)
    /navigator/v1/stale/<cluster>                       <cluster>'s API server is unreachable:
                                                        since when (JSON, no lease)
    /navigator/v1/shards/<n>/leader                     the translator leading shard <n> (lease)
    /navigator/v1/members/<role>/<id>                   a running process (JSON, under its lease)
    /navigator/v1/fences/<leadership key below v1/>     the fencing token of the last fenced
                                                        transaction under that key (decimal);
                                                        written in the same transaction

Who may write what (``WATCHER_WRITES``, ``TRANSLATOR_WRITES``, ``XDS_WRITES``): etcd enforces
it with one role per component (``coordinator.auth``); every component reads the whole root.

Leadership keys are written only by ``coordinator.election``: a leader's fencing token is the
create revision of its key, and every write it makes compares it.

Ownership: every key under ``snapshots/`` and ``diagnostics/`` belongs to exactly one
translator shard (``owner_shard``), whose leader alone writes it. An app's keys belong to the
app's shard (``shard_of``); a service's endpoint assignments to the shard of ``<ns>/<name>``;
the mesh's own keys (its diagnostics, the node localities) to the shard of ``_default``.
WARNING: changing ``shard_of`` makes two versions in a rolling upgrade disagree on who writes
what.

Cluster, app and object names are DNS labels or subdomains, so they never contain ``/``.
"""

from __future__ import annotations

import dataclasses
import hashlib

from navigator import model

ROOT = "/navigator/v1/"
STATE = ROOT + "state/"
SYNCED = ROOT + "synced/"
SNAPSHOTS = ROOT + "snapshots/"
APP_SNAPSHOTS = SNAPSHOTS + "apps/"
EDS_SNAPSHOTS = SNAPSHOTS + "eds/"
DIAGNOSTICS = ROOT + "diagnostics/"
CONFIG = ROOT + "config/"
CLUSTER_WEIGHTS = CONFIG + "cluster-weights/"
TRACING = CONFIG + "tracing"
"""The mesh-wide tracing setting (``navigator.model.Tracing`` JSON); absent: no tracing."""
SHARD_COUNT = CONFIG + "shards"
"""The number of translator shards (``{"shards": N}``); the first translator writes it."""
CHUNKS = SNAPSHOTS + "chunks/"
LOCALITIES = SNAPSHOTS + "localities/"
"""localities/<cluster>: ``{"nodes": {node: [region, zone]}}``, written by the mesh's shard."""
WATCHERS = ROOT + "watchers/"
STALE = ROOT + "stale/"
SHARDS = ROOT + "shards/"
MEMBERS = ROOT + "members/"
FENCES = ROOT + "fences/"
"""fences/<leadership key below the root>: put by every fenced transaction with its token, so a
recorded history shows which term made each write (``navigator chaos`` checks it)."""
SIDECARS = ROOT + "sidecars/"
"""sidecars/<front-end id>/<node id>: a connected sidecar's status, under the front-end's lease."""

CLUSTER_SCOPED = "_"
DEFAULT_APP = model.AppName("_default")
"""The snapshot a sidecar gets when its app has none (no Nexus): its health listener only.
``_`` cannot start an app name."""

DEFAULT_VARIANT = "_default"
"""The endpoint variant a sidecar gets when none was computed for its locality."""


class SchemaError(ValueError):
    """A key under the root does not follow the schema."""


def state_prefix(cluster: model.ClusterName | None = None) -> str:
    return STATE if cluster is None else f"{STATE}{cluster}/"


def state_key(obj: model.Object) -> str:
    ns = model.namespace_of(obj) or CLUSTER_SCOPED
    return f"{STATE}{obj.cluster}/{model.kind_of(obj).value}/{ns}/{obj.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class StateKey:
    cluster: model.ClusterName
    kind: model.Kind
    namespace: str
    name: str


def parse_state_key(key: str) -> StateKey:
    if not key.startswith(STATE):
        raise SchemaError(f"not a state key: {key!r}")
    parts = key[len(STATE) :].split("/")
    if len(parts) != 4:
        raise SchemaError(f"malformed state key: {key!r}")
    cluster, kind, ns, name = parts
    try:
        parsed_kind = model.Kind(kind)
    except ValueError as exc:
        raise SchemaError(f"unknown kind in state key: {key!r}") from exc
    return StateKey(
        cluster=model.ClusterName(cluster),
        kind=parsed_kind,
        namespace="" if ns == CLUSTER_SCOPED else ns,
        name=name,
    )


def synced_key(cluster: model.ClusterName) -> str:
    return f"{SYNCED}{cluster}"


def parse_synced_key(key: str) -> model.ClusterName:
    if not key.startswith(SYNCED):
        raise SchemaError(f"not a synced key: {key!r}")
    return model.ClusterName(key[len(SYNCED) :])


def app_snapshot_key(app: model.AppName, cluster: model.ClusterName) -> str:
    return f"{APP_SNAPSHOTS}{app}/{cluster}"


def parse_app_snapshot_key(key: str) -> tuple[model.AppName, model.ClusterName]:
    if not key.startswith(APP_SNAPSHOTS):
        raise SchemaError(f"not an app snapshot key: {key!r}")
    parts = key[len(APP_SNAPSHOTS) :].split("/")
    if len(parts) != 2:
        raise SchemaError(f"malformed app snapshot key: {key!r}")
    return model.AppName(parts[0]), model.ClusterName(parts[1])


def eds_key(envoy_cluster: str, variant: str = DEFAULT_VARIANT) -> str:
    """Key of a shared endpoint assignment; ``envoy_cluster`` is ``<ns>/<name>:<port>``."""
    return f"{EDS_SNAPSHOTS}{envoy_cluster}/{variant}"


def parse_eds_key(key: str) -> tuple[str, str]:
    """Returns (envoy cluster name, variant)."""
    if not key.startswith(EDS_SNAPSHOTS):
        raise SchemaError(f"not an EDS key: {key!r}")
    rest = key[len(EDS_SNAPSHOTS) :]
    name, sep, variant = rest.rpartition("/")
    if not sep or not name or not variant:
        raise SchemaError(f"malformed EDS key: {key!r}")
    return name, variant


def cluster_weight_key(cluster: model.ClusterName) -> str:
    return f"{CLUSTER_WEIGHTS}{cluster}"


def parse_cluster_weight_key(key: str) -> model.ClusterName:
    if not key.startswith(CLUSTER_WEIGHTS) or "/" in key[len(CLUSTER_WEIGHTS) :]:
        raise SchemaError(f"not a cluster weight key: {key!r}")
    return model.ClusterName(key[len(CLUSTER_WEIGHTS) :])


MESH_DIAGNOSTICS = DIAGNOSTICS + "_mesh"
"""Diagnostics of services (not of one app); ``_`` cannot start an app name."""


def diagnostics_key(app: model.AppName) -> str:
    return f"{DIAGNOSTICS}{app}"


def prefix_range_end(prefix: str) -> bytes:
    """The etcd ``range_end`` that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return bytes(raw[: i + 1])
    return b"\0"


def chunk_prefix(app: model.AppName, cluster: model.ClusterName) -> str:
    return f"{CHUNKS}{app}/{cluster}/"


def chunk_key(app: model.AppName, cluster: model.ClusterName, digest: str) -> str:
    """A part of the app snapshot of (app, cluster), named by the hash of its bytes."""
    return f"{chunk_prefix(app, cluster)}{digest}"


def localities_key(cluster: model.ClusterName) -> str:
    return f"{LOCALITIES}{cluster}"


def parse_localities_key(key: str) -> model.ClusterName:
    rest = key[len(LOCALITIES) :] if key.startswith(LOCALITIES) else ""
    if not rest or "/" in rest:
        raise SchemaError(f"not a localities key: {key!r}")
    return model.ClusterName(rest)


def watcher_leader_key(cluster: model.ClusterName) -> str:
    return f"{WATCHERS}{cluster}/leader"


def parse_watcher_leader_key(key: str) -> model.ClusterName:
    rest = key[len(WATCHERS) :] if key.startswith(WATCHERS) else ""
    cluster, sep, leaf = rest.partition("/")
    if not cluster or not sep or leaf != "leader":
        raise SchemaError(f"not a watcher leader key: {key!r}")
    return model.ClusterName(cluster)


def stale_key(cluster: model.ClusterName) -> str:
    return f"{STALE}{cluster}"


def parse_stale_key(key: str) -> model.ClusterName:
    if not key.startswith(STALE) or "/" in key[len(STALE) :] or key == STALE:
        raise SchemaError(f"not a stale key: {key!r}")
    return model.ClusterName(key[len(STALE) :])


def shard_leader_key(shard: int) -> str:
    return f"{SHARDS}{shard}/leader"


def parse_shard_leader_key(key: str) -> int:
    rest = key[len(SHARDS) :] if key.startswith(SHARDS) else ""
    shard, sep, leaf = rest.partition("/")
    if not shard.isdigit() or not sep or leaf != "leader":
        raise SchemaError(f"not a shard leader key: {key!r}")
    return int(shard)


def fence_mark_key(leader_key: str) -> str:
    """Where a fenced transaction under ``leader_key`` records its token."""
    if not leader_key.startswith(ROOT):
        raise SchemaError(f"not a key of the schema: {leader_key!r}")
    return FENCES + leader_key[len(ROOT) :]


def fence_mark_value(token: int, write: str) -> bytes:
    """What a fenced transaction puts in its mark: its term's token and a name of its own."""
    return f"{token} {write}".encode()


def fence_mark_token(value: bytes) -> int:
    """The term token of a fence mark's value; raises ValueError if it has none."""
    return int(value.split(b" ", 1)[0])


def parse_fence_mark_key(key: str) -> str:
    """The leadership key a fence mark is of."""
    if not key.startswith(FENCES) or key == FENCES:
        raise SchemaError(f"not a fence mark key: {key!r}")
    return ROOT + key[len(FENCES) :]


def members_prefix(role: str | None = None) -> str:
    return MEMBERS if role is None else f"{MEMBERS}{role}/"


def member_key(role: str, member_id: str) -> str:
    return f"{MEMBERS}{role}/{member_id}"


def sidecar_prefix(frontend: str | None = None) -> str:
    return SIDECARS if frontend is None else f"{SIDECARS}{frontend}/"


def sidecar_key(frontend: str, node_id: str) -> str:
    # NOTE: an Envoy node id may hold "/": it is the rest of the key, after the front-end id.
    return f"{SIDECARS}{frontend}/{node_id}"


def parse_sidecar_key(key: str) -> tuple[str, str]:
    """Returns (front-end id, node id)."""
    rest = key[len(SIDECARS) :] if key.startswith(SIDECARS) else ""
    frontend, sep, node_id = rest.partition("/")
    if not frontend or not sep or not node_id:
        raise SchemaError(f"not a sidecar status key: {key!r}")
    return frontend, node_id


def parse_member_key(key: str) -> tuple[str, str]:
    """Returns (role, id)."""
    rest = key[len(MEMBERS) :] if key.startswith(MEMBERS) else ""
    role, sep, member_id = rest.partition("/")
    if not role or not sep or not member_id or "/" in member_id:
        raise SchemaError(f"not a member key: {key!r}")
    return role, member_id


def shard_of(name: str, shards: int) -> int:
    """The translator shard of an app (or of a service's ``<ns>/<name>``): a stable hash.

    WARNING - STABLE: every translator of a mesh must compute the same owner.
    """
    if shards < 1:
        raise ValueError(f"the number of shards must be at least 1, got {shards}")
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def owner_shard(key: str, shards: int) -> int | None:
    """The shard whose leader writes ``key``; None for keys outside the translators' prefixes."""
    if key.startswith(APP_SNAPSHOTS):
        return shard_of(key[len(APP_SNAPSHOTS) :].split("/", 1)[0], shards)
    if key.startswith(CHUNKS):
        return shard_of(key[len(CHUNKS) :].split("/", 1)[0], shards)
    if key.startswith(EDS_SNAPSHOTS):
        ns, _, rest = key[len(EDS_SNAPSHOTS) :].partition("/")
        return shard_of(f"{ns}/{rest.split(':', 1)[0]}", shards)
    if key == MESH_DIAGNOSTICS or key.startswith(LOCALITIES):
        return shard_of(DEFAULT_APP, shards)
    if key.startswith(DIAGNOSTICS):
        return shard_of(key[len(DIAGNOSTICS) :], shards)
    return None


def service_shard(namespace: str, name: str, shards: int) -> int:
    """The shard that writes the endpoint assignments of a service."""
    return shard_of(f"{namespace}/{name}", shards)


@dataclasses.dataclass(frozen=True, slots=True)
class KeyRange:
    """One key (``prefix=False``) or every key under a prefix: what one etcd role permission
    covers."""

    key: str
    prefix: bool = True

    @property
    def range_end(self) -> bytes:
        """etcd's ``range_end`` for it (empty: the key alone)."""
        return prefix_range_end(self.key) if self.prefix else b""

    def covers(self, key: str) -> bool:
        return key.startswith(self.key) if self.prefix else key == self.key


# NOTE: the member roles are those of ``navigator.watcher.runner.ROLE``,
# ``coordinator.shards.ROLE`` and ``navigator.xds.server.ROLE`` (this module imports none of
# them; a test checks that they agree).
WATCHER_WRITES: tuple[KeyRange, ...] = (
    KeyRange(STATE),
    KeyRange(SYNCED),
    KeyRange(STALE),
    KeyRange(WATCHERS),
    KeyRange(FENCES + WATCHERS[len(ROOT) :]),
    KeyRange(members_prefix("watcher")),
)
"""What a watcher replica writes: its clusters' state and markers, the watcher leadership keys
(``coordinator.election``), the fence marks of its terms and its member record."""

TRANSLATOR_WRITES: tuple[KeyRange, ...] = (
    KeyRange(SNAPSHOTS),
    KeyRange(DIAGNOSTICS),
    KeyRange(SHARDS),
    KeyRange(SHARD_COUNT, prefix=False),
    KeyRange(FENCES + SHARDS[len(ROOT) :]),
    KeyRange(members_prefix("translator")),
)
"""What a translator replica writes: snapshots and diagnostics, the shard leadership keys and
the shard count (the first translator creates it), the fence marks of its terms and its
member record. Nothing else under ``config/``: the rest is the operators'."""

XDS_WRITES: tuple[KeyRange, ...] = (
    KeyRange(SIDECARS),
    KeyRange(members_prefix("xds")),
)
"""What an xDS front-end writes: its sidecars' status records and its member record; it only
reads configuration."""
