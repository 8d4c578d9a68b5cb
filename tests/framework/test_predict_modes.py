"""Where an earlier run's executor measured a model's predictions parallel on threads is kept
(by the model file's sha256 and method), and later runs' tasks carry it, so that their executors
skip the probe; a ``process`` verdict is never kept."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import pytest

import harness
from executor.protocol import BundlePayload, TaskPayload, decode_task
from framework import predict_modes
from framework.demo import train_demo
from framework.inspection import CACHE_ENV
from framework.job import JobRunner
from framework.jobspec import load_job
from harness import InProcessMesos


def test_only_a_thread_verdict_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert predict_modes.recall("a" * 64, "predict_proba") is None
    assert not predict_modes.remember("a" * 64, "predict_proba", "process")
    assert predict_modes.recall("a" * 64, "predict_proba") is None
    assert predict_modes.remember("a" * 64, "predict_proba", "thread")
    assert predict_modes.recall("a" * 64, "predict_proba") == "thread"
    assert predict_modes.recall("a" * 64, "predict") is None  # another method: measured apart
    assert predict_modes.recall("b" * 64, "predict_proba") is None
    for entry in predict_modes.cache_dir().iterdir():
        entry.write_text("{not json")
    assert predict_modes.recall("a" * 64, "predict_proba") is None  # unreadable: probed again


def launched_payloads(driver: Any) -> list[TaskPayload]:
    payloads: list[TaskPayload] = []
    for _offers, tasks, _filters in driver.launches:
        for task in tasks:
            decoded = decode_task(base64.b64decode(task["data"]))
            payloads.extend(decoded.items if isinstance(decoded, BundlePayload) else [decoded])
    return payloads


def test_a_later_run_tells_its_executors_what_an_earlier_one_measured(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    demo = train_demo(tmp_path / "demo")
    real = harness.compute_measured
    measured = {"linear": "thread", "logistic": "process"}  # what the executors' probes "found"

    def computed(payload: TaskPayload, *args: Any) -> Any:
        output, usage = real(payload, *args)
        return output, dataclasses.replace(usage, measured_mode=measured.get(payload.model_name))

    monkeypatch.setattr(harness, "compute_measured", computed)
    modes, firsts = [], []
    for run in range(2):
        factory = InProcessMesos.factory([{"agent": "a1", "cpus": 2, "mem": 2048}], tmp_path / f"sandboxes{run}")
        spec = load_job(demo)
        assert set(measured) <= {m.name for m in spec.models}
        JobRunner(spec, start_local_cluster=False, driver_factory=factory).run()
        payloads = launched_payloads(factory.last)  # type: ignore[attr-defined]
        modes.append({name: {p.predict_mode for p in payloads if p.model_name == name} for name in measured})
        firsts.append({name: next(p.predict_mode for p in payloads if p.model_name == name) for name in measured})
    # Nothing measured before the first run (its later tasks may carry what its first results said).
    assert firsts[0] == {"linear": None, "logistic": None} and modes[0]["logistic"] == {None}
    assert modes[1] == {"linear": {"thread"}, "logistic": {None}}  # threads kept; processes probed again
