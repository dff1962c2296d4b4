"""``navigator state``: what the mesh's control plane knows and did, read from etcd alone.

It works while every other process is down: everything it shows is in etcd (the normalized
objects and synced/stale markers the watchers write, the snapshots and diagnostics the
translators write, the leadership keys, the member records and sidecar status records under
their processes' leases). Tables for people, ``-o json`` or ``-o yaml`` for scripts.

    navigator state clusters          synced, stale since, which watcher replica writes it
    navigator state services [-n NS]  per cluster: ClusterIP, ports, endpoints by locality
    navigator state apps              shard and its leader, Nexus services, snapshot versions
    navigator state snapshot APP      the resources a sidecar of APP receives, as YAML
    navigator state shards            which translator leads each shard, since when
    navigator state members           every registered process: role, id, leads, addresses
    navigator state diagnostics       everything translation skipped or adjusted, and why
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import yaml

from coordinator import election, membership
from coordinator import etcd as etcd_mod
from navigator import keys, model, runtime, snapshot

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], str]]

SHORT_TYPES = {short: url for url, short in snapshot.SHORT_NAMES.items()}
"""cds, eds, lds, rds → type URL."""


class StateError(Exception):
    """What was asked for is not in etcd (an unknown app, an ambiguous cluster)."""


def age(since: float | None, now: float) -> str:
    if since is None:
        return "-"
    seconds = max(0, int(now - since))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _json(value: bytes) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return None


def _doc(value: bytes) -> dict[str, Any]:
    doc = _json(value)
    return doc if isinstance(doc, dict) else {}


def table(rows: Iterable[Row], columns: Sequence[Column], *, headers: bool = True) -> str:
    """Left-aligned columns, two spaces apart, as kubectl prints them."""
    cells = [[title for title, _ in columns]] if headers else []
    cells += [[fn(r) for _, fn in columns] for r in rows]
    if not cells:
        return ""
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def dump(value: Any, output: str) -> str:
    if output == "json":
        return json.dumps(value, indent=2, sort_keys=False)
    return yaml.safe_dump(value, sort_keys=False).rstrip()


# -- readers: etcd → rows (no printing) ----------------------------------------------------


async def clusters(etcd: etcd_mod.Etcd) -> list[Row]:
    synced = await etcd.get_prefix(keys.SYNCED)
    stale = await etcd.get_prefix(keys.STALE)
    leaders = await etcd.get_prefix(keys.WATCHERS)
    state = await etcd.get_prefix(keys.STATE, keys_only=True)
    objects: collections.Counter[str] = collections.Counter()
    for key in state.items:
        try:
            objects[keys.parse_state_key(key).cluster] += 1
        except keys.SchemaError:
            continue
    rows: dict[str, Row] = {}

    def row(name: str) -> Row:
        return rows.setdefault(
            name,
            {
                "cluster": name,
                "synced": False,
                "synced_at": None,
                "stale_since": None,
                "stale_error": "",
                "leader": "",
                "objects": objects.get(name, 0),
            },
        )

    for name in objects:
        row(name)
    for key, kv in synced.items.items():
        r = row(keys.parse_synced_key(key))
        r["synced"] = True
        r["synced_at"] = _doc(kv.value).get("time")
    for key, kv in stale.items.items():
        try:
            r = row(keys.parse_stale_key(key))
        except keys.SchemaError:
            continue
        doc = _doc(kv.value)
        r["stale_since"] = doc.get("since")
        r["stale_error"] = str(doc.get("error", ""))
    for key, kv in leaders.items.items():
        try:
            r = row(keys.parse_watcher_leader_key(key))
        except keys.SchemaError:
            continue
        r["leader"] = election.leader_id(kv.value)
    return [rows[name] for name in sorted(rows)]


async def shards(etcd: etcd_mod.Etcd) -> list[Row]:
    count_kv = await etcd.get(keys.SHARD_COUNT)
    leaders = await etcd.get_prefix(keys.SHARDS)
    count = int(_doc(count_kv.value).get("shards", 0)) if count_kv is not None else 0
    led: dict[int, tuple[str, float | None]] = {}
    for key, kv in leaders.items.items():
        try:
            shard = keys.parse_shard_leader_key(key)
        except keys.SchemaError:
            continue
        led[shard] = (election.leader_id(kv.value), _doc(kv.value).get("since"))
    return [
        {"shard": n, "leader": led.get(n, ("", None))[0], "since": led.get(n, ("", None))[1]}
        for n in range(max([count, *[s + 1 for s in led]]))
    ]


async def members(etcd: etcd_mod.Etcd) -> list[Row]:
    return [
        {
            "role": m.role,
            "id": m.id,
            "leads": list(m.leads),
            "address": m.address,
            "http": m.http,
            "host": m.host,
            "pid": m.pid,
            "started": m.started,
            "lease": f"{m.lease:x}",
        }
        for m in await membership.members(etcd)
    ]


@dataclasses.dataclass
class _Objects:
    """The normalized objects of one kind or more, decoded from a listing of ``state/``."""

    by_kind: dict[model.Kind, list[Any]]
    undecodable: list[str]


async def _objects(etcd: etcd_mod.Etcd, wanted: set[model.Kind]) -> _Objects:
    listing = await etcd.get_prefix(keys.STATE)
    out = _Objects({kind: [] for kind in wanted}, [])
    for key, kv in listing.items.items():
        try:
            parsed = keys.parse_state_key(key)
        except keys.SchemaError:
            out.undecodable.append(key)
            continue
        if parsed.kind not in wanted:
            continue
        try:
            out.by_kind[parsed.kind].append(model.decode(parsed.kind, kv.value))
        except model.DecodeError:
            out.undecodable.append(key)
    return out


def _ports(svc: model.Service) -> str:
    return ",".join(f"{p.name + ':' if p.name else ''}{p.port}/{p.protocol}" for p in svc.ports)


async def services(
    etcd: etcd_mod.Etcd, *, namespace: str | None = None, cluster: str | None = None
) -> list[Row]:
    """One row per Service and cluster, with its endpoints counted by locality and readiness.

    Endpoints come from the Service's EndpointSlices where it has any in that cluster, else
    from its Endpoints object, as translation takes them; an endpoint without a zone of its own
    takes its Node's.
    """
    objs = await _objects(
        etcd,
        {model.Kind.SERVICE, model.Kind.ENDPOINTS, model.Kind.ENDPOINT_SLICE, model.Kind.NODE},
    )
    nodes: dict[tuple[str, str], model.Node] = {
        (n.cluster, n.name): n for n in objs.by_kind[model.Kind.NODE]
    }
    slices: dict[tuple[str, str, str], list[model.Endpoint]] = collections.defaultdict(list)
    for s in objs.by_kind[model.Kind.ENDPOINT_SLICE]:
        slices[(s.cluster, s.namespace, s.service)].extend(s.endpoints)
    plain: dict[tuple[str, str, str], tuple[model.Endpoint, ...]] = {
        (e.cluster, e.namespace, e.name): e.endpoints for e in objs.by_kind[model.Kind.ENDPOINTS]
    }
    rows: list[Row] = []
    for svc in objs.by_kind[model.Kind.SERVICE]:
        if namespace is not None and svc.namespace != namespace:
            continue
        if cluster is not None and svc.cluster != cluster:
            continue
        where = (svc.cluster, svc.namespace, svc.name)
        endpoints = slices[where] if where in slices else list(plain.get(where, ()))
        by_locality: dict[tuple[str, str], list[int]] = {}
        for ep in endpoints:
            node = nodes.get((svc.cluster, ep.node))
            zone = ep.zone or (node.zone if node else "")
            region = node.region if node else ""
            counts = by_locality.setdefault((region, zone), [0, 0])
            counts[0 if ep.ready else 1] += 1
        rows.append(
            {
                "namespace": svc.namespace,
                "name": svc.name,
                "cluster": svc.cluster,
                "type": str(svc.type),
                "cluster_ip": svc.cluster_ip,
                "ports": [
                    {
                        "name": p.name,
                        "port": p.port,
                        "protocol": str(p.protocol),
                        "target_port": p.target_port,
                    }
                    for p in svc.ports
                ],
                "ready": sum(c[0] for c in by_locality.values()),
                "not_ready": sum(c[1] for c in by_locality.values()),
                "localities": [
                    {"region": region, "zone": zone, "ready": c[0], "not_ready": c[1]}
                    for (region, zone), c in sorted(by_locality.items())
                ],
                "endpoints": [
                    {"ip": ep.ip, "ready": ep.ready, "node": ep.node, "zone": ep.zone}
                    for ep in sorted(endpoints, key=lambda e: e.ip)
                ],
                "_ports": _ports(svc),
            }
        )
    rows.sort(key=lambda r: (r["namespace"], r["name"], r["cluster"]))
    return rows


async def load_snapshots(
    etcd: etcd_mod.Etcd, apps: Sequence[str] | None = None, *, bodies: bool = True
) -> Any:
    """The stored snapshots, decoded as a front-end holds them (``SnapshotCache``): all of
    them, or those of ``apps`` with the endpoint assignments they name (every variant);
    without ``bodies``, names and hashes only (for versions)."""
    # NOTE: imported here so that the other commands do not load the protobuf modules.
    from navigator.xds import cache as cache_mod

    cache = cache_mod.SnapshotCache(etcd, bodies=bodies)
    if apps is None:
        cache.load(await etcd.get_prefix(keys.SNAPSHOTS))
        return cache
    items: dict[str, etcd_mod.KeyValue] = dict((await etcd.get_prefix(keys.LOCALITIES)).items)
    revision = 0
    for app in apps:
        heads = await etcd.get_prefix(f"{keys.APP_SNAPSHOTS}{app}/")
        chunks = await etcd.get_prefix(f"{keys.CHUNKS}{app}/")
        items |= heads.items | chunks.items
        revision = max(revision, heads.revision)
    # NOTE: names and hashes are enough to know which endpoint assignments they name.
    partial = cache_mod.SnapshotCache(etcd, bodies=False)
    partial.load(etcd_mod.Listing(revision, dict(items)))
    wanted: set[str] = set()
    for held_app, k8s in partial.apps():
        entry = partial.app(held_app, k8s)
        wanted |= entry.endpoints if entry is not None else set()
    # NOTE: every variant of the endpoint assignments it names; "<name>/" ends at the variant.
    for listing in await asyncio.gather(
        *(etcd.get_prefix(keys.eds_key(name, "")) for name in sorted(wanted))
    ):
        items |= listing.items
    cache.load(etcd_mod.Listing(revision, items))
    return cache


async def _app_versions(etcd: etcd_mod.Etcd) -> dict[tuple[str, str], str]:
    """(app, cluster) → the version its stored snapshot carries, without decoding resources."""
    heads = await etcd.get_prefix(keys.APP_SNAPSHOTS)
    chunks: dict[str, bytes] | None = None
    out: dict[tuple[str, str], str] = {}
    for key, kv in heads.items.items():
        try:
            app, k8s = keys.parse_app_snapshot_key(key)
            value = kv.value
            parts = snapshot.head_chunks(value)
            if parts is not None:
                if chunks is None:
                    listing = await etcd.get_prefix(keys.CHUNKS)
                    chunks = {k: v.value for k, v in listing.items.items()}
                found = [chunks.get(keys.chunk_key(app, k8s, digest)) for digest in parts]
                if any(c is None for c in found):
                    continue  # NOTE: a head whose parts are being written: not yet a snapshot.
                value = snapshot.join_chunks(value, [c for c in found if c is not None])
            version = _doc(value).get("version")
        except (keys.SchemaError, snapshot.SnapshotError, ValueError):
            continue
        if isinstance(version, str):
            out[(app, k8s)] = version
    return out


async def _diagnostics(etcd: etcd_mod.Etcd) -> dict[str, list[dict[str, Any]]]:
    listing = await etcd.get_prefix(keys.DIAGNOSTICS)
    out: dict[str, list[dict[str, Any]]] = {}
    for key, kv in listing.items.items():
        doc = _json(kv.value)
        out[key[len(keys.DIAGNOSTICS) :]] = [d for d in doc or [] if isinstance(d, dict)]
    return out


async def apps(etcd: etcd_mod.Etcd) -> list[Row]:
    """Every app the mesh knows (by Nexus or by snapshot), with who translates it."""
    objs = await _objects(etcd, {model.Kind.NEXUS})
    nexus: dict[str, set[str]] = collections.defaultdict(set)
    nexus_objects: dict[str, set[str]] = collections.defaultdict(set)
    for n in objs.by_kind[model.Kind.NEXUS]:
        nexus_objects[n.app_name].add(f"{n.namespace}/{n.name}@{n.cluster}")
        for ref in n.services:
            nexus[n.app_name].add(f"{ref.namespace}/{ref.name or '*'}")
    versions: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for (app, k8s), version in (await _app_versions(etcd)).items():
        versions[app][k8s] = version
    shard_rows = await shards(etcd)
    leaders = {r["shard"]: r["leader"] for r in shard_rows}
    count = len(shard_rows)
    diags = await _diagnostics(etcd)
    sidecars: collections.Counter[str] = collections.Counter()
    for kv in (await etcd.get_prefix(keys.SIDECARS)).items.values():
        sidecars[str(_doc(kv.value).get("app", ""))] += 1
    rows = []
    for app in sorted(set(nexus_objects) | set(versions)):
        shard = keys.shard_of(app, count) if count else None
        rows.append(
            {
                "app": app,
                "shard": shard,
                "leader": leaders.get(shard, "") if shard is not None else "",
                "nexus": sorted(nexus_objects.get(app, ())),
                "services": sorted(nexus.get(app, ())),
                "snapshots": dict(sorted(versions.get(app, {}).items())),
                "diagnostics": len(diags.get(app, [])),
                "sidecars": sidecars.get(app, 0),
            }
        )
    return rows


async def snapshot_of(
    etcd: etcd_mod.Etcd,
    app: str,
    *,
    cluster: str | None = None,
    zone: str = "",
    region: str = "",
    types: Sequence[str] = ("cds", "eds", "lds", "rds"),
) -> Row:
    """What a sidecar of ``app`` in ``cluster`` and ``zone`` receives, per type: the version
    and every resource decoded, exactly as the front-ends compute it."""
    from navigator.xds import resources

    cache = await load_snapshots(etcd, [app])
    held = [(a, c) for a, c in cache.apps() if a == app]
    if not held:
        known = sorted({a for a, _ in await _app_versions(etcd)} - {keys.DEFAULT_APP})
        raise StateError(
            f"no snapshot for app {app!r} in etcd (apps with one: {', '.join(known) or 'none'})"
        )
    clusters_held = [c for _, c in held]
    if cluster is None:
        if len(clusters_held) > 1:
            raise StateError(
                f"app {app!r} has snapshots for clusters {', '.join(clusters_held)}: "
                "choose one with --cluster"
            )
        cluster = clusters_held[0]
    elif cluster not in clusters_held:
        raise StateError(
            f"app {app!r} has no snapshot for cluster {cluster!r} "
            f"(it has: {', '.join(clusters_held)})"
        )
    node = resources.NodeInfo(
        id="navigator-state", app=app, k8s_cluster=cluster, region=region, zone=zone
    )
    out: Row = {"app": app, "cluster": cluster, "zone": zone, "types": {}}
    for short in types:
        type_url = SHORT_TYPES[short]
        found = resources.expected(cache, node, type_url)
        assert found is not None  # NOTE: the cache was loaded from a full listing.
        version, items = found
        out["types"][short] = {
            "version": version,
            "resources": [
                snapshot.resource_to_dict(type_url, resources.body_of(items[name]))
                for name in sorted(items)
            ],
        }
    return out


async def diagnostics(etcd: etcd_mod.Etcd, app: str | None = None) -> list[Row]:
    rows: list[Row] = []
    for owner, entries in sorted((await _diagnostics(etcd)).items()):
        name = "(services)" if owner == keys.MESH_DIAGNOSTICS[len(keys.DIAGNOSTICS) :] else owner
        if app is not None and app not in (owner, name):
            continue
        rows.extend(
            {
                "app": name,
                "severity": str(d.get("severity", "")),
                "reason": str(d.get("reason", "")),
                "object": str(d.get("object", "")),
                "message": str(d.get("message", "")),
            }
            for d in entries
        )
    return rows


# -- rendering -------------------------------------------------------------------------------


def _localities(r: Row) -> str:
    parts = [
        f"{loc['zone'] or '?'}:{loc['ready']}/{loc['ready'] + loc['not_ready']}"
        for loc in r["localities"]
    ]
    return " ".join(parts) or "-"


def columns(kind: str, now: float, *, wide: bool = False) -> list[Column]:
    if kind == "clusters":
        return [
            ("CLUSTER", lambda r: r["cluster"]),
            ("SYNCED", lambda r: "yes" if r["synced"] else "NO"),
            ("STALE", lambda r: age(r["stale_since"], now) if r["stale_since"] else "-"),
            ("WATCHER LEADER", lambda r: r["leader"] or "NONE"),
            ("OBJECTS", lambda r: str(r["objects"])),
            ("ERROR", lambda r: r["stale_error"]),
        ]
    if kind == "shards":
        return [
            ("SHARD", lambda r: str(r["shard"])),
            ("LEADER", lambda r: r["leader"] or "NONE"),
            ("FOR", lambda r: age(r["since"], now)),
        ]
    if kind == "services":
        cols: list[Column] = [
            ("NAMESPACE", lambda r: r["namespace"]),
            ("NAME", lambda r: r["name"]),
            ("CLUSTER", lambda r: r["cluster"]),
            ("TYPE", lambda r: r["type"]),
            ("CLUSTER-IP", lambda r: r["cluster_ip"] or "-"),
            ("PORTS", lambda r: r["_ports"] or "-"),
            ("READY", lambda r: f"{r['ready']}/{r['ready'] + r['not_ready']}"),
            ("BY ZONE", _localities),
        ]
        if wide:
            cols.append(("ENDPOINTS", lambda r: ",".join(e["ip"] for e in r["endpoints"]) or "-"))
        return cols
    if kind == "apps":
        return [
            ("APP", lambda r: r["app"]),
            ("SHARD", lambda r: "-" if r["shard"] is None else str(r["shard"])),
            ("LEADER", lambda r: r["leader"] or "NONE"),
            ("SERVICES", lambda r: ",".join(r["services"]) or "-"),
            (
                "SNAPSHOTS",
                lambda r: " ".join(f"{c}:{v[:8]}" for c, v in r["snapshots"].items()) or "NONE",
            ),
            ("SIDECARS", lambda r: str(r["sidecars"])),
            ("DIAGNOSTICS", lambda r: str(r["diagnostics"])),
        ]
    if kind == "diagnostics":
        return [
            ("APP", lambda r: r["app"]),
            ("SEVERITY", lambda r: r["severity"]),
            ("REASON", lambda r: r["reason"]),
            ("OBJECT", lambda r: r["object"]),
            ("MESSAGE", lambda r: r["message"]),
        ]
    return [
        ("ROLE", lambda r: r["role"]),
        ("ID", lambda r: r["id"]),
        ("LEADS", lambda r: ",".join(r["leads"]) or "-"),
        ("HTTP", lambda r: r["http"] or "-"),
        ("ADDRESS", lambda r: r["address"] or "-"),
        ("UP", lambda r: age(r["started"] or None, now)),
    ]


def _public(rows: list[Row]) -> list[Row]:
    """Rows without the fields kept only for the table."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


# -- the command -------------------------------------------------------------------------------


def common_arguments(*, outputs: Sequence[str] = ("table", "wide", "json", "yaml")) -> Any:
    """The options every inspection command shares: etcd, output format, headers."""
    parent = argparse.ArgumentParser(add_help=False)
    runtime.add_etcd_argument(parent)
    parent.add_argument(
        "-o", "--output", choices=list(outputs), default=outputs[0], help="output format"
    )
    if "table" in outputs:
        parent.add_argument(
            "--no-headers", action="store_true", help="tables without their header line"
        )
    return parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="navigator state",
        description="Show the control plane's state, read from etcd only (works while every "
        "other process is down).",
    )
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    common = common_arguments()
    sub.add_parser("clusters", parents=[common], help="synced, stale, watcher leader, objects")
    services_p = sub.add_parser(
        "services", parents=[common], help="per cluster: ClusterIP, ports, endpoints by zone"
    )
    where = services_p.add_mutually_exclusive_group()
    where.add_argument("-n", "--namespace", help="only this namespace (default: all)")
    where.add_argument(
        "-A", "--all-namespaces", action="store_true", help="every namespace (the default)"
    )
    services_p.add_argument("--cluster", help="only this cluster (default: all)")
    services_p.add_argument("name", metavar="NAME", nargs="?", help="only this Service")
    apps_p = sub.add_parser(
        "apps", parents=[common], help="shard, leader, Nexus services, snapshots"
    )
    apps_p.add_argument("app", metavar="APP", nargs="?", help="only this app")
    snap = sub.add_parser(
        "snapshot",
        parents=[common_arguments(outputs=("yaml", "json"))],
        help="the resources a sidecar of APP receives",
    )
    snap.add_argument("app", metavar="APP")
    snap.add_argument("--cluster", help="the sidecar's cluster (needed if APP has several)")
    snap.add_argument("--zone", default="", help="the sidecar's zone (endpoints differ by zone)")
    snap.add_argument("--region", default="")
    snap.add_argument(
        "--type",
        action="append",
        choices=sorted(SHORT_TYPES),
        dest="types",
        help="only this type (repeat; default: all)",
    )
    sub.add_parser("shards", parents=[common], help="which translator leads each shard")
    sub.add_parser("members", parents=[common], help="every registered process and its lease")
    diag = sub.add_parser(
        "diagnostics", parents=[common], help="what translation skipped or adjusted, and why"
    )
    diag.add_argument("app", metavar="APP", nargs="?", help="only this app ('(services)': mesh)")
    return parser


async def _run(args: argparse.Namespace) -> str:
    async with connect(args) as etcd:
        if args.what == "snapshot":
            doc = await snapshot_of(
                etcd,
                args.app,
                cluster=args.cluster,
                zone=args.zone,
                region=args.region,
                types=args.types or ("cds", "eds", "lds", "rds"),
            )
            return dump(doc, args.output)
        rows: list[Row]
        if args.what == "services":
            rows = await services(etcd, namespace=args.namespace, cluster=args.cluster)
            if args.name is not None:
                rows = [r for r in rows if r["name"] == args.name]
                if not rows:
                    raise StateError(f"no Service {args.name!r} in etcd")
        elif args.what == "diagnostics":
            rows = await diagnostics(etcd, args.app)
            if args.app is not None and not rows:
                known = {r["app"] for r in await apps(etcd)}
                if args.app not in known and args.app != "(services)":
                    raise StateError(f"no app {args.app!r} in etcd")
        elif args.what == "apps":
            rows = await apps(etcd)
            if args.app is not None:
                rows = [r for r in rows if r["app"] == args.app]
                if not rows:
                    raise StateError(f"no app {args.app!r} in etcd")
        elif args.what == "clusters":
            rows = await clusters(etcd)
        elif args.what == "shards":
            rows = await shards(etcd)
        else:
            rows = await members(etcd)
    if args.output in ("json", "yaml"):
        return dump(_public(rows), args.output)
    return table(
        rows,
        columns(args.what, time.time(), wide=args.output == "wide"),
        headers=not args.no_headers,
    )


def connect(args: argparse.Namespace) -> etcd_mod.Etcd:
    """The inspection commands' etcd client: they answer, or say etcd is down, within ~3 s."""
    return runtime.etcd_client(args, timeout=2.0, retry_for=3.0)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with runtime.quiet_etcd_retries():
            out = asyncio.run(_run(args))
    except (etcd_mod.EtcdError, StateError, ValueError) as exc:
        print(f"navigator state: {one_line(exc)}", file=sys.stderr)
        return 1
    print(out)
    return 0


def one_line(exc: BaseException) -> str:
    """An error as one line: its message, or its type when it has none."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
