"""``navigator bench``'s figures: ``bench.json``, the table on stdout and the SVG plot."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from navigator.bench import mesh as mesh_mod
from navigator.bench.track import spread

PUSH_PHASE = "churn 20/s"
"""Where CPU per push is read: pushes dominate the front-end's CPU there, while in the serial
phase the quiet periods between changes (idle streams, gRPC's own polling) weigh as much."""


def _per(value: float, count: int, digits: int = 1) -> float | None:
    return round(value / count, digits) if count else None


def _phase(phase: Any) -> dict[str, Any]:
    changes = len(phase.changes)
    responses = phase.metrics.get("navigator_xds_responses_total", 0.0)
    cpu = phase.cpu_s
    wall = phase.wall_s or 1.0
    config_writes = sum(phase.writes.get(k, 0) for k in ("state", "eds", "apps"))
    out: dict[str, Any] = {
        "changes": changes,
        "convergence_ms": phase.convergence(),
        "rate_achieved_per_s": round((changes - 1) / phase.issued_s, 1)
        if phase.issued_s > 0
        else None,
        "wall_s": round(phase.wall_s, 2),
        "etcd_writes_per_change": _per(config_writes, changes, 2),
        "etcd_writes_per_change_by_kind": {
            k: _per(v, changes, 2) for k, v in sorted(phase.writes.items()) if v
        },
        "etcd_bytes_per_change": _per(
            sum(phase.write_bytes.get(k, 0) for k in ("state", "eds", "apps")), changes, 0
        ),
        "bytes_per_change": _per(
            phase.metrics.get("navigator_xds_sent_bytes_total", 0.0), changes, 0
        ),
        "translator_cpu_ms_per_change": _per(cpu.get("translator", 0.0) * 1000, changes, 2),
        "watcher_cpu_ms_per_change": _per(cpu.get("watcher", 0.0) * 1000, changes, 2),
        "frontend_cpu_us_per_push": _per(
            (cpu.get("xds", 0.0) or cpu.get("replay", 0.0)) * 1e6, int(responses), 1
        ),
        "server_cpu_percent": round(100 * (cpu.get("xds", 0.0) + cpu.get("replay", 0.0)) / wall, 1),
        "control_plane_cpu_percent": round(
            100 * sum(cpu.get(k, 0.0) for k in ("watcher", "translator", "xds")) / wall, 1
        ),
        "etcd_cpu_percent": round(100 * cpu.get("etcd", 0.0) / wall, 1),
        "client_cpu_percent": round(100 * cpu.get("sidecars", 0.0) / wall, 1),
        "driver_cpu_percent": round(100 * cpu.get("driver", 0.0) / wall, 1),
        "responses": int(responses),
        "api_write_ms": spread(
            [(c.written - c.t0) * 1000 for c in phase.changes if c.written is not None]
        ),
        "cpu_percent_by_role": {k: round(100 * v / wall, 1) for k, v in sorted(cpu.items())},
    }
    missing = [c for c in phase.changes if c.convergence_ms() is None]
    if missing:
        out["not_converged"] = [
            {
                "change": c.label,
                "missing": len(c.waiting),
                "of": c.receivers,
                "sample": sorted(f"sc-{g} {r}" for g, r in c.waiting)[:3],
            }
            for c in missing[:5]
        ]
    if "rollout_complete_s" in phase.metrics:
        out["rollout_complete_s"] = phase.metrics["rollout_complete_s"]
    return out


def summary(bench: Any) -> dict[str, Any]:
    r = bench.result
    size: mesh_mod.Size = bench.size
    from navigator.bench.main import machine

    ours = {name: _phase(p) for name, p in bench.ours.items()}
    floor = {name: _phase(p) for name, p in bench.floor.items()}
    serial = ours.get("serial", {})
    out: dict[str, Any] = {
        "size": {
            "name": size.name,
            "services": size.services,
            "endpoints_per_service": size.endpoints,
            "apps": size.apps,
            "services_per_app": size.per_app,
            "sidecars": size.sidecars,
            "envoys": size.envoys,
            "client_processes": size.client_procs,
        },
        "machine": machine(),
        "api_load_s": r.get("api_load_s"),
        "startup_s": r.get("startup", {}).get("startup_s"),
        "startup": r.get("startup"),
        "convergence_ms": {name: p["convergence_ms"] for name, p in ours.items()},
        "bytes_per_change": serial.get("bytes_per_change"),
        "etcd_writes_per_change": serial.get("etcd_writes_per_change"),
        "stale_sidecars": r.get("stale", {}).get("stale_sidecars"),
        "stale": r.get("stale"),
        "cp_rss_mb": r.get("memory", {}).get("cp_rss_mb"),
        "memory": r.get("memory"),
        "frontend": r.get("frontend"),
        "envoy_memory": r.get("envoy_memory"),
        "client_cpu_percent": {name: p["client_cpu_percent"] for name, p in ours.items()},
        "phases": ours,
        "etcd_watch_latency_ms": r.get("etcd_watch_latency_ms"),
    }
    if floor:
        out["floor"] = {
            "startup_s": r.get("floor_startup", {}).get("startup_s"),
            "startup": r.get("floor_startup"),
            "convergence_ms": {name: p["convergence_ms"] for name, p in floor.items()},
            "frontend": r.get("floor_frontend"),
            "client_cpu_percent": {name: p["client_cpu_percent"] for name, p in floor.items()},
            "phases": floor,
            "etcd_watch_latency_ms": r.get("etcd_watch_latency_ms"),
        }
        out["ratio_to_floor"] = ratios(out)
        out["samples_ms"] = {
            "ours": {n: _samples(p) for n, p in bench.ours.items()},
            "floor": {n: _samples(p) for n, p in bench.floor.items()},
        }
    else:
        out["samples_ms"] = {"ours": {n: _samples(p) for n, p in bench.ours.items()}}
    return out


def _samples(phase: Any) -> list[float]:
    return sorted(round(d, 2) for c in phase.changes if (d := c.convergence_ms()) is not None)


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b <= 0:
        return None
    return round(a / b, 2)


def ratios(out: dict[str, Any]) -> dict[str, Any]:
    fl = out["floor"]
    res: dict[str, Any] = {"startup_s": _ratio(out["startup_s"], fl["startup_s"])}
    for name, conv in out["convergence_ms"].items():
        other = fl["convergence_ms"].get(name, {})
        res[name] = {q: _ratio(conv.get(q), other.get(q)) for q in ("p50", "p99", "max")}
    ours_push = out["phases"].get(PUSH_PHASE, {}).get("frontend_cpu_us_per_push")
    floor_push = fl["phases"].get(PUSH_PHASE, {}).get("frontend_cpu_us_per_push")
    res["frontend_cpu_per_push"] = _ratio(ours_push, floor_push)
    res["kib_per_idle_stream"] = _ratio(
        (out.get("frontend") or {}).get("kib_per_idle_stream"),
        (fl.get("frontend") or {}).get("kib_per_idle_stream"),
    )
    return res


# -- the table -------------------------------------------------------------------------------


def _ms(spread: dict[str, Any] | None) -> str:
    if not spread or spread.get("p50") is None:
        return "-"
    text = f"{spread['p50']:.0f} / {spread['p99']:.0f} / {spread['max']:.0f} ms"
    if spread.get("not_converged"):
        text += f" ({spread['not_converged']} not converged)"
    return text


def _num(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value:,}{unit}"


def table(out: dict[str, Any]) -> str:
    size = out["size"]
    m = out["machine"]
    fl = out.get("floor", {})
    ratio = out.get("ratio_to_floor", {})
    lines = [
        f"navigator bench --size {size['name']}: {size['services']:,} services x "
        f"{size['endpoints_per_service']} endpoints, {size['apps']:,} apps x "
        f"{size['services_per_app']} services, {size['sidecars']:,} simulated sidecars "
        f"({size['client_processes']} processes) + {size['envoys']} Envoys",
        f"machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}",
        "",
        f"| {'figure':<44} | {'ours':<28} | {'floor':<28} | ratio |",
        f"| {'-' * 44} | {'-' * 28} | {'-' * 28} | ----- |",
    ]

    def row(name: str, ours: str, floor: str = "-", r: Any = None) -> None:
        lines.append(f"| {name:<44} | {ours:<28} | {floor:<28} | {_num(r, digits=2):>5} |")

    row(
        "start-up to every sidecar ACKed",
        _num(out.get("startup_s"), " s", 2),
        _num(fl.get("startup_s"), " s", 2),
        ratio.get("startup_s"),
    )
    for name, conv in out["convergence_ms"].items():
        other = fl.get("convergence_ms", {}).get(name)
        row(
            f"convergence, {name}: p50 / p99 / max",
            _ms(conv),
            _ms(other),
            (ratio.get(name) or {}).get("p99"),
        )
    phases = out["phases"]
    fphases = fl.get("phases", {})
    for name, p in phases.items():
        if p.get("rate_achieved_per_s") and name.startswith("churn"):
            row(f"  {name}: rate achieved", _num(p["rate_achieved_per_s"], "/s"))
    if "roll-out" in phases:
        row(
            "  roll-out: first write to last sidecar",
            _num(phases["roll-out"].get("rollout_complete_s"), " s", 2),
            _num(fphases.get("roll-out", {}).get("rollout_complete_s"), " s", 2),
        )
    serial = phases.get("serial", {})
    row("bytes sent per endpoint change", _num(serial.get("bytes_per_change"), " B", 0))
    row(
        "etcd writes per change (state + snapshots)",
        _num(serial.get("etcd_writes_per_change"), digits=2),
    )
    by_kind = serial.get("etcd_writes_per_change_by_kind", {})
    row(
        "  by kind",
        ", ".join(f"{k} {v:g}" for k, v in by_kind.items()) or "-",
    )
    row("translator CPU per change", _num(serial.get("translator_cpu_ms_per_change"), " ms", 2))
    row(
        f"front-end CPU per push ({PUSH_PHASE})",
        _num(phases.get(PUSH_PHASE, {}).get("frontend_cpu_us_per_push"), " us"),
        _num(fphases.get(PUSH_PHASE, {}).get("frontend_cpu_us_per_push"), " us"),
        ratio.get("frontend_cpu_per_push"),
    )
    fe = out.get("frontend") or {}
    row(
        "front-end memory per idle stream",
        _num(fe.get("kib_per_idle_stream"), " KiB"),
        _num((fl.get("frontend") or {}).get("kib_per_idle_stream"), " KiB"),
        ratio.get("kib_per_idle_stream"),
    )
    row(
        "streams per front-end process",
        " / ".join(str(n) for n in fe.get("streams_per_process", [])),
    )
    row("control-plane RSS (watchers, translators, FEs)", _num(out.get("cp_rss_mb"), " MB", 0))
    row(
        "  with etcd (3 members)",
        _num((out.get("memory") or {}).get("cp_with_etcd_rss_mb"), " MB", 0),
    )
    row("stale sidecars after churn", _num(out.get("stale_sidecars")))
    for envoy in out.get("envoy_memory") or []:
        kind = "full mesh" if envoy["full_mesh"] else "scoped"
        row(
            f"Envoy {envoy['node']} ({kind}, {envoy['clusters']} clusters)",
            f"heap {envoy['heap_mb']} MB, anon {envoy['anon_rss_mb']} MB",
        )
    for name, p in phases.items():
        row(
            f"CPU % of a core, {name}",
            f"cp {p['control_plane_cpu_percent']:.0f}, clients {p['client_cpu_percent']:.0f}",
            f"server {fphases[name]['server_cpu_percent']:.0f}, clients "
            f"{fphases[name]['client_cpu_percent']:.0f}"
            if name in fphases
            else "-",
        )
    lat = out.get("etcd_watch_latency_ms")
    if lat:
        row("etcd watch latency (put -> event)", f"p50 {lat['p50']} / p99 {lat['p99']} ms")
    return "\n".join(lines)


# -- the plot --------------------------------------------------------------------------------

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def svg(out: dict[str, Any], width: int = 760, height: int = 420) -> str:
    """The convergence distribution (one CDF per phase, ours solid, the floor dashed) on a
    log time axis.

    NOTE: written by hand rather than with a plotting library: one chart of a few lines does
    not justify matplotlib and numpy (tens of MB) in every install that runs the benchmark.
    """
    samples = out.get("samples_ms", {})
    values = [v for side in samples.values() for vs in side.values() for v in vs if v > 0]
    left, right, top, bottom = 60, 200, 30, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    lo = 10 ** math.floor(math.log10(min(values))) if values else 1.0
    hi = 10 ** math.ceil(math.log10(max(values))) if values else 1000.0
    if hi <= lo:
        hi = lo * 10

    def x(v: float) -> float:
        return left + plot_w * (math.log10(max(v, lo)) - math.log10(lo)) / (
            math.log10(hi) - math.log10(lo)
        )

    def y(q: float) -> float:
        return top + plot_h * (1 - q)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="14">{html.escape(_title(out))}</text>',
    ]
    decade = lo
    while decade <= hi * 1.0001:
        gx = x(decade)
        parts.append(
            f'<line x1="{gx:.1f}" y1="{top}" x2="{gx:.1f}" y2="{top + plot_h}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{gx:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{decade:g}</text>'
        )
        decade *= 10
    for q in (0.0, 0.5, 0.99, 1.0):
        parts.append(
            f'<line x1="{left}" y1="{y(q):.1f}" x2="{left + plot_w}" y2="{y(q):.1f}" '
            'stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y(q) + 4:.1f}" text-anchor="end">p{q * 100:g}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">'
        "convergence, API write (floor: replay push) to the last sidecar, ms (log)</text>"
    )
    legend_y = top + 10
    for i, name in enumerate(samples.get("ours", {})):
        colour = COLOURS[i % len(COLOURS)]
        for side, dash in (("ours", ""), ("floor", ' stroke-dasharray="5,4"')):
            vs = samples.get(side, {}).get(name, [])
            if not vs:
                continue
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.6"{dash} '
                f'points="{_cdf(vs, x, y)}"/>'
            )
            parts.append(
                f'<line x1="{left + plot_w + 12}" y1="{legend_y}" x2="{left + plot_w + 36}" '
                f'y2="{legend_y}" stroke="{colour}" stroke-width="1.6"{dash}/>'
            )
            parts.append(
                f'<text x="{left + plot_w + 42}" y="{legend_y + 4}">'
                f"{html.escape(side + ', ' + name)}</text>"
            )
            legend_y += 18
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _title(out: dict[str, Any]) -> str:
    size = out["size"]
    return (
        f"navigator bench --size {size['name']}: {size['sidecars']:,} sidecars, "
        f"{size['services']:,} services ({out['machine']['cpus']} CPUs)"
    )


def _cdf(values: Sequence[float], x: Any, y: Any) -> str:
    ordered = sorted(values)
    n = len(ordered)
    points = [f"{x(ordered[0]):.1f},{y(0):.1f}"]
    for i, v in enumerate(ordered):
        points.append(f"{x(v):.1f},{y(i / n):.1f}")
        points.append(f"{x(v):.1f},{y((i + 1) / n):.1f}")
    return " ".join(points)
