"""``navigator tracing``: the mesh-wide tracing setting, one etcd key read by translators.

Every HTTP connection manager of every sidecar reports spans to the collector with the given
sampling; the service name is the sidecar's app. Changing it rebuilds every app's
configuration, so it is a setting for operators, not for every deploy.
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
        prog="navigator tracing",
        description="Show, set or turn off the mesh-wide tracing setting.",
        epilog="examples: navigator tracing; navigator tracing zipkin zipkin.tracing:9411 "
        "--sampling 1; navigator tracing off",
    )
    parser.add_argument(
        "provider", nargs="?", choices=[*[p.value for p in model.TracingProvider], "off"]
    )
    parser.add_argument("collector", nargs="?", help="HOST:PORT of the collector")
    parser.add_argument(
        "--sampling", type=float, default=1.0, help="percent of requests traced (default 1)"
    )
    runtime.add_etcd_argument(parser)
    return parser


async def _run(args: argparse.Namespace) -> int:
    async with runtime.etcd_client(args, retry_for=5.0) as etcd:
        if args.provider is None:
            kv = await etcd.get(keys.TRACING)
            print(json.dumps(None if kv is None else json.loads(kv.value)))
            return 0
        if args.provider == "off":
            await etcd.delete(keys.TRACING)
            print("tracing: off")
            return 0
        setting = model.Tracing(
            model.TracingProvider(args.provider), args.collector, sampling=args.sampling
        )
        await etcd.put(keys.TRACING, model.encode_tracing(setting))
        print(f"tracing: {setting.provider} to {setting.collector}, {setting.sampling}%")
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.provider not in (None, "off") and not args.collector:
        parser.error("give the collector's HOST:PORT")
    if args.provider not in (None, "off"):
        try:
            model.encode_tracing(
                model.Tracing(model.TracingProvider(args.provider), args.collector, args.sampling)
            )
        except model.DecodeError as exc:
            parser.error(str(exc))
    try:
        with runtime.quiet_etcd_retries():
            return asyncio.run(_run(args))
    except (etcd_mod.EtcdError, ValueError) as exc:
        print(f"navigator tracing: {exc}", file=sys.stderr)
        return 1
