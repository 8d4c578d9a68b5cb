"""What `mesos-ensemble run` writes, through the real CLI subprocess on the embedded cluster:
progress on stderr (plain lines when it is not a terminal, nothing with -q), the summary on
stdout, or (--json, before or after the subcommand) one JSON document and nothing else there."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from harness import run_cli
from framework.demo import train_demo

pytestmark = pytest.mark.timeout(240)


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_demo(tmp_path_factory.mktemp("run-output"))


def test_json_before_the_subcommand_prints_one_document_and_progress_goes_to_stderr(demo: Path) -> None:
    result = cli("--json", "run", demo)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert summary["rows"] == 171 and summary["tasks"] == 8 and summary["members_used"] == ["linear", "logistic"]
    assert summary["output"] == str(demo.parent / "predictions.csv") and summary["cost"] >= 1.0
    assert summary["report"]["ensemble"] and set(summary["usage"]) == {"linear", "logistic"}
    lines = result.stderr.splitlines()
    # stderr is a pipe: plain lines, no terminal control codes, no line per task.
    assert "\x1b[" not in result.stderr
    assert not [line for line in lines if line.startswith(("done ", "  done "))], lines
    progress = [line for line in lines if line.startswith("progress: ")]
    assert progress and progress[-1].startswith("progress: 8/8 shards (100%), 342/342 rows"), lines
    assert re.search(r"live status: http://127\.0\.0\.1:\d+/", result.stderr), lines
    assert "linear 4/4, logistic 4/4" in progress[-1]


def test_quiet_json_after_the_subcommand_writes_nothing_on_stderr(demo: Path) -> None:
    result = cli("run", demo, "--fresh", "-q", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout)["rows"] == 171


def test_json_refused_where_a_command_has_no_json_output(demo: Path) -> None:
    result = cli("--json", "validate", demo)
    assert result.returncode == 2
    assert result.stderr.strip() == ("mesos-ensemble: error: --json applies to run, status, plan, inspect, "
                                     "serve, not validate")
