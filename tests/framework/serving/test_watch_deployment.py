"""Watching a real deployment: ``serve`` on the embedded cluster samples its history into its
journal; its status page (read by headless Chromium) shows the replicas and the cost per hour
against the lower bound; ``mesos-ensemble status`` prints its summary while it serves and after it
stopped, and ``status --report`` renders the same history as a static page with its figures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from deploy_helpers import Served, held_out_rows, predict, serve_job, wait_for

from framework.jobspec import load_job
from framework.serving.monitor import read_document
from framework.serving.state import ServeState

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_report_html import CHROMIUM_FLAGS, chromium, rendered_figures  # noqa: E402

ROOT = Path(__file__).parents[3]


def dom_of(url: str, profile: Path) -> str:
    """The page at ``url`` as headless Chromium built it."""
    result = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=500",
                             "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def status(*args: str) -> subprocess.CompletedProcess[str]:
    """``mesos-ensemble status ...`` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "framework.cli", "status", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def sampled(state_dir: Path, served: Served) -> dict[str, Any]:
    """The summary once the history has a few points with a known cost and some requests, its
    replicas are the controller's, and every replica the autoscaler wants is placed (the bound
    is that of the replicas wanted: below it while a scale-up is under way)."""
    def ready() -> dict[str, Any] | None:
        document = read_document(state_dir, served.runner.controller.state, live=True)
        costs = [c for c in document["series"]["cost"] if c is not None]
        asked = sum(r or 0 for r in document["series"]["rate"])
        with served.controller.lock:
            running = {(r.task_id, r.member, r.hostname, r.port, r.state.value)
                       for r in served.controller.replicas.values()}
        recorded = {(r["task_id"], r["member"], r["hostname"], r["port"], r["state"]) for r in document["replicas"]}
        placed = (document["cost_per_hour"] or 0) >= (document["lower_bound_per_hour"] or 0)
        return document if len(costs) >= 2 and asked > 0 and recorded == running and placed else None
    return wait_for(ready)


def test_a_deployment_is_watched_live_in_a_browser_and_by_status_then_reported(tmp_path: Path) -> None:
    job = serve_job(tmp_path / "job")
    state_dir = tmp_path / "state"
    columns, rows = held_out_rows(job)
    served = Served(job, state_dir)
    served.runner.history_interval = 0.3
    with served:
        for start in range(0, 40, 10):
            assert len(predict(served.url, columns, rows[start:start + 10])) == 10
        document = sampled(state_dir, served)
        controller = served.controller
        with controller.lock:
            replicas = {r.task_id: (r.member, r.hostname) for r in controller.replicas.values()}
        assert {r["member"] for r in document["replicas"]} == {"linear", "logistic"}
        assert all(r["price"] is not None for r in document["replicas"]), document["replicas"]
        for member in ("linear", "logistic"):  # (a loaded machine may have scaled a member up meanwhile)
            assert any(r["member"] == member and r["state"] == "ready" for r in document["replicas"]), member
        assert document["lower_bound_per_hour"] is not None and document["cost_per_hour"] is not None
        assert document["cost_per_hour"] >= document["lower_bound_per_hour"] > 0

        # The status page, as a browser shows it: the replicas with their agents, and the chart.
        assert served.runner.status_url is not None
        dom = dom_of(served.runner.status_url, tmp_path / "profile")
        assert "deployment serving" in dom
        shown = re.findall(r'<tr data-replica="([^"]+)"><td>([^<]+)</td><td>[^<]+</td><td>([^<]+)</td>', dom)
        assert shown and all(replicas.get(task) == (member, host) for task, member, host in shown
                             if task in replicas), shown
        assert {member for _task, member, _host in shown} == {"linear", "logistic"}
        cost_chart = re.search(r'<svg class="chart" data-chart="cost".*?</svg>', dom, re.S)
        assert cost_chart is not None
        for series in ("cost per hour", "lower bound"):
            line = re.search(rf'<polyline data-series="{series}" points="([^"]+)"', cost_chart.group(0))
            assert line is not None and len(line.group(1).split()) >= 2, series
        assert re.search(r'<svg class="chart" data-chart="rate".*?<polyline data-series="requests/s"', dom, re.S)

        # status while it serves: from the journal, with the gateway's address.
        live = status(str(job), "--state-dir", str(state_dir))
        assert live.returncode == 0, live.stderr
        assert f"deployment serving at {served.url}" in live.stdout
        assert re.search(r"member linear: \d+ ready", live.stdout) and "member logistic:" in live.stdout
        assert "cost per hour" in live.stdout and "lower bound" in live.stdout

    # After serve stopped: the journal still tells the story.
    after = status(str(job), "--state-dir", str(state_dir), "--json", "--report", str(tmp_path / "report.html"))
    assert after.returncode == 0, after.stderr
    summary = json.loads(after.stdout)
    assert summary["source"] == "deployment" and summary["state"] == "stopped"
    assert summary["job"] == load_job(job).name and set(summary["members"]) == {"linear", "logistic"}
    assert summary["replicas"] == []  # the last sample: every replica drained and gone
    assert summary["history"]["points"] >= 3
    assert any("ready at" in e["text"] for e in summary["events"]), summary["events"][:5]
    assert any("drained" in e["text"] or "draining" in e["text"] for e in summary["events"])
    assert sum(r or 0 for r in summary["series"]["rate"]) > 0
    text = status(str(job), "--state-dir", str(state_dir))
    assert text.returncode == 0 and "deployment stopped" in text.stdout, text.stdout + text.stderr

    rendered, total, expected = rendered_figures(dom_of((tmp_path / "report.html").as_uri(), tmp_path / "profile2"))
    assert expected == ["cost", "latency", "rate", "replicas"] and sorted(rendered) == sorted(expected)
    assert total == 4


def test_status_of_a_job_without_any_journal_says_so_in_one_line(tmp_path: Path) -> None:
    job = serve_job(tmp_path / "job")
    result = status(str(job), "--report", str(tmp_path / "r.html"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "no deployment journal" in result.stderr
    with ServeState.open(tmp_path / "job" / "job.serve-state"):
        pass  # a journal with no history yet
    empty = status(str(job))
    assert empty.returncode == 0 and "deployment stopped" in empty.stdout and "0 point(s)" in empty.stdout, empty
