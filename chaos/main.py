"""``navigator chaos``: fault scenarios against the lab, judged by invariants; figures reported.

::

    navigator chaos list                       # every scenario, what it does and checks
    navigator chaos run [SCENARIO...] [--report DIR] [--quick] [--hold S] [--network MODE]

Each scenario starts a fresh lab (``navigator.lab``: 3-member etcd, two clusters' API servers,
2 watchers per cluster, 2 translators, 2 front-ends, node-local balancers, real Envoy sidecars
in their pods and backends), sends steady traffic through every sidecar, injects its fault,
heals it and checks invariants I1-I5 (``chaos.invariants``) from what was recorded
(``chaos.history``). The exit code is 1 when an invariant failed or a scenario could not run.

While it runs, ``--http`` serves /healthz, /readyz (ready while a scenario runs) and
/metrics (scenarios run and failed). SIGTERM stops after tearing down the running lab.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import prometheus_client

from navigator import runtime

log = logging.getLogger(__name__)

SCENARIOS_RUN = prometheus_client.Counter(
    "navigator_chaos_scenarios_total", "Chaos scenarios run, by result", ["result"]
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="navigator chaos",
        description="Fault scenarios against a local lab, judged by invariants I1-I5.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every scenario: its fault and what it shows")
    p = sub.add_parser("run", help="run scenarios (all by default); a report at the end")
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="names from 'chaos list'")
    p.add_argument("--report", type=Path, default=None, help="write report.json and report.html")
    p.add_argument("--quick", action="store_true", help="only the short subset (what CI runs)")
    p.add_argument(
        "--hold",
        type=float,
        default=None,
        help="how long every fault lasts, s (default: each scenario's own)",
    )
    p.add_argument(
        "--network",
        choices=("auto", "netns", "host"),
        default="auto",
        help="the lab's network (default: netns where it works)",
    )
    p.add_argument("--work", type=Path, default=None, help="labs' state (default: a temp dir)")
    p.add_argument("--http", default="127.0.0.1:0", help="/healthz, /readyz, /metrics address")
    p.add_argument("--log-level", default="warning")
    c = sub.add_parser(
        "check",
        help="judge I2-I5 against a real deployment (etcd, proxy-status, the API) over a while",
        description="Records etcd's history and every sidecar's status for --duration, waits "
        "--bound for every sidecar SYNCED, compares etcd's endpoints with each --context's API.",
    )
    from chaos import check

    check.add_arguments(c)
    c.add_argument("--log-level", default="warning")
    return parser


def describe() -> str:
    from chaos import scenarios

    lines = ["Scenarios (every one checks I1-I5; * = in the --quick subset):", ""]
    for s in scenarios.SCENARIOS:
        lines.append(f"{s.name}{' *' if s.quick else ''}")
        lines.append(f"  {s.summary}")
        words = s.explain.split()
        line = " "
        for w in words:
            if len(line) + len(w) > 96:
                lines.append(line)
                line = " "
            line += " " + w
        lines.append(line)
        extra = f"  convergence bound {s.bound:.0f} s"
        if s.allowed_failures:
            extra += f", {s.allowed_failures} failed probes allowed"
        lines += [extra, ""]
    lines += [
        "Invariants:",
        "  I1 every sidecar keeps serving on its last good config: no failed probe",
        "  I2 after healing, every sidecar converges to the truth within the bound",
        "  I3 no write by a deposed leader lands (fence marks in etcd's history)",
        "  I4 no lost or ghost endpoint: sidecars hold only what the API had, at the end all of it",
        "  I5 no sidecar's version goes backwards",
    ]
    return "\n".join(lines)


def _meta(started: float) -> dict[str, Any]:
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        ).stdout.strip()
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "machine": f"{platform.machine()}, {_cores()} cores, Python {platform.python_version()}",
        "commit": commit,
    }


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


async def _run(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from chaos import report, scenarios
    from chaos.run import Options, execute

    unknown = [n for n in args.scenarios if n not in scenarios.BY_NAME]
    if unknown:
        print(
            f"navigator chaos: unknown scenario {', '.join(unknown)}; see 'navigator chaos list'",
            file=sys.stderr,
        )
        return 2
    chosen = [scenarios.BY_NAME[n] for n in args.scenarios] or [
        s for s in scenarios.SCENARIOS if s.quick or not args.quick
    ]
    options = Options(network=args.network, hold=args.hold)
    health = runtime.Health()
    started = time.time()
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        async with runtime.http_server(args.http, health):
            for s in chosen:
                if stop.is_set():
                    break
                health.set_ready(True)
                print(f"== {s.name}: {s.summary}", flush=True)
                task = asyncio.create_task(
                    execute(
                        s.name,
                        s.summary,
                        s.body,
                        shape=s.shape,
                        bound=s.bound,
                        allowed=s.allowed_failures,
                        work=work,
                        options=options,
                    )
                )
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if not task.done():
                    # NOTE: cancelled, the scenario's lab still stops (execute's finally).
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    break
                result = task.result()
                results.append(result)
                SCENARIOS_RUN.labels(result="passed" if result["passed"] else "failed").inc()
                verdict = "PASS" if result["passed"] else ("ERROR" if result["error"] else "FAIL")
                print(f"   {verdict} in {result['duration_s']} s", flush=True)
                if result["error"]:
                    print(f"   error: {result['error']}", flush=True)
                for inv, ok in result.get("invariants", {}).items():
                    if not ok:
                        print(f"   {inv}: {result['evidence'][inv]}", flush=True)
                if "diagnosis" in result.get("figures", {}):
                    print(f"   diagnosis: {result['figures']['diagnosis']}", flush=True)
            health.set_ready(False, "done")
    meta = _meta(started) | {"duration_s": round(time.time() - started, 1)}
    print()
    print(report.table(results))
    if args.report is not None:
        paths = report.write(args.report, results, meta)
        print(f"\nreport: {paths['json']}, {paths['html']}")
    if stop.is_set():
        return 130
    return report.exit_code(results) if results else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        print(describe())
        return 0
    runtime.setup_logging(args.log_level, "chaos")
    if args.command == "check":
        from chaos import check

        return asyncio.run(check.main_async(args))
    return runtime.run(lambda stop: _run(args, stop))
