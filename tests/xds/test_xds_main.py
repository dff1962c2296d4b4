"""``navigator xds`` as a process: readiness follows etcd, SIGTERM stops it cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import xds_helpers as h
from xds_helpers import http_get

from navigator.lab import procs


def _start(etcd: str, http_port: int, log: Path) -> subprocess.Popen[bytes]:
    code = "import sys; from navigator.xds import server; sys.exit(server.main(sys.argv[1:]))"
    args = [sys.executable, "-c", code, "--listen", "127.0.0.1:0", "--etcd", etcd]
    args += ["--http", f"127.0.0.1:{http_port}"]
    # NOTE: posix_spawn (no new session, close_fds=False): see conftest.spawn.
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, close_fds=False
        )


async def _readyz(port: int) -> int:
    status, _ = await http_get(f"http://127.0.0.1:{port}/readyz")
    return status


async def test_ready_once_snapshots_are_listed_and_stops_on_sigterm(
    etcd_url: str, tmp_path: Path
) -> None:
    port = procs.free_port()
    proc = _start(etcd_url, port, tmp_path / "xds.log")
    try:

        async def ready() -> bool:
            return await _readyz(port) == 200

        await h.eventually(ready, what="/readyz 200")
        _, metrics = await http_get(f"http://127.0.0.1:{port}/metrics")
        assert "navigator_xds_streams" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        procs.stop(proc)
    assert b"xds front-end stopped" in (tmp_path / "xds.log").read_bytes()


async def test_unreachable_etcd_is_not_ready_and_not_fatal(tmp_path: Path) -> None:
    port = procs.free_port()
    proc = _start(f"127.0.0.1:{procs.free_port()}", port, tmp_path / "xds.log")
    try:

        async def not_ready() -> bool:
            return await _readyz(port) == 503

        await h.eventually(not_ready, what="/readyz 503")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        procs.stop(proc)
