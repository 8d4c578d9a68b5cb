"""The registry of integration methods: one list of names, read by the job file, make_combiner,
the checks before launch and the evaluation; a method added from outside needs no other file."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import joblib
import numpy as np
import pytest
import sklearn
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier

from ensemble_helpers import spec_for, stream
from framework import ensemble
from framework.demo import train_demo
from framework.ensemble import (EnsembleCompatibilityError, Evaluation, IntegrationMethod, MemberCombiner, MemberSpec,
                                check_compatibility, evaluate_integration, fit_stacking_locally, make_combiner,
                                method, method_names, register, unregister)
from framework.ensemble.combiners import records
from framework.ensemble.methods import import_all
from framework.ensemble.outputs import member_score
from framework.errors import JobSpecError
from framework.jobspec import load_job

BUILT_IN = ("mean", "weighted_mean", "median", "hard_vote", "soft_vote", "stacking")


# A tiny extra method, declared here and nowhere else --------------------------------------------
class MaxCombiner(MemberCombiner):
    """Row-wise maximum of the values the present members contribute."""

    def __init__(self, name: str, members: Sequence[MemberSpec]) -> None:
        super().__init__(name, members)
        self.output_dtype = np.dtype([("prediction", np.float64)])

    def combine(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        values = np.asarray([member_score(m, outputs[m.name]) for m in self.present(outputs)])
        return records({"prediction": values.max(axis=0)}, self.output_dtype)


def unit_weights(name: str, members: Sequence[MemberSpec], classes: Mapping[str, Any]) -> list[str]:
    return [f"model {m.name}: {name} ignores weights, got {m.weight}" for m in members if m.weight != 1.0]


MAX = IntegrationMethod(
    name="max", factory=lambda name, members, params: MaxCombiner(name, members), evaluation=Evaluation.SCORES,
    predicts_labels=False, output_columns=("prediction",), outputs=("predict", "predict_proba"),
    checks=unit_weights, summary="row-wise maximum of the members' values")


@pytest.fixture
def max_method() -> Iterator[IntegrationMethod]:
    register(MAX)
    try:
        yield MAX
    finally:
        unregister("max")


# The built-in methods -------------------------------------------------------------------------
def test_built_in_methods_in_their_documented_order() -> None:
    assert method_names() == BUILT_IN


def test_declarations_agree_with_the_combiners_they_build() -> None:
    X, y = load_iris(return_X_y=True)
    lr, nb = LogisticRegression(max_iter=1000).fit(X, y), GaussianNB().fit(X, y)
    Xr, yr = load_diabetes(return_X_y=True)
    ols = LinearRegression().fit(Xr, yr)
    built = {
        "mean": make_combiner("mean", [spec_for("ols", ols, "predict")]),
        "weighted_mean": make_combiner("weighted_mean", [spec_for("ols", ols, "predict", 2.0)]),
        "median": make_combiner("median", [spec_for("ols", ols, "predict")]),
        "hard_vote": make_combiner("hard_vote", [spec_for("lr", lr, "predict"), spec_for("nb", nb, "predict")]),
        "soft_vote": make_combiner("soft_vote", [spec_for("lr", lr, "predict_proba"),
                                                 spec_for("nb", nb, "predict_proba")]),
    }
    for kind, (Xs, ys) in {"classifier": (X, y), "regressor": (Xr, yr)}.items():
        base = {"lr": LogisticRegression(max_iter=1000), "nb": GaussianNB()} if kind == "classifier" \
            else {"ols": LinearRegression()}
        model, fitted = fit_stacking_locally(base, Xs, ys, kind, cv=3)
        specs = [spec_for(n, fitted[n], m) for n, m in zip(model.members, model.stack_methods)]
        built[f"stacking ({kind})"] = make_combiner("stacking", specs, model=model)
    for label, combiner in built.items():
        declared = method(combiner.method)
        assert declared.columns_match(combiner.output_columns), (label, combiner.output_columns)
        assert declared.predicts_labels in (None, combiner.predicts_labels), label
        assert declared.supports_subsets == combiner.supports_subsets, label
    assert built["soft_vote"].output_columns == ["prediction", "proba_0", "proba_1", "proba_2"]
    assert built["stacking (classifier)"].predicts_labels and not built["stacking (regressor)"].predicts_labels
    assert not method("mean").columns_match(["prediction", "proba_0"])
    assert method("soft_vote").columns_match(["prediction"]) and not method("soft_vote").columns_match(["proba_0"])


def test_acceptance_is_declared_once_and_enforced_by_make_combiner_and_checks() -> None:
    X, y = load_iris(return_X_y=True)
    tree = DecisionTreeClassifier(random_state=0).fit(X, y)
    proba = spec_for("tree", tree, "predict_proba")
    assert method("hard_vote").kinds == ("classifier",) and method("hard_vote").outputs == ("predict",)
    with pytest.raises(ValueError, match="hard_vote: members must be classifiers outputting predict: tree"):
        make_combiner("hard_vote", [proba])
    with pytest.raises(EnsembleCompatibilityError) as info:
        check_compatibility({"tree": tree}, [proba], [f"x{i}" for i in range(4)], "hard_vote", sklearn.__version__)
    assert info.value.problems == ["model tree: hard_vote needs output predict, not predict_proba"]
    with pytest.raises(ValueError, match="unknown integration method 'nope'; expected one of mean, weighted_mean"):
        make_combiner("nope", [proba])
    with pytest.raises(ValueError, match=r"mean: unexpected parameters \['model'\]"):
        make_combiner("mean", [proba], model=None)


def test_registration_is_checked() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(method("mean"))
    with pytest.raises(ValueError, match="unknown member kind 'ranker'"):
        IntegrationMethod(name="x", factory=MAX.factory, evaluation=Evaluation.SCORES, predicts_labels=False,
                          output_columns=("prediction",), kinds=("ranker",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="evaluation 'labels' does not fit predicts_labels=False"):
        IntegrationMethod(name="x", factory=MAX.factory, evaluation=Evaluation.LABELS, predicts_labels=False,
                          output_columns=("prediction",))
    with pytest.raises(ValueError, match="only a fitted method"):
        IntegrationMethod(name="x", factory=MAX.factory, evaluation=Evaluation.SCORES, predicts_labels=None,
                          output_columns=("prediction",))
    with pytest.raises(ValueError, match="letters, digits"):
        IntegrationMethod(name="max-2", factory=MAX.factory, evaluation=Evaluation.SCORES, predicts_labels=False,
                          output_columns=("prediction",))
    assert method_names() == BUILT_IN


# A method added from this module --------------------------------------------------------------
def test_added_method_is_accepted_by_the_job_file_and_rejected_once_removed(tmp_path: Path,
                                                                           max_method: IntegrationMethod) -> None:
    demo = train_demo(tmp_path / "demo")
    job = demo.parent / "max.toml"
    job.write_text(demo.read_text().replace('integration = "mean"', 'integration = "max"'))
    assert load_job(job).integration == "max"
    assert "max" in method_names()
    unregister("max")
    with pytest.raises(JobSpecError, match=r"job\.integration must be one of mean, .*stacking; got 'max'"):
        load_job(job)
    register(max_method)  # the fixture removes it again


def test_added_method_combines_checks_integrates_and_evaluates(tmp_path: Path, max_method: IntegrationMethod) -> None:
    X, y = load_breast_cancer(return_X_y=True)
    ols, logit = LinearRegression().fit(X, y), LogisticRegression(max_iter=5000).fit(X, y)
    specs = [spec_for("ols", ols, "predict"), spec_for("logit", logit, "predict_proba", proba_class=1)]
    outputs = {"ols": ols.predict(X), "logit": logit.predict_proba(X)}
    estimators = {"ols": ols, "logit": logit}
    columns = [f"x{i}" for i in range(X.shape[1])]
    check_compatibility(estimators, specs, columns, "max", sklearn.__version__)
    weighted = [spec_for("ols", ols, "predict", weight=2.0), spec_for("logit", logit, "decision_function")]
    with pytest.raises(EnsembleCompatibilityError) as info:
        check_compatibility(estimators, weighted, columns, "max", sklearn.__version__)
    assert info.value.problems == ["model logit: max needs output predict or predict_proba, not decision_function",
                                   "model ols: max ignores weights, got 2.0"]
    combiner = make_combiner("max", specs)
    integ, result = stream(combiner, specs, outputs, tmp_path / "max.npy", seed=3,
                           keep_member_outputs_dir=tmp_path / "kept")
    expected = np.maximum(outputs["ols"], outputs["logit"][:, 1])
    assert np.array_equal(np.load(result.output_path)["prediction"], expected)
    report = evaluate_integration(integ, y)
    assert report["method"] == "max" and report["task"] == "score"  # its declared evaluation: scores
    assert set(report["contribution"]) == {"ols", "logit"} and report["members_missing"] == {}


def test_added_method_runs_a_whole_job(tmp_path: Path, max_method: IntegrationMethod) -> None:
    """The job (validation, integration, report) knows nothing of ``max`` beyond the registry."""
    from framework.job import JobRunner
    from harness import InProcessMesos

    demo = train_demo(tmp_path / "demo")
    job = demo.parent / "max.toml"
    job.write_text(demo.read_text().replace('integration = "mean"', 'integration = "max"'))
    agents = [{"agent": "a1", "cpus": 2, "mem": 2048}, {"agent": "a2", "cpus": 2, "mem": 2048}]
    outcome = JobRunner(load_job(job), driver_factory=InProcessMesos.factory(agents, tmp_path / "sb")).run()
    rows = np.loadtxt(demo.parent / "test.csv", delimiter=",", skiprows=1)
    linear = joblib.load(demo.parent / "linear.joblib").predict(rows[:, :-1])
    logistic = joblib.load(demo.parent / "logistic.joblib").predict_proba(rows[:, :-1])[:, 1]
    written = np.loadtxt(outcome.output, delimiter=",", skiprows=1)
    np.testing.assert_allclose(written, np.maximum(linear, logistic), rtol=0, atol=1e-12)
    assert outcome.report is not None and outcome.report["method"] == "max" and outcome.report["task"] == "score"


def test_a_module_in_a_methods_package_is_found_and_registered(tmp_path: Path) -> None:
    """What ``framework.ensemble.methods`` does with its own directory, done on a scratch package."""
    package = tmp_path / "scratch_methods"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "maximum.py").write_text(textwrap.dedent('''
        import numpy as np
        from framework.ensemble.combiners import MemberCombiner, records
        from framework.ensemble.outputs import member_score
        from framework.ensemble.registry import Evaluation, IntegrationMethod, register

        class Maximum(MemberCombiner):
            def __init__(self, name, members):
                super().__init__(name, members)
                self.output_dtype = np.dtype([("prediction", np.float64)])

            def combine(self, outputs):
                values = [member_score(m, outputs[m.name]) for m in self.present(outputs)]
                return records({"prediction": np.max(values, axis=0)}, self.output_dtype)

        register(IntegrationMethod(name="scratch_max", factory=lambda name, members, params: Maximum(name, members),
                                   evaluation=Evaluation.SCORES, predicts_labels=False,
                                   output_columns=("prediction",)))
    '''))
    sys.path.insert(0, str(tmp_path))
    try:
        assert import_all("scratch_methods", [str(package)]) == ["maximum"]
        assert method_names() == BUILT_IN + ("scratch_max",)
        spec = MemberSpec("a", "regressor", "predict")
        out = make_combiner("scratch_max", [spec, MemberSpec("b", "regressor", "predict")]).combine(
            {"a": np.array([1.0, 5.0]), "b": np.array([3.0, 2.0])})
        assert out["prediction"].tolist() == [3.0, 5.0]
    finally:
        unregister("scratch_max")
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("scratch_methods")]:
            del sys.modules[name]
    assert ensemble.method_names() == BUILT_IN
