"""Who is running: every long-running process registers itself in etcd under its lease.

A member record (``/navigator/v1/members/<role>/<id>``, JSON) says what the process is, where
it answers and what it leads; it disappears with the process's lease, so the set of records is
the set of live processes, readable from etcd alone (``navigator state members``). Translators
also share their shards by it (``coordinator.shards``).

Exceptions: ``coordinator.etcd.EtcdError`` from listing; ``Registration.run`` never raises for
etcd errors (it retries until its session is lost).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from coordinator import etcd as etcd_mod
from coordinator import session as session_mod
from navigator import keys

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    role: str
    id: str
    address: str = ""
    """Where the process serves its clients (gRPC for a front-end), if it has any."""
    http: str = ""
    """Its /healthz, /readyz and /metrics."""
    host: str = ""
    pid: int = 0
    started: float = 0.0
    """Unix time."""
    leads: tuple[str, ...] = ()
    """What it leads: ``watcher/<cluster>``, ``shard/<n>``."""
    lease: int = 0

    def encode(self) -> bytes:
        doc = dataclasses.asdict(self)
        doc["leads"] = sorted(self.leads)
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode(value: bytes, *, lease: int = 0) -> Member:
    """Raises ValueError on a record it cannot read."""
    doc = json.loads(value)
    if not isinstance(doc, dict):
        raise ValueError("a member record is a JSON object")
    fields = {f.name for f in dataclasses.fields(Member)}
    known: dict[str, Any] = {k: v for k, v in doc.items() if k in fields}
    known["leads"] = tuple(str(x) for x in known.get("leads", ()))
    known["lease"] = lease or int(known.get("lease", 0))
    return Member(**known)


class Registration:
    """Keeps this process's member record in etcd under the current session's lease."""

    def __init__(self, etcd: etcd_mod.Etcd, member: Member) -> None:
        self.etcd = etcd
        self.member = member
        self._changed = asyncio.Event()

    @property
    def key(self) -> str:
        return keys.member_key(self.member.role, self.member.id)

    def set_leads(self, leads: Iterable[str]) -> None:
        leads = tuple(sorted(set(leads)))
        if leads != self.member.leads:
            self.member = dataclasses.replace(self.member, leads=leads)
            self._changed.set()

    async def run(self, session: session_mod.Session) -> None:
        """Writes the record, and again after every change, until the session is lost."""
        self.member = dataclasses.replace(
            self.member,
            lease=session.lease,
            started=self.member.started or time.time(),
            pid=self.member.pid or os.getpid(),
            host=self.member.host or socket.gethostname(),
        )
        self._changed.set()
        failing = False
        while session.valid():
            await session_mod.wait_event(self._changed, 1.0 if failing else None)
            self._changed.clear()
            try:
                await self.etcd.put(self.key, self.member.encode(), lease=session.lease)
            except etcd_mod.EtcdError as exc:
                if not failing:
                    log.warning("cannot register in etcd, retrying", extra={"error": str(exc)})
                failing = True
                self._changed.set()
                continue
            failing = False


async def members(etcd: etcd_mod.Etcd, role: str | None = None) -> list[Member]:
    """Every registered member (of ``role``), sorted by role and id; unreadable ones skipped."""
    listing = await etcd.get_prefix(keys.members_prefix(role))
    return sorted(_decode_listing(listing.items.values()).values(), key=lambda m: (m.role, m.id))


def _decode_listing(items: Iterable[etcd_mod.KeyValue]) -> dict[str, Member]:
    out: dict[str, Member] = {}
    for kv in items:
        try:
            keys.parse_member_key(kv.key)
            out[kv.key] = decode(kv.value, lease=kv.lease)
        except (keys.SchemaError, ValueError, TypeError) as exc:
            log.warning(
                "ignoring an unreadable member record", extra={"key": kv.key, "error": str(exc)}
            )
    return out


async def watch(etcd: etcd_mod.Etcd, role: str) -> AsyncIterator[dict[str, Member]]:
    """The members of ``role`` (by id) now and after every change; relists after compaction."""
    prefix = keys.members_prefix(role)
    while True:
        listing = await etcd.get_prefix(prefix)
        current = {m.id: m for m in _decode_listing(listing.items.values()).values()}
        yield dict(current)
        try:
            async for ev in etcd.watch_prefix(prefix, start_revision=listing.revision + 1):
                _, member_id = keys.parse_member_key(ev.key)
                if ev.value is None:
                    if current.pop(member_id, None) is None:
                        continue
                else:
                    try:
                        member = decode(ev.value)
                    except (ValueError, TypeError):
                        continue
                    if current.get(member_id) == member:
                        continue
                    current[member_id] = member
                yield dict(current)
        except etcd_mod.Compacted:
            continue
