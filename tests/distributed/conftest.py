"""Fixtures of the fault tests: the lab's topology, started in-process as a library.

``navigator.lab.Lab`` starts the distributed shape as real processes (a 3-member etcd, two
watcher replicas per cluster, translators, front-ends, local API servers, backends and real
Envoy sidecars) on the loopback range; the tests kill, pause and add processes by PID and
look at etcd, at the processes' metrics and at the Envoys' admin.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from navigator.lab import main as lab_main

StartLab = Callable[..., Awaitable[lab_main.Lab]]


@pytest.fixture
async def start_lab(tmp_path: Path) -> AsyncIterator[StartLab]:
    """``await start_lab(lease_ttl=3, examples=dir, network="host")`` starts a lab (host
    network unless asked; ``auto`` for network namespaces where they work); it is stopped
    after."""
    labs: list[lab_main.Lab] = []

    async def start(
        examples: Path | None = None, network: str = "host", **shape: Any
    ) -> lab_main.Lab:
        shape.setdefault("lease_ttl", 3)
        lab = lab_main.Lab(
            state_dir=tmp_path / f"lab{len(labs)}",
            examples=examples or lab_main.REPO_EXAMPLES,
            network=network,
            shape=lab_main.Shape(**shape),
        )
        labs.append(lab)
        await lab.start()
        return lab

    try:
        yield start
    finally:
        for lab in labs:
            await lab.stop()


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A copy of the lab's examples that a test may add manifests to."""
    out = tmp_path / "examples"
    shutil.copytree(lab_main.REPO_EXAMPLES, out)
    return out
