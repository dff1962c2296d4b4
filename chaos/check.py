"""``navigator chaos check``: the invariants against a real deployment, from etcd and the API.

Run it while a fault of ``deploy/chaos/`` is applied and after it is removed::

    navigator chaos check --etcd https://etcd-1:2379 --kubeconfig ~/.kube/config \\
        --context east --context west --duration 300 --bound 60

For ``--duration`` seconds it records etcd's history under Navigator's root and samples every
sidecar's status (what ``navigator proxy-status`` shows) every ``--every`` seconds; then it
waits up to ``--bound`` seconds for every sidecar to be SYNCED and judges:

- I2: every sidecar SYNCED on every type within the bound;
- I3: every fenced transaction in the recorded history was made by the term holding its key
  (``keys.FENCES``), and every configuration write came in one;
- I4: for every ``--context``, the endpoints in etcd's state equal the API's, object by
  object (no endpoint lost, none invented);
- I5: no sidecar went back to a version it had left while etcd's latest was another.

I1 (no failed request) needs the operator's own traffic probes: the sidecars' own metrics
(``envoy_cluster_upstream_rq_xx``) or a prober; it is not judged here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

import kubernetes

from chaos import history, invariants
from coordinator import etcd as etcd_mod
from navigator import keys, model, proxy, runtime, state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runtime.add_etcd_argument(parser)
    parser.add_argument("--kubeconfig", default=None, help="for I4: the clusters' API servers")
    parser.add_argument(
        "--context",
        action="append",
        default=[],
        help="a kubeconfig context per cluster, named as its watchers' --cluster (repeat)",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="how long to record, s")
    parser.add_argument("--bound", type=float, default=60.0, help="I2's bound after it, s")
    parser.add_argument("--every", type=float, default=2.0, help="sidecar status sampling, s")
    parser.add_argument("--json", action="store_true", help="the verdicts as JSON")


def backwards(samples: Sequence[tuple[float, list[dict[str, Any]]]]) -> invariants.Verdict:
    """I5 from ``proxy.status`` samples: a sidecar that acknowledges again a version it had
    replaced, while etcd's expected version is another, went backwards."""
    history_of: dict[tuple[str, str], list[str]] = {}
    bad: list[str] = []
    for t, rows in samples:
        for row in rows:
            for short, entry in row["types"].items():
                acked, expected = entry.get("acked", ""), entry.get("expected", "")
                if not acked:
                    continue
                seen = history_of.setdefault((row["node"], short), [])
                if seen and seen[-1] == acked:
                    continue
                if acked in seen and acked != expected:
                    bad.append(f"{row['node']} {short} at {t:.0f}: back to {acked[:12]}")
                seen.append(acked)
    steps = sum(len(v) for v in history_of.values())
    if bad:
        return invariants.Verdict(False, f"{len(bad)} steps backwards: " + "; ".join(bad[:3]))
    return invariants.Verdict(True, f"{steps} acknowledged versions, none backwards")


async def api_matches_etcd(
    etcd: etcd_mod.Etcd, kubeconfig: str | None, contexts: Sequence[str]
) -> invariants.Verdict:
    """I4: each cluster's Endpoints in the API against the watchers' state in etcd."""
    if not contexts:
        return invariants.Verdict(True, "not checked: no --context given")
    listing = await etcd.get_prefix(keys.STATE)
    in_etcd: dict[tuple[str, str], frozenset[str]] = {}
    for key, kv in listing.items.items():
        with contextlib.suppress(keys.SchemaError, model.DecodeError):
            if keys.parse_state_key(key).kind is model.Kind.ENDPOINTS:
                obj = model.decode(model.Kind.ENDPOINTS, kv.value)
                assert isinstance(obj, model.Endpoints)
                ips = frozenset(e.ip for e in obj.endpoints if e.ready)
                in_etcd[(obj.cluster, f"{obj.namespace}/{obj.name}")] = ips
    bad: list[str] = []
    compared = 0
    for context in contexts:
        client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context
        )
        api = kubernetes.client.CoreV1Api(client)
        for name, ips in (await asyncio.to_thread(history.api_endpoints, api)).items():
            compared += 1
            held = in_etcd.get((context, name))
            if held is None:
                bad.append(f"{context} {name}: in the API, not in etcd")
            elif held != ips:
                bad.append(
                    f"{context} {name}: lost {sorted(ips - held)}, ghost {sorted(held - ips)}"
                )
    if bad:
        return invariants.Verdict(False, f"{len(bad)} objects differ: " + "; ".join(bad[:3]))
    return invariants.Verdict(True, f"{compared} Endpoints objects equal in the API and etcd")


async def check(
    args: argparse.Namespace, *, recording: asyncio.Event | None = None
) -> dict[str, Any]:
    """Records, waits, judges. ``recording`` is set once etcd's history is being recorded."""
    async with runtime.etcd_client(args) as etcd:
        log = history.EtcdLog(etcd)
        recorder = asyncio.create_task(log.run())
        await asyncio.wait_for(log.listed.wait(), args.duration + 30)
        if recording is not None:
            recording.set()
        samples: list[tuple[float, list[dict[str, Any]]]] = []
        started = time.monotonic()
        try:
            while time.monotonic() - started < args.duration:
                with contextlib.suppress(etcd_mod.EtcdError):
                    samples.append((time.monotonic() - started, await proxy.status(etcd)))
                await asyncio.sleep(args.every)
            healed = time.monotonic()
            converged: float | None = None
            while time.monotonic() - healed < args.bound:
                with contextlib.suppress(etcd_mod.EtcdError):
                    rows = await proxy.status(etcd)
                    samples.append((time.monotonic() - started, rows))
                    if rows and all(proxy.synced(r) for r in rows):
                        converged = time.monotonic() - healed
                        break
                await asyncio.sleep(args.every)
        finally:
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder
        verdicts = {
            "I2": invariants.convergence(converged, args.bound, "sidecars not all SYNCED"),
            "I3": invariants.fencing(log),
            "I4": await api_matches_etcd(etcd, args.kubeconfig, args.context),
            "I5": backwards(samples),
        }
    return {
        "passed": all(v.passed for v in verdicts.values()),
        "invariants": {k: v.passed for k, v in verdicts.items()},
        "evidence": {k: v.evidence for k, v in verdicts.items()},
        "figures": {
            "sidecars": len(samples[-1][1]) if samples else 0,
            "samples": len(samples),
            "etcd_revisions": len({c.revision for c in log.changes}),
            "convergence_s": invariants.finite(converged),
        },
    }


def render(result: dict[str, Any]) -> str:
    lines = [f"{'PASS' if result['passed'] else 'FAIL'}"]
    for k, ok in result["invariants"].items():
        lines.append(f"  {k} {'ok  ' if ok else 'FAIL'} {result['evidence'][k]}")
    lines.append("  I1 -    needs your traffic probes (not judged here)")
    lines.append("  " + ", ".join(f"{k} {v}" for k, v in result["figures"].items()))
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    try:
        result = await check(args)
    except (etcd_mod.EtcdError, OSError, ValueError, kubernetes.config.ConfigException) as exc:
        print(f"navigator chaos check: {state.one_line(exc)}")
        return 2
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0 if result["passed"] else 1
