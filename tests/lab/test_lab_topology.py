"""The lab's topology file: each sidecar's xDS variant is read, and a bad one refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from navigator.lab import main as lab_main

CLUSTER = """clusters:
- {name: east, region: r1, zone: r1-a, node_ip: 198.18.0.1, pod_cidr: 198.18.1.0/24,
   service_cidr: 198.19.1.0/24, host_pod_cidr: 127.21.0.0/24, host_service_cidr: 127.31.0.0/24}
"""


def _examples(tmp_path: Path, sidecars: str) -> Path:
    (tmp_path / "east").mkdir()
    (tmp_path / "lab.yaml").write_text(CLUSTER + sidecars)
    return tmp_path


def test_each_sidecar_says_its_xds_variant(tmp_path: Path) -> None:
    sidecars = "sidecars:\n- {app: web, cluster: east}\n- {app: web, cluster: east, xds: delta}\n"
    topology = lab_main.load_topology(_examples(tmp_path, sidecars))
    assert [s.xds for s in topology.sidecars] == ["", "delta"]


def test_an_unknown_variant_is_refused_in_one_line(tmp_path: Path) -> None:
    sidecars = "sidecars:\n- {app: web, cluster: east, xds: rest}\n"
    with pytest.raises(lab_main.LabError, match="xds must be sotw or delta, not 'rest'"):
        lab_main.load_topology(_examples(tmp_path, sidecars))
