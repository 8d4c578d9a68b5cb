"""Every file the ensemble writes replaces its target atomically and gets the mode of a new file."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

from ensemble_helpers import spec_for, stream
from framework.ensemble import (evaluate_integration, fit_stacking_locally, load_stacking, make_combiner,
                                save_stacking, write_report_json)


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def stale(path: Path) -> Path:
    """An earlier file at ``path`` that only its owner may read (as mkstemp used to leave outputs)."""
    path.write_bytes(b"earlier")
    os.chmod(path, 0o600)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_outputs_report_and_model_get_new_file_mode(tmp_path: Path, umask_022: None, suffix: str) -> None:
    X, y = load_iris(return_X_y=True)
    members = {"lr": LogisticRegression(max_iter=1000).fit(X, y), "nb": GaussianNB().fit(X, y)}
    specs = [spec_for(n, e, "predict_proba") for n, e in members.items()]
    outputs = {n: e.predict_proba(X) for n, e in members.items()}
    target = stale(tmp_path / f"out{suffix}")
    integ, result = stream(make_combiner("soft_vote", specs), specs, outputs, target,
                           keep_member_outputs_dir=tmp_path / "kept")
    assert result.output_path == target and mode(target) == 0o644
    report = stale(tmp_path / "report.json")
    write_report_json(evaluate_integration(integ, y), report)
    assert mode(report) == 0o644 and report.read_text().startswith("{")
    model, _ = fit_stacking_locally(members, X, y, "classifier", cv=3)
    saved = stale(tmp_path / "stacking.joblib")
    save_stacking(model, saved)
    assert mode(saved) == 0o644 and load_stacking(saved).members == ("lr", "nb")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not [p for p in (tmp_path / "kept").iterdir() if p.name.startswith(".")]


def test_failed_writes_leave_the_earlier_file(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text("earlier")
    with pytest.raises(TypeError):
        write_report_json({"rows": object()}, report)
    assert report.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
