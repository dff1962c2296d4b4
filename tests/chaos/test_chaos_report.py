"""The chaos report: the text table, report.json, report.html and the exit code."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from chaos import report

SVG = "{http://www.w3.org/2000/svg}"
FAILED_PROBE_T = 3.3


def _probes(sidecars: list[str], until: float, failed_at: float | None = None) -> list[Any]:
    probes = []
    for sidecar in sidecars:
        for k in range(int(until / 0.05)):
            t = round(k * 0.05, 2)
            ok = not (failed_at is not None and sidecar == sidecars[-1] and t == failed_at)
            probes.append({"sidecar": sidecar, "t": t, "ok": ok})
    return probes


def passing() -> dict[str, Any]:
    sidecars = ["east-web-0", "west-web-0"]
    return {
        "name": "etcd-leader-killed",
        "description": "SIGKILL the etcd leader, restart it 10 s later",
        "passed": True,
        "invariants": dict.fromkeys(report.INVARIANTS, True),
        "evidence": {"I2": "converged in 0.8 s"},
        "figures": {"failover_s": 1.234, "convergence_s": 0.8, "failed_probes": 0, "probes": 800},
        "error": None,
        "duration_s": 20.0,
        "timeline": {
            "events": [
                {"t": 3.2, "label": "<b>x</b>", "kind": "inject"},
                {"t": 13.2, "label": "etcd1 restarted", "kind": "heal"},
                {"t": 5.0, "label": "new leader etcd2", "kind": "note"},
            ],
            "probes": _probes(sidecars, 20.0),
            "versions": [
                {"sidecar": s, "t": t, "index": i}
                for s in sidecars
                for t, i in ((0.5, 3), (6.0, 4), (14.0, 5))
            ],
        },
    }


def failing() -> dict[str, Any]:
    return {
        "name": "etcd-minority-partition",
        "description": "cut the leader off from its peers",
        "passed": False,
        "invariants": {"I1": True, "I2": True, "I3": False, "I4": True, "I5": True},
        "evidence": {"I3": "deposed leader wrote /ep/web at rev 17\nsecond line <script>"},
        "figures": {"failover_s": 2.5, "failed_probes": 1, "probes": 400},
        "error": None,
        "duration_s": 10.0,
        "timeline": {
            "events": [{"t": 2.0, "label": "partition etcd1", "kind": "inject"}],
            "probes": _probes(["east-web-0", "east-web-1"], 10.0, failed_at=FAILED_PROBE_T),
            "versions": [{"sidecar": "east-web-0", "t": 0.5, "index": 3}],
        },
    }


def errored() -> dict[str, Any]:
    return {
        "name": "coordinator-killed",
        "description": "kill the coordinator",
        "passed": False,
        "invariants": {},
        "evidence": {},
        "figures": {},
        "error": "RuntimeError: lab did not start",
        "duration_s": 1.5,
        "timeline": {"events": [], "probes": [], "versions": []},
    }


def _cell(header: str, row: str, column: str) -> str:
    start = header.index(column)
    return row[start : start + len(column) + 2].strip()


def test_table_marks_results_and_lists_failed_evidence() -> None:
    text = report.table([passing(), failing(), errored()])
    lines = text.splitlines()
    header = lines[0]
    rows = {line.split()[0]: line for line in lines[2:5]}
    assert set(rows) == {"etcd-leader-killed", "etcd-minority-partition", "coordinator-killed"}
    assert rows["etcd-leader-killed"].split()[1] == "PASS"
    assert rows["etcd-minority-partition"].split()[1] == "FAIL"
    assert rows["coordinator-killed"].split()[1] == "ERROR"
    assert [_cell(header, rows["etcd-minority-partition"], k) for k in report.INVARIANTS] == [
        "ok",
        "ok",
        "FAIL",
        "ok",
        "ok",
    ]
    assert [_cell(header, rows["coordinator-killed"], k) for k in report.INVARIANTS] == ["-"] * 5
    assert "1.23" in rows["etcd-leader-killed"]
    assert "0/800" in rows["etcd-leader-killed"]
    assert "1/400" in rows["etcd-minority-partition"]
    assert rows["coordinator-killed"].split()[2:] == ["-"] * 5  # figures blank
    assert "etcd-minority-partition I3: deposed leader wrote /ep/web at rev 17" in lines
    assert "coordinator-killed ERROR: RuntimeError: lab did not start" in lines
    assert "second line" not in text
    assert not any(line.startswith("etcd-leader-killed I") for line in lines)
    assert max(len(line) for line in lines) <= 120


def test_write_json_schema_without_timeline(tmp_path: Path) -> None:
    meta = {"started": "2025-01-01T00:00:00Z", "machine": "lab1", "commit": "abc123"}
    results = [passing(), failing(), errored()]
    paths = report.write(tmp_path / "out", results, meta)
    assert paths == {
        "json": tmp_path / "out" / "report.json",
        "html": tmp_path / "out" / "report.html",
    }
    raw = paths["json"].read_text()
    assert "timeline" not in raw
    doc = json.loads(raw)
    assert set(doc) == {"scenarios", "passed", "started", "machine", "commit"}
    assert doc["passed"] is False
    assert doc["commit"] == "abc123"
    assert [s["name"] for s in doc["scenarios"]] == [r["name"] for r in results]
    for scenario, result in zip(doc["scenarios"], results, strict=True):
        assert set(scenario) == set(report.JSON_FIELDS)
        assert scenario == {k: result[k] for k in report.JSON_FIELDS}
    assert len(raw) < 5000


def test_write_all_passed(tmp_path: Path) -> None:
    paths = report.write(tmp_path, [passing()], {})
    assert json.loads(paths["json"].read_text())["passed"] is True


def _sections(tmp_path: Path) -> dict[str, ET.Element]:
    paths = report.write(tmp_path, [passing(), failing(), errored()], {"duration_s": 31.5})
    root = ET.fromstring(paths["html"].read_text())
    sections = {}
    for section in root.iter("section"):
        h2 = section.find("h2")
        assert h2 is not None and h2.text
        sections[h2.text.strip()] = section
    return sections


def test_html_one_svg_per_scenario_with_timeline(tmp_path: Path) -> None:
    sections = _sections(tmp_path)
    assert set(sections) == {"etcd-leader-killed", "etcd-minority-partition", "coordinator-killed"}
    counts = {name: len(list(s.iter(f"{SVG}svg"))) for name, s in sections.items()}
    assert counts == {
        "etcd-leader-killed": 1,
        "etcd-minority-partition": 1,
        "coordinator-killed": 0,
    }
    assert "No timeline recorded." in ET.tostring(
        sections["coordinator-killed"], encoding="unicode"
    )


def test_html_failed_probe_bucket_is_red(tmp_path: Path) -> None:
    sections = _sections(tmp_path)
    rects = list(sections["etcd-minority-partition"].iter(f"{SVG}rect"))
    red = [r for r in rects if r.get("class") == "probe-fail"]
    assert len(red) == 1
    assert red[0].get("fill") == report.FAIL_FILL
    t0, t1 = float(red[0].get("data-t0", "nan")), float(red[0].get("data-t1", "nan"))
    assert t0 <= FAILED_PROBE_T < t1
    assert t1 - t0 == report.PROBE_BUCKET_S
    # the failing sidecar's lane: ok, the failed bucket, ok; the other lane: one ok run
    assert [r.get("class") for r in rects if r.get("class", "").startswith("probe-")] == [
        "probe-ok",
        "probe-ok",
        "probe-fail",
        "probe-ok",
    ]

    rects = list(sections["etcd-leader-killed"].iter(f"{SVG}rect"))
    assert not [r for r in rects if r.get("fill") == report.FAIL_FILL]
    assert not [r for r in rects if r.get("class") == "probe-fail"]
    ok = [r for r in rects if r.get("class") == "probe-ok"]
    assert len(ok) == 2  # thousands of ok probes: one unbroken run per sidecar
    assert {r.get("fill") for r in ok} == {report.OK_FILL}


def test_html_escapes_text(tmp_path: Path) -> None:
    page = report.html_report([passing(), failing()], {"machine": "<lab & co>"})
    assert "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<script>" not in page
    assert "&lt;lab &amp; co&gt;" in page
    root = ET.fromstring(page)
    assert "<b>x</b>" in [t.text for t in root.iter(f"{SVG}text")]
    pres = [p.text or "" for p in root.iter("pre")]
    assert any(p.endswith("second line <script>") for p in pres)


def test_html_renders_meta_and_version_legend() -> None:
    page = report.html_report([passing()], {"started": "today", "duration_s": 31.5})
    root = ET.fromstring(page)
    meta = root.find(".//table[@class='meta']")
    assert meta is not None
    assert [th.text for th in meta.iter("th")] == ["started", "duration_s"]
    assert len(list(root.iter(f"{SVG}polyline"))) == 2  # one step line per sidecar
    assert {"east-web-0", "west-web-0"} <= {t.text for t in root.iter(f"{SVG}text")}


def test_exit_code() -> None:
    assert report.exit_code([passing()]) == 0
    assert report.exit_code([passing(), failing()]) == 1
    assert report.exit_code([passing(), errored()]) == 1
    assert report.exit_code([{**passing(), "error": "crashed after passing"}]) == 1
