"""etcd authentication: one etcd role per component, so each can write only its own keys.

etcd runs with ``--client-cert-auth``: the subject CN of a client's certificate is its etcd
user, so a component's certificate is its whole credential (no password to hand out). Every
user is named after its role and has no password; ``root`` is the operators' and the lab's.

Every role reads the whole root; what each writes (below the root) is in ``navigator.keys``::

    navigator-watcher     WATCHER_WRITES     state/ synced/ stale/ watchers/ (leadership)
                                             fences/watchers/ members/watcher/
    navigator-translator  TRANSLATOR_WRITES  snapshots/ diagnostics/ shards/ (leadership)
                                             config/shards (that key) fences/shards/
                                             members/translator/
    navigator-xds         XDS_WRITES         sidecars/ members/xds/
    root                  everything         operators' commands (config/), the lab's client

What etcd 3.5 checks, and why these ranges suffice: a put or delete needs write permission
on its key; a transaction's compares and its reads need read permission (an election
compares its leadership key, a fenced write its fence key: both under the root); a watch
needs read permission on its range, checked when it is created; a put under a lease and a
lease revocation need write permission on every key already under that lease (each
component's lease holds only its own keys). Lease grants, keepalives and compaction are
not checked (docs/decisions/0015).

``enable`` sets it all up, idempotently: run it on a fresh etcd (anyone may, before auth is
on) or again later as ``root`` (it then converges the roles to this table).

Exceptions: ``coordinator.etcd.EtcdError``; ``PermissionDenied`` when auth is on and the
caller is not ``root``.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from coordinator import etcd as etcd_mod
from navigator import keys

log = logging.getLogger(__name__)

WATCHER = "navigator-watcher"
TRANSLATOR = "navigator-translator"
XDS = "navigator-xds"
ROOT = "root"
"""etcd's own superuser (role ``root``): operators' commands and the lab's own client."""


class Perm(enum.IntEnum):
    """``authpb.Permission.Type``."""

    READ = 0
    WRITE = 1
    READWRITE = 2


@dataclasses.dataclass(frozen=True, slots=True)
class Permission:
    """One key-range permission of a role."""

    perm: Perm
    key: bytes
    range_end: bytes = b""

    @classmethod
    def of(cls, perm: Perm, keys_: keys.KeyRange) -> Permission:
        return cls(perm, keys_.key.encode(), keys_.range_end)


@dataclasses.dataclass(frozen=True, slots=True)
class Role:
    """An etcd role and the user of the same name (the CN of the component's certificate)."""

    name: str
    writes: tuple[keys.KeyRange, ...]
    reads: tuple[keys.KeyRange, ...] = (keys.KeyRange(keys.ROOT),)

    def permissions(self) -> frozenset[Permission]:
        return frozenset(
            [Permission.of(Perm.READ, r) for r in self.reads]
            + [Permission.of(Perm.READWRITE, w) for w in self.writes]
        )

    def may_write(self, key: str) -> bool:
        return any(w.covers(key) for w in self.writes)


ROLES: tuple[Role, ...] = (
    Role(WATCHER, keys.WATCHER_WRITES),
    Role(TRANSLATOR, keys.TRANSLATOR_WRITES),
    Role(XDS, keys.XDS_WRITES),
)
USERS: tuple[str, ...] = (*(r.name for r in ROLES), ROOT)
"""Every user ``enable`` makes: the CNs the lab issues client certificates for."""


def role(name: str) -> Role:
    for r in ROLES:
        if r.name == name:
            return r
    raise KeyError(name)


async def enable(etcd: etcd_mod.Etcd, roles: Sequence[Role] = ROLES) -> None:
    """Makes ``roles``, their users (no password) and ``root``, then turns auth on.

    Idempotent: what exists is kept, a role's permissions are made exactly its table's (a
    permission no longer in the table is revoked), a component user keeps only its role.
    Once auth is on, only ``root`` may call this.
    """
    existing_roles = set((await etcd.auth_call("RoleList")).roles)
    for r in roles:
        if r.name not in existing_roles:
            await _ignore_exists(etcd, "RoleAdd", name=r.name)
        have = _permissions((await etcd.auth_call("RoleGet", role=r.name)).perm)
        want = r.permissions()
        for p in sorted(have - want, key=_order):
            await etcd.auth_call(
                "RoleRevokePermission", role=r.name, key=p.key, range_end=p.range_end
            )
        for p in sorted(want - have, key=_order):
            await etcd.auth_call(
                "RoleGrantPermission",
                name=r.name,
                perm={"permType": int(p.perm), "key": p.key, "range_end": p.range_end},
            )
    existing_users = set((await etcd.auth_call("UserList")).users)
    for user, wanted in [*((r.name, r.name) for r in roles), (ROOT, ROOT)]:
        if user not in existing_users:
            await _ignore_exists(etcd, "UserAdd", name=user, options={"no_password": True})
        granted = set((await etcd.auth_call("UserGet", name=user)).roles)
        if user != ROOT:
            for extra in sorted(granted - {wanted}):
                await etcd.auth_call("UserRevokeRole", name=user, role=extra)
        if wanted not in granted:
            await etcd.auth_call("UserGrantRole", user=user, role=wanted)
    # NOTE: etcd ignores a second enable; it refuses the first without a root user.
    await etcd.auth_call("AuthEnable")
    log.info("etcd authentication enabled", extra={"roles": [r.name for r in roles]})


async def enabled(etcd: etcd_mod.Etcd) -> bool:
    """Whether auth is on (etcd answers this to ``root`` only once it is)."""
    return bool((await etcd.auth_call("AuthStatus")).enabled)


async def _ignore_exists(etcd: etcd_mod.Etcd, method: str, **fields: Any) -> None:
    """Adds a role or user; one that exists already is fine (a retried call that landed, or
    another process setting up the same etcd)."""
    try:
        await etcd.auth_call(method, **fields)
    except etcd_mod.PermissionDenied:
        raise
    except etcd_mod.EtcdError as exc:
        if "already exists" not in str(exc):
            raise


def _permissions(perms: Iterable[Any]) -> frozenset[Permission]:
    return frozenset(
        Permission(Perm(int(p.permType)), bytes(p.key), bytes(p.range_end)) for p in perms
    )


def _order(p: Permission) -> tuple[bytes, bytes, int]:
    return (p.key, p.range_end, int(p.perm))
