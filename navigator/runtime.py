"""What makes every long-running Navigator command behave like a server.

Structured JSON logs on stderr, an HTTP endpoint with ``/healthz``, ``/readyz`` and Prometheus
``/metrics``, and a clean stop on SIGTERM/SIGINT. Commands build on ``serve_forever``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import prometheus_client
from aiohttp import web

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

DEFAULT_ETCD = "http://127.0.0.1:2379"


def add_etcd_argument(parser: argparse.ArgumentParser) -> None:
    """``--etcd``, the same on every command that talks to etcd."""
    parser.add_argument(
        "--etcd",
        default=os.environ.get("NAVIGATOR_ETCD", DEFAULT_ETCD),
        help="etcd endpoints, comma-separated (default: $NAVIGATOR_ETCD or %(default)s)",
    )


def add_member_arguments(parser: argparse.ArgumentParser, *, lease_help: str = "") -> None:
    """``--id`` (this process in etcd) and, for processes that elect leaders, ``--lease-ttl``."""
    parser.add_argument(
        "--id",
        default=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
        help="this process's id in etcd (default: $POD_NAME, else <hostname>-<pid>)",
    )
    if lease_help:
        parser.add_argument(
            "--lease-ttl", type=int, default=5, help=f"{lease_help} (default %(default)s)"
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            doc["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return json.dumps(doc, default=str, separators=(",", ":"))


def setup_logging(level: str = "info", component: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # NOTE: the kubernetes client and asyncio are chatty at INFO; keep their warnings.
    for noisy in ("kubernetes", "urllib3", "asyncio", "aiohttp.access", "aetcd"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if component:
        old_factory = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = old_factory(*args, **kwargs)
            record.component = component
            return record

        logging.setLogRecordFactory(factory)


class Health:
    """Liveness and readiness, set by the component; served by ``http_server``."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._ready = False
        self._reason = "starting"

    def set_ready(self, ready: bool, reason: str = "") -> None:
        self._ready = ready
        self._reason = reason

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def reason(self) -> str:
        return self._reason


@contextlib.asynccontextmanager
async def http_server(
    address: str, health: Health, *, extra_routes: list[web.RouteDef] | None = None
) -> AsyncIterator[str]:
    """Serves /healthz, /readyz and /metrics on ``address`` (``host:port``, port 0 = any;
    several comma-separated).

    Yields the bound ``host:port`` (comma-separated when several).
    """

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if health.ready:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=f"not ready: {health.reason}\n")

    async def metrics(_: web.Request) -> web.Response:
        body = prometheus_client.generate_latest()
        return web.Response(
            body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.add_routes(
        [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)]
        + (extra_routes or [])
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    bound_all: list[str] = []
    for one in [a.strip() for a in address.split(",") if a.strip()]:
        host, _, port = one.rpartition(":")
        site = web.TCPSite(runner, host or "127.0.0.1", int(port))
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        bound = sockets[0].getsockname() if sockets else (host, int(port))
        bound_all.append(f"{bound[0]}:{bound[1]}")
    try:
        yield ",".join(bound_all)
    finally:
        await runner.cleanup()


def run(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Runs ``main(stop)`` on a new event loop; SIGTERM and SIGINT set ``stop``."""

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    try:
        return asyncio.run(runner())
    except KeyboardInterrupt:
        return 130


async def wait_stop(stop: asyncio.Event, *tasks: asyncio.Task[Any]) -> None:
    """Waits until ``stop`` is set or a task ends; then cancels the rest and re-raises a crash."""
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in [stopper, *tasks]:
        task.cancel()
    # NOTE: awaiting a task that crashed re-raises its exception here.
    for task in [stopper, *tasks]:
        with contextlib.suppress(asyncio.CancelledError):
            await task
