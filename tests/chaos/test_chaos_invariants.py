"""The invariant checks on histories written by hand: each passes what is right and catches
what is wrong."""

from __future__ import annotations

import ipaddress
import math

from chaos import invariants
from chaos.history import Change, EtcdLog, Probe, Seen, Truth
from coordinator import etcd as etcd_mod
from navigator import keys

LEADER = keys.shard_leader_key(3)
MARK = keys.fence_mark_key(LEADER)
APP = keys.APP_SNAPSHOTS + "web/east"
ITEM = "shop/item:8890"


def _truth() -> Truth:
    truth = Truth(
        cidrs={
            "east": ipaddress.IPv4Network("198.18.1.0/24"),
            "west": ipaddress.IPv4Network("198.18.2.0/24"),
        }
    )
    truth.record("shop/item", "east", ["198.18.1.1", "198.18.1.2"], -math.inf)
    truth.record("shop/item", "west", ["198.18.2.1"], -math.inf)
    truth.record("shop/item", "east", ["198.18.1.1"], 10.0)
    truth.record("shop/item", "east", ["198.18.1.1", "198.18.1.2"], 20.0)
    return truth


def _seen(t: float, *ips: str, sidecar: str = "east-web-0") -> Seen:
    return Seen(t, sidecar, ITEM, frozenset(ips))


def _log(*changes: tuple[int, str, bytes | None]) -> EtcdLog:
    log = EtcdLog(etcd_mod.Etcd(["127.0.0.1:1"]))
    log.start = {LEADER: etcd_mod.KeyValue(LEADER, b"{}", mod_revision=5, create_revision=5)}
    log.changes = [Change(float(r), r, k, v) for r, k, v in changes]
    return log


def test_probes_fail_past_what_is_allowed() -> None:
    ok = [Probe(1.0, "a", "http://x/", True)]
    bad = [*ok, Probe(2.0, "a", "http://x/", False, "URLError: refused")]
    assert invariants.probes(ok).passed
    verdict = invariants.probes(bad)
    assert not verdict.passed and "refused" in verdict.evidence
    assert invariants.probes(bad, allowed=1).passed
    assert not invariants.probes([]).passed, "no traffic at all proves nothing"


def test_fencing_accepts_the_current_term_and_catches_a_deposed_one() -> None:
    current = _log((10, APP, b"v1"), (10, MARK, b"5"))
    assert invariants.fencing(current).passed

    # The key changes hands at 11 (deleted, created anew at 12); a write of term 5 at 13.
    deposed = _log(
        (11, LEADER, None),
        (12, LEADER, b"{}"),
        (13, APP, b"old"),
        (13, MARK, b"5"),
    )
    verdict = invariants.fencing(deposed)
    assert not verdict.passed and "term 5" in verdict.evidence and "term 12" in verdict.evidence
    assert invariants.fencing(
        _log((11, LEADER, None), (12, LEADER, b"{}"), (13, MARK, b"12"))
    ).passed


def test_fencing_catches_an_unfenced_config_write_unless_exempt() -> None:
    unfenced = _log((10, APP, b"v1"))
    assert not invariants.fencing(unfenced).passed
    assert invariants.fencing(unfenced, exempt=[10]).passed
    other = _log((10, keys.ROOT + "ping/x", b"1"))
    assert invariants.fencing(other).passed, "only configuration keys need a term"


def test_endpoints_accept_versions_the_api_had_per_cluster() -> None:
    truth = _truth()
    seen = [
        _seen(0.0, "198.18.1.1", "198.18.1.2", "198.18.2.1"),
        _seen(11.0, "198.18.1.1", "198.18.2.1"),
        _seen(21.0, "198.18.1.1", "198.18.1.2", "198.18.2.1"),
    ]
    final = {("east-web-0", ITEM): seen[-1].ips}
    verdict = invariants.endpoints(seen, truth, final)
    assert verdict.passed, verdict.evidence


def test_endpoints_catch_a_ghost_a_loss_and_a_premature_version() -> None:
    truth = _truth()
    final = {("east-web-0", ITEM): frozenset({"198.18.1.1", "198.18.1.2", "198.18.2.1"})}
    ghost = [_seen(1.0, "198.18.1.1", "198.18.1.2", "198.18.1.9", "198.18.2.1")]
    verdict = invariants.endpoints(ghost, truth, final)
    assert not verdict.passed and "198.18.1.9" in verdict.evidence
    lost_west = [_seen(1.0, "198.18.1.1", "198.18.1.2")]
    assert not invariants.endpoints(lost_west, truth, final).passed
    # The version written at 10 cannot have been seen at 5.
    early = [_seen(5.0, "198.18.1.1", "198.18.2.1")]
    assert not invariants.endpoints(early, truth, final).passed
    lost_at_end = {("east-web-0", ITEM): frozenset({"198.18.1.1", "198.18.2.1"})}
    verdict = invariants.endpoints([], truth, lost_at_end)
    assert not verdict.passed and "lost ['198.18.1.2']" in verdict.evidence


def test_monotonic_allows_a_returning_version_and_catches_going_back() -> None:
    truth = _truth()
    forward = [
        _seen(0.0, "198.18.1.1", "198.18.1.2", "198.18.2.1"),
        _seen(11.0, "198.18.1.1", "198.18.2.1"),
        _seen(21.0, "198.18.1.1", "198.18.1.2", "198.18.2.1"),  # the same set, a new version
    ]
    assert invariants.monotonic(forward, truth).passed
    back = [
        _seen(0.0, "198.18.1.1", "198.18.1.2", "198.18.2.1"),
        _seen(11.0, "198.18.1.1", "198.18.2.1"),
        _seen(15.0, "198.18.1.1", "198.18.1.2", "198.18.2.1"),  # before 20: the old one
    ]
    verdict = invariants.monotonic(back, truth)
    assert not verdict.passed and "back to version 0 after 1" in verdict.evidence


def test_the_version_timeline_steps_up_with_each_version_taken() -> None:
    truth = _truth()
    seen = [
        _seen(0.0, "198.18.1.1", "198.18.1.2", "198.18.2.1"),
        _seen(11.0, "198.18.1.1", "198.18.2.1"),
        _seen(21.0, "198.18.1.1", "198.18.1.2", "198.18.2.1"),
    ]
    steps = invariants.version_timeline(seen, truth, t0=0.0)
    assert [s["index"] for s in steps] == [0, 1, 2]


def test_convergence_has_a_bound() -> None:
    assert invariants.convergence(3.0, 30.0, "").passed
    assert not invariants.convergence(31.0, 30.0, "").passed
    verdict = invariants.convergence(None, 30.0, "east-web-0: eds differ")
    assert not verdict.passed and "eds differ" in verdict.evidence
