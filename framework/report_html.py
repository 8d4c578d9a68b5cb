"""The run report as one self-contained HTML page: report JSON in, HTML out.

Every figure is drawn with matplotlib (the Agg backend, set explicitly) and inlined as a base64
PNG ``data:`` URI; the page has no external CSS, script, font or image, so it opens offline.
matplotlib is imported by this module only, and this module only by a job whose ``report``
ends in ``.html`` (its import costs about two seconds).

The page's figures, each an ``<img data-figure=NAME>``: ``timeline`` (tasks per agent, retries
and backups marked), ``resources`` (cpus and mem asked for per agent over time), ``cost``
(each offer round's cost against the packer's lower bound), ``durations`` (per model),
``disagreement`` (a heat map, two members or more), and for a classification or a 0/1 score
``confusion`` and ``roc``.  :func:`expected_figures` says which a report has.  A small inline
script counts the figures the browser decoded into ``#figure-check`` (for the Chromium test
and for anyone wondering whether the page is whole).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

from matplotlib.colors import to_rgba  # noqa: E402  (after the backend is chosen)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from framework import atomic  # noqa: E402

DPI = 100
WIDTH_INCHES = 10.0
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")
FAILED_COLOUR = "#d62728"


def expected_figures(report: Mapping[str, Any]) -> list[str]:
    """The names of the figures :func:`render` draws for ``report``, in page order."""
    run = report.get("run") or {}
    names = []
    if run.get("attempts"):
        names += ["timeline", "resources"]
    if run.get("rounds"):
        names.append("cost")
    if any(a.get("end") is not None and a.get("state") == "TASK_FINISHED" for a in run.get("attempts", ())):
        names.append("durations")
    if len(report.get("members", {})) >= 2 and _disagreement_matrix(report) is not None:
        names.append("disagreement")
    curves = report.get("curves") or {}
    if curves.get("confusion"):
        names.append("confusion")
    if curves.get("roc"):
        names.append("roc")
    return names


# Figures -------------------------------------------------------------------------------------

def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _colours(names: Sequence[str]) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _models(attempts: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(a["model"] for a in attempts))


def _agents(run: Mapping[str, Any]) -> list[str]:
    return sorted({a["agent"] for a in run["attempts"]})


def _end(attempt: Mapping[str, Any], run: Mapping[str, Any]) -> float:
    return float(attempt["end"] if attempt.get("end") is not None else run["finished"])


def timeline_figure(run: Mapping[str, Any]) -> Figure:
    """A Gantt chart: one row per agent (its tasks stacked in lanes so none overlap), one bar
    per attempt coloured by model; retries hatched, backups outlined in black, failed or killed
    attempts in red."""
    attempts, t0 = run["attempts"], float(run["started"])
    agents, colours = _agents(run), _colours(_models(run["attempts"]))
    lanes: dict[str, list[float]] = {agent: [] for agent in agents}
    placed = []
    for attempt in sorted(attempts, key=lambda a: a["start"]):
        start, end = float(attempt["start"]) - t0, _end(attempt, run) - t0
        free = lanes[attempt["agent"]]
        lane = next((i for i, busy_until in enumerate(free) if busy_until <= start), len(free))
        if lane == len(free):
            free.append(end)
        free[lane] = end
        placed.append((attempt, lane, start, end))
    offsets, y = {}, 0.0
    for agent in agents:
        offsets[agent] = y
        y += max(1, len(lanes[agent])) + 1
    figure = Figure(figsize=(WIDTH_INCHES, min(9.0, 1.6 + 0.22 * y)))
    axes = figure.add_subplot()
    for attempt, lane, start, end in placed:
        failed = attempt["state"] != "TASK_FINISHED" and attempt.get("end") is not None
        row, colour = offsets[attempt["agent"]] + lane, colours[attempt["model"]]
        compute = attempt.get("compute")
        axes.barh(row, max(end - start, 1e-3), left=start, height=0.8,
                  color=to_rgba(colour, 0.35 if compute is not None or failed else 1.0),
                  edgecolor="black" if attempt["backup"] else (FAILED_COLOUR if failed else "none"),
                  linewidth=1.4 if attempt["backup"] or failed else 0, hatch="///" if attempt["retry"] else None)
        if compute is not None:
            axes.barh(row, max(min(float(compute), end - start), 1e-3), left=end - min(float(compute), end - start),
                      height=0.8, color=colour)
    axes.set_yticks([offsets[a] + (max(1, len(lanes[a])) - 1) / 2 for a in agents], agents)
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the run started")
    axes.set_title("Tasks per agent")
    legend = [Patch(color=c, label=m) for m, c in colours.items()]
    legend += [Patch(color=to_rgba("grey", 0.35), label="launched, not computing"),
               Patch(color="grey", label="computing"),
               Patch(facecolor="white", edgecolor="grey", hatch="///", label="retry"),
               Patch(facecolor="white", edgecolor="black", linewidth=1.4, label="backup copy"),
               Patch(facecolor="white", edgecolor=FAILED_COLOUR, linewidth=1.4, label="failed / killed")]
    axes.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    axes.grid(axis="x", alpha=0.3)
    return figure


def _usage_steps(attempts: Sequence[Mapping[str, Any]], run: Mapping[str, Any], key: str,
                 t0: float) -> tuple[list[float], list[float]]:
    events: list[tuple[float, float]] = []
    for attempt in attempts:
        events.append((float(attempt["start"]) - t0, float(attempt[key])))
        events.append((_end(attempt, run) - t0, -float(attempt[key])))
    events.sort()
    times, values, level = [0.0], [0.0], 0.0
    for when, delta in events:
        level += delta
        times.append(when)
        values.append(max(0.0, level))
    return times, values


def resources_figure(run: Mapping[str, Any]) -> Figure:
    """Per agent, the cpus and mem its running tasks asked for over time (executors' own
    resources not included), against the largest capacity it offered (dotted)."""
    t0 = float(run["started"])
    agents = _agents(run)
    colours = _colours(agents)
    figure = Figure(figsize=(WIDTH_INCHES, 5.2))
    axes_list = figure.subplots(2, 1, sharex=True)
    for axes, key, label in zip(axes_list, ("cpus", "mem"), ("cpus", "mem (MB)")):
        for agent in agents:
            times, values = _usage_steps([a for a in run["attempts"] if a["agent"] == agent], run, key, t0)
            axes.step(times, values, where="post", color=colours[agent], label=agent, linewidth=1.6)
            capacity = (run.get("agents") or {}).get(agent, {}).get(key)
            if capacity:
                axes.axhline(capacity, color=colours[agent], linestyle=":", linewidth=1.2)
        axes.set_ylabel(label)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
    axes_list[0].set_title("Resources of running tasks per agent (dotted: capacity offered)")
    axes_list[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    axes_list[1].set_xlabel("seconds since the run started")
    return figure


def cost_figure(run: Mapping[str, Any]) -> Figure:
    """Each offer round's plan cost (bars) against the packer's lower bound (markers)."""
    rounds = run["rounds"]
    figure = Figure(figsize=(WIDTH_INCHES, 3.6))
    axes = figure.add_subplot()
    xs = list(range(1, len(rounds) + 1))
    axes.bar(xs, [r["cost"] for r in rounds], color=PALETTE[0], label="plan cost", width=0.7)
    axes.scatter(xs, [r["lower_bound"] for r in rounds], color=PALETTE[1], marker="_", s=400, linewidths=3,
                 label="lower bound", zorder=3)
    axes.set_xlabel("offer round that launched tasks")
    axes.set_ylabel("cost")
    axes.set_title("Cost against the packer's lower bound per offer round")
    if len(xs) <= 30:
        axes.set_xticks(xs)
    axes.legend(fontsize=9, frameon=False)
    axes.grid(axis="y", alpha=0.3)
    return figure


def durations_figure(run: Mapping[str, Any]) -> Figure:
    """Per model, the wall-clock durations (launch to end) of its finished task attempts."""
    finished = [a for a in run["attempts"] if a["state"] == "TASK_FINISHED" and a.get("end") is not None]
    models = _models(finished)
    colours = _colours(_models(run["attempts"]))
    measured = all(a.get("compute") is not None for a in finished)
    data = [[float(a["compute"]) if measured else float(a["end"]) - float(a["start"])
             for a in finished if a["model"] == m] for m in models]
    figure = Figure(figsize=(WIDTH_INCHES, 0.9 + 0.55 * len(models) + 1.0))
    axes = figure.add_subplot()
    boxes = axes.boxplot(data, orientation="horizontal", tick_labels=models, patch_artist=True, widths=0.6,
                           medianprops={"color": "black"})
    for patch, model in zip(boxes["boxes"], models):
        patch.set_facecolor(colours[model])
        patch.set_alpha(0.7)
    for i, values in enumerate(data, start=1):
        axes.scatter(values, [i] * len(values), color="black", s=8, zorder=3, alpha=0.6)
    axes.invert_yaxis()
    axes.set_xlabel("seconds computing (measured by the executor)" if measured else "seconds from launch to finish")
    axes.set_title("Task durations per model")
    axes.grid(axis="x", alpha=0.3)
    return figure


def _disagreement_matrix(report: Mapping[str, Any]) -> tuple[list[str], list[list[float]], str] | None:
    pairs = (report.get("disagreement") or {}).get("pairs") or []
    if not pairs:
        return None
    key = "fraction_differing" if "fraction_differing" in pairs[0] else "mean_abs_difference"
    names = list(dict.fromkeys([p["a"] for p in pairs] + [p["b"] for p in pairs]))
    index = {n: i for i, n in enumerate(names)}
    matrix = [[0.0] * len(names) for _ in names]
    for p in pairs:
        value = p.get(key)
        value = math.nan if value is None else float(value)
        matrix[index[p["a"]]][index[p["b"]]] = matrix[index[p["b"]]][index[p["a"]]] = value
    label = "fraction of rows with different labels" if key == "fraction_differing" else "mean |difference|"
    return names, matrix, label


def disagreement_figure(report: Mapping[str, Any]) -> Figure:
    """The members' pairwise disagreement as a heat map (with each value written in its cell)."""
    found = _disagreement_matrix(report)
    assert found is not None
    names, matrix, label = found
    side = min(7.0, 2.4 + 0.5 * len(names))
    figure = Figure(figsize=(side + 1.8, side))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="viridis", vmin=0)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_yticks(range(len(names)), names)
    peak = max((v for row in matrix for v in row if not math.isnan(v)), default=0.0) or 1.0
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            text = "-" if math.isnan(value) else f"{value:.3f}"
            axes.text(j, i, text, ha="center", va="center", fontsize=10,
                      color="white" if math.isnan(value) or value < 0.6 * peak else "black")
    figure.colorbar(image, ax=axes, label=label, shrink=0.8)
    axes.set_title("Disagreement between members")
    return figure


def confusion_figure(curves: Mapping[str, Any]) -> Figure:
    """One confusion matrix per member and for the ensemble (rows: true, columns: predicted)."""
    matrices = curves["confusion"]
    count = len(matrices)
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(WIDTH_INCHES, 2.9 * rows + 0.4), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes, (name, confusion) in zip(grid.ravel(), matrices.items()):
        matrix, labels = confusion["matrix"], confusion["labels"]
        axes.imshow(matrix, cmap="Blues")
        peak = max((v for row in matrix for v in row), default=0) or 1
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                axes.text(j, i, str(value), ha="center", va="center", fontsize=10,
                          color="white" if value > 0.6 * peak else "black")
        axes.set_xticks(range(len(labels)), labels, fontsize=8)
        axes.set_yticks(range(len(labels)), labels, fontsize=8)
        axes.set_xlabel("predicted", fontsize=9)
        axes.set_ylabel("true", fontsize=9)
        axes.set_title(name, fontsize=10, fontweight="bold" if name == "ensemble" else "normal")
    for axes in grid.ravel()[count:]:
        axes.set_visible(False)
    figure.suptitle("Confusion matrices")
    return figure


def roc_figure(curves: Mapping[str, Any]) -> Figure:
    """ROC curves of each member and the ensemble (area under each in the legend)."""
    figure = Figure(figsize=(6.5, 5.2))
    axes = figure.add_subplot()
    colours = _colours([n for n in curves["roc"] if n != "ensemble"])
    for name, roc in curves["roc"].items():
        ensemble = name == "ensemble"
        axes.plot(roc["fpr"], roc["tpr"], color="black" if ensemble else colours[name],
                  linewidth=2.4 if ensemble else 1.5, label=f"{name} (AUC {roc['auc']:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    title = "ROC curves"
    if curves.get("positive") is not None:
        title += f" (positive class {curves['positive']})"
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize=9)
    axes.grid(alpha=0.3)
    return figure


# The page ------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; background: #f6f7f9; color: #222; }
main { max-width: 1080px; margin: 0 auto; padding: 16px 24px 40px; }
h1 { font-size: 1.5em; margin: 8px 0 4px; }
h2 { font-size: 1.15em; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.summary { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.summary div { background: #fff; border: 1px solid #e2e4e8; border-radius: 6px; padding: 8px 14px; }
.summary b { display: block; font-size: 1.25em; }
.summary span { color: #666; font-size: 0.85em; }
figure { background: #fff; border: 1px solid #e2e4e8; border-radius: 6px; margin: 0 0 14px; padding: 10px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #555; font-size: 0.88em; margin-top: 6px; }
table { border-collapse: collapse; background: #fff; font-size: 0.92em; }
th, td { border: 1px solid #e2e4e8; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.ensemble td { font-weight: bold; background: #f0f4fa; }
.note { color: #666; font-size: 0.88em; }
#figure-check { color: #888; font-size: 0.8em; }
"""

CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.querySelectorAll("img[data-figure]"));
  var decoded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var check = document.getElementById("figure-check");
  check.setAttribute("data-rendered", decoded.map(function (i) { return i.dataset.figure; }).join(","));
  check.setAttribute("data-total", String(images.length));
  check.textContent = decoded.length + " of " + images.length + " figures rendered";
});
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def evaluation_table(report: Mapping[str, Any]) -> str:
    """The evaluation as an HTML table: one row per member and the ensemble, one column per
    metric, and the contribution (the primary metric without the member) where known."""
    rows = dict(report.get("members", {}))
    rows["ensemble"] = report.get("ensemble", {})
    columns: list[str] = []
    for metrics in rows.values():
        columns += [k for k in metrics if k not in columns and k != "note"]
    contribution = report.get("contribution", {})
    gain = any("gain" in c for c in contribution.values())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns) + ("<th>gain to the ensemble</th>" if gain else "")
    body = []
    for name, metrics in rows.items():
        cells = "".join(f"<td>{_fmt(metrics.get(c))}</td>" for c in columns)
        if gain:
            cells += f"<td>{_fmt(contribution.get(name, {}).get('gain'))}</td>"
        cls = ' class="ensemble"' if name == "ensemble" else ""
        body.append(f"<tr{cls}><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table><tr><th>model</th>{head}</tr>{''.join(body)}</table>"


def _summary(report: Mapping[str, Any]) -> str:
    run = report.get("run") or {}
    attempts = run.get("attempts", [])
    tiles = []
    if run:
        tiles.append((f"{float(run['finished']) - float(run['started']):.1f} s", "wall time"))
    tiles += [(str(len({a['item'] for a in attempts})), "tasks"), (str(len(attempts)), "attempts"),
              (str(sum(1 for a in attempts if a["retry"])), "retries"),
              (str(sum(1 for a in attempts if a["backup"])), "backup copies"),
              (str(len({a['agent'] for a in attempts})), "agents used")]
    rounds = run.get("rounds", [])
    if rounds:
        cost, bound = sum(r["cost"] for r in rounds), sum(r["lower_bound"] for r in rounds)
        tiles.append((f"{cost:.4g}", f"cost (lower bound {bound:.4g})"))
    if report.get("rows") is not None:
        tiles.append((str(report["rows"]), "rows"))
    return '<div class="summary">' + "".join(f"<div><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>"
                                             for v, k in tiles) + "</div>"


def _figure(name: str, figure: Figure, caption: str) -> str:
    return (f'<figure><img data-figure="{name}" alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{_png(figure)}"><figcaption>{html.escape(caption)}</figcaption></figure>')


def render(report: Mapping[str, Any], title: str = "mesos-ensemble run report") -> str:
    """The whole page for ``report`` (the report JSON: the evaluation, ``run`` and ``curves``)."""
    run = report.get("run") or {}
    curves = report.get("curves") or {}
    figures = expected_figures(report)
    parts = [f"<h1>{html.escape(title)}</h1>", _summary(report)]
    if run.get("note"):
        parts.append(f'<p class="note">{html.escape(run["note"])}</p>')
    if {"timeline", "resources", "cost", "durations"} & set(figures):
        parts.append("<h2>The run</h2>")
    if "timeline" in figures:
        parts.append(_figure("timeline", timeline_figure(run),
                             "Each bar is one task attempt, from launch to its end, on the agent that ran it; solid: "
                             "the seconds its executor measured it computing (before: starting the executor, fetching "
                             "the model and the shard); hatched: a retry after a failed attempt; black outline: a "
                             "backup copy of a straggler."))
    if "resources" in figures:
        parts.append(_figure("resources", resources_figure(run),
                             "What the running tasks asked for on each agent (the executors' own share not "
                             "included), against the largest capacity the agent offered."))
    if "cost" in figures:
        parts.append(_figure("cost", cost_figure(run),
                             "Per offer round that launched tasks: the packed plan's cost and the packer's lower "
                             "bound on any plan's cost for the same tasks."))
    if "durations" in figures:
        parts.append(_figure("durations", durations_figure(run),
                             "Per model, how long its finished tasks computed (as their executors measured it; "
                             "from launch to finish where no measurement came back); one dot per task."))
    if report.get("members") is not None:
        parts.append("<h2>Evaluation</h2>")
        parts.append(f'<p class="note">{html.escape(str(report.get("method")))} ({html.escape(str(report.get("task")))}'
                     f'), {html.escape(str(report.get("rows")))} rows</p>')
        parts.append(evaluation_table(report))
        for name, why in (report.get("members_missing") or {}).items():
            parts.append(f'<p class="note">missing member {html.escape(name)}: {html.escape(str(why))}</p>')
    else:
        parts.append('<p class="note">No evaluation: the data has no label column.</p>')
    if "disagreement" in figures:
        parts.append(_figure("disagreement", disagreement_figure(report),
                             str((report.get("disagreement") or {}).get("measure") or "")))
    if "confusion" in figures or "roc" in figures:
        parts.append("<h2>Classification</h2>")
        if curves.get("note"):
            parts.append(f'<p class="note">{html.escape(curves["note"])}</p>')
    if "confusion" in figures:
        parts.append(_figure("confusion", confusion_figure(curves),
                             "Rows: the true label; columns: the predicted one."))
    if "roc" in figures:
        parts.append(_figure("roc", roc_figure(curves), "ROC curve and its area per member and for the ensemble."))
    parts.append(f'<p id="figure-check" data-expected="{",".join(figures)}">figures not checked yet</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>{''.join(parts)}</main>"
            f"<script>{CHECK_SCRIPT}</script></body></html>\n")


def write_html_report(report: Mapping[str, Any], path: str | os.PathLike[str], title: str) -> Path:
    """Write the page for ``report`` to ``path``, replacing it atomically (:mod:`framework.atomic`)."""
    page = render(report, title)
    with atomic.atomic_open(path, "w") as handle:
        handle.write(page)
    return Path(path)


# A deployment's report (``mesos-ensemble status JOB.toml --report OUT.html``) ---------------------

DEPLOYMENT_FIGURES = ("cost", "latency", "rate", "replicas")


def _times(series: Mapping[str, Any]) -> list[Any]:
    import datetime

    return [datetime.datetime.fromtimestamp(t) for t in series["t"]]


def _plot(axes: Any, xs: Sequence[Any], ys: Sequence[float | None], **style: Any) -> None:
    """A line with gaps where a value is unknown (None)."""
    axes.plot(xs, [math.nan if y is None else y for y in ys], **style)


def deployment_figure(name: str, series: Mapping[str, Any]) -> Figure:
    """One of the deployment's figures over time (:data:`DEPLOYMENT_FIGURES`) from its history's
    ``series`` (:func:`framework.serving.history.series`)."""
    xs = _times(series)
    members = list(series["members"])
    colours = _colours(["", ""] + members)
    figure = Figure(figsize=(WIDTH_INCHES, 3.0))
    axes = figure.add_subplot()
    if name == "cost":
        _plot(axes, xs, series["cost"], color=PALETTE[0], drawstyle="steps-post", label="cost per hour")
        _plot(axes, xs, series["bound"], color=PALETTE[1], drawstyle="steps-post", linestyle="--",
              label="the packer's lower bound")
        axes.set_ylabel("cost per hour")
        axes.set_title("Cost per hour against the packer's lower bound")
    elif name == "latency":
        _plot(axes, xs, series["p50"], color=PALETTE[0], linestyle="--", label="end to end p50")
        _plot(axes, xs, series["p99"], color=PALETTE[1], label="end to end p99")
        for member in members:
            _plot(axes, xs, series["members"][member]["p99"], color=colours[member], label=f"{member} p99")
        axes.set_ylabel("ms")
        axes.set_title("Latency")
    elif name == "rate":
        _plot(axes, xs, series["rate"], color=PALETTE[0], label="requests/s")
        for member in members:
            _plot(axes, xs, series["members"][member]["rate"], color=colours[member], linewidth=0.8,
                  label=f"{member} requests/s")
        errors = axes.twinx()
        _plot(errors, xs, series["errors"], color=FAILED_COLOUR, linestyle=":", label="errors/s")
        errors.set_ylim(bottom=0)
        errors.set_ylabel("errors per second", color=FAILED_COLOUR)
        axes.set_ylabel("requests per second")
        axes.set_title("Request rate (and errors)")
    elif name == "replicas":
        for member in members:
            _plot(axes, xs, series["members"][member]["ready"], color=colours[member], drawstyle="steps-post",
                  label=member)
        axes.set_ylabel("ready replicas")
        axes.set_title("Ready replicas per member")
    else:
        raise ValueError(f"no deployment figure named {name!r}")
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=9, frameon=False, loc="upper left")
    return figure


def render_deployment(document: Mapping[str, Any], title: str | None = None) -> str:
    """A deployment's history as one self-contained page (the document of
    :func:`framework.serving.history.summary`): a summary, the members and replicas, the figures
    over time, the recent events.  Everything from the job file is escaped."""
    e = html.escape
    title = title or f"{document.get('job') or 'deployment'}: mesos-ensemble deployment report"
    series = document["series"]
    figures = list(DEPLOYMENT_FIGURES) if series["t"] else []
    history = document["history"]
    e2e = document["end_to_end"]

    def num(value: Any, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}g}"

    tiles = [(num(document.get("cost_per_hour")), "cost per hour"),
             (num(document.get("lower_bound_per_hour")), "the packer's lower bound"),
             (num(e2e["rate_rps"], 3), "requests/s (last minute)"), (num(e2e["p99_ms"], 3), "p99 ms (last minute)"),
             (str(len(document["replicas"])), "replicas"), (str(history["points"]), "points of history")]
    parts = [f"<h1>{e(title)}</h1>",
             '<div class="summary">' + "".join(f"<div><b>{e(v)}</b><span>{e(k)}</span></div>" for v, k in tiles)
             + "</div>"]
    if history["points"]:
        import datetime

        def stamp(t: float) -> str:
            return datetime.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="seconds")
        parts.append(f'<p class="note">From {e(stamp(history["from"]))} to {e(stamp(history["to"]))}; '
                     f'deployment {e(document["state"])}.</p>')
    else:
        parts.append('<p class="note">No history recorded yet.</p>')
    rows = "".join(f"<tr><td>{e(name)}</td><td>{m['ready']}</td><td>{m['starting']}</td><td>{m['draining']}</td>"
                   f"<td>{e(str(m.get('desired')))}</td><td>{e(str(m.get('min_replicas')))}.."
                   f"{e(str(m.get('max_replicas')))}</td><td>{e((m.get('sha256') or '-')[:12])}</td></tr>"
                   for name, m in document["members"].items())
    parts.append("<h2>Members</h2><table><tr><th>member</th><th>ready</th><th>starting</th><th>draining</th>"
                 f"<th>desired</th><th>bounds</th><th>model</th></tr>{rows}</table>")
    rows = "".join(f"<tr><td>{e(str(r.get('task_id')))}</td><td>{e(str(r.get('member')))}</td>"
                   f"<td>{e(str(r.get('hostname') or r.get('agent_id')))}</td><td>{e(str(r.get('price')))}</td>"
                   f"<td>{e(str(r.get('port')))}</td><td>{e(str(r.get('state')))}</td></tr>"
                   for r in document["replicas"])
    parts.append("<h2>Replicas</h2><table><tr><th>task</th><th>member</th><th>agent</th><th>price/h</th>"
                 f"<th>port</th><th>state</th></tr>{rows or '<tr><td colspan=6>none</td></tr>'}</table>")
    if figures:
        parts.append("<h2>Over time</h2>")
        captions = {"cost": "The deployment's cost per hour as placed (its agents' prices, plus unit prices) and "
                            "the packer's lower bound on any placement of the replicas wanted then.",
                    "latency": "End-to-end latency (p50, p99) and each member's p99, per point of history.",
                    "rate": "Requests answered per second, each member's share, and the requests that failed.",
                    "replicas": "Ready replicas per member."}
        for name in figures:
            parts.append(_figure(name, deployment_figure(name, series), captions[name]))
    events = "".join(f"<li>{e(stamp_event(ev['at']))} {e(ev['text'])}</li>" for ev in document["events"])
    parts.append(f"<h2>Recent events</h2><ul>{events or '<li>none</li>'}</ul>")
    parts.append(f'<p id="figure-check" data-expected="{",".join(figures)}">figures not checked yet</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>{''.join(parts)}</main>"
            f"<script>{CHECK_SCRIPT}</script></body></html>\n")


def stamp_event(at: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def write_deployment_report(document: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write :func:`render_deployment` of ``document`` to ``path``, atomically."""
    page = render_deployment(document)
    with atomic.atomic_open(path, "w") as handle:
        handle.write(page)
    return Path(path)
