"""What makes every long-running Navigator command behave like a server.

Structured JSON logs on stderr, an HTTP endpoint with ``/healthz``, ``/readyz`` and Prometheus
``/metrics``, and a clean stop on SIGTERM/SIGINT. Commands build on ``serve_forever``. Also
the etcd options every command shares (``--etcd`` and its TLS files) and the client they make.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import prometheus_client

if TYPE_CHECKING:
    from aiohttp import web

    from coordinator import etcd as etcd_mod

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

DEFAULT_ETCD = "http://127.0.0.1:2379"


def add_etcd_argument(parser: argparse.ArgumentParser) -> None:
    """``--etcd`` and its TLS files, the same on every command that talks to etcd; the
    client is ``etcd_client(args)``."""
    parser.add_argument(
        "--etcd",
        default=os.environ.get("NAVIGATOR_ETCD", DEFAULT_ETCD),
        help="etcd endpoints, comma-separated; https:// for TLS (default: $NAVIGATOR_ETCD or "
        "%(default)s)",
    )
    parser.add_argument(
        "--etcd-ca",
        metavar="FILE",
        default=os.environ.get("NAVIGATOR_ETCD_CA") or None,
        help="PEM CA bundle that signed etcd's certificates; turns TLS on (https:// "
        "endpoints without it use the system's roots) (default: $NAVIGATOR_ETCD_CA)",
    )
    parser.add_argument(
        "--etcd-cert",
        metavar="FILE",
        default=os.environ.get("NAVIGATOR_ETCD_CERT") or None,
        help="PEM client certificate for etcd, with --etcd-key; turns TLS on "
        "(default: $NAVIGATOR_ETCD_CERT)",
    )
    parser.add_argument(
        "--etcd-key",
        metavar="FILE",
        default=os.environ.get("NAVIGATOR_ETCD_KEY") or None,
        help="PEM private key of --etcd-cert, unencrypted (default: $NAVIGATOR_ETCD_KEY)",
    )


def etcd_client(
    args: argparse.Namespace, *, timeout: float = 5.0, retry_for: float = 30.0
) -> etcd_mod.Etcd:
    """The etcd client of ``add_etcd_argument``'s options; TLS when a file is given or the
    endpoints are https://. Connects on its first call (make it anywhere, use it on the loop).

    Raises ValueError, one line naming the option, for endpoints it cannot use, a file that
    is missing, unreadable or not PEM, a key that is not the certificate's, and a certificate
    without its key or the reverse.
    """
    # NOTE: imported here, not at the top: coordinator.etcd loads gRPC, and this module is
    # also the runtime of processes that never talk to etcd (the lab's backends, one per
    # pod, and the local Kubernetes API server).
    from coordinator import etcd as etcd_mod

    files = {
        "ca": args.etcd_ca or None,
        "cert": args.etcd_cert or None,
        "key": args.etcd_key or None,
    }
    if files["cert"] and not files["key"]:
        raise ValueError("--etcd-cert needs --etcd-key (or $NAVIGATOR_ETCD_KEY)")
    if files["key"] and not files["cert"]:
        raise ValueError("--etcd-key needs --etcd-cert (or $NAVIGATOR_ETCD_CERT)")
    tls = None
    if any(files.values()):
        try:
            tls = etcd_mod.Tls.from_files(**files)
        except etcd_mod.TlsError as exc:
            raise ValueError(f"--etcd-{exc.part} {files[exc.part]}: {exc.reason}") from exc
    try:
        return etcd_mod.Etcd(args.etcd, tls=tls, timeout=timeout, retry_for=retry_for)
    except ValueError as exc:
        raise ValueError(f"--etcd {args.etcd}: {exc}") from exc


@contextlib.contextmanager
def quiet_etcd_retries() -> Iterator[None]:
    """For one-shot commands: the etcd client's retry warnings stay quiet while the block
    runs, so a failure is reported once, in the command's one line, when it gives up."""
    from coordinator import etcd as etcd_mod

    level = etcd_mod.log.level
    etcd_mod.log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        etcd_mod.log.setLevel(level)


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

    # NOTE: imported here: the one-shot commands (state, weight, proxy-status...) share this
    # module and serve no HTTP; aiohttp's server costs them ~80 ms at start.
    from aiohttp import web

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
