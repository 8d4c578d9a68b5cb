"""A whole job through the real Scheduler subclass and the real executor runner (in-process mock
Mesos from tests/harness.py), checked against scikit-learn computed directly on the same rows."""

from __future__ import annotations

import csv
from pathlib import Path

import joblib
import numpy as np
import pytest

from framework.demo import train_demo
from framework.errors import JobFailed
from framework.job import JobRunner
from framework.jobspec import load_job
from harness import InProcessMesos

AGENTS = [{"agent": "a1", "cpus": 2, "mem": 2048}, {"agent": "a2", "cpus": 2, "mem": 2048, "attributes": {"price": 2.0}}]


def read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open() as handle:
        rows = list(csv.reader(handle))
    return rows[0], np.array(rows[1:], dtype=float)


@pytest.fixture()
def demo(tmp_path: Path) -> Path:
    return train_demo(tmp_path / "demo")


def direct_mean(demo_dir: Path) -> np.ndarray:
    header, rows = read_csv(demo_dir / "test.csv")
    features = rows[:, :-1]
    linear = joblib.load(demo_dir / "linear.joblib").predict(features)
    logistic = joblib.load(demo_dir / "logistic.joblib").predict_proba(features)[:, 1]
    return np.mean(np.stack([linear, logistic]), axis=0)


def test_founding_example_equals_direct_sklearn(demo: Path, tmp_path: Path) -> None:
    factory = InProcessMesos.factory(AGENTS, tmp_path / "sandboxes")
    outcome = JobRunner(load_job(demo), driver_factory=factory).run()
    header, output = read_csv(outcome.output)
    expected = direct_mean(demo.parent)
    assert output.shape[0] == expected.shape[0] == 171
    np.testing.assert_allclose(output[:, 0], expected, rtol=0, atol=1e-12)
    assert outcome.members_used == ("linear", "logistic") and not outcome.members_missing
    assert outcome.tasks == 2 * 4 and outcome.report is not None
    driver = factory.last  # type: ignore[attr-defined]
    assert driver.stopped and driver.suppressed >= 1


def test_failures_are_retried_and_the_result_is_still_exact(demo: Path, tmp_path: Path) -> None:
    failed_once: set[str] = set()

    def fail_first_attempt(payload, agent):  # noqa: ANN001
        key = payload.task_id.rsplit(".a", 1)[0]
        if key not in failed_once:
            failed_once.add(key)
            return "injected failure"
        return None

    outcome = JobRunner(load_job(demo), driver_factory=InProcessMesos.factory(AGENTS, tmp_path / "sb", fail_first_attempt)).run()
    assert outcome.task_attempts == 2 * outcome.tasks
    np.testing.assert_allclose(read_csv(outcome.output)[1][:, 0], direct_mean(demo.parent), rtol=0, atol=1e-12)


def test_member_that_keeps_failing_fails_the_job_and_leaves_no_output(demo: Path, tmp_path: Path) -> None:
    previous = demo.parent / "predictions.csv"
    previous.write_text("earlier results\n")

    def logistic_always_fails(payload, agent):  # noqa: ANN001
        return "broken node" if payload.model_name == "logistic" else None

    factory = InProcessMesos.factory(AGENTS, tmp_path / "sb", logistic_always_fails)
    with pytest.raises(JobFailed, match=r"model logistic failed on logistic\.s0000\d after 4 attempts: .*broken node"):
        JobRunner(load_job(demo), driver_factory=factory).run()
    assert previous.read_text() == "earlier results\n"
