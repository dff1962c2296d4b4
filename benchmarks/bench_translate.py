"""Translation cost at mesh scale: the full mesh at once, and one endpoint change.

Run: ``python benchmarks/bench_translate.py [--services 2000] [--endpoints 20] [--apps 1000]``

Prints median and p99 of each phase and the peak memory of the process. The incremental
phase drives the translator runner's own in-memory path (``Translator.apply`` +
``Translator.compute``) without etcd, so it measures translation and change tracking, not I/O.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import time
from collections.abc import Callable

from navigator import keys, model
from shards import runner, translate

CLUSTERS = (model.ClusterName("east"), model.ClusterName("west"))
ZONES = {"east": ("r1-a", "r1-b"), "west": ("r2-a", "r2-b")}


def _ip(second: int, n: int) -> str:
    return f"127.{second}.{n // 250 % 250}.{n % 250}"


def mesh(services: int, endpoints: int, apps: int, per_app: int) -> list[model.Object]:
    rnd = random.Random(7)
    objs: list[model.Object] = []
    for ci, cluster in enumerate(CLUSTERS):
        for zi, zone in enumerate(ZONES[cluster]):
            objs.append(model.Node(cluster, f"{cluster}-n{zi}", cluster + "-r", zone))
        for s in range(services):
            ns, name = f"ns{s % 50}", f"svc{s}"
            objs.append(
                model.Service(
                    cluster=cluster,
                    namespace=ns,
                    name=name,
                    type=model.ServiceType.CLUSTER_IP,
                    cluster_ip=f"127.{31 + ci}.{s // 250}.{s % 250 + 1}",
                    ports=(
                        model.ServicePort("http", 8080, model.Protocol.HTTP, 8080),
                        model.ServicePort("tcp-db", 5432, model.Protocol.TCP, 5432),
                    ),
                )
            )
            eps = tuple(
                model.Endpoint(
                    ip=_ip(21 + ci, s * endpoints + e),
                    ready=True,
                    ports=(model.EndpointPort("http", 8080), model.EndpointPort("tcp-db", 5432)),
                    node=f"{cluster}-n{e % 2}",
                )
                for e in range(endpoints // len(CLUSTERS))
            )
            objs.append(model.Endpoints(cluster, ns, name, eps))
    for a in range(apps):
        refs = tuple(
            model.ServiceRef(f"ns{s % 50}", f"svc{s}") for s in rnd.sample(range(services), per_app)
        )
        objs.append(model.Nexus(CLUSTERS[a % 2], "apps", f"app{a}", model.AppName(f"app{a}"), refs))
    return objs


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def report(name: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"{name:<44} n={len(samples):<4} median {statistics.median(samples) * 1e3:9.2f} ms"
        f"   p99 {p99 * 1e3:9.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--endpoints", type=int, default=20, help="per service, all clusters")
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--per-app", type=int, default=20, help="services per app's Nexus")
    parser.add_argument("--full-runs", type=int, default=3)
    parser.add_argument("--changes", type=int, default=200)
    args = parser.parse_args()

    objs = mesh(args.services, args.endpoints, args.apps, args.per_app)
    print(
        f"mesh: {args.services} services x {args.endpoints} endpoints over {len(CLUSTERS)} "
        f"clusters, {args.apps} apps x {args.per_app} services ({len(objs)} objects)"
    )
    report(
        "full translation (translate.translate)",
        timed(lambda: translate.translate(objs, CLUSTERS), args.full_runs),
    )

    # The runner's incremental path, fed the same objects through its in-memory index.
    tr = runner.Translator(etcd=None, options=translate.Options())  # type: ignore[arg-type]
    for obj in objs:
        tr.apply(keys.state_key(obj), model.encode(obj))
    for cluster in CLUSTERS:
        tr.apply(keys.synced_key(cluster), b"{}")
    started = time.perf_counter()
    puts, _ = tr.compute()
    tr.record_written(puts, ())
    report("runner: first computation", [time.perf_counter() - started])
    print(f"{'':<44} keys written: {len(puts)}")

    endpoints = [o for o in objs if isinstance(o, model.Endpoints)]
    rnd = random.Random(11)
    samples: list[float] = []
    written: list[int] = []
    for i in range(args.changes):
        old = rnd.choice(endpoints)
        changed = model.Endpoints(
            old.cluster,
            old.namespace,
            old.name,
            (*old.endpoints[1:], model.Endpoint(_ip(99, i), True, old.endpoints[0].ports)),
        )
        started = time.perf_counter()
        tr.apply(keys.state_key(changed), model.encode(changed))
        puts, deletes = tr.compute()
        samples.append(time.perf_counter() - started)
        tr.record_written(puts, deletes)
        written.append(len(puts) + len(deletes))
    report("runner: one endpoint change", samples)
    print(f"{'':<44} keys written per change: max {max(written)}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
