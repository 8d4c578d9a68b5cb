"""bench/tiny_tasks_bench.py's equal start: both timed jobs find the models inspected and nothing
else kept (its per-item figure beyond the fixed start is the two jobs' difference)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from framework import kept_costs, predict_modes
from framework.executor_package import PACKAGE_NAME
from framework.inspection import CACHE_ENV, cache_root
from framework.inspection import cache_dir as inspection_cache_dir
from framework.jobspec import load_job


def test_both_jobs_start_with_the_models_inspected_and_nothing_else_kept(
        bench_script: Callable[[str], ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = bench_script("tiny_tasks_bench")
    x = np.random.default_rng(0).normal(size=(200, 4))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    paths = bench.dump_members({"logistic": model}, tmp_path)
    np.save(tmp_path / "data.npy", x)
    spec = load_job(bench.job_file(tmp_path, "explicit", paths, tmp_path / "data.npy", 50, 2))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "user-cache"))  # restored after the test

    bench.same_start(tmp_path / "cache", spec, tmp_path)

    assert cache_root() == tmp_path / "cache"  # the user's cache is not the bench's
    assert [p.suffix for p in inspection_cache_dir().iterdir()] == [".json"]  # inspected, untimed
    assert any((cache_root() / "executor-packages").iterdir()) and (tmp_path / PACKAGE_NAME).is_file()
    kept_costs.remember(spec.models[0].sha256, "predict_proba", 0.01, 1000)
    predict_modes.remember(spec.models[0].sha256, "predict_proba", "thread")  # what the previous job left
    assert kept_costs.recall(spec.models[0].sha256, "predict_proba") is not None

    bench.forget_kept_answers()

    assert kept_costs.recall(spec.models[0].sha256, "predict_proba") is None
    assert predict_modes.recall(spec.models[0].sha256, "predict_proba") is None
    assert len(list(inspection_cache_dir().iterdir())) == 1  # the inspection stays
    assert not (tmp_path / "user-cache").exists()
