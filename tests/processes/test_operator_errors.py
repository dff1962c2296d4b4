"""Bad input to the operators' tools: one clear line on stderr and a non-zero exit code.

An unreachable etcd, an unknown app or sidecar, a sidecar whose admin does not answer (refused,
silent, or not an Envoy). Also the per-type status rules of ``proxy-status``, as a table.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from coordinator import etcd as etcd_mod
from navigator import cli, keys, proxy
from navigator.lab import procs

UNREACHABLE = f"127.0.0.1:{procs.free_port()}"


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "code", "prefix"),
    [
        pytest.param(["state", "clusters"], 1, "navigator state:", id="state"),
        pytest.param(["state", "snapshot", "web"], 1, "navigator state:", id="state-snapshot"),
        pytest.param(["proxy-status"], 1, "navigator proxy-status:", id="proxy-status"),
        pytest.param(["proxy-diff", "web-0"], 2, "navigator proxy-diff:", id="proxy-diff"),
    ],
)
def test_unreachable_etcd_is_one_line_and_non_zero(argv: list[str], code: int, prefix: str) -> None:
    rc, out, err = _run(*argv, "--etcd", UNREACHABLE)
    assert rc == code
    assert out == ""
    line = _one_line(err)
    assert line.startswith(prefix)
    assert UNREACHABLE in line and "unavailable" in line


def test_unreachable_etcd_from_the_real_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "navigator", "state", "apps", "--etcd", UNREACHABLE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert _one_line(done.stderr).startswith(f"navigator state: etcd {UNREACHABLE} unavailable")


def test_unknown_app_and_sidecar(etcd_url: str) -> None:
    rc, _, err = _run("state", "snapshot", "nope", "--etcd", etcd_url)
    assert rc == 1
    assert "no snapshot for app 'nope'" in _one_line(err)
    rc, _, err = _run("state", "diagnostics", "nope", "--etcd", etcd_url)
    assert rc == 1
    assert "no app 'nope'" in _one_line(err)
    rc, _, err = _run("proxy-status", "ghost-0", "--etcd", etcd_url)
    assert rc == 1
    assert "sidecar 'ghost-0' has no status record" in _one_line(err)
    rc, _, err = _run("proxy-diff", "ghost-0", "--etcd", etcd_url)
    assert rc == 2
    assert "pass --admin" in _one_line(err)


def test_snapshot_of_an_app_in_two_clusters_needs_a_cluster(etcd_url: str) -> None:
    from navigator import model, snapshot

    async def seed() -> None:
        async with etcd_mod.Etcd(etcd_mod.parse_endpoints(etcd_url)) as etcd:
            for cluster in ("east", "west"):
                snap = snapshot.AppSnapshot(app="web", cluster=cluster, resources={}, endpoints=())
                key = keys.app_snapshot_key(model.AppName("web"), model.ClusterName(cluster))
                await etcd.put(key, snapshot.encode_app(snap))

    asyncio.run(seed())
    rc, _, err = _run("state", "snapshot", "web", "--etcd", etcd_url)
    assert rc == 1
    assert "clusters east, west: choose one with --cluster" in _one_line(err)
    rc, _, err = _run("state", "snapshot", "web", "--cluster", "north", "--etcd", etcd_url)
    assert rc == 1
    assert "no snapshot for cluster 'north'" in _one_line(err)
    rc, out, _ = _run("state", "snapshot", "web", "--cluster", "west", "--etcd", etcd_url)
    assert rc == 0
    assert "cluster: west" in out


@contextlib.contextmanager
def _admin(body: bytes | None) -> Iterator[str]:
    """An HTTP server on loopback answering every GET with ``body`` (None: never answers)."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if body is None:
                release.wait(10)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_admin_that_refuses_is_one_line(etcd_url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    rc, out, err = _run("proxy-diff", "web-0", "--admin", closed, "--etcd", etcd_url)
    assert rc == 2
    assert out == ""
    assert f"the sidecar's admin at http://{closed} does not answer" in _one_line(err)


def test_admin_that_never_answers_times_out_in_one_line(etcd_url: str) -> None:
    with _admin(None) as silent:
        rc, _, err = _run(
            "proxy-diff", "web-0", "--admin", silent, "--timeout", "0.3", "--etcd", etcd_url
        )
    assert rc == 2
    assert f"admin at http://{silent} does not answer" in _one_line(err)


def test_admin_that_is_not_an_envoy(etcd_url: str) -> None:
    with _admin(json.dumps({"hello": "world"}).encode()) as other:
        rc, _, err = _run("proxy-diff", "web-0", "--admin", other, "--etcd", etcd_url)
    assert rc == 2
    assert "is not an Envoy config dump" in _one_line(err)


@pytest.mark.parametrize(
    ("held", "expected"),
    [
        pytest.param({"sent": "v2", "acked": "v2"}, proxy.SYNCED, id="acked-latest"),
        pytest.param({"sent": "v2", "acked": "v1"}, proxy.STALE, id="sent-not-acked"),
        pytest.param({"sent": "v1", "acked": "v1"}, proxy.STALE, id="latest-not-sent"),
        pytest.param(
            {"sent": "v2", "acked": "v1", "nacked": "v2", "error": "x"},
            proxy.NACKED,
            id="latest-rejected",
        ),
        pytest.param(
            {"sent": "v2", "acked": "v2", "nacked": "v1", "error": "x"},
            proxy.SYNCED,
            id="old-rejection-then-synced",
        ),
        pytest.param(None, proxy.NOT_SENT, id="type-absent"),
        pytest.param({"sent": "", "acked": ""}, proxy.NOT_SENT, id="nothing-sent"),
    ],
)
def test_type_status(held: dict[str, str] | None, expected: str) -> None:
    assert proxy.type_status("v2", held) == expected


def test_bad_etcd_tls_options_are_one_line(tmp_path: Any) -> None:
    cert = tmp_path / "client.crt"
    cert.write_text("not a certificate\n")
    rc, _, err = _run("state", "clusters", "--etcd", UNREACHABLE, "--etcd-cert", str(cert))
    assert rc == 1
    assert "--etcd-cert needs --etcd-key" in _one_line(err)
    rc, _, err = _run("proxy-status", "--etcd", UNREACHABLE, "--etcd-ca", str(tmp_path / "nope"))
    assert rc == 1
    assert f"--etcd-ca {tmp_path / 'nope'}: cannot read it" in _one_line(err)


def test_unknown_service_or_app_filter(etcd_url: str) -> None:
    rc, _, err = _run("state", "services", "-n", "shop", "nope", "--etcd", etcd_url)
    assert rc == 1
    assert "no Service 'nope'" in _one_line(err)
    rc, _, err = _run("state", "apps", "nope", "--etcd", etcd_url)
    assert rc == 1
    assert "no app 'nope'" in _one_line(err)
