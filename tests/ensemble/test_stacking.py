"""Stacking from the pure pieces equals StackingClassifier / StackingRegressor fit in-process."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
from sklearn.ensemble import StackingClassifier, StackingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from ensemble_helpers import labelled, spec_for, stream
from framework.ensemble import (FEATURES_KEY, as_matrix, assemble_out_of_fold, cv_fit_predict, fit_stacking_locally,
                                make_combiner, plan_folds, save_stacking)


def base_classifiers(with_svc: bool = False) -> dict[str, object]:
    members = {"tree": DecisionTreeClassifier(max_depth=3, random_state=0), "nb": GaussianNB()}
    if with_svc:  # no predict_proba: "auto" falls back to decision_function
        members["svc"] = make_pipeline(StandardScaler(), LinearSVC(random_state=0))
    return members


def deployed_outputs(model, fitted, X):
    return {name: getattr(fitted[name], meth)(X) for name, meth in zip(model.members, model.stack_methods)}


def assert_streamed_close(streamed, expected):
    """Shard-wise final-estimator predictions: BLAS matrix-vector products are not row-count
    invariant, so rows predicted in a different batch may differ in the last bits."""
    np.testing.assert_allclose(streamed, expected, rtol=1e-12, atol=1e-14)


CLASSIFICATION = {"breast_cancer": load_breast_cancer, "iris": load_iris, "wine": load_wine}


@pytest.mark.parametrize("dataset", sorted(CLASSIFICATION))
@pytest.mark.parametrize("stack_method,passthrough", [("auto", False), ("predict", False), ("auto", True)])
def test_stacking_classifier_equal(tmp_path, dataset, stack_method, passthrough):
    X, y = labelled(CLASSIFICATION[dataset])
    estimators = base_classifiers(with_svc=stack_method == "auto" and not passthrough)
    final = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    reference = StackingClassifier(list(estimators.items()), final_estimator=final, stack_method=stack_method,
                                   passthrough=passthrough).fit(X, y)
    model, fitted = fit_stacking_locally(estimators, X, y, "classifier", stack_method=stack_method,
                                         passthrough=passthrough, final_estimator=final)
    assert list(model.stack_methods) == reference.stack_method_
    specs = [spec_for(n, fitted[n], meth) for n, meth in zip(model.members, model.stack_methods)]
    path = save_stacking(model, tmp_path / "stack.joblib")
    combiner = make_combiner("stacking", specs, model_path=path)
    extra = {FEATURES_KEY: X} if passthrough else {}
    outputs = deployed_outputs(model, fitted, X)
    whole = combiner.combine({**outputs, **extra})  # one batch, as the reference predicts: bit for bit
    assert np.array_equal(whole["prediction"], reference.predict(X))
    assert np.array_equal(as_matrix(whole), reference.predict_proba(X))
    _, result = stream(combiner, specs, outputs, tmp_path / "out.npy", seed=1, extra=extra)
    out = np.load(result.output_path)
    assert_streamed_close(as_matrix(out), reference.predict_proba(X))
    assert np.array_equal(out["prediction"], reference.predict(X))


@pytest.mark.parametrize("passthrough", [False, True])
def test_stacking_regressor_equal(tmp_path, passthrough):
    X, y = load_diabetes(return_X_y=True)
    estimators = {"ols": LinearRegression(), "tree": DecisionTreeRegressor(max_depth=3, random_state=0),
                  "ridge": Ridge(alpha=2.0)}
    reference = StackingRegressor(list(estimators.items()), passthrough=passthrough).fit(X, y)
    model, fitted = fit_stacking_locally(estimators, X, y, "regressor", passthrough=passthrough)
    specs = [spec_for(n, fitted[n], "predict") for n in model.members]
    combiner = make_combiner("stacking", specs, model=model)
    extra = {FEATURES_KEY: X} if passthrough else {}
    outputs = deployed_outputs(model, fitted, X)
    assert np.array_equal(combiner.combine({**outputs, **extra})["prediction"], reference.predict(X))
    _, result = stream(combiner, specs, outputs, tmp_path / "out.npy", seed=4, extra=extra)
    assert_streamed_close(np.load(result.output_path)["prediction"], reference.predict(X))


def test_plan_folds_and_out_of_fold_match_cross_val_predict():
    X, y = labelled(load_iris)
    plan = plan_folds(X, y, "classifier")
    assert np.array_equal(plan.classes, np.unique(y))
    assert np.array_equal(plan.classes[plan.y_fit], y)
    expected = list(StratifiedKFold(5).split(X, plan.y_fit))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(plan.folds, expected))
    est = GaussianNB()
    folds = [cv_fit_predict(est, X, plan.y_fit, tr, te, "predict_proba") for tr, te in plan.folds]
    oof = assemble_out_of_fold(folds, plan, "predict_proba")
    assert np.array_equal(oof, cross_val_predict(clone(est), X, plan.y_fit, cv=5, method="predict_proba"))
    Xr, yr = load_diabetes(return_X_y=True)
    rplan = plan_folds(Xr, yr, "regressor", cv=3)
    assert rplan.classes is None and np.array_equal(rplan.y_fit, yr)
    assert [te.tolist() for _, te in rplan.folds] == [te.tolist() for _, te in KFold(3).split(Xr)]


def test_assemble_pads_folds_missing_a_class_like_cross_val_predict():
    X, y = labelled(load_iris)
    X, y = X[:104], y[:104]  # only 4 rows of the third class: some folds lack it when cv=5 unstratified
    plan = plan_folds(X, y, "classifier", cv=KFold(5))
    results = [(cv_fit_predict(GaussianNB(), X, plan.y_fit, tr, te, "predict_proba"),
                np.unique(plan.y_fit[tr])) for tr, te in plan.folds]
    with pytest.raises(ValueError, match="fold_classes"):
        assemble_out_of_fold([p for p, _ in results], plan, "predict_proba")
    oof = assemble_out_of_fold([p for p, _ in results], plan, "predict_proba", [c for _, c in results])
    with pytest.warns(RuntimeWarning):
        expected = cross_val_predict(GaussianNB(), X, plan.y_fit, cv=KFold(5), method="predict_proba")
    assert np.array_equal(oof, expected)


def test_stacking_needs_every_member(tmp_path):
    X, y = labelled(load_breast_cancer)
    model, fitted = fit_stacking_locally(base_classifiers(), X, y, "classifier")
    specs = [spec_for(n, fitted[n], m) for n, m in zip(model.members, model.stack_methods)]
    combiner = make_combiner("stacking", specs, model=model)
    from framework.ensemble import StreamingIntegrator

    with pytest.raises(ValueError, match="needs every member"):
        StreamingIntegrator(combiner, specs, [len(y)], tmp_path / "o.npy", min_members=1)
    with pytest.raises(ValueError, match="stacked with"):
        make_combiner("stacking", [spec_for(n, fitted[n], "predict") for n in model.members], model=model)
