"""The invariants every chaos scenario is judged by, from the recorded histories only.

- I1 every sidecar keeps serving on its last good config: no failed probe (unless the
  scenario allows some);
- I2 after healing, every sidecar converges to the truth within a bound;
- I3 no write by a deposed leader lands: every fenced transaction in etcd's history carries
  the token of the term that held its leadership key just before it, and every write of
  configuration (state, snapshots, diagnostics) came in a fenced transaction;
- I4 no lost or ghost endpoint: whatever a sidecar held for a service was, cluster by cluster,
  a version the Kubernetes API really had (never an endpoint dropped from, or added to, what
  the API said), and at the end exactly what the API holds;
- I5 no sidecar's version goes backwards: mapped to the API's versions (the latest one with
  that content written before it was seen), what a sidecar holds only moves forward.

Each check returns a ``Verdict``: passed, and one line of evidence (with examples when it
failed). The checks are pure: the tests feed them histories by hand.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

from chaos.history import Change, EtcdLog, Probe, Seen, Truth, service_of
from navigator import keys

CONFIG_PREFIXES = (keys.STATE, keys.SNAPSHOTS, keys.DIAGNOSTICS)
"""Keys only a leader writes, each write fenced."""


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    evidence: str


def probes(results: Sequence[Probe], *, allowed: int = 0) -> Verdict:
    failed = [p for p in results if not p.ok]
    if not results:
        return Verdict(False, "no probe was answered or recorded at all")
    line = f"{len(failed)} of {len(results)} probes failed (allowed {allowed})"
    if len(failed) <= allowed:
        return Verdict(True, line)
    examples = "; ".join(f"{p.sidecar} → {p.target} at {p.t:.2f}: {p.error}" for p in failed[:3])
    return Verdict(False, f"{line}: {examples}")


def convergence(seconds: float | None, bound: float, what: str) -> Verdict:
    if seconds is None:
        return Verdict(False, f"not converged within {bound:.0f} s of healing: {what}")
    return Verdict(seconds <= bound, f"converged {seconds:.2f} s after healing (bound {bound} s)")


def fencing(log: EtcdLog, *, exempt: Iterable[int] = ()) -> Verdict:
    """I3 over etcd's history. ``exempt``: revisions the scenario wrote itself (a fault)."""
    leaders = {
        k: kv.create_revision
        for k, kv in log.start.items()
        if k.startswith((keys.SHARDS, keys.WATCHERS)) and k.endswith("/leader")
    }
    skip = set(exempt)
    by_revision: dict[int, list[Change]] = {}
    for c in log.changes:
        by_revision.setdefault(c.revision, []).append(c)
    fenced = unfenced = 0
    bad: list[str] = []
    for revision in sorted(by_revision):
        changes = by_revision[revision]
        marks = [c for c in changes if c.key.startswith(keys.FENCES) and c.value is not None]
        for mark in marks:
            fenced += 1
            leader_key = keys.parse_fence_mark_key(mark.key)
            token = keys.fence_mark_token(mark.value or b"0")
            held = leaders.get(leader_key)
            if held != token:
                bad.append(
                    f"revision {revision}: a write of term {token} of {leader_key} while "
                    f"{'term ' + str(held) if held else 'nobody'} held it"
                )
        config = [c for c in changes if c.key.startswith(CONFIG_PREFIXES)]
        if config and not marks and revision not in skip:
            unfenced += 1
            bad.append(f"revision {revision}: {config[0].key} written outside any term")
        for c in changes:
            if c.key.startswith((keys.SHARDS, keys.WATCHERS)) and c.key.endswith("/leader"):
                if c.value is None:
                    leaders.pop(c.key, None)
                else:
                    leaders.setdefault(c.key, revision)
    gaps = f"; history cut by compaction at {log.gaps}" if log.gaps else ""
    line = f"{fenced} fenced transactions, all by the term holding the key{gaps}"
    if not bad:
        return Verdict(True, line)
    return Verdict(False, f"{len(bad)} writes not by the current term: " + "; ".join(bad[:3]))


def _version_index(truth: Truth, service: str, cluster: str, ips: frozenset[str], t: float) -> int:
    """The latest version of (service, cluster) with exactly ``ips`` written by ``t``; -1 if
    there is none."""
    found = -1
    for i, (written, version) in enumerate(truth.versions.get((service, cluster), [])):
        if written > t:
            break
        if version == ips:
            found = i
    return found


def endpoints(
    seen: Sequence[Seen], truth: Truth, final: dict[tuple[str, str], frozenset[str]]
) -> Verdict:
    """I4: every observation, per cluster, is a version the API had; the final ones equal the
    API's latest. ``final``: (sidecar, Envoy cluster) → what it holds at the end."""
    bad: list[str] = []
    for s in seen:
        service = service_of(s.cluster)
        for cluster, ips in truth.split(s.ips).items():
            if cluster == "":
                bad.append(
                    f"{s.sidecar} {s.cluster} at {s.t:.2f}: ghost {sorted(ips)} (no cluster)"
                )
                continue
            if _version_index(truth, service, cluster, ips, s.t) < 0:
                now = truth.latest(service, cluster)
                ever = truth.ever(service)
                ghost, lost = sorted(ips - ever), sorted(now - ips)
                bad.append(
                    f"{s.sidecar} {s.cluster} at {s.t:.2f}: {cluster}'s endpoints {sorted(ips)} "
                    f"were never the API's (ghost {ghost}, missing {lost})"
                )
    for (sidecar, envoy_cluster), ips in sorted(final.items()):
        want = truth.union(service_of(envoy_cluster))
        if ips != want:
            bad.append(
                f"{sidecar} {envoy_cluster} at the end: lost {sorted(want - ips)}, "
                f"ghost {sorted(ips - want)}"
            )
    line = f"{len(seen)} endpoint sets seen on sidecars, each one the API had; final sets equal"
    if not bad:
        return Verdict(True, line)
    return Verdict(False, f"{len(bad)} lost or ghost endpoint sets: " + "; ".join(bad[:3]))


def monotonic(seen: Sequence[Seen], truth: Truth) -> Verdict:
    """I5: per sidecar, Envoy cluster and Kubernetes cluster, the version index never drops."""
    last: dict[tuple[str, str, str], tuple[int, float]] = {}
    bad: list[str] = []
    steps = 0
    for s in sorted(seen, key=lambda s: s.t):
        service = service_of(s.cluster)
        for cluster, ips in truth.split(s.ips).items():
            if not cluster:
                continue
            index = _version_index(truth, service, cluster, ips, s.t)
            if index < 0:
                continue  # NOTE: not a version at all: I4's finding
            key = (s.sidecar, s.cluster, cluster)
            before = last.get(key)
            if before is not None and index < before[0]:
                bad.append(
                    f"{s.sidecar} {s.cluster} ({cluster}) at {s.t:.2f}: back to version "
                    f"{index} after {before[0]} (seen at {before[1]:.2f})"
                )
            if before is None or index != before[0]:
                steps += 1
            last[key] = (index, s.t)
    if not bad:
        return Verdict(True, f"{steps} version steps on sidecars, none backwards")
    return Verdict(False, f"{len(bad)} steps backwards: " + "; ".join(bad[:3]))


def version_timeline(seen: Sequence[Seen], truth: Truth, t0: float) -> list[dict[str, object]]:
    """Per sidecar, the sum of its version indices over time (a step up per change taken)."""
    current: dict[str, dict[tuple[str, str], int]] = {}
    out: list[dict[str, object]] = []
    for s in sorted(seen, key=lambda s: s.t):
        held = current.setdefault(s.sidecar, {})
        for cluster, ips in truth.split(s.ips).items():
            if cluster:
                index = _version_index(truth, service_of(s.cluster), cluster, ips, s.t)
                held[(s.cluster, cluster)] = max(index, 0)
        out.append({"sidecar": s.sidecar, "t": round(s.t - t0, 3), "index": sum(held.values())})
    return out


def finite(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) or math.isnan(value) else round(value, 3)
