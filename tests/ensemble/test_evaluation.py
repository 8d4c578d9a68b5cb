"""Evaluation report: metrics against scikit-learn's, disagreement, contribution, JSON and text."""

from __future__ import annotations

import json
import math

import numpy as np
from sklearn import metrics
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from ensemble_helpers import labelled, spec_for, stream
from framework.ensemble import evaluate, format_report, make_combiner, write_report_json


def test_soft_vote_report_multiclass(tmp_path):
    X, y = labelled(load_wine)
    members = {"tree": DecisionTreeClassifier(max_depth=2, random_state=0).fit(X, y), "nb": GaussianNB().fit(X, y),
               "lr": make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)}
    specs = [spec_for(n, e, "predict_proba") for n, e in members.items()]
    outputs = {n: e.predict_proba(X) for n, e in members.items()}
    combiner = make_combiner("soft_vote", specs)
    integ, result = stream(combiner, specs, outputs, tmp_path / "o.npy", keep_member_outputs_dir=tmp_path / "keep")
    report = integ.evaluate(y)
    assert report["task"] == "classification"
    nb = report["members"]["nb"]
    assert nb["accuracy"] == metrics.accuracy_score(y, members["nb"].predict(X))
    assert math.isclose(nb["roc_auc"], metrics.roc_auc_score(y, outputs["nb"], multi_class="ovr"))
    assert math.isclose(nb["log_loss"], metrics.log_loss(y, outputs["nb"]), rel_tol=1e-6)
    pairs = {(p["a"], p["b"]): p["fraction_differing"] for p in report["disagreement"]["pairs"]}
    assert pairs[("tree", "nb")] == np.mean(members["tree"].predict(X) != members["nb"].predict(X))
    without_tree = make_combiner("soft_vote", specs[1:]).combine({k: outputs[k] for k in ("nb", "lr")})
    contribution = report["contribution"]["tree"]
    assert contribution["without"] == metrics.accuracy_score(y, without_tree["prediction"])
    assert contribution["gain"] == report["ensemble"]["accuracy"] - contribution["without"]
    text = format_report(report)
    assert "ENSEMBLE" in text and "tree vs nb" in text and "roc_auc" in text
    path = write_report_json(report, tmp_path / "report.json")
    assert json.loads(path.read_text())["members"]["nb"]["accuracy"] == nb["accuracy"]


def test_regression_report():
    X, y = load_diabetes(return_X_y=True)
    members = {"ols": LinearRegression().fit(X, y), "tree": DecisionTreeRegressor(max_depth=3).fit(X, y)}
    specs = [spec_for(n, e, "predict") for n, e in members.items()]
    outputs = {n: e.predict(X) for n, e in members.items()}
    combiner = make_combiner("mean", specs)
    report = evaluate(y, outputs, combiner.combine(outputs), specs, combiner)
    assert report["task"] == "regression"
    ens = report["ensemble"]
    avg = (outputs["ols"] + outputs["tree"]) / 2
    assert math.isclose(ens["rmse"], math.sqrt(metrics.mean_squared_error(y, avg)))
    assert math.isclose(ens["r2"], metrics.r2_score(y, avg))
    pair = report["disagreement"]["pairs"][0]
    assert math.isclose(pair["mean_abs_difference"], np.mean(np.abs(outputs["ols"] - outputs["tree"])))
    assert math.isclose(pair["correlation"], np.corrcoef(outputs["ols"], outputs["tree"])[0, 1])
    c = report["contribution"]["ols"]
    assert c["higher_is_better"] is False
    assert math.isclose(c["without"], math.sqrt(metrics.mean_squared_error(y, outputs["tree"])))


def test_mixed_score_report_has_both_families():
    X, y = load_breast_cancer(return_X_y=True)
    ols = LinearRegression().fit(X, y)
    logit = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    specs = [spec_for("ols", ols, "predict"), spec_for("logit", logit, "predict_proba", proba_class=1)]
    outputs = {"ols": np.clip(ols.predict(X), 0, 1), "logit": logit.predict_proba(X)}
    combiner = make_combiner("mean", specs)
    report = evaluate(y, outputs, combiner.combine(outputs), specs, combiner)
    assert report["task"] == "score"
    assert {"rmse", "mae", "r2", "accuracy", "roc_auc", "log_loss"} <= set(report["ensemble"])
    assert math.isclose(report["members"]["logit"]["roc_auc"], metrics.roc_auc_score(y, outputs["logit"][:, 1]))
    assert report["contribution"]["ols"]["metric"] == "roc_auc"
