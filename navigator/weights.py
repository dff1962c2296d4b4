"""``navigator weight``: the operator's traffic weight per Kubernetes cluster.

A cluster's weight scales the share of each of its ready pods against the pods of other
clusters (default 100: every pod an equal share); 0 drains the cluster: its endpoints leave
every sidecar's configuration, its Services and listeners stay. This is how a Kubernetes
cluster is upgraded: drain it, upgrade, set it back. The setting is one etcd key per cluster
(``navigator.keys.cluster_weight_key``), read by the translators; no Service is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from coordinator import etcd as etcd_mod
from navigator import keys, model, runtime


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="navigator weight",
        description="Show or set the traffic weight of Kubernetes clusters (0 drains one).",
        epilog="examples: navigator weight; navigator weight east 0; navigator weight east --reset",
    )
    parser.add_argument("cluster", nargs="?", help="the cluster to set")
    parser.add_argument(
        "weight",
        nargs="?",
        type=int,
        help=f"0 (drained) to {model.MAX_WEIGHT}; default {model.DEFAULT_WEIGHT}",
    )
    parser.add_argument("--reset", action="store_true", help="back to the default weight")
    parser.add_argument(
        "--force", action="store_true", help="set it even if no watcher has synced the cluster"
    )
    runtime.add_etcd_argument(parser)
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    return parser


async def _weights(etcd: etcd_mod.Etcd) -> dict[str, int]:
    synced = await etcd.get_prefix(keys.SYNCED)
    set_ = await etcd.get_prefix(keys.CLUSTER_WEIGHTS)
    out = {keys.parse_synced_key(k): model.DEFAULT_WEIGHT for k in synced.items}
    for key, kv in set_.items.items():
        try:
            out[keys.parse_cluster_weight_key(key)] = model.decode_weight(kv.value)
        except (keys.SchemaError, model.DecodeError):
            continue
    return dict(sorted(out.items()))


async def _run(args: argparse.Namespace) -> int:
    async with runtime.etcd_client(args, retry_for=5.0) as etcd:
        if args.cluster is None:
            weights = await _weights(etcd)
            if args.output == "json":
                print(json.dumps(weights))
            else:
                print(f"{'CLUSTER':<20} WEIGHT")
                for cluster, weight in weights.items():
                    note = "  (drained)" if weight == 0 else ""
                    print(f"{cluster:<20} {weight}{note}")
            return 0
        cluster = model.ClusterName(args.cluster)
        if not args.force and await etcd.get(keys.synced_key(cluster)) is None:
            print(
                f"navigator weight: no watcher has synced cluster {cluster!r} "
                "(a typo? --force sets it anyway)",
                file=sys.stderr,
            )
            return 2
        if args.reset:
            await etcd.delete(keys.cluster_weight_key(cluster))
            print(f"{cluster}: weight {model.DEFAULT_WEIGHT} (default)")
            return 0
        await etcd.put(keys.cluster_weight_key(cluster), model.encode_weight(args.weight))
        note = " (drained)" if args.weight == 0 else ""
        print(f"{cluster}: weight {args.weight}{note}")
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.cluster is not None and (args.weight is None) == (not args.reset):
        parser.error("give either a WEIGHT or --reset for the cluster")
    if args.weight is not None and not 0 <= args.weight <= model.MAX_WEIGHT:
        parser.error(f"WEIGHT is 0 (drained) to {model.MAX_WEIGHT}")
    try:
        with runtime.quiet_etcd_retries():
            return asyncio.run(_run(args))
    except (etcd_mod.EtcdError, ValueError) as exc:
        print(f"navigator weight: {exc}", file=sys.stderr)
        return 1
