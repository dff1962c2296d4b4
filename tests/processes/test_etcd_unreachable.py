"""Long-running commands started while etcd is unreachable: they say so and wait for it.

Each runs as a real process, as an operator starts it. It must log what is wrong in a line or
two (not a line per retry), stay alive and not ready, and become ready once etcd appears on
the address it was given.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from navigator.kubeapi import server as kubeapi_server
from navigator.lab import procs


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def _wait_status(url: str, want: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while (got := _status(url)) != want:
        assert time.monotonic() < deadline, f"{url}: {got}, expected {want}"
        time.sleep(0.1)


def _complaints(log: Path) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [doc for doc in lines if doc.get("level") in ("warning", "error")]


@pytest.fixture
def kube_api(tmp_path: Path) -> Iterator[Path]:
    """A local API server process and a kubeconfig for it (context ``east``)."""
    port = procs.free_port()
    proc = procs.start(
        [sys.executable, "-m", "navigator", "kube-api", "--port", str(port), "--name", "east"],
        log_file=tmp_path / "kube-api.log",
    )
    try:
        _wait_status(f"http://127.0.0.1:{port}/readyz", 200, 20)
        kubeconfig = tmp_path / "kubeconfig"
        kubeapi_server.write_kubeconfig(kubeconfig, {"east": f"http://127.0.0.1:{port}"})
        yield kubeconfig
    finally:
        procs.stop(proc)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["translator"], id="translator"),
        pytest.param(["xds", "--listen", "127.0.0.1:0"], id="xds"),
        pytest.param(
            ["watcher", "--cluster", "east", "--kubeconfig", "{kubeconfig}"], id="watcher"
        ),
    ],
)
def test_starts_without_etcd_then_becomes_ready(
    tmp_path: Path, command: list[str], request: pytest.FixtureRequest
) -> None:
    if "{kubeconfig}" in command:
        kubeconfig = request.getfixturevalue("kube_api")
        command = [str(kubeconfig) if a == "{kubeconfig}" else a for a in command]
    etcd_port = procs.free_port()
    http = f"127.0.0.1:{procs.free_port()}"
    log = tmp_path / "process.log"
    proc = procs.start(
        [
            sys.executable,
            "-m",
            "navigator",
            *command,
            "--etcd",
            f"http://127.0.0.1:{etcd_port}",
            "--http",
            http,
        ],
        log_file=log,
    )
    etcd = None
    try:
        _wait_status(f"http://{http}/healthz", 200, 20)
        deadline = time.monotonic() + 15
        while not any("etcd" in str(doc) for doc in _complaints(log)):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(3)  # NOTE: a window in which a retry loop would flood the log.
        assert len(_complaints(log)) <= 3, log.read_text()
        assert proc.poll() is None, "the process must keep running without etcd"
        assert _status(f"http://{http}/readyz") == 503

        etcd, _ = procs.start_etcd(tmp_path / "etcd", client_port=etcd_port)
        _wait_status(f"http://{http}/readyz", 200, 30)
    finally:
        procs.stop(proc)
        if etcd is not None:
            procs.stop(etcd)
    assert proc.returncode == 0, log.read_text()
