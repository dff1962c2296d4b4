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
    /navigator/v1/diagnostics/_mesh                     ... and for services (any app)

Cluster, app and object names are DNS labels or subdomains, so they never contain ``/``.
"""

from __future__ import annotations

import dataclasses

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
