"""A deployment's status page: its summary (:func:`framework.serving.history.summary`) as HTML.

Pure: a document in, a self-contained page out (no script, no external asset; charts are
inline SVG drawn here; it reloads itself while the deployment serves, as the batch job's page
does, with the same style sheet, ``framework.live_status.STYLE``).  Everything that comes from
the job file or the cluster (job and member names, hostnames, task ids, event texts) is escaped.

Charts (each an ``<svg data-chart=NAME>`` whose lines are ``<polyline data-series=LABEL>``):
``cost`` (cost per hour against the packer's lower bound), ``latency`` (end-to-end p50 and p99,
each member's p99), ``rate`` (requests and errors per second) and ``replicas`` (ready replicas
per member).
"""

from __future__ import annotations

import html
import time
from typing import Any, Mapping, Sequence

from framework.live_status import REFRESH_SECONDS, STYLE

WIDTH, HEIGHT = 720, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 22, 22
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
CHART_STYLE = """
svg.chart{background:#fafafa;border:1px solid #ddd;margin:.2em 0 0}.figure{margin:0 0 1.2em}
svg.chart text{font:11px system-ui,sans-serif;fill:#555}.legend span{margin-right:1em}
.swatch{display:inline-block;width:1.2em;height:.25em;vertical-align:middle;margin-right:.3em}
"""
Line = tuple[str, Sequence[float | None], str, bool]
"""A chart's line: label, values (one per time; None: a gap), colour, dashed."""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def _clock(at: float | None) -> str:
    return "-" if at is None else time.strftime("%H:%M:%S", time.localtime(at))


def _segments(xs: Sequence[float], ys: Sequence[float | None]) -> list[list[tuple[float, float]]]:
    """Runs of consecutive known values (a None breaks the line)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys):
        if y is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((x, y))
    return [run for run in runs if run]


def svg_chart(name: str, title: str, times: Sequence[float], lines: Sequence[Line], unit: str = "",
              step: bool = False) -> str:
    """One chart: ``lines`` over ``times`` (seconds since the epoch), y from 0; ``step``: values
    hold until the next time (cost, replica counts)."""
    known = [y for _label, ys, _colour, _dash in lines for y in ys if y is not None]
    top = max(known, default=0.0)
    top = top * 1.1 if top > 0 else 1.0
    first, last = (times[0], times[-1]) if times else (0.0, 1.0)
    span = (last - first) or 1.0
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(t: float) -> float:
        return LEFT + inner_w * (t - first) / span

    def y_of(v: float) -> float:
        return TOP + inner_h * (1.0 - v / top)

    parts = [f'<svg class="chart" data-chart="{_e(name)}" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_e(title)}">',
             f'<text x="{LEFT}" y="14">{_e(title)}</text>',
             f'<line x1="{LEFT}" y1="{TOP + inner_h}" x2="{WIDTH - RIGHT}" y2="{TOP + inner_h}" stroke="#999"/>',
             f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + inner_h}" stroke="#999"/>',
             f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">{_e(_tick(top / 1.1 if known else 1.0))}'
             f'{_e(unit)}</text>',
             f'<text x="{LEFT - 4}" y="{TOP + inner_h}" text-anchor="end">0</text>',
             f'<text x="{LEFT}" y="{HEIGHT - 6}">{_e(_clock(first if times else None))}</text>',
             f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end">{_e(_clock(last if times else None))}'
             "</text>"]
    if known:
        limit = TOP + inner_h * (1.0 - (top / 1.1) / top)
        parts.append(f'<line x1="{LEFT}" y1="{limit:.1f}" x2="{WIDTH - RIGHT}" y2="{limit:.1f}" stroke="#eee"/>')
    for label, ys, colour, dashed in lines:
        for run in _segments(times, ys):
            coordinates: list[tuple[float, float]] = []
            for i, (t, v) in enumerate(run):
                if step and i:
                    coordinates.append((x_of(t), y_of(run[i - 1][1])))
                coordinates.append((x_of(t), y_of(v)))
            if len(coordinates) == 1:
                cx, cy = coordinates[0]
                parts.append(f'<circle data-series="{_e(label)}" cx="{cx:.1f}" cy="{cy:.1f}" r="2.5" '
                             f'fill="{colour}"/>')
                continue
            points = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coordinates)
            dash = ' stroke-dasharray="6 4"' if dashed else ""
            parts.append(f'<polyline data-series="{_e(label)}" points="{points}" fill="none" stroke="{colour}" '
                         f'stroke-width="2"{dash}/>')
    parts.append("</svg>")
    legend = "".join(f'<span><i class="swatch" style="background:{colour}"></i>{_e(label)}</span>'
                     for label, _ys, colour, _dash in lines)
    return f'<div class="figure"><div class="legend">{legend}</div>' + "".join(parts) + "</div>"


def _tick(value: float) -> str:
    return f"{value:.3g}"


def charts(document: Mapping[str, Any]) -> list[str]:
    """The page's charts (see the module docstring), from ``document["series"]``."""
    series = document["series"]
    times = series["t"]
    members = list(series["members"])
    colour = {m: PALETTE[(i + 2) % len(PALETTE)] for i, m in enumerate(members)}
    return [
        svg_chart("cost", "cost per hour against the packer's lower bound", times,
                  [("cost per hour", series["cost"], PALETTE[0], False),
                   ("lower bound", series["bound"], PALETTE[1], True)], step=True),
        svg_chart("latency", "latency (ms): end to end p50 and p99, each member's p99", times,
                  [("p50", series["p50"], PALETTE[0], True), ("p99", series["p99"], PALETTE[1], False)]
                  + [(f"{m} p99", series["members"][m]["p99"], colour[m], False) for m in members], " ms"),
        svg_chart("rate", "requests per second (and errors and shed requests per second)", times,
                  [("requests/s", series["rate"], PALETTE[0], False),
                   ("errors/s", series["errors"], PALETTE[3], True)]
                  + ([("shed/s", series["rejected"], PALETTE[1], True)] if any(series.get("rejected") or ()) else [])),
        svg_chart("replicas", "ready replicas per member", times,
                  [(m, series["members"][m]["ready"], colour[m], False) for m in members], step=True),
    ]


def render_page(document: Mapping[str, Any]) -> str:
    """The status page of a deployment's ``document`` (:func:`framework.serving.history.summary`)."""
    e = _e
    members = "".join(
        f"<tr><td>{e(name)}</td><td><code>{e((m.get('sha256') or '-')[:12])}</code></td><td>{m['ready']}</td>"
        f"<td>{m['starting']}</td><td>{m['draining']}</td>"
        f"<td>{e(m.get('desired') if m.get('desired') is not None else '-')} "
        f"({e(m.get('min_replicas') if m.get('min_replicas') is not None else '-')}.."
        f"{e(m.get('max_replicas') if m.get('max_replicas') is not None else '-')})</td>"
        f"<td>{_number(m['rate_rps'])}</td><td>{_number(m['p50_ms'])}</td><td>{_number(m['p99_ms'])}</td>"
        f"<td>{m['errors']:.0f}</td><td>{_number(m.get('busy'), 2)}</td></tr>"
        for name, m in document["members"].items())
    replicas = "".join(
        f'<tr data-replica="{e(r.get("task_id"))}"><td>{e(r.get("member"))}</td><td>{e(r.get("task_id"))}</td>'
        f"<td>{e(r.get('hostname') or r.get('agent_id'))}</td>"
        f"<td>{'-' if r.get('price') is None else e(format(r['price'], 'g'))}</td><td>{e(r.get('port'))}</td>"
        f"<td>{e(r.get('state'))}</td></tr>"
        for r in document["replicas"]) or '<tr><td colspan="6">none</td></tr>'
    events = "".join(f"<li><time>{e(_clock(ev['at']))}</time> {e(ev['text'])}</li>"
                     for ev in document["events"]) or "<li>none yet</li>"
    e2e = document["end_to_end"]
    ratio = document.get("cost_over_bound")
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if document["state"] == "serving" else ""
    gateway = (f'gateway <a href="{e(document["url"])}/v1/models">{e(document["url"])}</a>; '
               if document.get("url") else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<title>{e(document.get('job') or 'deployment')}: {e(document['state'])} - mesos-ensemble serve</title>
<style>{STYLE}{CHART_STYLE}</style></head><body>
<h1>{e(document.get('job') or 'deployment')} <small>(deployment {e(document['state'])})</small></h1>
<p>{gateway}framework {e(document.get('framework_id') or '-')}; last sample {e(_clock(document.get('updated_at')))}</p>
<p id="cost">cost per hour <b>{_number(document.get('cost_per_hour'), 4)}</b>; the packer's lower bound
{_number(document.get('lower_bound_per_hour'), 4)}{f' ({ratio:.2f}x)' if ratio is not None else ''}</p>
<p>last minute: {_number(e2e['rate_rps'])} requests/s; p50 {_number(e2e['p50_ms'], unit=' ms')},
p99 {_number(e2e['p99_ms'], unit=' ms')}; {e2e['errors']:.0f} errors; {e2e.get('rejected', 0.0):.0f} shed (overload)</p>
<h2>Members</h2>
<table id="members"><tr><th>member</th><th>model</th><th>ready</th><th>starting</th><th>draining</th>
<th>desired (min..max)</th><th>req/s</th><th>p50 ms</th><th>p99 ms</th><th>errors</th>
<th title="replica-seconds of calls per second over the last minute: how many replicas were busy">busy</th></tr>
{members}</table>
<h2>Replicas</h2>
<table id="replicas"><tr><th>member</th><th>task</th><th>agent</th><th>price/h</th><th>port</th><th>state</th></tr>
{replicas}</table>
<h2>Over time</h2>
{''.join(charts(document))}
<h2>Recent events</h2><ul id="events">{events}</ul>
<p><a href="status">status as JSON</a></p>
</body></html>
"""
