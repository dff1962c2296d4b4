"""``navigator state``: what the mesh's control plane is doing, read from etcd alone.

It works while every other process is down: everything it shows is in etcd (the synced and
stale markers the watchers write, the leadership keys, the member records under their
leases). Tables for people, ``-o json`` or ``-o yaml`` for scripts.

    navigator state clusters   synced, stale since, which watcher replica writes it, objects
    navigator state shards     which translator leads each shard, since when
    navigator state members    every registered process: role, id, what it leads, addresses
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import yaml

from coordinator import election, membership
from coordinator import etcd as etcd_mod
from navigator import keys, runtime

Row = dict[str, Any]


def _age(since: float | None, now: float) -> str:
    if since is None:
        return "-"
    seconds = max(0, int(now - since))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _json(value: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(value)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


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
        r["synced_at"] = _json(kv.value).get("time")
    for key, kv in stale.items.items():
        try:
            r = row(keys.parse_stale_key(key))
        except keys.SchemaError:
            continue
        doc = _json(kv.value)
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
    count = int(_json(count_kv.value).get("shards", 0)) if count_kv is not None else 0
    led: dict[int, tuple[str, float | None]] = {}
    for key, kv in leaders.items.items():
        try:
            shard = keys.parse_shard_leader_key(key)
        except keys.SchemaError:
            continue
        led[shard] = (election.leader_id(kv.value), _json(kv.value).get("since"))
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


def _table(rows: list[Row], columns: list[tuple[str, Callable[[Row], str]]]) -> str:
    cells = [[title for title, _ in columns]] + [[fn(r) for _, fn in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _render(kind: str, rows: list[Row], now: float) -> str:
    if kind == "clusters":
        return _table(
            rows,
            [
                ("CLUSTER", lambda r: r["cluster"]),
                ("SYNCED", lambda r: "yes" if r["synced"] else "NO"),
                ("STALE", lambda r: _age(r["stale_since"], now) if r["stale_since"] else "-"),
                ("WATCHER LEADER", lambda r: r["leader"] or "NONE"),
                ("OBJECTS", lambda r: str(r["objects"])),
                ("ERROR", lambda r: r["stale_error"]),
            ],
        )
    if kind == "shards":
        return _table(
            rows,
            [
                ("SHARD", lambda r: str(r["shard"])),
                ("LEADER", lambda r: r["leader"] or "NONE"),
                ("FOR", lambda r: _age(r["since"], now)),
            ],
        )
    return _table(
        rows,
        [
            ("ROLE", lambda r: r["role"]),
            ("ID", lambda r: r["id"]),
            ("LEADS", lambda r: ",".join(r["leads"]) or "-"),
            ("HTTP", lambda r: r["http"] or "-"),
            ("ADDRESS", lambda r: r["address"] or "-"),
            ("UP", lambda r: _age(r["started"] or None, now)),
        ],
    )


READERS: dict[str, Callable[[etcd_mod.Etcd], Coroutine[Any, Any, list[Row]]]] = {
    "clusters": clusters,
    "shards": shards,
    "members": members,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="navigator state",
        description="Show the control plane's state, read from etcd only.",
    )
    parser.add_argument("what", choices=sorted(READERS), help="what to show")
    runtime.add_etcd_argument(parser)
    parser.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    return parser


async def _run(args: argparse.Namespace) -> str:
    async with etcd_mod.Etcd(
        etcd_mod.parse_endpoints(args.etcd), timeout=2.0, retry_for=3.0
    ) as etcd:
        rows = await READERS[args.what](etcd)
    if args.output == "json":
        return json.dumps(rows, indent=2)
    if args.output == "yaml":
        return yaml.safe_dump(rows, sort_keys=False).rstrip()
    return _render(args.what, rows, time.time())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        print(asyncio.run(_run(args)))
    except (etcd_mod.EtcdError, ValueError) as exc:
        print(f"navigator state: {exc}", file=sys.stderr)
        return 1
    return 0
