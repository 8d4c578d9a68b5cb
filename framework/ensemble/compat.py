"""Checks, before anything launches, that the members, their specs and the data fit together.

What :func:`check_compatibility` enforces (every problem is collected; one
:class:`EnsembleCompatibilityError` lists them all, each naming the member):

* the method is known; member names are unique;
* ``kind`` matches the estimator (``is_classifier`` / ``is_regressor``);
* the requested ``output`` method exists on the estimator (``getattr`` is not None, so
  ``SVC(probability=False).predict_proba`` and ``LinearRegression.predict_proba`` fail);
* ``n_features_in_`` equals the number of columns the member is given (``MemberSpec.features``,
  else every data column); ``feature_names_in_`` equals their names in the same order (missing,
  unexpected and reordered names are reported);
* ``MemberSpec.classes`` (if given) equals the estimator's ``classes_``;
* the scikit-learn version recorded in the member's pickle equals the executors' version;
* per method, what its registry entry (:mod:`framework.ensemble.registry`) declares: the member
  kinds and outputs it accepts, then its own checks. For the built-in methods:
  - ``mean``/``weighted_mean``/``median``: a ``predict_proba`` member (or 2-column+
    ``decision_function``) names a ``proba_class`` among its classes; a classifier whose
    ``predict`` enters has numeric labels;
  - ``hard_vote``: classifiers with ``output="predict"`` and the *same set* of classes;
  - ``soft_vote``: classifiers with ``output="predict_proba"`` whose labels share one type
    (numeric, bool or string); class order and subsets may differ (aligned by label);
  - ``stacking``: classifiers/regressors offering their output (the stacked method).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from framework.ensemble import registry
from framework.ensemble.specs import KINDS, OUTPUTS, EnsembleCompatibilityError, MemberSpec, label_array

def recorded_version(estimator: Any) -> str | None:
    """The scikit-learn version an estimator (or a ``framework.inspection.ModelMetadata``) was
    saved with, else the best guess for an in-memory estimator."""
    if isinstance(getattr(estimator, "_sklearn_version", None), str):
        return estimator._sklearn_version
    import sklearn
    from sklearn.base import BaseEstimator

    return sklearn.__version__ if isinstance(estimator, BaseEstimator) else None


def _estimator_type(estimator: Any) -> str | None:
    """``"classifier"``, ``"regressor"`` or another type, as scikit-learn's ``is_classifier`` /
    ``is_regressor`` read it; a ``ModelMetadata`` says it itself (``estimator_type``), so checking
    a job's models never imports scikit-learn into the framework's process."""
    if hasattr(estimator, "estimator_type"):
        return estimator.estimator_type  # type: ignore[no-any-return]
    from sklearn.base import is_classifier, is_regressor

    return "classifier" if is_classifier(estimator) else "regressor" if is_regressor(estimator) else None


def _type_name(estimator: Any) -> str:
    """The estimator's class name (a ``ModelMetadata`` names the class it describes)."""
    return getattr(estimator, "estimator_name", None) or type(estimator).__name__


def feature_problems(name: str, estimator: Any, feature_names: Sequence[str]) -> list[str]:
    """Problems with the data's columns for one member."""
    problems = []
    n_in = getattr(estimator, "n_features_in_", None)
    if n_in is not None and int(n_in) != len(feature_names):
        problems.append(f"model {name}: expects {int(n_in)} features (n_features_in_) but is given "
                        f"{len(feature_names)} columns")
    fitted = getattr(estimator, "feature_names_in_", None)
    if fitted is not None:
        fitted, given = [str(f) for f in fitted], [str(f) for f in feature_names]
        if fitted != given:
            missing = [f for f in fitted if f not in given]
            extra = [f for f in given if f not in fitted]
            detail = []
            if missing:
                detail.append(f"missing columns {missing[:10]}")
            if extra:
                detail.append(f"unexpected columns {extra[:10]}")
            if not missing and not extra:
                detail.append("same columns in a different order")
            problems.append(f"model {name}: feature names differ from feature_names_in_: {'; '.join(detail)}")
    return problems


def member_problems(spec: MemberSpec, estimator: Any, executor_version: str, recorded: str | None) -> list[str]:
    """Kind, output method, classes and version problems of one member."""
    name, problems = spec.name, []
    if spec.kind == "classifier" and _estimator_type(estimator) != "classifier":
        problems.append(f"model {name}: declared a classifier but {_type_name(estimator)} is not one")
    if spec.kind == "regressor" and _estimator_type(estimator) != "regressor":
        problems.append(f"model {name}: declared a regressor but {_type_name(estimator)} is not one")
    if spec.kind not in KINDS:
        problems.append(f"model {name}: kind {spec.kind!r} is neither classifier nor regressor")
    if spec.output not in OUTPUTS:
        problems.append(f"model {name}: unknown output {spec.output!r}")
    elif getattr(estimator, spec.output, None) is None:
        problems.append(f"model {name}: {_type_name(estimator)} offers no {spec.output}"
                        + (" (e.g. SVC needs probability=True)" if spec.output == "predict_proba" else ""))
    own = getattr(estimator, "classes_", None)
    if spec.classes is not None and own is not None and [str(c) for c in spec.classes] != [str(c) for c in own]:
        problems.append(f"model {name}: spec classes {list(spec.classes)} differ from the estimator's classes_ "
                        f"{list(own)}")
    if recorded is None:
        problems.append(f"model {name}: no scikit-learn version recorded in its pickle; executors run "
                        f"{executor_version}")
    elif recorded != executor_version:
        problems.append(f"model {name}: pickled with scikit-learn {recorded} but the executors run "
                        f"{executor_version}")
    return problems


def _classes(spec: MemberSpec, estimator: Any) -> np.ndarray | None:
    classes = spec.classes if spec.classes is not None else getattr(estimator, "classes_", None)
    return None if classes is None else label_array(classes)


def method_problems(method: str, members: Sequence[MemberSpec], estimators: Mapping[str, Any]) -> list[str]:
    """Problems specific to the integration method (as its registry entry declares them)."""
    classes = {m.name: _classes(m, estimators.get(m.name)) for m in members}
    return registry.method(method).problems(members, classes)


def check_compatibility(estimators: Mapping[str, Any], members: Sequence[MemberSpec], feature_names: Sequence[str],
                        method: str, executor_sklearn_version: str,
                        recorded_versions: Mapping[str, str | None] | None = None) -> None:
    """Raise :class:`EnsembleCompatibilityError` listing every incompatibility (see module doc).

    Parameters
    ----------
    estimators : mapping
        Member name -> estimator, or its ``framework.inspection.ModelMetadata`` (the framework
        never loads members: it checks their metadata).
    recorded_versions : mapping, optional
        Member name -> version recorded in its file (``ModelMetadata.sklearn_version``);
        otherwise :func:`recorded_version`.
    """
    problems: list[str] = []
    known = method in registry.method_names()
    if not known:
        problems.append(f"unknown integration method {method!r}; expected one of {', '.join(registry.method_names())}")
    names = [m.name for m in members]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"duplicate member names: {dupes}")
    for spec in members:
        if spec.name not in estimators:
            problems.append(f"model {spec.name}: no loaded estimator")
            continue
        est = estimators[spec.name]
        version = (recorded_versions[spec.name] if recorded_versions is not None and spec.name in recorded_versions
                   else recorded_version(est))
        problems += feature_problems(spec.name, est, spec.features if spec.features is not None else feature_names)
        problems += member_problems(spec, est, executor_sklearn_version, version)
    if known:
        problems += method_problems(method, members, estimators)
    if problems:
        raise EnsembleCompatibilityError(problems)
