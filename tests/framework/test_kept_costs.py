"""What an earlier run measured each model's predictions to cost (per row) is kept, by the model
file's sha256 and method, and a later run's first offer round orders and bundles the work by it
(issue 13: each model's first task no longer goes alone as a probe of its cost)."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import pytest

import harness
from executor.protocol import BundlePayload, TaskPayload, decode_task
from framework import kept_costs
from framework.demo import train_demo
from framework.inspection import CACHE_ENV
from framework.job import JobRunner
from framework.jobspec import load_job
from harness import InProcessMesos


def test_a_cost_per_row_is_kept_by_model_file_and_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert kept_costs.recall("a" * 64, "predict_proba") is None
    assert not kept_costs.remember("a" * 64, "predict_proba", 1.0, 0)  # nothing measured
    assert kept_costs.remember("a" * 64, "predict_proba", 2.0, 1000)
    assert kept_costs.recall("a" * 64, "predict_proba") == pytest.approx(0.002)
    assert kept_costs.recall("a" * 64, "predict") is None and kept_costs.recall("b" * 64, "predict_proba") is None
    for entry in kept_costs.cache_dir().iterdir():
        entry.write_text("{not json")
    assert kept_costs.recall("a" * 64, "predict_proba") is None  # unreadable: measured again


def launched(driver: Any) -> list[list[list[TaskPayload]]]:
    """Per launch (ACCEPT) of the driver, the items of each of its Mesos tasks."""
    launches = []
    for _offers, tasks, _filters in driver.launches:
        decoded = [decode_task(base64.b64decode(task["data"])) for task in tasks]
        launches.append([list(d.items) if isinstance(d, BundlePayload) else [d] for d in decoded])
    return launches


def first_tasks(launches: list[list[list[TaskPayload]]]) -> dict[str, int]:
    """Per model, how many items its first Mesos task carried."""
    first: dict[str, int] = {}
    for launch in launches:
        for task in launch:
            first.setdefault(task[0].model_name, len(task))
    return first


def test_a_later_run_starts_longest_first_and_bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    demo = train_demo(tmp_path / "demo")
    names = [m.name for m in load_job(demo).models]
    costly = names[-1]  # listed last: a first round without kept costs probes it after the others
    real = harness.compute_measured

    def computed(payload: TaskPayload, *args: Any) -> Any:
        output, usage = real(payload, *args)
        return output, dataclasses.replace(usage, seconds=0.5 if payload.model_name == costly else 0.001)

    monkeypatch.setattr(harness, "compute_measured", computed)
    runs = []
    for run in range(2):
        factory = InProcessMesos.factory([{"agent": "a1", "cpus": 2, "mem": 2048}], tmp_path / f"sandboxes{run}")
        JobRunner(load_job(demo), start_local_cluster=False, driver_factory=factory).run()
        runs.append(launched(factory.last))  # type: ignore[attr-defined]
    # The first run probes: each model's first task is one item alone, in the job file's order.
    assert first_tasks(runs[0]) == dict.fromkeys(names, 1)
    assert runs[0][0][0][0].model_name == names[0]
    # The second starts with the costly model's work, every slot, and bundles the cheap models' items.
    assert {task[0].model_name for task in runs[1][0]} == {costly}
    assert all(first_tasks(runs[1])[name] > 1 for name in names if name != costly)
