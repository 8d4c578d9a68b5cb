"""The trust boundary on whole runs on the embedded cluster: a malicious joblib model runs no code
in the framework's process; skops members give the joblib run's output; the artifact server's
token shows in no --verbose log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import joblib
import pytest

from framework.demo import train_demo
from framework.job import JobRunner
from framework.jobspec import load_job
from trojans import marker_expression, markers, write_joblib_trojan

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]


def test_malicious_joblib_model_runs_nothing_in_the_scheduler_process(tmp_path: Path) -> None:
    demo = train_demo(tmp_path / "demo")
    linear = demo.parent / "linear.joblib"
    declared = next(m.sha256 for m in load_job(demo).models if m.name == "linear")
    write_joblib_trojan(linear, joblib.load(linear), marker_expression(tmp_path))
    from executor.protocol import file_sha256

    demo.write_text(demo.read_text().replace(declared, file_sha256(linear)))
    outcome = JobRunner(load_job(demo), work_dir=tmp_path / "work").run()
    assert outcome.rows == 171 and outcome.members_used == ("linear", "logistic")
    found = markers(tmp_path)
    # It ran in the inspection subprocess and in the executors (see the README's threat model),
    # never in this process, which was the scheduler.
    assert os.getpid() not in found and len(found) >= 2


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "framework.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=500, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_skops_members_give_the_joblib_output_and_no_token_is_logged(tmp_path: Path) -> None:
    skops_job = train_demo(tmp_path / "skops", model_format="skops")
    joblib_job = train_demo(tmp_path / "joblib")
    assert {m.format for m in load_job(skops_job).models} == {"skops"}
    verbose = run_command("-v", "run", str(skops_job))
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "wrote 171 integrated predictions" in verbose.stdout
    JobRunner(load_job(joblib_job), work_dir=tmp_path / "work").run()
    skops_output = (skops_job.parent / "predictions.csv").read_bytes()
    assert skops_output == (joblib_job.parent / "predictions.csv").read_bytes()
    # The access log is there, with the token redacted in every request line.
    requests = re.findall(r'"(?:GET|PUT) (/\S*) HTTP', verbose.stderr)
    assert any(path.startswith("/<token>/files/") for path in requests), verbose.stderr[-3000:]
    assert "/public/mesos-ensemble-executor.tar.gz" in requests
    assert all(path.startswith(("/<token>/", "/public/")) for path in requests), requests
