"""The HTML run report: pure data -> page, the run's records -> data, and real runs on the
embedded cluster whose pages are opened in headless Chromium, which must decode every figure."""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.tree import DecisionTreeClassifier

from framework.demo import train_demo
from framework.ensemble import MemberSpec, make_combiner
from framework.job import JobRunner
from framework.journal import AttemptRecord, ItemRecord
from framework.jobspec import load_job
from framework.packing import Agent, Plan, Resources
from framework.report_data import RoundRecorder, attempts_from_journal, classifier_curves, run_data
from framework.rounds import AgentLaunch, RoundDecision, TaskLaunch
from framework.tasks import ItemState
from harness import skip_or_fail_without

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
RUN_FIGURES = ["timeline", "resources", "cost", "durations"]


# Chromium ------------------------------------------------------------------------------------

def chromium() -> str:
    """The browser, or skip; in CI (``CI`` set) a missing browser fails the test instead."""
    found = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if found is None:
        message = f"headless Chromium is needed ({CHROMIUM} not found; Debian: apt-get install chromium)"
        skip_or_fail_without(message)
    return found


def open_in_chromium(page: Path, profile: Path) -> str:
    """The DOM of ``page`` after Chromium loaded it and ran its scripts."""
    result = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                             "--dump-dom", page.resolve().as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def rendered_figures(dom: str) -> tuple[list[str], int, list[str]]:
    """What the page's own check wrote: the figures Chromium decoded (naturalWidth > 0), how many
    ``img`` it found, and the figures the page was expected to have."""
    check = re.search(r'<p id="figure-check"([^>]*)>([^<]*)</p>', dom)
    assert check is not None, "the page's figure check is missing"
    attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', check.group(1)))
    assert "data-total" in attributes, f"the page's script did not run: {check.group(0)[:300]}"
    rendered = [n for n in attributes.get("data-rendered", "").split(",") if n]
    return rendered, int(attributes["data-total"]), [n for n in attributes["data-expected"].split(",") if n]


def assert_self_contained(page: str) -> None:
    """Nothing the page needs comes from elsewhere: no external script, style, link or image."""
    assert not re.search(r"<(link|iframe|object|embed)\b", page)
    assert not re.search(r"""\b(src|href)\s*=\s*["'](?!data:)""", page)
    assert "url(" not in page and "@import" not in page
    for uri in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        assert base64.b64decode(uri)[:8] == b"\x89PNG\r\n\x1a\n"


# Pure data -> page ---------------------------------------------------------------------------

def attempt(task_id: str, model: str, agent: str, start: float, end: float | None, state: str = "TASK_FINISHED",
            retry: bool = False, backup: bool = False) -> dict[str, Any]:
    return {"task_id": task_id, "item": task_id.rsplit(".", 1)[0], "model": model, "agent": agent,
            "start": start, "end": end, "state": state, "retry": retry, "backup": backup, "cpus": 0.5, "mem": 128.0}


def synthetic_run() -> dict[str, Any]:
    recorder = RoundRecorder()
    recorder.rounds = [{"time": 1.0, "cost": 3.0, "lower_bound": 2.5, "gap": 1 / 6, "proven_optimal": False,
                        "tasks": 3, "backups": 0},
                       {"time": 3.0, "cost": 1.0, "lower_bound": 1.0, "gap": 0.0, "proven_optimal": True,
                        "tasks": 2, "backups": 1}]
    recorder.agents = {"id-1": {"hostname": "agent-1", "cpus": 2.0, "mem": 4096.0}}
    attempts = [attempt("a.s0.a1", "a", "agent-1", 100.0, 101.0, "TASK_FAILED"),
                attempt("a.s0.a2", "a", "agent-2", 102.0, 103.0, retry=True),
                attempt("b.s0.a1", "b", "agent-1", 100.0, 104.0, "TASK_KILLED"),
                attempt("b.s0.a2", "b", "agent-2", 102.5, 103.5, backup=True)]
    return run_data(attempts, recorder, 100.0, 105.0)


def iris_classification() -> tuple[dict[str, Any], dict[str, Any]]:
    """A soft vote of two classifiers on iris (three classes): evaluation and curves."""
    from framework.ensemble import evaluate

    x, y = load_iris(return_X_y=True)
    members = [MemberSpec("tree", "classifier", "predict_proba", classes=(0, 1, 2)),
               MemberSpec("logistic", "classifier", "predict_proba", classes=(0, 1, 2))]
    outputs = {"tree": DecisionTreeClassifier(max_depth=2, random_state=0).fit(x, y).predict_proba(x),
               "logistic": LogisticRegression(max_iter=500).fit(x, y).predict_proba(x)}
    combiner = make_combiner("soft_vote", members)
    result = combiner.combine(outputs)
    report = evaluate(y, outputs, result, members, combiner)
    return report, classifier_curves(report["task"], y, outputs, result, members, combiner.classes) or {}


def test_classification_page_has_every_figure_and_nothing_external(tmp_path: Path) -> None:
    from framework.report_html import expected_figures, render, write_html_report

    report, curves = iris_classification()
    report.update(run=synthetic_run(), curves=curves)
    assert report["task"] == "classification"
    assert set(curves["confusion"]) == set(curves["roc"]) == {"tree", "logistic", "ensemble"}
    assert sum(map(sum, curves["confusion"]["ensemble"]["matrix"])) == 150
    assert expected_figures(report) == [*RUN_FIGURES, "disagreement", "confusion", "roc"]
    page = render(report, "iris <run>")
    assert_self_contained(page)
    assert re.findall(r'data-figure="(\w+)"', page) == expected_figures(report)
    assert "iris &lt;run&gt;" in page and "<td>ensemble</td>" in page
    written = write_html_report(report, tmp_path / "report.html", "iris")
    assert written.read_text() == render(report, "iris")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary left behind


def test_a_page_without_evaluation_or_attempts_says_so() -> None:
    from framework.report_html import expected_figures, render

    report = {"run": run_data([], RoundRecorder(), 0.0, 1.0, "no journal")}
    assert expected_figures(report) == []
    page = render(report)
    assert "no journal" in page and "No evaluation" in page and "<img" not in page


def test_a_hard_vote_has_confusion_matrices_but_no_roc_curves() -> None:
    """Members that predict labels only give no scores: confusion matrices, no ROC figure."""
    from framework.report_html import expected_figures

    y = np.array([0, 1, 1, 0, 1, 0])
    members = [MemberSpec("one", "classifier", "predict", classes=(0, 1)),
               MemberSpec("two", "classifier", "predict", classes=(0, 1))]
    outputs = {"one": np.array([0, 1, 0, 0, 1, 1]), "two": np.array([0, 1, 1, 0, 1, 1])}
    combiner = make_combiner("hard_vote", members)
    curves = classifier_curves("classification", y, outputs, combiner.combine(outputs), members, combiner.classes)
    assert curves is not None and curves["positive"] == "1" and curves["roc"] == {}
    assert curves["confusion"]["one"] == {"labels": ["0", "1"], "matrix": [[2, 1], [1, 2]]}
    assert curves["confusion"]["two"]["matrix"] == [[2, 1], [0, 3]]
    assert expected_figures({"curves": curves}) == ["confusion"]
    assert classifier_curves("regression", y, outputs, combiner.combine(outputs), members, None) is None


def test_attempts_from_the_journal_mark_retries_and_backups() -> None:
    def record(task_id: str, agent: str, state: str, start: float, end: float) -> AttemptRecord:
        return AttemptRecord(task_id, task_id.rsplit(".", 1)[0], agent, state, "", "", "", start, end)

    items = {
        "m.s0": ItemRecord("m.s0", "m", 0, "predict", None, ItemState.FINISHED, "",
                           (record("m.s0.a1", "id-1", "TASK_FAILED", 1.0, 2.0),
                            record("m.s0.a2", "id-2", "TASK_FINISHED", 3.0, 4.0))),
        "m.s1": ItemRecord("m.s1", "m", 1, "predict", None, ItemState.FINISHED, "",
                           (record("m.s1.a1", "id-1", "TASK_KILLED", 1.0, 9.0),
                            record("m.s1.a2", "id-2", "TASK_FINISHED", 5.0, 6.0))),
        "m.s2": ItemRecord("m.s2", "m", 2, "predict", None, ItemState.RUNNING, "",
                           (record("m.s2.a1", "id-3", "TASK_RUNNING", 1.5, 1.6),)),
    }
    rows = attempts_from_journal(items, {"m.s1.a2"}, {"m": (0.5, 64.0)}, {"id-1": "agent-1", "id-2": "agent-2"},
                                 {"m.s0.a2": 0.25})
    assert {r["task_id"]: r["compute"] for r in rows if r["compute"] is not None} == {"m.s0.a2": 0.25}
    flags = {r["task_id"]: (r["agent"], r["retry"], r["backup"], r["end"]) for r in rows}
    assert flags == {"m.s0.a1": ("agent-1", False, False, 2.0), "m.s0.a2": ("agent-2", True, False, 4.0),
                     "m.s1.a1": ("agent-1", False, False, 9.0), "m.s1.a2": ("agent-2", False, True, 6.0),
                     "m.s2.a1": ("id-3", False, False, None)}
    assert [r["start"] for r in rows] == sorted(r["start"] for r in rows)
    assert {(r["cpus"], r["mem"]) for r in rows} == {(0.5, 64.0)}


def test_round_recorder_keeps_cost_bound_backups_and_capacity() -> None:
    agent = Agent("id-1", "agent-1", ("o1",), Resources(cpus=3.0, mem=2048.0), {})
    plan = Plan({"id-1": ("t1", "t2")}, {}, {}, {}, cost=2.0, lower_bound=1.5, proven_optimal=False)
    decision = RoundDecision(launches=(AgentLaunch(agent, ("o1",), (TaskLaunch("i1", "t1", "m", "shared"),
                                                                     TaskLaunch("i2", "t2", "m", "shared", True)),
                                                   ()),), plan=plan)
    recorder = RoundRecorder(inner=lambda snapshot, offers, now: decision, clock=lambda: 42.0)
    assert recorder(None, [], 0.0) is decision  # type: ignore[arg-type]
    recorder(None, [], 0.0)  # type: ignore[arg-type]
    recorder.record(RoundDecision())  # an idle round: nothing packed, nothing kept
    assert recorder.rounds == [{"time": 42.0, "cost": 2.0, "lower_bound": 1.5, "gap": 0.25, "proven_optimal": False,
                                "tasks": 2, "backups": 1}] * 2
    assert recorder.backups == {"t2"} and recorder.agents == {"id-1": {"hostname": "agent-1", "cpus": 3.0,
                                                                       "mem": 2048.0}}


def test_html_report_field(tmp_path: Path) -> None:
    """``report`` ending in .html asks for the page, its JSON beside it; where the JSON would go
    is checked before anything runs; any other name is the JSON report as before."""
    from framework.errors import JobSpecError
    from framework.jobspec import is_html_report, json_beside

    job = train_demo(tmp_path / "demo")
    assert not is_html_report(load_job(job).report)  # type: ignore[arg-type]
    job.write_text(job.read_text().replace('report = "report.json"', 'report = "out/Report.HTML"'))
    (tmp_path / "demo" / "out").mkdir()
    report = load_job(job).report
    assert report is not None and is_html_report(report) and json_beside(report) == tmp_path / "demo/out/Report.json"
    (tmp_path / "demo" / "out" / "Report.json").mkdir()
    with pytest.raises(JobSpecError, match=r"job\.report is an HTML page, whose JSON goes beside it to \S+/out/"
                                           r"Report\.json, which is a directory"):
        load_job(job)


def test_runs_without_an_html_report_never_import_matplotlib() -> None:
    code = ("import sys, framework.cli, framework.job, framework.scheduler, framework.report_data\n"
            "assert 'matplotlib' not in sys.modules, sorted(m for m in sys.modules if 'matplotlib' in m)[:3]\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})


# Real runs on the embedded cluster, opened in Chromium ----------------------------------------

def write_regression_job(directory: Path) -> Path:
    """Two regressors (LinearRegression, Ridge) on scikit-learn's diabetes data, averaged."""
    directory.mkdir(parents=True)
    x, y = load_diabetes(return_X_y=True)
    x_train, y_train, x_test, y_test = x[:300], y[:300], x[300:], y[300:]
    sections = []
    for name, model in (("linear", LinearRegression()), ("ridge", Ridge(alpha=0.5))):
        joblib.dump(model.fit(x_train, y_train), directory / f"{name}.joblib")
        digest = hashlib.sha256((directory / f"{name}.joblib").read_bytes()).hexdigest()
        sections.append(f'[[models]]\nname = "{name}"\npath = "{name}.joblib"\nsha256 = "{digest}"\n'
                        f'kind = "regressor"\noutput = "predict"\ncpus = 0.5\nmem = 128\n')
    with (directory / "test.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*(f"f{i}" for i in range(x.shape[1])), "target"])
        writer.writerows([*map(repr, map(float, row)), repr(float(label))] for row, label in zip(x_test, y_test))
    job = directory / "job.toml"
    job.write_text('[job]\nname = "diabetes"\nintegration = "mean"\noutput = "predictions.csv"\n'
                   'report = "report.html"\n\n[data]\npath = "test.csv"\nlabel = "target"\nrows_per_shard = 50\n\n'
                   + "\n".join(sections) + '\n[framework]\nmaster = "local"\n')
    return job


def run_with_html_report(job: Path, tmp_path: Path) -> dict[str, Any]:
    spec = load_job(job)
    if spec.report is not None and spec.report.suffix == ".json":
        spec = dataclasses.replace(spec, report=spec.report.with_suffix(".html"))
    JobRunner(spec, work_dir=tmp_path / "work", state_dir=tmp_path / "state").run()
    assert spec.report is not None and spec.report.is_file()
    report = json.loads((job.parent / "report.json").read_text())
    assert report["run"]["attempts"] and report["run"]["rounds"]
    assert all(a["end"] is not None and a["end"] >= a["start"] for a in report["run"]["attempts"])
    assert sum(r["tasks"] for r in report["run"]["rounds"]) == len(report["run"]["attempts"])
    measured = {a["item"] for a in report["run"]["attempts"] if a["state"] == "TASK_FINISHED" and a["compute"]}
    assert measured == {a["item"] for a in report["run"]["attempts"]}  # every item's winner was measured
    assert all(r["cost"] >= r["lower_bound"] - 1e-9 for r in report["run"]["rounds"])
    return report


@pytest.mark.timeout(240)
def test_founding_example_report_renders_every_figure_in_chromium(tmp_path: Path) -> None:
    job = train_demo(tmp_path / "demo")
    report = run_with_html_report(job, tmp_path)
    assert report["task"] == "score" and {a["model"] for a in report["run"]["attempts"]} == {"linear", "logistic"}
    assert set(report["curves"]["roc"]) == {"linear", "logistic", "ensemble"}
    page = (job.parent / "report.html").read_text()
    assert_self_contained(page)
    rendered, total, expected = rendered_figures(open_in_chromium(job.parent / "report.html", tmp_path / "profile"))
    assert expected == [*RUN_FIGURES, "disagreement", "confusion", "roc"]
    assert rendered == expected and total == len(expected)


@pytest.mark.timeout(240)
def test_regression_report_has_no_classifier_figures_and_renders_in_chromium(tmp_path: Path) -> None:
    job = write_regression_job(tmp_path / "diabetes")
    report = run_with_html_report(job, tmp_path)
    assert report["task"] == "regression" and report.get("curves") is None
    rendered, total, expected = rendered_figures(open_in_chromium(job.parent / "report.html", tmp_path / "profile"))
    assert expected == [*RUN_FIGURES, "disagreement"]
    assert rendered == expected and total == len(expected)
