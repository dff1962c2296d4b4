"""``navigator chaos run --quick``, as an SRE runs it: every scenario of the short subset on a
fresh lab, real faults, real traffic through real Envoys; the report says each passed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chaos import scenarios


# NOTE: six scenarios on a fresh lab each take about two and a half minutes.
@pytest.mark.timeout(900)
def test_the_quick_subset_passes_every_invariant(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "navigator",
            "chaos",
            "run",
            "--quick",
            "--report",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=840)
    except subprocess.TimeoutExpired:
        # NOTE: SIGTERM, so that it stops its lab and removes its network before it exits.
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
    print(stdout)  # NOTE: the table, for whoever reads a failed run's log
    doc = json.loads((out / "report.json").read_text())
    quick = [s.name for s in scenarios.SCENARIOS if s.quick]
    assert [s["name"] for s in doc["scenarios"]] == quick
    failed = {
        s["name"]: s["error"]
        or {k: s["evidence"][k] for k, ok in s["invariants"].items() if not ok}
        for s in doc["scenarios"]
        if not s["passed"]
    }
    assert not failed, failed
    assert proc.returncode == 0, stderr[-2000:]
    for s in doc["scenarios"]:
        assert set(s["invariants"]) == {"I1", "I2", "I3", "I4", "I5"}
        figures = s["figures"]
        assert figures["probes"] > 0 and figures["failed_probes"] == 0
        assert figures["convergence_s"] is not None
    by_name = {s["name"]: s["figures"] for s in doc["scenarios"]}
    assert by_name["translator-paused"]["stale_writes_rejected"] >= 1, (
        "the woken leader's pending write must have been tried and refused"
    )
    assert by_name["bad-snapshot"]["nacked_sidecars"] >= 1
    assert "<svg" in (out / "report.html").read_text()
