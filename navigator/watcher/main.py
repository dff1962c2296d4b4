"""``navigator watcher``: one Kubernetes cluster's objects, normalized, into etcd.

Wires the pieces together: a ``KubeApi`` from a kubeconfig (or, in a pod, from its service
account), one ``Informer`` per kind, one ``SyncStore`` for the cluster, the cluster's leader
election (run any number of replicas per cluster: one writes, the others stay warm), and the
server behaviour every component shares (``navigator.runtime``: JSON logs, /healthz, /readyz,
/metrics, SIGTERM).

The watcher itself (``runner.run_watcher``) is shared with the lab and the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from coordinator import etcd as etcd_mod
from navigator import runtime
from navigator.watcher import informer, runner

log = logging.getLogger(__name__)

PROG = "navigator watcher"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Watch one Kubernetes cluster and write its normalized state to etcd.",
    )
    parser.add_argument("--cluster", required=True, help="the cluster's name in the mesh")
    parser.add_argument(
        "--kubeconfig",
        help="path of the kubeconfig (default, in a pod: its service account, "
        f"{informer.SERVICE_ACCOUNT_TOKEN} and the CA beside it)",
    )
    parser.add_argument("--context", help="kubeconfig context (default: the cluster name)")
    runtime.add_etcd_argument(parser)
    parser.add_argument("--http", default="127.0.0.1:0", help="health/metrics address host:port")
    runtime.add_member_arguments(
        parser, lease_help="seconds a dead leader keeps the cluster before a standby takes over"
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.kubeconfig is None:
        if not informer.in_cluster_available():
            print(
                f"{PROG}: give --kubeconfig, or run in a pod "
                "($KUBERNETES_SERVICE_HOST and $KUBERNETES_SERVICE_PORT are not set)",
                file=sys.stderr,
            )
            return 2
        if args.context is not None:
            print(f"{PROG}: --context needs --kubeconfig", file=sys.stderr)
            return 2
    try:
        etcd_client = runtime.etcd_client(args, retry_for=10.0)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    runtime.setup_logging(args.log_level, component="watcher")

    if args.lease_ttl < 2:
        print(f"{PROG}: --lease-ttl must be at least 2 seconds", file=sys.stderr)
        return 2

    async def serve(stop: asyncio.Event) -> int:
        health = runtime.Health()
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(etcd_client)
            bound = await stack.enter_async_context(runtime.http_server(args.http, health))
            try:
                w = await stack.enter_async_context(
                    runner.run_watcher(
                        cluster=args.cluster,
                        kube_config=args.kubeconfig,
                        context=args.context,
                        etcd=client,
                        replica=runner.Replica(
                            member_id=args.id, lease_ttl=args.lease_ttl, http=bound
                        ),
                    )
                )
            except informer.KubeConfigError as exc:
                print(f"{PROG}: {exc}", file=sys.stderr)
                return 2
            log.info(
                "watcher started",
                extra={"cluster": args.cluster, "http": bound, "etcd": args.etcd, "id": args.id},
            )
            readiness = asyncio.create_task(_readiness(w, client, health))
            await runtime.wait_stop(stop, readiness)
        log.info("watcher stopped", extra={"cluster": args.cluster})
        return 0

    return runtime.run(serve)


async def _readiness(w: runner.Watcher, client: etcd_mod.Etcd, health: runtime.Health) -> None:
    """Ready = etcd answers, and: the leader has written the synced marker, or a standby has
    listed every kind (it can take over)."""
    while True:
        try:
            await asyncio.wait_for(client.ping(), timeout=2.0)
            etcd_ok = True
        except (etcd_mod.EtcdError, TimeoutError):
            etcd_ok = False
        if not etcd_ok:
            health.set_ready(False, "etcd unreachable")
        elif w.store.leading and not w.store.synced.is_set():
            health.set_ready(False, "leading, not synced yet")
        elif not w.store.leading and not w.store.warm.is_set():
            health.set_ready(False, "standby, not every kind listed yet")
        else:
            health.set_ready(True)
        await asyncio.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main())
