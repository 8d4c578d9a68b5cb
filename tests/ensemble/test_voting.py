"""Voting and averaging combiners equal VotingClassifier / VotingRegressor, streamed shard by shard."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
from sklearn.ensemble import VotingClassifier, VotingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import LabelEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
from sklearn.utils import Bunch

from ensemble_helpers import Aligned, Column, Permuted, labelled, spec_for, stream
from framework.ensemble import as_matrix, make_combiner


def classifiers() -> list[tuple[str, object]]:
    return [
        ("lr", make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))),
        ("tree", DecisionTreeClassifier(max_depth=3, random_state=0)),
        ("nb", GaussianNB()),
        ("knn", KNeighborsClassifier(n_neighbors=7)),
    ]


DATASETS = {"breast_cancer": load_breast_cancer, "iris": load_iris, "wine": load_wine}


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("weights", [None, [2.0, 0.5, 1.0, 3.0]])
def test_soft_vote_equals_voting_classifier(tmp_path, dataset, weights):
    X, y = labelled(DATASETS[dataset])
    vc = VotingClassifier(classifiers(), voting="soft", weights=weights).fit(X, y)
    members = {n: clone(e).fit(X, y) for n, e in classifiers()}
    ws = weights or [1.0] * 4
    specs = [spec_for(n, est, "predict_proba", w) for (n, est), w in zip(members.items(), ws)]
    outputs = {n: est.predict_proba(X) for n, est in members.items()}
    combiner = make_combiner("soft_vote", specs)
    integ, result = stream(combiner, specs, outputs, tmp_path / "out.npy", seed=len(dataset))
    out = np.load(result.output_path)
    assert np.array_equal(as_matrix(out), vc.predict_proba(X))
    assert np.array_equal(out["prediction"], vc.predict(X))
    assert result.rows == len(y) and result.members_used == tuple(members)


def test_soft_vote_aligns_permuted_and_missing_classes(tmp_path):
    X, y = labelled(load_wine)
    full = DecisionTreeClassifier(max_depth=4, random_state=0).fit(X, y)
    nb = GaussianNB().fit(X, y)
    permuted = Permuted(nb, [2, 0, 1])
    keep = y != "class_2"
    partial = make_pipeline(StandardScaler(), LogisticRegression()).fit(X[keep], y[keep])
    members = {"tree": full, "perm": permuted, "partial": partial}
    weights = [1.0, 2.0, 1.5]
    specs = [spec_for(n, e, "predict_proba", w) for (n, e), w in zip(members.items(), weights)]
    assert specs[1].classes == ("class_2", "class_0", "class_1")
    assert specs[2].classes == ("class_0", "class_1")
    outputs = {n: e.predict_proba(X) for n, e in members.items()}
    _, result = stream(make_combiner("soft_vote", specs), specs, outputs, tmp_path / "o.npy", seed=3)
    out = np.load(result.output_path)

    classes = np.unique(y)
    vc = VotingClassifier([(n, e) for n, e in members.items()], voting="soft", weights=weights)
    vc.estimators_ = [Aligned(full, classes), Aligned(nb, classes), Aligned(partial, classes)]
    vc.le_ = LabelEncoder().fit(y)
    vc.classes_ = vc.le_.classes_
    vc.named_estimators_ = Bunch(**members)
    assert np.array_equal(as_matrix(out), vc.predict_proba(X))
    assert np.array_equal(out["prediction"], vc.predict(X))
    assert out.dtype.names == ("prediction", "proba_class_0", "proba_class_1", "proba_class_2")


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize("weights", [None, [1.0, 1.0, 2.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
def test_hard_vote_equals_voting_classifier(tmp_path, dataset, weights):
    X, y = labelled(DATASETS[dataset])
    vc = VotingClassifier(classifiers(), voting="hard", weights=weights).fit(X, y)
    members = {n: clone(e).fit(X, y) for n, e in classifiers()}
    ws = weights or [1.0] * 4
    specs = [spec_for(n, est, "predict", w) for (n, est), w in zip(members.items(), ws)]
    outputs = {n: est.predict(X) for n, est in members.items()}
    _, result = stream(make_combiner("hard_vote", specs), specs, outputs, tmp_path / "out.npy", seed=7)
    assert np.array_equal(np.load(result.output_path)["prediction"], vc.predict(X))


def test_hard_vote_ties_go_to_lowest_encoded_class(tmp_path):
    X, y = labelled(load_iris)
    pair = [("tree", DecisionTreeClassifier(max_depth=1, random_state=0)), ("nb", GaussianNB())]
    vc = VotingClassifier(pair, voting="hard").fit(X, y)
    members = {n: clone(e).fit(X, y) for n, e in pair}
    preds = {n: e.predict(X) for n, e in members.items()}
    differ = preds["tree"] != preds["nb"]
    assert differ.sum() > 5  # real ties: one vote each
    specs = [spec_for(n, e, "predict") for n, e in members.items()]
    out = make_combiner("hard_vote", specs).combine(preds)
    assert np.array_equal(out["prediction"], vc.predict(X))
    smaller = np.where(preds["tree"] < preds["nb"], preds["tree"], preds["nb"])
    assert np.array_equal(out["prediction"][differ], smaller[differ])


def regressors() -> list[tuple[str, object]]:
    return [("ols", LinearRegression()), ("ridge", Ridge(alpha=3.0)),
            ("tree", DecisionTreeRegressor(max_depth=4, random_state=0))]


@pytest.mark.parametrize("method,weights", [("mean", None), ("weighted_mean", [0.2, 1.7, 3.0]),
                                            ("weighted_mean", None)])
def test_mean_equals_voting_regressor(tmp_path, method, weights):
    X, y = load_diabetes(return_X_y=True)
    vr = VotingRegressor(regressors(), weights=weights).fit(X, y)
    members = {n: clone(e).fit(X, y) for n, e in regressors()}
    ws = weights or [1.0] * 3
    specs = [spec_for(n, e, "predict", w) for (n, e), w in zip(members.items(), ws)]
    outputs = {n: e.predict(X) for n, e in members.items()}
    _, result = stream(make_combiner(method, specs), specs, outputs, tmp_path / "out.npy", seed=11)
    assert np.array_equal(np.load(result.output_path)["prediction"], vr.predict(X))


def test_mean_ignores_weights_but_weighted_mean_uses_them():
    X, y = load_diabetes(return_X_y=True)
    members = {n: clone(e).fit(X, y) for n, e in regressors()}
    specs = [spec_for(n, e, "predict", w) for (n, e), w in zip(members.items(), [5.0, 1.0, 1.0])]
    outputs = {n: e.predict(X) for n, e in members.items()}
    plain = make_combiner("mean", specs).combine(outputs)["prediction"]
    weighted = make_combiner("weighted_mean", specs).combine(outputs)["prediction"]
    assert np.array_equal(plain, VotingRegressor(regressors()).fit(X, y).predict(X))
    assert not np.allclose(plain, weighted)


def test_founding_example_regressor_averaged_with_classifier_probability(tmp_path):
    X, y = load_breast_cancer(return_X_y=True)
    ols = LinearRegression().fit(X, y)
    logit = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    specs = [spec_for("ols", ols, "predict", 1.0), spec_for("logit", logit, "predict_proba", 3.0, proba_class=1)]
    outputs = {"ols": ols.predict(X), "logit": logit.predict_proba(X)}
    _, result = stream(make_combiner("weighted_mean", specs), specs, outputs, tmp_path / "out.npy", seed=5)
    vr = VotingRegressor([("ols", ols), ("logit", ols)], weights=[1.0, 3.0])
    vr.estimators_ = [ols, Column(logit, 1)]
    assert np.array_equal(np.load(result.output_path)["prediction"], vr.predict(X))


def test_median(tmp_path):
    X, y = load_diabetes(return_X_y=True)
    members = {n: clone(e).fit(X, y) for n, e in regressors()}
    specs = [spec_for(n, e, "predict") for n, e in members.items()]
    outputs = {n: e.predict(X) for n, e in members.items()}
    _, result = stream(make_combiner("median", specs), specs, outputs, tmp_path / "m.npy", seed=2)
    expected = np.median(np.column_stack(list(outputs.values())), axis=1)
    assert np.array_equal(np.load(result.output_path)["prediction"], expected)
    with pytest.raises(ValueError, match="median"):
        make_combiner("median", [spec_for("a", members["ols"], "predict", 2.0)])


def test_make_combiner_rejects_bad_values():
    X, y = load_diabetes(return_X_y=True)
    spec = spec_for("ols", LinearRegression().fit(X, y), "predict")
    with pytest.raises(ValueError, match="'vote'"):
        make_combiner("vote", [spec])
    with pytest.raises(ValueError, match="alpha"):
        make_combiner("mean", [spec], alpha=1)
    with pytest.raises(ValueError, match="model"):
        make_combiner("stacking", [spec])
    with pytest.raises(ValueError, match="ols"):
        make_combiner("soft_vote", [spec])
