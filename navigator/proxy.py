"""``navigator proxy-status`` and ``navigator proxy-diff``: is every sidecar on the latest config?

``proxy-status`` lists every connected sidecar from the front-ends' status records in etcd and
holds, per type, the version it acknowledged against the version it should have: the version
a front-end computes for its app, cluster and zone from the snapshots in etcd now (the way
``istioctl proxy-status`` compares with istiod's latest push).

    SYNCED    the sidecar acknowledged the latest version
    NACKED    the sidecar rejected what it was sent (Envoy's error is in -o json/yaml)
    STALE     the sidecar holds an older version (not yet pushed, or pushed and not acked)
    NOT SENT  nothing of this type was sent on the sidecar's streams

``proxy-diff SIDECAR`` reads the sidecar's live configuration from its admin
(``/config_dump?include_eds``) and compares it, resource by resource, with what etcd says
it should hold. Its exit code is that of diff(1): 0 same, 1 different, 2 trouble.

Both read etcd only (and the one sidecar's admin): they work while the front-ends are down.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import tenacity
import yaml

from coordinator import etcd as etcd_mod
from navigator import keys, runtime, snapshot, state
from navigator.xds import resources

Row = dict[str, Any]

TYPES = ("cds", "lds", "eds", "rds")
"""The order ``istioctl proxy-status`` shows them in."""

SYNCED, NACKED, STALE, NOT_SENT = "SYNCED", "NACKED", "STALE", "NOT SENT"


class ProxyError(Exception):
    """A sidecar cannot be found or read."""


def _node(record: Row) -> resources.NodeInfo:
    return resources.NodeInfo(
        id=str(record.get("node", "")),
        app=str(record.get("app", "")),
        k8s_cluster=str(record.get("cluster", "")),
        region=str(record.get("region", "")),
        zone=str(record.get("zone", "")),
        admin=str(record.get("admin", "")),
    )


def type_status(expected: str, held: Row | None) -> str:
    """One type's status from its expected version and the record's ``types[...]`` entry."""
    if not held or not (held.get("sent") or held.get("acked") or held.get("nacked")):
        return NOT_SENT
    if held.get("acked") == expected:
        return SYNCED
    if held.get("nacked") and held.get("nacked") in (expected, held.get("sent")):
        return NACKED
    return STALE


async def status(etcd: etcd_mod.Etcd) -> list[Row]:
    """Every sidecar status record, with each type held against the latest snapshot."""
    from navigator.xds import status as status_mod

    records = await status_mod.read(etcd)
    # NOTE: versions need names and hashes only: no resource is decoded or framed.
    cache = await state.load_snapshots(etcd, bodies=False)
    rows = []
    for rec in records:
        node = _node(rec)
        types: dict[str, Row] = {}
        for short in TYPES:
            found = resources.expected(cache, node, state.SHORT_TYPES[short])
            expected = found[0] if found is not None else ""
            held = rec.get("types", {}).get(short)
            entry: Row = {
                "status": type_status(expected, held),
                "expected": expected,
                "acked": (held or {}).get("acked", ""),
                "sent": (held or {}).get("sent", ""),
            }
            if held and held.get("nacked"):
                entry["nacked"] = held["nacked"]
                entry["error"] = held.get("error", "")
            types[short] = entry
        rows.append(
            {
                "node": node.id,
                "app": node.app,
                "cluster": node.k8s_cluster,
                "region": node.region,
                "zone": node.zone,
                "frontend": rec.get("frontend", ""),
                "variant": rec.get("variant", ""),
                "ads": bool(rec.get("ads", True)),
                "admin": node.admin,
                "connected": rec.get("connected"),
                "updated": rec.get("updated"),
                "types": types,
            }
        )
    return rows


# -- proxy-diff --------------------------------------------------------------------------------


async def _get_json(url: str, within: float) -> Any:
    # NOTE: aiohttp is imported here: proxy-status, which shares this module, needs no HTTP.
    import aiohttp

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential(multiplier=0.2, max=1.0),
        retry=tenacity.retry_if_exception_type((aiohttp.ClientConnectionError, TimeoutError)),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within)) as session,
                session.get(url) as resp,
            ):
                if resp.status != 200:
                    raise ProxyError(f"{url} answered HTTP {resp.status}")
                return await resp.json(content_type=None)
    raise AssertionError("unreachable")  # pragma: no cover


async def config_dump(admin: str, *, within: float = 2.0) -> dict[str, Any]:
    """The sidecar's ``/config_dump?include_eds``; ``admin`` is ``host:port`` or a URL."""
    base = admin if "://" in admin else f"http://{admin}"
    url = f"{base.rstrip('/')}/config_dump?include_eds"
    import aiohttp

    try:
        doc = await _get_json(url, within)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ProxyError(
            f"the sidecar's admin at {base} does not answer ({state.one_line(exc)}); "
            "if it listens on the pod's loopback, port-forward it and pass --admin"
        ) from exc
    if not isinstance(doc, dict) or "configs" not in doc:
        raise ProxyError(f"{url} is not an Envoy config dump")
    return doc


def live_config(dump: dict[str, Any]) -> tuple[resources.NodeInfo, dict[str, dict[str, Any]]]:
    """The node a config dump's bootstrap names, and its dynamic resources by type and name."""
    node: resources.NodeInfo | None = None
    out: dict[str, dict[str, Any]] = {short: {} for short in TYPES}
    for section in dump["configs"]:
        if "bootstrap" in section:
            n = section["bootstrap"].get("node", {})
            meta = n.get("metadata", {})
            loc = n.get("locality", {})
            node = resources.NodeInfo(
                id=n.get("id", ""),
                app=meta.get("app") or n.get("cluster", ""),
                k8s_cluster=meta.get("k8s_cluster", ""),
                region=loc.get("region", ""),
                zone=loc.get("zone", ""),
                admin=meta.get("admin", ""),
                node_name=meta.get("node_name", ""),
            )
        for c in section.get("dynamic_active_clusters", []):
            out["cds"][c["cluster"]["name"]] = c["cluster"]
        for e in section.get("dynamic_endpoint_configs", []):
            out["eds"][e["endpoint_config"]["cluster_name"]] = e["endpoint_config"]
        for entry in section.get("dynamic_listeners", []):
            if "active_state" in entry:
                out["lds"][entry["name"]] = entry["active_state"]["listener"]
        for r in section.get("dynamic_route_configs", []):
            out["rds"][r["route_config"]["name"]] = r["route_config"]
    if node is None:
        raise ProxyError("the config dump has no bootstrap: cannot tell which sidecar it is")
    return node, out


def _canonical(type_url: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A resource from a config dump in the form ``snapshot.resource_to_dict`` gives."""
    from google.protobuf import json_format, symbol_database

    snapshot.resource_to_dict(type_url, b"")  # NOTE: registers every embedded message type.
    cls = symbol_database.Default().GetSymbol(type_url.rpartition("/")[2])
    body = {k: v for k, v in doc.items() if k != "@type"}
    try:
        msg = json_format.ParseDict(body, cls(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        name = doc.get("name") or doc.get("cluster_name") or "?"
        raise ProxyError(f"cannot read {name!r} of the config dump: {exc}") from exc
    return snapshot.resource_to_dict(type_url, msg.SerializeToString(deterministic=True))


def _normalize_eds(doc: dict[str, Any]) -> dict[str, Any]:
    """An endpoint assignment without what Envoy adds when it dumps one: per-host defaults
    (weight 1, an empty health check config) and the health it computed (HEALTHY/UNKNOWN)."""
    out: dict[str, Any] = json.loads(json.dumps(doc))
    for locality in out.get("endpoints", []):
        for lb in locality.get("lb_endpoints", []):
            if lb.get("load_balancing_weight") == 1:
                del lb["load_balancing_weight"]
            if lb.get("health_status") in ("HEALTHY", "UNKNOWN"):
                del lb["health_status"]
            endpoint = lb.get("endpoint", {})
            if endpoint.get("health_check_config") == {}:
                del endpoint["health_check_config"]
    return out


def _text(doc: dict[str, Any]) -> list[str]:
    return yaml.safe_dump(doc, sort_keys=True).splitlines(keepends=True)


async def diff(
    etcd: etcd_mod.Etcd, node_id: str, *, admin: str | None = None, within: float = 2.0
) -> Row:
    """The sidecar's live config against what etcd says it should hold, per type."""
    if admin is None:
        from navigator.xds import status as status_mod

        records = [r for r in await status_mod.read(etcd) if r.get("node") == node_id]
        if not records:
            raise ProxyError(
                f"sidecar {node_id!r} has no status record in etcd (not connected to any "
                "front-end?); pass --admin HOST:PORT to read it anyway"
            )
        admin = str(records[-1].get("admin", ""))
        if not admin:
            raise ProxyError(
                f"sidecar {node_id!r} did not say where its admin listens; pass --admin"
            )
    node, live = live_config(await config_dump(admin, within=within))
    if node.id != node_id:
        raise ProxyError(f"the admin at {admin} belongs to sidecar {node.id!r}, not {node_id!r}")
    # NOTE: a sidecar whose app has no snapshot gets the default one (its health listener).
    cache = await state.load_snapshots(etcd, [node.app, keys.DEFAULT_APP])
    # NOTE: placed in its node's zone as its front-end placed it, if its bootstrap gave none.
    node = resources.placed(cache, node)
    out: Row = {
        "node": node.id,
        "app": node.app,
        "cluster": node.k8s_cluster,
        "zone": node.zone,
        "admin": admin,
        "same": True,
        "types": {},
    }
    for short in TYPES:
        type_url = state.SHORT_TYPES[short]
        found = resources.expected(cache, node, type_url)
        version, items = found if found is not None else ("", {})
        want = {
            name: snapshot.resource_to_dict(type_url, resources.body_of(enc))
            for name, enc in items.items()
        }
        have = {name: _canonical(type_url, doc) for name, doc in live[short].items()}
        if short == "eds":
            want = {n: _normalize_eds(d) for n, d in want.items()}
            have = {n: _normalize_eds(d) for n, d in have.items()}
        differ = {
            name: "".join(
                difflib.unified_diff(
                    _text(want[name]), _text(have[name]), "etcd/" + name, "sidecar/" + name
                )
            )
            for name in sorted(set(want) & set(have))
            if want[name] != have[name]
        }
        entry = {
            "version": version,
            "resources": len(want),
            "only_in_etcd": sorted(set(want) - set(have)),
            "only_in_sidecar": sorted(set(have) - set(want)),
            "differ": differ,
        }
        entry["same"] = not (entry["only_in_etcd"] or entry["only_in_sidecar"] or differ)
        out["same"] = out["same"] and entry["same"]
        out["types"][short] = entry
    return out


def render_diff(doc: Row) -> str:
    lines = [
        f"sidecar {doc['node']} (app {doc['app']}, cluster {doc['cluster']}, "
        f"zone {doc['zone'] or '-'}) at {doc['admin']}, against etcd:"
    ]
    for short, entry in doc["types"].items():
        if entry["same"]:
            lines.append(
                f"  {short}  same       {entry['resources']} resources, version {entry['version']}"
            )
            continue
        lines.append(f"  {short}  DIFFERENT  (etcd version {entry['version']})")
        lines += [f"    + only in etcd:    {name}" for name in entry["only_in_etcd"]]
        lines += [f"    - only in sidecar: {name}" for name in entry["only_in_sidecar"]]
        for name, text in entry["differ"].items():
            lines.append(f"    ~ differs:         {name}")
            lines += ["      " + line for line in text.splitlines()]
    return "\n".join(lines)


# -- the commands ------------------------------------------------------------------------------


def _status_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="navigator proxy-status",
        description="Every connected sidecar, and per type whether it holds the latest "
        "config: SYNCED, NACKED, STALE or NOT SENT (from etcd only).",
        parents=[state.common_arguments()],
    )
    parser.add_argument("node", metavar="SIDECAR", nargs="?", help="only this sidecar (node id)")
    parser.add_argument("--app", help="only this app's sidecars")
    parser.add_argument("--cluster", help="only this cluster's sidecars")
    parser.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="wait until every listed sidecar is SYNCED (NOT SENT types aside); exit 1 if "
        "some are not by then (for scripts and chaos checks)",
    )
    return parser


def synced(row: Row) -> bool:
    """Every type sent to the sidecar is acknowledged at the latest version."""
    return all(t["status"] in (SYNCED, NOT_SENT) for t in row["types"].values())


def status_main(argv: Sequence[str] | None = None) -> int:
    args = _status_parser().parse_args(argv)

    def wanted(rows: list[Row]) -> list[Row]:
        return [
            r
            for r in rows
            if (args.node is None or r["node"] == args.node)
            and (args.app is None or r["app"] == args.app)
            and (args.cluster is None or r["cluster"] == args.cluster)
        ]

    async def run() -> list[Row]:
        async with state.connect(args) as etcd:
            deadline = time.monotonic() + (args.wait or 0.0)
            while True:
                rows = wanted(await status(etcd))
                if args.wait is None or (rows and all(map(synced, rows))):
                    return rows
                if time.monotonic() >= deadline:
                    return rows
                await asyncio.sleep(0.5)

    try:
        with runtime.quiet_etcd_retries():
            rows = asyncio.run(run())
    except (etcd_mod.EtcdError, ValueError) as exc:
        print(f"navigator proxy-status: {state.one_line(exc)}", file=sys.stderr)
        return 1
    if args.node is not None and not rows:
        print(
            f"navigator proxy-status: sidecar {args.node!r} has no status record in etcd",
            file=sys.stderr,
        )
        return 1
    code = 0
    if args.wait is not None and not (rows and all(map(synced, rows))):
        behind = sum(1 for r in rows if not synced(r))
        print(
            f"navigator proxy-status: {behind} of {len(rows)} sidecars not SYNCED after "
            f"{args.wait:g} s"
            if rows
            else f"navigator proxy-status: no sidecar after {args.wait:g} s",
            file=sys.stderr,
        )
        code = 1
    if args.output in ("json", "yaml"):
        print(state.dump(rows, args.output))
        return code
    now = time.time()
    columns: list[state.Column] = [
        ("NAME", lambda r: r["node"]),
        ("APP", lambda r: r["app"]),
        ("CLUSTER", lambda r: r["cluster"]),
        ("ZONE", lambda r: r["zone"] or "-"),
        ("FRONT-END", lambda r: r["frontend"]),
        ("XDS", lambda r: r["variant"] + ("" if r["ads"] else "/per-type")),
    ]

    def of_type(short: str) -> Callable[[Row], str]:
        return lambda r: str(r["types"][short]["status"])

    columns += [(short.upper(), of_type(short)) for short in TYPES]
    if args.output == "wide":
        columns.append(("VERSION", lambda r: r["types"]["cds"]["expected"][:8]))
        columns.append(("ADMIN", lambda r: r["admin"] or "-"))
    columns.append(("UPDATED", lambda r: state.age(r["updated"], now)))
    print(state.table(rows, columns, headers=not args.no_headers))
    return code


def _diff_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="navigator proxy-diff",
        description="A sidecar's live config (its admin's /config_dump) against what etcd "
        "says it should hold. Exit code: 0 same, 1 different, 2 trouble.",
        parents=[state.common_arguments(outputs=("text", "json", "yaml"))],
    )
    parser.add_argument("node", metavar="SIDECAR", help="the sidecar's node id")
    parser.add_argument(
        "--admin",
        help="the sidecar's admin, HOST:PORT or URL (default: the address in its status record)",
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per admin request")
    return parser


def diff_main(argv: Sequence[str] | None = None) -> int:
    args = _diff_parser().parse_args(argv)

    async def run() -> Row:
        async with state.connect(args) as etcd:
            return await diff(etcd, args.node, admin=args.admin, within=args.timeout)

    try:
        with runtime.quiet_etcd_retries():
            doc = asyncio.run(run())
    except (etcd_mod.EtcdError, ProxyError, ValueError) as exc:
        print(f"navigator proxy-diff: {state.one_line(exc)}", file=sys.stderr)
        return 2
    print(render_diff(doc) if args.output == "text" else state.dump(doc, args.output))
    return 0 if doc["same"] else 1
