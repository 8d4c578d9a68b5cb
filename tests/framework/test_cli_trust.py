"""The command line's trust features: ``inspect``, ``train-demo --format``, no secret in argv."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import skops.io
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

from framework.cli import main
from framework.demo import train_demo


@pytest.fixture(scope="module")
def forest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = load_iris(return_X_y=True)
    path = tmp_path_factory.mktemp("models") / "forest.skops"
    skops.io.dump(RandomForestClassifier(n_estimators=2, random_state=0).fit(x, y), path)
    return path


def test_inspect_prints_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train_demo(tmp_path, model_format="skops")
    assert main(["inspect", str(tmp_path / "logistic.skops")]) == 0
    text = capsys.readouterr().out
    for line in ("logistic.skops: skops file", "estimator: sklearn.pipeline.Pipeline (classifier)", "features: 30",
                 "classes: [0, 1]", "outputs: predict, predict_proba, decision_function",
                 "untrusted types (not trusted by skops itself; allowed here): none"):
        assert line in text, text
    assert main(["inspect", "--json", str(tmp_path / "linear.skops")]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["estimator_class"] == "sklearn.linear_model._base.LinearRegression"
    assert document["estimator_type"] == "regressor" and document["n_features_in"] == 30
    assert document["methods"] == ["predict"] and document["classes"] is None


def test_inspect_lists_untrusted_types(forest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(forest)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert f"mesos-ensemble: error: {forest}: holds types that are not trusted: sklearn.tree._tree.Tree" in captured.err
    assert main(["inspect", "--json", str(forest)]) == 2
    assert list(json.loads(capsys.readouterr().out)["refused_types"]) == ["sklearn.tree._tree.Tree"]
    assert main(["inspect", str(forest), "--trusted-types", "sklearn.tree._tree.Tree"]) == 0
    assert "untrusted types (not trusted by skops itself; allowed here): sklearn.tree._tree.Tree" in \
        capsys.readouterr().out


def test_inspect_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train_demo(tmp_path)
    assert main(["inspect", str(tmp_path / "linear.joblib"), "--trusted-types", "a.B"]) == 2
    assert "--trusted-types applies only to skops files" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.skops")]) == 2
    assert "missing.skops: not a file" in capsys.readouterr().err


def test_train_demo_writes_either_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train-demo", str(tmp_path), "--format", "skops"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.skops")) == ["linear.skops", "logistic.skops"]
    assert not list(tmp_path.glob("*.joblib")) and 'path = "linear.skops"' in (tmp_path / "job.toml").read_text()


def test_local_cluster_refuses_a_secret_in_argv(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local-cluster", "--principal", "me", "--secret", "hunter2"]) == 2
    err = capsys.readouterr().err
    assert "would show the secret in the process list" in err and "hunter2" not in err
