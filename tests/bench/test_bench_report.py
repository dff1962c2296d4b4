"""``navigator bench``'s figures from phases: bench.json's keys, ratios to the floor, the
table and the SVG plot."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from typing import Any

from navigator.bench import main as bench_main
from navigator.bench import mesh as mesh_mod
from navigator.bench import report
from navigator.bench.track import Change


def _change(t0: float, ms: float | None) -> Change:
    c = Change("east/svc1", t0, set(), 10)
    if ms is None:
        c.waiting = {(1, "ns1/svc1:8080")}
    else:
        c.last = t0 + ms / 1000
    return c


@dataclasses.dataclass
class FakeBench:
    size: mesh_mod.Size
    result: dict[str, Any]
    ours: dict[str, bench_main.Phase]
    floor: dict[str, bench_main.Phase]


def _phase(name: str, values: list[float | None], responses: int) -> bench_main.Phase:
    p = bench_main.Phase(name, [_change(100.0 + i, v) for i, v in enumerate(values)])
    p.wall_s = 2.0
    p.cpu_s = {"xds": 0.5, "translator": 0.2, "sidecars": 0.4, "driver": 0.1}
    p.writes = {"state": len(values), "eds": 10 * len(values), "status": 3}
    p.write_bytes = {"state": 100 * len(values), "eds": 1000 * len(values)}
    p.metrics = {
        "navigator_xds_responses_total": float(responses),
        "navigator_xds_sent_bytes_total": 7000.0 * len(values),
    }
    return p


def test_summary_table_and_plot_carry_the_figures_and_the_floor() -> None:
    bench = FakeBench(
        size=mesh_mod.SIZES["S"],
        result={
            "startup": {"startup_s": 6.0},
            "floor_startup": {"startup_s": 2.0},
            "stale": {"stale_sidecars": 0},
            "memory": {"cp_rss_mb": 700.0, "cp_with_etcd_rss_mb": 900.0},
            "frontend": {"kib_per_idle_stream": 40.0, "streams_per_process": [250, 255]},
            "floor_frontend": {"kib_per_idle_stream": 20.0},
            "etcd_watch_latency_ms": {"p50": 1.1, "p99": 2.0},
        },
        ours={
            "serial": _phase("serial", [50.0, 60.0, None], 100),
            "churn 20/s": _phase("churn 20/s", [70.0, 80.0], 50),
        },
        floor={
            "serial": _phase("serial", [10.0, 20.0, 30.0], 100),
            "churn 20/s": _phase("churn 20/s", [20.0, 30.0], 100),
        },
    )
    out = report.summary(bench)
    for key in (
        "startup_s",
        "convergence_ms",
        "bytes_per_change",
        "etcd_writes_per_change",
        "stale_sidecars",
        "cp_rss_mb",
        "floor",
        "client_cpu_percent",
    ):
        assert key in out, key
    serial = out["convergence_ms"]["serial"]
    assert (serial["p50"], serial["max"], serial["not_converged"]) == (50.0, 60.0, 1)
    assert out["floor"]["convergence_ms"]["serial"]["p50"] == 20.0
    assert out["ratio_to_floor"]["startup_s"] == 3.0
    assert out["ratio_to_floor"]["serial"]["max"] == 2.0
    assert out["etcd_writes_per_change"] == 11.0  # state + eds, status records apart
    assert out["bytes_per_change"] == 7000.0
    assert out["client_cpu_percent"]["serial"] == 20.0
    assert out["phases"]["serial"]["not_converged"][0]["missing"] == 1
    # NOTE: CPU per push comes from the churn phase: 0.5 s over 50 pushes against 100.
    assert out["ratio_to_floor"]["frontend_cpu_per_push"] == 2.0

    text = report.table(out)
    assert "| start-up to every sidecar ACKed" in text and "3.00" in text
    assert "50 / 60 / 60 ms (1 not converged)" in text

    svg = ET.fromstring(report.svg(out))
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 4, "ours and the floor, two phases"
    assert any("stroke-dasharray" in line.attrib for line in lines)
