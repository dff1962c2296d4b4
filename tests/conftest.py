"""Fixtures for real servers: every test that needs etcd gets its own member (or a 3-member
cluster) on loopback."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from coordinator import etcd as etcd_mod
from navigator.lab import procs


@pytest.fixture
def etcd_url(tmp_path: Path) -> Iterator[str]:
    proc, url = procs.start_etcd(tmp_path / "etcd", log_file=tmp_path / "etcd.log")
    try:
        yield url
    finally:
        procs.stop(proc)


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[list[procs.EtcdMember]]:
    """A real 3-member etcd cluster; a test may kill, pause or restart members."""
    members = procs.start_etcd_cluster(tmp_path / "etcd-cluster")
    try:
        yield members
    finally:
        for m in members:
            with contextlib.suppress(ProcessLookupError):
                m.popen.send_signal(signal.SIGCONT)
            procs.stop(m.popen)


@pytest.fixture
async def etcd3(etcd_cluster: list[procs.EtcdMember]) -> AsyncIterator[etcd_mod.Etcd]:
    """A client of ``etcd_cluster`` with every member's address."""
    client = etcd_mod.Etcd(
        etcd_mod.parse_endpoints(",".join(m.client_url for m in etcd_cluster)), retry_for=20.0
    )
    try:
        await client.ping()
        yield client
    finally:
        await client.close()


@pytest.fixture
async def etcd(etcd_url: str) -> AsyncIterator[etcd_mod.Etcd]:
    client = etcd_mod.Etcd(etcd_mod.parse_endpoints(etcd_url), retry_for=5.0)
    try:
        yield client
    finally:
        await client.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite golden files from the current output (review every diff)",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))
