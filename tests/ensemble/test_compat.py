"""Compatibility checks before launch and the pickled scikit-learn version."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
import sklearn
import sklearn.base
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from ensemble_helpers import spec_for
from executor.modelfile import load_model
from framework.ensemble import EnsembleCompatibilityError, check_compatibility
from framework.inspection import inspect_model

V = sklearn.__version__


@pytest.fixture(scope="module")
def iris():
    data = load_iris()
    return data.data, data.target, list(data.feature_names)


def named(est, cols):
    """What fitting on a DataFrame records (pandas is not installed here)."""
    est.feature_names_in_ = np.asarray(cols, dtype=object)
    return est


def problems(*args, **kwargs) -> list[str]:
    with pytest.raises(EnsembleCompatibilityError) as info:
        check_compatibility(*args, **kwargs)
    return info.value.problems


def test_compatible_ensemble_passes(iris):
    X, y, cols = iris
    ests = {"tree": DecisionTreeClassifier(random_state=0).fit(X, y), "lr": LogisticRegression(max_iter=1000).fit(X, y)}
    specs = [spec_for(n, e, "predict_proba") for n, e in ests.items()]
    check_compatibility(ests, specs, cols, "soft_vote", V)


def test_feature_count_and_names(iris):
    X, y, cols = iris
    named_ = named(DecisionTreeClassifier().fit(X, y), cols)
    unnamed = LogisticRegression(max_iter=1000).fit(X[:, :3], y)
    ests = {"named": named_, "unnamed": unnamed}
    specs = [spec_for(n, e, "predict") for n, e in ests.items()]
    found = problems(ests, specs, cols[::-1], "hard_vote", V)
    assert any("named" in p and "different order" in p for p in found)
    assert any("unnamed: expects 3 features" in p and "4 columns" in p for p in found)
    found = problems(ests, specs, cols[:3] + ["bogus"], "hard_vote", V)
    assert any("missing columns ['petal width (cm)']" in p and "unexpected columns ['bogus']" in p for p in found)


def test_requested_output_must_exist(iris):
    X, y, cols = iris
    ests = {"svc": SVC().fit(X, y), "ols": LinearRegression().fit(X, y)}
    specs = [spec_for("svc", ests["svc"], "predict_proba"), spec_for("ols", ests["ols"], "predict_proba")]
    found = problems(ests, specs, cols, "soft_vote", V)
    assert any("svc: SVC offers no predict_proba" in p for p in found)
    assert any("ols: LinearRegression offers no predict_proba" in p for p in found)
    assert any("ols: soft_vote needs classifiers" in p for p in found)


def test_class_mismatch_for_voting(iris):
    X, y, cols = iris
    a = DecisionTreeClassifier(random_state=0).fit(X, y)
    b = DecisionTreeClassifier(random_state=0).fit(X[y < 2], y[y < 2])
    c = DecisionTreeClassifier(random_state=0).fit(X, np.array(["s", "v", "g"])[y])
    found = problems({"a": a, "b": b}, [spec_for("a", a, "predict"), spec_for("b", b, "predict")], cols,
                     "hard_vote", V)
    assert found == ["hard_vote: members predict different class sets: a: [0, 1, 2]; b: [0, 1]"]
    # soft vote aligns a subset by label ...
    check_compatibility({"a": a, "b": b}, [spec_for("a", a, "predict_proba"), spec_for("b", b, "predict_proba")],
                        cols, "soft_vote", V)
    # ... but not labels of another type
    found = problems({"a": a, "c": c}, [spec_for("a", a, "predict_proba"), spec_for("c", c, "predict_proba")],
                     cols, "soft_vote", V)
    assert found == ["soft_vote: members' labels are of different types: a: numeric, c: string"]


def test_mean_of_probabilities_needs_a_valid_proba_class(iris):
    X, y, cols = iris
    lr = LogisticRegression(max_iter=1000).fit(X, y)
    found = problems({"lr": lr}, [spec_for("lr", lr, "predict_proba")], cols, "mean", V)
    assert found == ["model lr: mean of predict_proba needs proba_class (which class's column)"]
    found = problems({"lr": lr}, [spec_for("lr", lr, "predict_proba", proba_class=7)], cols, "mean", V)
    assert "proba_class 7 is not among its classes" in found[0]
    check_compatibility({"lr": lr}, [spec_for("lr", lr, "predict_proba", proba_class="2")], cols, "mean", V)


def test_sklearn_version_recorded_in_pickle(tmp_path, iris, monkeypatch):
    X, y, cols = iris
    tree = DecisionTreeClassifier(random_state=0).fit(X, y)
    with monkeypatch.context() as m:
        m.setattr(sklearn.base, "__version__", "1.2.0")
        joblib.dump(tree, tmp_path / "old.joblib")
    joblib.dump(tree, tmp_path / "current.joblib")
    old, old_version = load_model(tmp_path / "old.joblib")
    current, current_version = load_model(tmp_path / "current.joblib")
    assert (old_version, current_version) == ("1.2.0", V)
    assert np.array_equal(old.predict(X), tree.predict(X))
    # The framework checks the models' metadata, learned in an inspection subprocess.
    ests = {"old": inspect_model(tmp_path / "old.joblib"), "current": inspect_model(tmp_path / "current.joblib")}
    specs = [spec_for(n, e, "predict") for n, e in ests.items()]
    found = problems(ests, specs, cols, "hard_vote", V)
    assert found == [f"model old: pickled with scikit-learn 1.2.0 but the executors run {V}"]
    found = problems(ests, specs, cols, "hard_vote", "1.8.0",
                     recorded_versions={"old": old_version, "current": current_version})
    assert len(found) == 2 and all("executors run 1.8.0" in p for p in found)


def test_all_problems_reported_at_once(iris):
    X, y, cols = iris
    svc = SVC().fit(X, y)
    ols = named(LinearRegression().fit(X, y), cols)
    specs = [spec_for("svc", svc, "predict_proba"), spec_for("ols", ols, "predict")]
    with pytest.raises(EnsembleCompatibilityError) as info:
        check_compatibility({"svc": svc, "ols": ols}, specs, cols[:2], "soft_vote", "0.0")
    message = str(info.value)
    assert len(info.value.problems) >= 6
    for fragment in ("svc: expects 4 features", "svc: SVC offers no predict_proba", "ols: soft_vote needs classifiers",
                     "ols: feature names differ", "executors run 0.0"):
        assert fragment in message
