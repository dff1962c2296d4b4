"""Pure coordination logic: shard assignment and the local lease deadline (controllable clock)."""

from __future__ import annotations

import pytest

from coordinator import session, shards
from navigator import keys, model

WEB = model.AppName("web")
EAST = model.ClusterName("east")


def _members(n: int) -> list[str]:
    return [f"translator-{i}" for i in range(n)]


@pytest.mark.parametrize(
    ("shard_count", "members"),
    [
        pytest.param(8, 1, id="one-member-leads-all"),
        pytest.param(8, 2, id="even-split"),
        pytest.param(8, 3, id="uneven-3-3-2"),
        pytest.param(3, 5, id="more-members-than-shards"),
        pytest.param(16, 7, id="sixteen-over-seven"),
    ],
)
def test_assignment_covers_every_shard_once_and_is_balanced_within_one(
    shard_count: int, members: int
) -> None:
    out = shards.assign(shard_count, _members(members))
    every = [s for held in out.values() for s in held]
    assert sorted(every) == list(range(shard_count))
    sizes = [len(held) for held in out.values()]
    assert max(sizes) - min(sizes) <= 1


def test_assignment_is_the_same_whatever_the_order_of_members() -> None:
    ids = _members(5)
    assert shards.assign(16, ids) == shards.assign(16, list(reversed(ids)))


@pytest.mark.parametrize("before", [2, 3, 4])
def test_a_member_joining_moves_about_its_share(before: int) -> None:
    count = 16
    old = shards.assign(count, _members(before))
    new = shards.assign(count, _members(before + 1))
    owner_old = {s: m for m, held in old.items() for s in held}
    owner_new = {s: m for m, held in new.items() for s in held}
    moved = sum(owner_old[s] != owner_new[s] for s in range(count))
    share = -(-count // (before + 1))
    # NOTE: the newcomer's share must move; a greedy fill may move a couple more.
    assert share <= moved <= share + 2


def test_no_member_no_assignment() -> None:
    assert shards.assign(4, []) == {}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lease_deadline_is_the_send_time_plus_ttl_minus_margin() -> None:
    clock = FakeClock()
    lease = session.LeaseClock(ttl=5, margin=1, clock=clock)
    assert not lease.valid()
    lease.renewed(sent_at=100.0, ttl=5)
    clock.now = 103.9
    assert lease.valid()
    clock.now = 104.0
    assert not lease.valid(), "the lease must count as gone at send time + TTL - margin"


def test_a_late_answer_to_an_old_keepalive_never_shortens_the_deadline() -> None:
    clock = FakeClock()
    lease = session.LeaseClock(ttl=5, margin=1, clock=clock)
    lease.renewed(sent_at=102.0, ttl=5)
    lease.renewed(sent_at=100.0, ttl=5)
    assert lease.deadline == 106.0


def test_margin_must_be_shorter_than_the_ttl() -> None:
    with pytest.raises(ValueError, match="shorter than its TTL"):
        session.LeaseClock(ttl=1, margin=1)


@pytest.mark.parametrize(
    ("key", "owner_name"),
    [
        pytest.param(keys.app_snapshot_key(WEB, EAST), "web", id="app-snapshot"),
        pytest.param(keys.chunk_key(WEB, EAST, "abc"), "web", id="chunk"),
        pytest.param(keys.diagnostics_key(WEB), "web", id="app-diagnostics"),
        pytest.param(keys.eds_key("shop/item:8890", "r1-a"), "shop/item", id="eds-by-service"),
        pytest.param(keys.MESH_DIAGNOSTICS, keys.DEFAULT_APP, id="mesh-diagnostics"),
    ],
)
def test_every_translator_key_has_one_owner_shard(key: str, owner_name: str) -> None:
    for count in (1, 3, 8):
        assert keys.owner_shard(key, count) == keys.shard_of(owner_name, count)


def test_keys_outside_the_translators_have_no_owner() -> None:
    assert keys.owner_shard(keys.synced_key(EAST), 4) is None
