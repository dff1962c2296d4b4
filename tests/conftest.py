"""Fixtures for real servers: every test that needs etcd gets its own member on loopback."""

from __future__ import annotations

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
