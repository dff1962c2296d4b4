"""The ``navigator`` command: one entry point for every process and tool of the mesh.

Each subcommand lives in its own module with a ``main(argv) -> int`` (or the function that
``module:function`` names); this module only picks one, importing it lazily so that
``navigator bootstrap`` does not load the gRPC server.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "lab": ("navigator.lab.main", "run the mesh locally: etcd, clusters, control plane, Envoys"),
    "watcher": ("navigator.watcher.main", "watch one Kubernetes cluster into etcd"),
    "translator": ("shards.runner", "translate state in etcd into per-app Envoy snapshots"),
    "xds": ("navigator.frontend", "serve snapshots from etcd to Envoy sidecars over ADS"),
    "bootstrap": ("navigator.bootstrap", "print an Envoy bootstrap for a sidecar"),
    "balancer-config": (
        "navigator.balancer",
        "print the node-local balancer's Envoy config (xDS to healthy front-ends)",
    ),
    "weight": ("navigator.weights", "show or set a cluster's traffic weight (0 drains it)"),
    "tracing": ("navigator.tracing", "show, set or turn off the mesh-wide tracing setting"),
    "state": (
        "navigator.state",
        "show clusters, services, apps, snapshots, shards, members, diagnostics (from etcd)",
    ),
    "proxy-status": (
        "navigator.proxy:status_main",
        "every connected sidecar: SYNCED, STALE or NACKED per type",
    ),
    "proxy-diff": (
        "navigator.proxy:diff_main",
        "a sidecar's live config (its admin) against what etcd says it should hold",
    ),
    "kube-api": ("navigator.kubeapi.server", "run the local Kubernetes API server"),
    "chaos": (
        "chaos.main",
        "fault scenarios against the lab, judged by invariants; a report of each",
    ),
    "bench": (
        "navigator.bench.main",
        "the mesh-scale benchmark: the system on loopback, sidecars, churn, the floor",
    ),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: navigator COMMAND [ARGS...]",
        "",
        "Navigator: a multi-cluster service-mesh control plane for Envoy sidecars, on etcd.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'navigator COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] == "--version":
        from navigator import __version__

        print(f"navigator {__version__}")
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"navigator: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, _, function = command[0].partition(":")
    module = importlib.import_module(module_name)
    result: int = getattr(module, function or "main")(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
