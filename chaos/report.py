"""Renders the results of ``navigator chaos run``: a text table, report.json and report.html.

Each scenario's result is a plain, JSON-able dict (name, description, passed, invariants I1..I5,
evidence, figures, error, duration_s, timeline). This module only renders it:

- ``table``: a plain-text summary for stdout, with the first line of evidence of every failed
  invariant below it;
- ``html_report``: one self-contained page (no external assets, no JavaScript) with, per
  scenario, its invariants and evidence, its figures and a timeline chart;
- ``write``: report.json (without the bulky timeline) and report.html in a directory;
- ``exit_code``: 0 when every scenario passed, else 1.

The timeline SVG is written by hand: a plotting library is not in every install, and one chart
per scenario does not justify one; hand-written SVG also keeps the page a single file. Probes
are bucketed per sidecar (0.25 s, wider for long runs) and runs of equal buckets merged, so
thousands of probes stay a few dozen rectangles.
"""

from __future__ import annotations

import html
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

INVARIANTS: tuple[str, ...] = ("I1", "I2", "I3", "I4", "I5")

INVARIANT_TEXT: Mapping[str, str] = {
    "I1": "every sidecar keeps serving",
    "I2": "after healing every sidecar converges to the truth within the bound",
    "I3": "no write by a deposed leader lands",
    "I4": "no lost or ghost endpoint",
    "I5": "no sidecar's version goes backwards",
}

# The fields of a scenario kept in report.json: everything but the timeline.
JSON_FIELDS: tuple[str, ...] = (
    "name",
    "description",
    "passed",
    "invariants",
    "evidence",
    "figures",
    "error",
    "duration_s",
)

PROBE_BUCKET_S = 0.25
OK_FILL = "#2ca02c"
FAIL_FILL = "#d62728"
EVENT_COLOURS: Mapping[str, str] = {"inject": "#d62728", "heal": "#2ca02c", "note": "#7f7f7f"}
# Sidecar colours; red and green are left out, they mean failed and ok here.
PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#393b79",
    "#637939",
    "#843c39",
)

_NAME_MAX = 36
_SVG_NS = "http://www.w3.org/2000/svg"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _fmt(value: Any) -> str:
    """A figure as text: blank when absent, two decimals for floats."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.2f}" if math.isfinite(value) else str(value)
    return str(value)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(text: Any) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _status(result: Mapping[str, Any]) -> str:
    if result.get("error"):
        return "ERROR"
    return "PASS" if result.get("passed") is True else "FAIL"


def _passed(result: Mapping[str, Any]) -> bool:
    return result.get("passed") is True and not result.get("error")


def _invariant_cell(value: Any) -> str:
    if value is True:
        return "ok"
    if value is False:
        return "FAIL"
    return "-"


def _invariant_keys(result: Mapping[str, Any]) -> list[str]:
    """I1..I5, then any other invariant a scenario reports, sorted."""
    extra = set(_mapping(result.get("invariants"))) | set(_mapping(result.get("evidence")))
    return [*INVARIANTS, *sorted(extra - set(INVARIANTS))]


def _probes_cell(figures: Mapping[str, Any]) -> str:
    failed, probes = figures.get("failed_probes"), figures.get("probes")
    if failed is None and probes is None:
        return ""
    return f"{_fmt(failed) or '?'}/{_fmt(probes) or '?'}"


def _failures(result: Mapping[str, Any]) -> list[str]:
    """'name I3: first line of evidence' per failed invariant, and the crash, if any."""
    name = str(result.get("name", "?"))
    lines = []
    if result.get("error"):
        lines.append(f"{name} ERROR: {_first_line(result['error'])}")
    invariants, evidence = _mapping(result.get("invariants")), _mapping(result.get("evidence"))
    for key in _invariant_keys(result):
        if invariants.get(key) is False:
            lines.append(f"{name} {key}: {_first_line(evidence.get(key)) or '(no evidence)'}")
    return lines


_HEADERS: tuple[str, ...] = (
    "scenario",
    "result",
    *INVARIANTS,
    "failover_s",
    "convergence_s",
    "failed/probes",
    "stale_rej",
)
_RIGHT_FROM = 2 + len(INVARIANTS)  # the figure columns are right-aligned


def _row(result: Mapping[str, Any], name_max: int | None) -> list[str]:
    name = str(result.get("name", "?"))
    invariants, figures = _mapping(result.get("invariants")), _mapping(result.get("figures"))
    return [
        _clip(name, name_max) if name_max else name,
        _status(result),
        *(_invariant_cell(invariants.get(key)) for key in INVARIANTS),
        _fmt(figures.get("failover_s")),
        _fmt(figures.get("convergence_s")),
        _probes_cell(figures),
        _fmt(figures.get("stale_writes_rejected")),
    ]


def table(results: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table, one row per scenario, then one line per failed invariant."""
    rows = [_row(r, _NAME_MAX) for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(_HEADERS)]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if i >= _RIGHT_FROM else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    lines = [line(_HEADERS), line(["-" * w for w in widths])]
    lines += [line(row) for row in rows] or ["(no scenarios)"]
    failures = [f for r in results for f in _failures(r)]
    if failures:
        lines += ["", *failures]
    passed = sum(1 for r in results if _passed(r))
    lines += ["", f"{passed} of {len(results)} scenarios passed"]
    return "\n".join(lines)


# --- the timeline SVG ---------------------------------------------------------------------

_W = 960.0
_ML = 150.0  # left margin: lane and axis labels
_MR = 24.0
_PW = _W - _ML - _MR
_LANE_H = 10.0
_LANE_GAP = 3.0
_CHART_H = 140.0
_LABEL_ROW_H = 13.0
_LABEL_ROWS_MAX = 6
_CHAR_W = 6.0  # estimated width of a character at font-size 10


def _nice_step(span: float, steps: Sequence[float], target: int) -> float:
    for step in steps:
        if span / step <= target:
            return step
    return math.ceil(span / target / steps[-1]) * steps[-1]


def _bucket_size(t_end: float) -> float:
    """0.25 s, or wider when a bucket would be narrower than a pixel."""
    return _nice_step(t_end / _PW, (PROBE_BUCKET_S, 0.5, 1, 2, 5, 10, 30, 60), 1)


def _tick(value: float) -> str:
    return f"{round(value, 3):g}"


class _Svg:
    def __init__(self, t_end: float) -> None:
        self.t_end = t_end
        self.parts: list[str] = []

    def x(self, t: float) -> float:
        return _ML + _PW * min(max(t, 0.0), self.t_end) / self.t_end

    def add(self, part: str) -> None:
        self.parts.append(part)

    def text(
        self, x: float, y: float, text: str, *, anchor: str = "start", extra: str = ""
    ) -> None:
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{_e(text)}</text>')


def _events(timeline: Mapping[str, Any]) -> list[tuple[float, str, str]]:
    out = []
    for event in timeline.get("events") or ():
        if isinstance(event, Mapping) and (t := _num(event.get("t"))) is not None:
            out.append((t, str(event.get("label", "")), str(event.get("kind", "note"))))
    return sorted(out, key=lambda e: e[0])


def _probes(timeline: Mapping[str, Any]) -> list[tuple[str, float, bool]]:
    out = []
    for probe in timeline.get("probes") or ():
        if isinstance(probe, Mapping) and (t := _num(probe.get("t"))) is not None:
            out.append((str(probe.get("sidecar", "?")), t, probe.get("ok") is True))
    return out


def _versions(timeline: Mapping[str, Any]) -> list[tuple[str, float, float]]:
    out = []
    for v in timeline.get("versions") or ():
        if not isinstance(v, Mapping):
            continue
        t, index = _num(v.get("t")), _num(v.get("index"))
        if t is not None and index is not None:
            out.append((str(v.get("sidecar", "?")), t, index))
    return out


def _place_labels(
    svg: _Svg, events: Sequence[tuple[float, str, str]]
) -> list[tuple[float, str, str, str, int]]:
    """Event labels in rows above the chart, each in the first row where it does not overlap."""
    row_end: list[float] = []
    placed = []
    for t, label, kind in events:
        x = svg.x(t)
        text = _clip(label, 48)
        width = len(text) * _CHAR_W + 8
        anchor = "start" if x + 3 + width <= _W else "end"
        left = x if anchor == "start" else x - width
        free = [i for i, end in enumerate(row_end) if end <= left]
        if free:
            row = free[0]
        elif len(row_end) < _LABEL_ROWS_MAX:
            row = len(row_end)
            row_end.append(0.0)
        else:
            row = min(range(len(row_end)), key=row_end.__getitem__)
        row_end[row] = left + width
        placed.append((t, label, kind, anchor, row))
    return placed


def _timeline_svg(timeline: Mapping[str, Any], duration: Any, name: str) -> str | None:
    """The timeline chart of one scenario, or None when it recorded nothing."""
    events, probes, versions = _events(timeline), _probes(timeline), _versions(timeline)
    if not (events or probes or versions):
        return None
    times = [t for t, _, _ in events] + [t for _, t, _ in probes] + [t for _, t, _ in versions]
    t_end = max([_num(duration) or 0.0, *times])
    if t_end <= 0:
        t_end = 1.0
    svg = _Svg(t_end)
    sidecars = sorted({s for s, _, _ in probes} | {s for s, _, _ in versions})
    colour = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(sidecars)}
    dashed = {s for i, s in enumerate(sidecars) if i >= len(PALETTE)}

    labels = _place_labels(svg, events)
    label_rows = max((row for *_, row in labels), default=-1) + 1
    top = 6.0 + label_rows * _LABEL_ROW_H
    y = top + 4

    # probe lanes
    if probes:
        bucket = _bucket_size(t_end)
        y += 12
        svg.text(_ML, y - 3, f"probes per sidecar ({_tick(bucket)} s buckets)", extra=' class="h"')
        per_lane: dict[str, dict[int, list[int]]] = {}
        for sidecar, t, ok in probes:
            counts = per_lane.setdefault(sidecar, {}).setdefault(int(t // bucket), [0, 0])
            counts[0] += 1
            counts[1] += 0 if ok else 1
        for sidecar in sidecars:
            lane = per_lane.get(sidecar, {})
            svg.text(_ML - 6, y + _LANE_H - 1, _clip(sidecar, 22), anchor="end")
            runs: list[list[int]] = []  # [first bucket, end bucket, probes, failed]
            for b in sorted(lane):
                n, failed = lane[b]
                last = runs[-1] if runs else None
                if last and last[1] == b and (last[3] > 0) == (failed > 0):
                    last[1], last[2], last[3] = b + 1, last[2] + n, last[3] + failed
                else:
                    runs.append([b, b + 1, n, failed])
            for first, end, n, failed in runs:
                t0, t1 = first * bucket, end * bucket
                x0 = svg.x(t0)
                width = max(svg.x(t1) - x0, 1.0)
                cls, fill = ("probe-fail", FAIL_FILL) if failed else ("probe-ok", OK_FILL)
                tip = f"{sidecar} {t0:.2f}-{t1:.2f} s: {failed} of {n} probes failed"
                svg.add(
                    f'<rect class="{cls}" x="{x0:.1f}" y="{y:.1f}" width="{width:.1f}" '
                    f'height="{_LANE_H:.0f}" fill="{fill}" data-t0="{t0:g}" data-t1="{t1:g}">'
                    f"<title>{_e(tip)}</title></rect>"
                )
            y += _LANE_H + _LANE_GAP
        y += 6

    # version step chart
    if versions:
        y += 14
        svg.text(_ML, y - 4, "config version held (publication index)", extra=' class="h"')
        lo, hi = min(v for *_, v in versions), max(v for *_, v in versions)
        if lo == hi:
            lo, hi = lo - 1, hi + 1
        chart_top = y

        def vy(index: float) -> float:
            return chart_top + _CHART_H - (index - lo) / (hi - lo) * _CHART_H

        svg.add(
            f'<rect x="{_ML:.1f}" y="{chart_top:.1f}" width="{_PW:.1f}" height="{_CHART_H:.0f}" '
            'fill="none" stroke="#ccc"/>'
        )
        step = _nice_step(hi - lo, (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), 5)
        tick = math.ceil(lo / step) * step
        while tick <= hi:
            svg.add(
                f'<line x1="{_ML - 3:.1f}" x2="{_ML:.1f}" y1="{vy(tick):.1f}" '
                f'y2="{vy(tick):.1f}" stroke="#888"/>'
            )
            svg.text(_ML - 6, vy(tick) + 3, _tick(tick), anchor="end")
            tick += step
        by_sidecar: dict[str, list[tuple[float, float]]] = {}
        for sidecar, t, index in versions:
            by_sidecar.setdefault(sidecar, []).append((t, index))
        # A small vertical offset per sidecar, so that sidecars holding the same version do
        # not hide each other entirely.
        offset = min(1.5, 8.0 / len(by_sidecar))
        for k, sidecar in enumerate(s for s in sidecars if s in by_sidecar):
            dy = (k - (len(by_sidecar) - 1) / 2) * offset
            points = sorted(by_sidecar[sidecar], key=lambda p: p[0])
            coords = [(svg.x(points[0][0]), vy(points[0][1]) + dy)]
            for (_, previous), (t, index) in itertools.pairwise(points):
                coords += [(svg.x(t), vy(previous) + dy), (svg.x(t), vy(index) + dy)]
            coords.append((svg.x(t_end), vy(points[-1][1]) + dy))
            dash = ' stroke-dasharray="5 3"' if sidecar in dashed else ""
            pts = " ".join(f"{px:.1f},{py:.1f}" for px, py in coords)
            svg.add(
                f'<polyline class="version" points="{pts}" fill="none" '
                f'stroke="{colour[sidecar]}" stroke-width="1.8"{dash}>'
                f"<title>{_e(sidecar)}</title></polyline>"
            )
        y = chart_top + _CHART_H

    # x axis, with faint grid lines up to the top of the data
    axis_y = y + 2
    step = _nice_step(t_end, (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600), 10)
    svg.add(
        f'<line x1="{_ML:.1f}" x2="{_ML + _PW:.1f}" y1="{axis_y:.1f}" y2="{axis_y:.1f}" '
        'stroke="#444"/>'
    )
    for k in range(int(t_end / step + 1e-9) + 1):
        x = svg.x(k * step)
        svg.add(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top:.1f}" y2="{axis_y + 3:.1f}" '
            'stroke="#000" stroke-opacity="0.08"/>'
        )
        svg.text(x, axis_y + 13, _tick(k * step), anchor="middle")
    svg.text(_ML + _PW, axis_y + 26, "seconds since the scenario started", anchor="end")

    # events: a vertical line each, its label in a row above the chart
    for t, label, kind, anchor, row in labels:
        x = svg.x(t)
        stroke = EVENT_COLOURS.get(kind, EVENT_COLOURS["note"])
        label_y = 6.0 + (row + 1) * _LABEL_ROW_H - 3
        svg.add(
            f'<line class="event {_e(kind)}" x1="{x:.1f}" x2="{x:.1f}" y1="{label_y + 2:.1f}" '
            f'y2="{axis_y:.1f}" stroke="{stroke}" stroke-width="1.5" stroke-opacity="0.85">'
            f"<title>{_e(f'{t:.2f} s {kind}: {label}')}</title></line>"
        )
        lx = x + 3 if anchor == "start" else x - 3
        svg.text(lx, label_y, _clip(label, 48), anchor=anchor, extra=f' fill="{stroke}"')

    # legend: the key, then one colour per sidecar
    y = axis_y + 40
    key: list[tuple[str, str, str]] = []
    if probes:
        # the key shows only what the lanes show
        if any(ok for _, _, ok in probes):
            key.append(("rect", OK_FILL, "all probes ok"))
        if not all(ok for _, _, ok in probes):
            key.append(("rect", FAIL_FILL, "a probe failed"))
    kinds = {kind for _, _, kind in events}
    key += [
        ("line", EVENT_COLOURS[k], f"{k} event") for k in ("inject", "heal", "note") if k in kinds
    ]
    if versions:
        key += [("version", s, s) for s in sidecars if any(s == v[0] for v in versions)]
    per_row = max(int(_PW // 160), 1)
    for i, (shape, what, label) in enumerate(key):
        x = _ML + (i % per_row) * 160
        ly = y + (i // per_row) * 15
        if shape == "rect":
            svg.add(f'<rect x="{x:.1f}" y="{ly - 8:.1f}" width="14" height="9" fill="{what}"/>')
        else:
            stroke = colour[what] if shape == "version" else what
            dash = ' stroke-dasharray="5 3"' if what in dashed else ""
            svg.add(
                f'<line x1="{x:.1f}" x2="{x + 14:.1f}" y1="{ly - 4:.1f}" y2="{ly - 4:.1f}" '
                f'stroke="{stroke}" stroke-width="2"{dash}/>'
            )
        svg.text(x + 19, ly, _clip(label, 24))
    height = y + math.ceil(len(key) / per_row) * 15 + 4

    head = (
        f'<svg xmlns="{_SVG_NS}" class="timeline" width="{_W:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {_W:.0f} {height:.0f}" font-family="sans-serif" font-size="10" '
        f'role="img" aria-label="{_e(f"timeline of {name}")}">'
    )
    return "\n".join([head, *svg.parts, "</svg>"])


# --- the HTML page ------------------------------------------------------------------------

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #1a7f37; }
.fail, .error { color: #c62828; font-weight: bold; }
.badge { font-size: 0.8em; padding: 1px 6px; border-radius: 3px; color: #fff; }
.badge.pass { background: #1a7f37; }
.badge.fail, .badge.error { background: #c62828; }
.muted { color: #777; }
pre { margin: 0; white-space: pre-wrap; font-size: 0.9em; }
section { border-top: 1px solid #ddd; margin-top: 2em; }
svg.timeline { max-width: 100%; height: auto; }
svg .h { font-weight: bold; }
"""


def _cell_class(text: str) -> str:
    return {"ok": "ok", "FAIL": "fail", "PASS": "ok", "ERROR": "error"}.get(text, "")


def _meta_value(value: Any) -> str:
    if isinstance(value, str | int | float | bool) or value is None:
        return _fmt(value)
    return json.dumps(value, default=str)


def _summary_html(results: Sequence[Mapping[str, Any]]) -> list[str]:
    out = [
        "<table class='summary'>",
        "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in _HEADERS) + "</tr>",
    ]
    for i, result in enumerate(results):
        cells = _row(result, None)
        row = [f'<td><a href="#scenario-{i}">{_e(cells[0])}</a></td>']
        for j, cell in enumerate(cells[1:], start=1):
            cls = "num" if j >= _RIGHT_FROM else _cell_class(cell)
            row.append(f'<td class="{cls}">{_e(cell)}</td>' if cls else f"<td>{_e(cell)}</td>")
        out.append("<tr>" + "".join(row) + "</tr>")
    out.append("</table>")
    failures = [f for r in results for f in _failures(r)]
    if failures:
        out += ["<ul class='failures'>", *(f"<li>{_e(f)}</li>" for f in failures), "</ul>"]
    return out


def _scenario_html(i: int, result: Mapping[str, Any]) -> list[str]:
    name = str(result.get("name", "?"))
    status = _status(result)
    out = [
        f'<section id="scenario-{i}">',
        f'<h2>{_e(name)} <span class="badge {status.lower()}">{status}</span></h2>',
    ]
    if result.get("description"):
        out.append(f"<p>{_e(result['description'])}</p>")
    if result.get("duration_s") is not None:
        out.append(f"<p class='muted'>duration: {_e(_fmt(result['duration_s']))} s</p>")
    if result.get("error"):
        out.append(
            f"<p class='error'>The scenario itself crashed:</p><pre>{_e(result['error'])}</pre>"
        )

    invariants, evidence = _mapping(result.get("invariants")), _mapping(result.get("evidence"))
    out += ["<h3>Invariants</h3>", "<table class='invariants'>"]
    out.append("<tr><th>invariant</th><th>result</th><th>evidence</th></tr>")
    for key in _invariant_keys(result):
        cell = _invariant_cell(invariants.get(key))
        cls = f' class="{_cell_class(cell)}"' if _cell_class(cell) else ""
        about = INVARIANT_TEXT.get(key, "")
        text = evidence.get(key)
        out.append(
            f"<tr><td>{_e(key)} <span class='muted'>{_e(about)}</span></td>"
            f"<td{cls}>{_e(cell)}</td>"
            f"<td>{f'<pre>{_e(text)}</pre>' if text else ''}</td></tr>"
        )
    out.append("</table>")

    figures = _mapping(result.get("figures"))
    out.append("<h3>Figures</h3>")
    if figures:
        out.append("<table class='figures'>")
        out += [
            f"<tr><th>{_e(k)}</th><td class='num'>{_e(_fmt(v))}</td></tr>"
            for k, v in figures.items()
        ]
        out.append("</table>")
    else:
        out.append("<p class='muted'>No figures.</p>")

    out.append("<h3>Timeline</h3>")
    chart = _timeline_svg(_mapping(result.get("timeline")), result.get("duration_s"), name)
    out.append(chart if chart else "<p class='muted'>No timeline recorded.</p>")
    out.append("</section>")
    return out


def html_report(results: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    """One self-contained HTML page: meta, the summary table, then a section per scenario.

    The page is also well-formed XML (every element closed, only XML entities), so tests and
    tools can parse it with an XML parser.
    """
    passed = sum(1 for r in results if _passed(r))
    overall = "pass" if passed == len(results) else "fail"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8"/>',
        "<title>Chaos report</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f'<h1>Chaos report <span class="badge {overall}">{overall.upper()}</span></h1>',
        f"<p>{passed} of {len(results)} scenarios passed.</p>",
    ]
    if meta:
        out.append("<table class='meta'>")
        out += [f"<tr><th>{_e(k)}</th><td>{_e(_meta_value(v))}</td></tr>" for k, v in meta.items()]
        out.append("</table>")
    out += ["<h2>Summary</h2>", *_summary_html(results)]
    for i, result in enumerate(results):
        out += _scenario_html(i, result)
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


# --- files and exit code ------------------------------------------------------------------


def _json_doc(results: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> dict[str, Any]:
    defaults: dict[str, Any] = {"name": "", "description": "", "passed": False, "error": None}
    scenarios = []
    for result in results:
        scenario: dict[str, Any] = {}
        for field in JSON_FIELDS:
            value = result.get(field, defaults.get(field))
            if field in ("invariants", "evidence", "figures"):
                value = dict(_mapping(value))
            scenario[field] = value
        scenarios.append(scenario)
    doc: dict[str, Any] = {"scenarios": scenarios, "passed": all(_passed(r) for r in results)}
    # The report's own keys win over meta keys of the same name.
    doc.update({k: v for k, v in meta.items() if k not in doc})
    return doc


def write(
    out_dir: Path, results: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]
) -> dict[str, Path]:
    """Write report.json (without timelines) and report.html into out_dir, created if needed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    doc = _json_doc(results, meta)
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    html_path.write_text(html_report(results, meta), encoding="utf-8")
    return {"json": json_path, "html": html_path}


def exit_code(results: Sequence[Mapping[str, Any]]) -> int:
    """0 when every scenario passed (and none crashed), else 1."""
    return 0 if all(_passed(r) for r in results) else 1
