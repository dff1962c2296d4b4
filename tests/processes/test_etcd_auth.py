"""etcd with client TLS and a role per component: each component's certificate writes its own
keys and nothing else; above all a front-end's cannot change configuration.

One real etcd member serves clients over TLS with ``--client-cert-auth`` (material from
``procs.make_etcd_credentials``), and ``coordinator.auth.enable`` has set up the roles. Every
test talks to it through the real ``coordinator.etcd.Etcd`` with one role's certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from coordinator import auth, election, membership
from coordinator import etcd as etcd_mod
from coordinator import session as session_mod
from coordinator import shards as shards_mod
from navigator import keys, model
from navigator.lab import procs
from navigator.watcher import convert, store
from navigator.watcher import runner as watcher_runner
from navigator.xds import server as xds_server

EAST = model.ClusterName("east")
APP = model.AppName("shop")
NODE = model.Node(cluster=EAST, name="node-1", region="eu", zone="eu-1")
STRANGER = "nobody"
"""A user etcd does not know, with a certificate of the right CA."""


@dataclasses.dataclass(frozen=True)
class Secured:
    url: str
    credentials: procs.EtcdCredentials
    other_ca: procs.EtcdCredentials
    """Material of another CA, which etcd does not trust."""

    def client(self, user: str, *, retry_for: float = 10.0) -> etcd_mod.Etcd:
        tls = self.credentials.client(user).tls()
        return etcd_mod.Etcd(self.url, tls=tls, timeout=2.0, retry_for=retry_for)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """One etcd member with TLS, client-certificate auth and the roles, for the module."""
    base = tmp_path_factory.mktemp("etcd-auth")
    credentials = procs.make_etcd_credentials(base / "pki", users=(*auth.USERS, STRANGER))
    other_ca = procs.make_etcd_credentials(base / "other-pki")
    members = procs.start_etcd_cluster(base / "etcd", members=1, tls=credentials.server)
    try:
        s = Secured(members[0].client_url, credentials, other_ca)

        async def setup() -> None:
            async with s.client(auth.ROOT) as root:
                await auth.enable(root)

        asyncio.run(setup())
        yield s
    finally:
        for m in members:
            procs.stop(m.popen)


@contextlib.asynccontextmanager
async def client(secured: Secured, user: str) -> AsyncIterator[etcd_mod.Etcd]:
    etcd = secured.client(user)
    try:
        yield etcd
    finally:
        await etcd.close()


async def until(check: Callable[[], Awaitable[bool]], what: str, limit: float = 10.0) -> None:
    """Waits until ``check()`` holds, at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not await check():
        assert time.monotonic() < deadline, f"not within {limit}s: {what}"
        await asyncio.sleep(0.05)


async def refused(call: Awaitable[object], user: str, key: str) -> etcd_mod.PermissionDenied:
    """``call`` fails at once (not after the retry budget) with a one-line PermissionDenied
    naming the key and the user."""
    started = time.monotonic()
    with pytest.raises(etcd_mod.PermissionDenied) as caught:
        await call
    assert time.monotonic() - started < 2.0, "a permission denial must not be retried"
    message = str(caught.value)
    assert "\n" not in message
    assert key in message, message
    assert f"etcd user {user!r}" in message, message
    assert caught.value.user == user
    return caught.value


# --- who may write what: every kind of key, every user ---------------------------------------

W, T, X, R = auth.WATCHER, auth.TRANSLATOR, auth.XDS, auth.ROOT

KEYS = [
    pytest.param(keys.state_key(NODE), {W}, id="state"),
    pytest.param(keys.synced_key(EAST), {W}, id="synced"),
    pytest.param(keys.stale_key(EAST), {W}, id="stale"),
    pytest.param(keys.watcher_leader_key(EAST), {W}, id="watcher-leader"),
    pytest.param(keys.fence_mark_key(keys.watcher_leader_key(EAST)), {W}, id="watcher-fence"),
    pytest.param(keys.member_key(watcher_runner.ROLE, "w-1"), {W}, id="watcher-member"),
    pytest.param(keys.app_snapshot_key(APP, EAST), {T}, id="app-snapshot"),
    pytest.param(keys.eds_key("shop/web:80"), {T}, id="eds-snapshot"),
    pytest.param(keys.chunk_key(APP, EAST, "ab12"), {T}, id="snapshot-chunk"),
    pytest.param(keys.localities_key(EAST), {T}, id="localities"),
    pytest.param(keys.diagnostics_key(APP), {T}, id="diagnostics"),
    pytest.param(keys.MESH_DIAGNOSTICS, {T}, id="mesh-diagnostics"),
    pytest.param(keys.shard_leader_key(3), {T}, id="shard-leader"),
    pytest.param(keys.SHARD_COUNT, {T}, id="shard-count"),
    pytest.param(keys.fence_mark_key(keys.shard_leader_key(3)), {T}, id="shard-fence"),
    pytest.param(keys.member_key(shards_mod.ROLE, "t-1"), {T}, id="translator-member"),
    pytest.param(keys.sidecar_key("fe-1", "sidecar~10.0.0.1/a"), {X}, id="sidecar-status"),
    pytest.param(keys.member_key(xds_server.ROLE, "fe-1"), {X}, id="xds-member"),
    pytest.param(keys.cluster_weight_key(EAST), set(), id="cluster-weight"),
    pytest.param(keys.TRACING, set(), id="tracing"),
    pytest.param(keys.SHARD_COUNT + "-next", set(), id="next-to-shard-count"),
    pytest.param(keys.member_key("operator", "o-1"), set(), id="other-member-role"),
    pytest.param(keys.ROOT + "ping/x", set(), id="ping"),
    pytest.param("/elsewhere/key", set(), id="outside-the-root"),
]


@pytest.mark.parametrize(("key", "writers"), KEYS)
async def test_each_role_writes_exactly_its_own_keys(
    secured: Secured, key: str, writers: set[str]
) -> None:
    async with client(secured, R) as root:
        for user in (W, T, X):
            async with client(secured, user) as etcd:
                if user in writers:
                    await etcd.put(key, user.encode())
                    assert (await root.get(key) or pytest.fail(key)).value == user.encode()
                    await etcd.delete(key)
                    assert await root.get(key) is None
                else:
                    await root.put(key, b"root's")
                    await refused(etcd.put(key, user.encode()), user, key)
                    await refused(etcd.delete(key), user, key)
                    assert (await root.get(key) or pytest.fail(key)).value == b"root's"
                    await root.delete(key)


def test_the_member_roles_are_the_components_roles() -> None:
    """``keys`` names the member prefixes itself: they must be the components' roles."""
    for role, writes in [
        (watcher_runner.ROLE, keys.WATCHER_WRITES),
        (shards_mod.ROLE, keys.TRANSLATOR_WRITES),
        (xds_server.ROLE, keys.XDS_WRITES),
    ]:
        member = keys.member_key(role, "some-id")
        assert [w for w in writes if w.covers(member)], role
        others = [w for w in (auth.role(n) for n in (W, T, X)) if w.writes != writes]
        assert not [o for o in others if o.may_write(member)], role


# --- a front-end ----------------------------------------------------------------------------


async def test_a_front_end_reads_and_reports_but_cannot_change_configuration(
    secured: Secured,
) -> None:
    snapshot, state = keys.app_snapshot_key(APP, EAST), keys.state_key(NODE)
    async with client(secured, R) as root, client(secured, X) as fe:
        await root.put(snapshot, b"v1")
        await root.put(state, model.encode(NODE))

        # Reads: a key, a prefix, and a watch of the snapshots (the front-end's cache does so).
        assert (await fe.get(snapshot) or pytest.fail("no snapshot")).value == b"v1"
        listing = await fe.get_prefix(keys.state_prefix(EAST))
        assert set(listing.items) == {state}

        async def next_snapshot() -> etcd_mod.Event:
            async for ev in fe.watch_prefix(keys.SNAPSHOTS, start_revision=listing.revision + 1):
                return ev
            raise AssertionError("the watch ended")

        watching = asyncio.create_task(next_snapshot())
        await asyncio.sleep(0)
        second = await root.put(snapshot, b"v2")
        ev = await asyncio.wait_for(watching, 10)
        assert (ev.key, ev.value, ev.revision) == (snapshot, b"v2", second)

        # Its own records: membership and a sidecar's status, under its lease.
        sidecar = keys.sidecar_key("fe-1", "sidecar~10.0.0.1")
        async with session_mod.running(fe, ttl=5) as s:
            registration = membership.Registration(
                fe, membership.Member(role=xds_server.ROLE, id="fe-1")
            )
            registering = asyncio.create_task(registration.run(s))
            try:
                await fe.apply(puts={sidecar: b'{"node":"sidecar"}'}, lease=s.lease)

                async def registered() -> bool:
                    return [m.id for m in await membership.members(root, xds_server.ROLE)] == [
                        "fe-1"
                    ]

                await until(registered, "the front-end's member record")
                got = await root.get(sidecar)
                assert got is not None and got.lease == s.lease

                # Configuration, state and leadership: refused, and left as they were.
                for key in (
                    snapshot,
                    keys.eds_key("shop/web:80"),
                    state,
                    keys.synced_key(EAST),
                    keys.watcher_leader_key(EAST),
                    keys.shard_leader_key(0),
                    keys.cluster_weight_key(EAST),
                ):
                    await refused(fe.put(key, b"evil", lease=s.lease), X, key)
                    await refused(fe.delete(key), X, key)
                await refused(fe.create(keys.watcher_leader_key(EAST), b"me"), X, "leader")
                await refused(
                    fe.apply(puts={sidecar: b"{}", snapshot: b"evil"}), X, "(and 1 more keys)"
                )
                assert (await root.get(snapshot) or pytest.fail("gone")).value == b"v2"
                assert (await root.get(state) or pytest.fail("gone")).value == model.encode(NODE)
            finally:
                registering.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await registering
        # NOTE: the session revoked its lease on exit (etcd checks that the front-end may
        # write every key under it): its records are gone at once, not after the TTL.
        assert await root.get(sidecar) is None
        assert await membership.members(root, xds_server.ROLE) == []
        await root.delete(snapshot)
        await root.delete(state)


async def test_a_front_end_cannot_revoke_a_leaders_lease(secured: Secured) -> None:
    """Revoking a lease deletes its keys: etcd refuses it to a user who may not write them."""
    async with (
        client(secured, W) as watcher,
        client(secured, X) as fe,
        session_mod.running(watcher, ttl=5) as s,
    ):
        leader = keys.watcher_leader_key(model.ClusterName("revoke"))
        created, _ = await watcher.create(leader, b"w-1", lease=s.lease)
        assert created
        await refused(fe.revoke(s.lease), X, f"lease {s.lease:x}")
        assert await watcher.get(leader) is not None


# --- a watcher ------------------------------------------------------------------------------


async def test_a_watcher_runs_a_term_and_writes_state_but_not_snapshots(
    secured: Secured,
) -> None:
    cluster = model.ClusterName("term")
    node = dataclasses.replace(NODE, cluster=cluster)
    leader_key = keys.watcher_leader_key(cluster)
    async with client(secured, R) as root, client(secured, W) as watcher:
        sync = store.SyncStore(
            cluster=cluster, etcd=watcher, kinds=[model.Kind.NODE], member_id="w-1"
        )
        sync.upsert(node)
        sync.listed(model.Kind.NODE, [convert.identity_of(node)])
        sync.api_reachable(False, "connection refused")

        async def term(leadership: election.Leadership) -> None:
            await sync.lead(leadership.fence)

        async with session_mod.running(watcher, ttl=5) as s:
            registration = membership.Registration(
                watcher, membership.Member(role=watcher_runner.ROLE, id="w-1")
            )
            tasks = [
                asyncio.create_task(registration.run(s)),
                asyncio.create_task(
                    election.lead(
                        watcher,
                        s,
                        key=leader_key,
                        value=election.leader_value("w-1"),
                        role=watcher_runner.ROLE,
                        body=term,
                    )
                ),
            ]
            try:
                await asyncio.wait_for(sync.synced.wait(), 10)
                held = await root.get(leader_key)
                assert held is not None and held.lease == s.lease
                fence_mark = await root.get(keys.fence_mark_key(leader_key))
                assert fence_mark is not None
                assert keys.fence_mark_token(fence_mark.value) == held.create_revision
                written = await root.get(keys.state_key(node))
                assert written is not None and written.value == model.encode(node)
                synced = await root.get(keys.synced_key(cluster))
                assert synced is not None and json.loads(synced.value)["leader"] == "w-1"
                stale = await root.get(keys.stale_key(cluster))
                assert stale is not None
                assert json.loads(stale.value)["error"] == "connection refused"

                sync.api_reachable(True)

                async def stale_gone() -> bool:
                    return await root.get(keys.stale_key(cluster)) is None

                await until(stale_gone, "the stale marker deleted, fenced")

                async def registered() -> bool:
                    return await root.get(keys.member_key(watcher_runner.ROLE, "w-1")) is not None

                await until(registered, "the watcher's member record")

                for key in (
                    keys.app_snapshot_key(APP, cluster),
                    keys.eds_key("shop/web:80"),
                    keys.diagnostics_key(APP),
                    keys.shard_leader_key(0),
                    keys.sidecar_key("fe-1", "node"),
                ):
                    await refused(watcher.put(key, b"x"), W, key)
                    await refused(watcher.put(key, b"x", fence=sync_fence(held)), W, key)
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            # NOTE: cancelling ``lead`` resigned: a fenced delete of the leadership key.
            assert await root.get(leader_key) is None
        assert await root.get(keys.member_key(watcher_runner.ROLE, "w-1")) is None
        await root.delete(keys.state_key(node))
        await root.delete(keys.synced_key(cluster))


def sync_fence(held: etcd_mod.KeyValue) -> etcd_mod.Fence:
    return etcd_mod.Fence(held.key, held.create_revision)


# --- a translator ---------------------------------------------------------------------------


async def test_a_translator_leads_a_shard_and_writes_snapshots_but_not_state(
    secured: Secured,
) -> None:
    async with client(secured, R) as root, client(secured, T) as translator:
        await root.delete(keys.SHARD_COUNT)
        assert await shards_mod.shard_count(translator, 1) == 1
        terms: dict[int, election.Leadership] = {}

        async def gained(shard: int, leadership: election.Leadership) -> None:
            terms[shard] = leadership

        async with session_mod.running(translator, ttl=5) as s:
            runner = shards_mod.ShardRunner(
                translator,
                shards=1,
                member=membership.Member(role=shards_mod.ROLE, id="t-1"),
                gained=gained,
                lost=lambda shard: None,
            )
            running = asyncio.create_task(runner.run(s))
            try:

                async def leading() -> bool:
                    return runner.leading == {0}

                await until(leading, "the translator leads shard 0")
                fence = terms[0].fence
                snapshot = keys.app_snapshot_key(APP, EAST)
                await translator.apply(
                    puts={snapshot: b"snap", keys.diagnostics_key(APP): b"[]"}, fence=fence
                )
                assert (await root.get(snapshot) or pytest.fail("no snapshot")).value == b"snap"
                mark = await root.get(keys.fence_mark_key(keys.shard_leader_key(0)))
                assert mark is not None and keys.fence_mark_token(mark.value) == fence.token

                for key in (
                    keys.state_key(NODE),
                    keys.synced_key(EAST),
                    keys.watcher_leader_key(EAST),
                    keys.cluster_weight_key(EAST),
                    keys.sidecar_key("fe-1", "node"),
                ):
                    await refused(translator.put(key, b"x", fence=fence), T, key)
                await translator.delete(snapshot, fence=fence)
                await translator.delete(keys.diagnostics_key(APP), fence=fence)
            finally:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
            assert await root.get(keys.shard_leader_key(0)) is None
        await root.delete(keys.SHARD_COUNT)


# --- clients etcd does not accept -----------------------------------------------------------


@pytest.mark.parametrize(
    "who",
    [
        pytest.param("no-certificate", id="no-client-certificate"),
        pytest.param("other-ca", id="certificate-of-another-ca"),
    ],
)
async def test_a_client_without_a_certificate_of_the_ca_is_refused_in_one_line(
    secured: Secured, who: str
) -> None:
    if who == "no-certificate":
        tls = etcd_mod.Tls.from_files(ca=secured.credentials.ca)
    else:
        other = secured.other_ca.root
        # NOTE: it trusts etcd's CA; only its own certificate is of another CA.
        tls = etcd_mod.Tls.from_files(ca=secured.credentials.ca, cert=other.cert, key=other.key)
    etcd = etcd_mod.Etcd(secured.url, tls=tls, timeout=1.0, retry_for=1.0)
    try:
        async with asyncio.timeout(15):
            with pytest.raises(etcd_mod.EtcdUnavailable) as caught:
                await etcd.get(keys.app_snapshot_key(APP, EAST))
    finally:
        await etcd.close()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"etcd {secured.url.removeprefix('https://')} unavailable: ")


async def test_a_certificate_of_an_unknown_user_can_neither_read_nor_watch(
    secured: Secured,
) -> None:
    async with client(secured, STRANGER) as etcd:
        await refused(etcd.get(keys.app_snapshot_key(APP, EAST)), STRANGER, "snapshots/apps")

        async def watch() -> None:
            async for _ in etcd.watch_prefix(keys.SNAPSHOTS, start_revision=1):
                raise AssertionError("a refused watch yielded an event")

        async with asyncio.timeout(10):
            denied = await refused(watch(), STRANGER, keys.SNAPSHOTS)
        assert denied.what.startswith("a watch of ")


# --- the setup itself -----------------------------------------------------------------------


async def test_enable_is_idempotent_converges_and_is_root_only(secured: Secured) -> None:
    async with client(secured, R) as root:
        assert await auth.enabled(root)
        stray = {"permType": int(auth.Perm.READWRITE), "key": b"/stray", "range_end": b""}
        await root.auth_call("RoleGrantPermission", name=X, perm=stray)
        await root.auth_call("UserGrantRole", user=X, role=W)
        await auth.enable(root)
        await auth.enable(root)
        for r in auth.ROLES:
            perms = (await root.auth_call("RoleGet", role=r.name)).perm
            assert auth._permissions(perms) == r.permissions(), r.name
            assert list((await root.auth_call("UserGet", name=r.name)).roles) == [r.name]
        assert list((await root.auth_call("UserGet", name=R)).roles) == [R]
    async with client(secured, X) as fe:
        await refused(auth.enable(fe), X, "RoleList")
