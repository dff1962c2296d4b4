"""``navigator chaos check`` against a running lab, as against a real deployment: it passes a
healthy mesh and catches a configuration write made outside any leader's term."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from chaos import check
from chaos import main as chaos_main
from navigator import keys, model
from navigator.lab import main as lab_main


async def test_check_passes_a_healthy_mesh_and_catches_a_rogue_write(tmp_path: Path) -> None:
    lab = lab_main.Lab(
        state_dir=tmp_path / "lab",
        examples=lab_main.REPO_EXAMPLES,
        network="host",
        shape=lab_main.Shape(lease_ttl=3),
    )
    await lab.start()
    try:
        argv = [
            "check",
            *lab.etcd_args(),
            "--kubeconfig",
            str(lab.kubeconfig),
            "--context",
            "east",
            "--context",
            "west",
            "--duration",
            "3",
            "--bound",
            "20",
            "--every",
            "0.5",
        ]
        healthy = await check.check(chaos_main._parser().parse_args(argv))
        assert healthy["passed"], healthy["evidence"]
        assert healthy["figures"]["sidecars"] == len(lab.sidecars)

        # A rogue writer (no term, no fence) puts an endpoint the API never had.
        key = keys.state_key(
            model.Endpoints(
                cluster=model.ClusterName("east"), namespace="shop", name="item", endpoints=()
            )
        )
        async with lab.etcd_client() as etcd:
            kv = await etcd.get(key)
            assert kv is not None
            doc = json.loads(kv.value)
            ghost = dict(doc["endpoints"][0], ip="127.21.0.99")
            doc["endpoints"].append(ghost)

            recording = asyncio.Event()

            async def rogue() -> None:
                await asyncio.wait_for(recording.wait(), 30)
                await etcd.put(key, json.dumps(doc).encode())

            writer = asyncio.create_task(rogue())
            caught = await check.check(chaos_main._parser().parse_args(argv), recording=recording)
            await writer
        assert not caught["passed"]
        assert not caught["invariants"]["I3"], caught["evidence"]["I3"]
        assert "outside any term" in caught["evidence"]["I3"]
        assert not caught["invariants"]["I4"]
        assert "ghost ['127.21.0.99']" in caught["evidence"]["I4"]
    finally:
        await lab.stop()
