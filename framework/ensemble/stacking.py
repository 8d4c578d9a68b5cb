"""Stacking as ``StackingClassifier``/``StackingRegressor`` do it, split into pure pieces.

The members' cross-validation fits run as Mesos tasks: for every member and every fold of
:func:`plan_folds`, the executor fits one fold (:mod:`executor.folds`, also behind
:func:`cv_fit_predict`: ``clone(est).fit(X[train], y_fit[train]).<method>(X[test])``). Then
:func:`assemble_out_of_fold` puts each member's fold predictions back in row order,
:func:`stack_features` builds the meta-features and :func:`fit_final_estimator` fits the final
estimator. The result is a :class:`FittedStacking` (saved with :func:`save_stacking`) used by the
``stacking`` combiner (:mod:`framework.ensemble.methods.stacking`) on the deployed members' shard
outputs. :func:`fit_stacking_locally` runs the same pieces in-process (the reference).

Semantics that match scikit-learn 1.9:

* classifier stacking label-encodes ``y`` (sorted unique labels); members' CV fits and the final
  estimator are fit on the codes; predictions are decoded with ``classes[code]``;
* ``cv`` is resolved by ``check_cv`` (int -> ``StratifiedKFold`` for classifiers,
  ``KFold`` for regressors, unshuffled); a splitter with ``random_state=None`` gets a fresh
  ``RandomState`` as scikit-learn does (so a shuffling splitter needs a fixed seed to be
  reproducible);
* ``stack_method="auto"`` picks the first of predict_proba, decision_function, predict the
  estimator has; regression stacking always uses predict;
* 1-D outputs become one column; for a binary problem the first ``predict_proba`` column is
  dropped; ``passthrough`` appends the raw features after the members' columns.

Deployed members are assumed fit on the *original* labels (as the users' joblib files are):
a classifier member whose stack method is ``predict`` has its labels encoded to codes, and a
``predict_proba``/``decision_function`` member's columns are placed by label in the stacking
classes (a missing class gets 0 for probabilities, the dtype's minimum for decisions, as
``cross_val_predict`` pads folds). Regressor members inside classifier stacking are not supported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, get_args

import joblib
import numpy as np

from framework import atomic
from framework.ensemble.specs import Kind, MemberSpec, Output, align_columns, encode_labels, label_array

StackMethod = Literal["auto", "predict_proba", "decision_function", "predict"]
"""The job file's ``stacking.stack_method``: as ``Stacking*(stack_method=...)``."""
STACK_METHODS: tuple[StackMethod, ...] = get_args(StackMethod)
ENCODED_METHODS = ("decision_function", "predict_proba", "predict_log_proba")

FINAL_ESTIMATORS: dict[str, Callable[[Kind], Any]] = {
    "auto": lambda kind: default_final_estimator(kind),
    "logistic_regression": lambda kind: _linear_model().LogisticRegression(),
    "ridge": lambda kind: _linear_model().RidgeCV(),
    "linear_regression": lambda kind: _linear_model().LinearRegression(),
}
"""The job file's ``stacking.final_estimator`` names -> an unfitted estimator for the stacking's
kind (``auto``: scikit-learn's default)."""


def _linear_model() -> Any:
    """``sklearn.linear_model``, imported when a stacking needs it (a job without one never
    imports scikit-learn in the framework's process: about a second of its start)."""
    from sklearn import linear_model

    return linear_model


def final_estimator(name: str, kind: Kind) -> Any:
    """The unfitted final estimator named in the job file, for a ``kind`` stacking."""
    try:
        return FINAL_ESTIMATORS[name](kind)
    except KeyError:
        raise ValueError(f"unknown final estimator {name!r}; expected one of {', '.join(FINAL_ESTIMATORS)}") from None


CANDIDATES: dict[str, list[Output]] = {"auto": ["predict_proba", "decision_function", "predict"],
                                       "predict_proba": ["predict_proba"],
                                       "decision_function": ["decision_function"], "predict": ["predict"]}
"""Per stack method, the outputs tried in order (``auto``: the first the estimator has)."""


def resolve_stack_method(name: str, estimator: Any, stack_method: str, kind: str) -> Output:
    """The method a member contributes, as ``StackingClassifier``/``StackingRegressor`` choose it.

    Raises
    ------
    ValueError
        Unknown ``stack_method`` or the estimator lacks the method.
    """
    if stack_method not in STACK_METHODS:
        raise ValueError(f"stack_method {stack_method!r} is not one of {STACK_METHODS}")
    candidates = CANDIDATES["predict" if kind == "regressor" else stack_method]
    for method in candidates:
        if getattr(estimator, method, None) is not None:
            return method
    raise ValueError(f"member {name}: estimator {type(estimator).__name__} does not implement {candidates}")


@dataclass(frozen=True)
class FoldPlan:
    """The cross-validation folds and the target the members' CV fits use.

    Attributes
    ----------
    folds : tuple of (train_idx, test_idx)
        In the splitter's order (the order ``cross_val_predict`` concatenates them).
    y_fit : ndarray
        Label codes (classifier stacking) or the raw target (regressor stacking).
    classes : ndarray or None
        The stacking classifier's classes (original labels); None for regression.
    """

    folds: tuple[tuple[np.ndarray, np.ndarray], ...]
    y_fit: np.ndarray
    classes: np.ndarray | None
    n_samples: int


def plan_folds(X: Any, y: Any, kind: str, cv: Any = 5) -> FoldPlan:
    """Plan the folds exactly as scikit-learn's stacking + ``cross_val_predict`` would.

    Parameters
    ----------
    X : array-like of shape (n, n_features)
    y : array-like of shape (n,)
    kind : {"classifier", "regressor"}
        The stacking ensemble's kind.
    cv : int, splitter or iterable
        As ``StackingClassifier(cv=...)`` (``"prefit"`` is not supported).
    """
    if kind not in ("classifier", "regressor"):
        raise ValueError(f"kind must be 'classifier' or 'regressor', got {kind!r}")
    if isinstance(cv, str):
        raise ValueError(f"cv={cv!r} is not supported; give a number of folds or a splitter")
    y = np.asarray(y)
    classes = None
    if kind == "classifier":
        classes, y_fit = np.unique(y, return_inverse=True)
        y_fit = y_fit.reshape(y.shape)
    else:
        y_fit = y
    from sklearn.model_selection import check_cv

    splitter = check_cv(cv, y=y_fit, classifier=kind == "classifier")
    if hasattr(splitter, "random_state") and splitter.random_state is None:
        splitter.random_state = np.random.RandomState()
    folds = tuple((np.asarray(tr), np.asarray(te)) for tr, te in splitter.split(X, y_fit))
    n = len(y_fit)
    tests = np.concatenate([te for _, te in folds])
    if len(tests) != n or not np.array_equal(np.sort(tests), np.arange(n)):
        raise ValueError("the test folds must partition the rows (cross_val_predict only works for partitions)")
    return FoldPlan(folds=folds, y_fit=y_fit, classes=classes, n_samples=n)


def cv_fit_predict(estimator: Any, X: Any, y_fit: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
                   method: str) -> np.ndarray:
    """The executor's op (:func:`executor.folds.cv_fit_predict`): fit a clone on the train rows,
    return ``method`` on the test rows."""
    from executor import folds  # imports scikit-learn: only when a stacking is fitted here

    return folds.cv_fit_predict(estimator, X, y_fit, train_idx, test_idx, method)[0]


def missing_class_fill(method: str, dtype: np.dtype) -> float:
    """What ``cross_val_predict`` puts in the column of a class absent from a fold: 0 for
    probabilities, the dtype's minimum for decision functions."""
    return 0 if method == "predict_proba" else float(np.finfo(dtype).min)


def pad_fold(predictions: np.ndarray, fold_classes: np.ndarray, n_classes: int, method: str) -> np.ndarray:
    """Put a fold's columns at their class codes when the fold's training rows lacked classes."""
    if len(fold_classes) == n_classes:
        return predictions
    if method == "decision_function" and (predictions.ndim != 2 or len(fold_classes) <= 2):
        raise ValueError(f"only {len(fold_classes)} classes in a training fold but {n_classes} overall: "
                         "decision_function cannot be padded; use properly stratified folds")
    return align_columns(predictions, np.asarray(fold_classes, dtype=int), n_classes,
                         missing_class_fill(method, predictions.dtype), who="fold predictions")


def assemble_out_of_fold(fold_predictions: Sequence[np.ndarray], plan: FoldPlan, method: str,
                         fold_classes: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """One member's out-of-fold predictions in row order, as ``cross_val_predict`` returns them.

    Parameters
    ----------
    fold_predictions : sequence of ndarray
        The member's ``cv_fit_predict`` result for each fold, in ``plan.folds`` order.
    method : str
        The member's stack method.
    fold_classes : sequence of ndarray, optional
        The fitted clones' ``classes_`` per fold; needed only when a fold lacked a class.
    """
    if len(fold_predictions) != len(plan.folds):
        raise ValueError(f"{len(fold_predictions)} fold predictions for {len(plan.folds)} folds")
    preds = [np.asarray(p) for p in fold_predictions]
    if method in ENCODED_METHODS and plan.classes is not None:
        n_classes = len(plan.classes)
        for i, p in enumerate(preds):
            if fold_classes is not None and len(fold_classes[i]) != n_classes:
                preds[i] = pad_fold(p, np.asarray(fold_classes[i]), n_classes, method)
            elif p.ndim == 2 and p.shape[1] != n_classes:
                raise ValueError(f"fold {i}: {p.shape[1]} columns for {n_classes} classes; pass fold_classes")
    for i, (p, (_, test)) in enumerate(zip(preds, plan.folds)):
        if len(p) != len(test):
            raise ValueError(f"fold {i}: {len(p)} predictions for {len(test)} test rows")
    tests = np.concatenate([te for _, te in plan.folds])
    inverse = np.empty(len(tests), dtype=int)
    inverse[tests] = np.arange(len(tests))
    return np.concatenate(preds)[inverse]


def stack_features(member_outputs: Sequence[np.ndarray], stack_methods: Sequence[str], n_classes: int | None,
                   X: Any = None) -> np.ndarray:
    """Meta-features: members' columns in member order (binary predict_proba: last column only), then X.

    Parameters
    ----------
    member_outputs : sequence of ndarray
        Each member's output (out-of-fold for training, deployed member's on a shard for prediction).
    stack_methods : sequence of str
        Each member's stack method.
    n_classes : int or None
        Number of stacking classes (None for regression).
    X : array-like, optional
        Raw features, appended when given (passthrough).
    """
    columns = []
    for out, method in zip(member_outputs, stack_methods, strict=True):
        out = np.asarray(out)
        if out.ndim == 1:
            columns.append(out.reshape(-1, 1))
        elif method == "predict_proba" and n_classes == 2:
            columns.append(out[:, 1:])
        else:
            columns.append(out)
    if X is not None:
        columns.append(np.asarray(X))
    return np.hstack(columns)


def default_final_estimator(kind: str) -> Any:
    """scikit-learn's default: ``LogisticRegression()`` or ``RidgeCV()``."""
    return _linear_model().LogisticRegression() if kind == "classifier" else _linear_model().RidgeCV()


def fit_final_estimator(X_meta: np.ndarray, plan: FoldPlan, kind: str, final_estimator: Any = None) -> Any:
    """Fit a clone of ``final_estimator`` (or the default) on the meta-features and ``plan.y_fit``."""
    from sklearn.base import clone

    return clone(final_estimator if final_estimator is not None else default_final_estimator(kind)).fit(
        X_meta, plan.y_fit)


@dataclass(frozen=True)
class FittedStacking:
    """A fitted stacking layer: what the combiner needs to predict from member outputs."""

    kind: str
    members: tuple[str, ...]
    stack_methods: tuple[str, ...]
    classes: np.ndarray | None
    passthrough: bool
    final_estimator: Any

    def features(self, outputs: Sequence[np.ndarray], X: Any = None) -> np.ndarray:
        """Meta-features from the members' (already encoded/aligned) outputs in member order."""
        if self.passthrough and X is None:
            raise ValueError("this stacking uses passthrough: the shard's features are needed")
        n_classes = None if self.classes is None else len(self.classes)
        return stack_features(outputs, self.stack_methods, n_classes, X if self.passthrough else None)


def save_stacking(model: FittedStacking, path: str | os.PathLike[str]) -> Path:
    """Save with joblib, replacing ``path`` atomically (:mod:`framework.atomic`)."""
    with atomic.atomic_open(path, "wb") as handle:
        joblib.dump(model, handle)
    return Path(path)


def load_stacking(path: str | os.PathLike[str]) -> FittedStacking:
    """Load a :class:`FittedStacking` saved by :func:`save_stacking`."""
    model = joblib.load(path)
    if not isinstance(model, FittedStacking):
        raise ValueError(f"{path}: not a FittedStacking but {type(model).__name__}")
    return model


def encode_member_output(spec: MemberSpec, method: str, output: np.ndarray, classes: np.ndarray | None) -> np.ndarray:
    """A deployed member's shard output as its CV clones (fit on label codes) would give it."""
    output = np.asarray(output)
    if classes is None or spec.kind != "classifier":
        return output
    if method == "predict":
        return encode_labels(output, classes, f"member {spec.name}")
    if output.ndim == 1:
        return output
    if not spec.classes:
        raise ValueError(f"member {spec.name}: classes are needed to align its {method} columns")
    own = label_array(spec.classes)
    if len(own) == len(classes) and np.array_equal(own, classes):
        return output
    return align_columns(output, encode_labels(own, classes, f"member {spec.name}"), len(classes),
                         missing_class_fill(method, output.dtype), who=f"member {spec.name}: {method}")


def fit_stacking_locally(estimators: Mapping[str, Any], X: Any, y: Any, kind: str, cv: Any = 5,
                         stack_method: str = "auto", passthrough: bool = False,
                         final_estimator: Any = None) -> tuple[FittedStacking, dict[str, Any]]:
    """Reference: run the members' CV fits in-process with the same building blocks.

    Returns
    -------
    model : FittedStacking
    members : dict
        Each member's clone fit on all of ``(X, y)`` with the original labels (the deployed form).
    """
    X = np.asarray(X)
    plan = plan_folds(X, y, kind, cv)
    methods = tuple(resolve_stack_method(n, est, stack_method, kind) for n, est in estimators.items())
    from executor import folds  # imports scikit-learn: only when a stacking is fitted here

    oof = []
    for est, method in zip(estimators.values(), methods):
        results = [folds.cv_fit_predict(est, X, plan.y_fit, tr, te, method) for tr, te in plan.folds]
        fold_classes = ([np.asarray(fitted.classes_) for _, fitted in results]
                        if all(hasattr(fitted, "classes_") for _, fitted in results) else None)
        oof.append(assemble_out_of_fold([p for p, _ in results], plan, method, fold_classes))
    n_classes = None if plan.classes is None else len(plan.classes)
    X_meta = stack_features(oof, methods, n_classes, X if passthrough else None)
    model = FittedStacking(kind=kind, members=tuple(estimators), stack_methods=methods, classes=plan.classes,
                           passthrough=passthrough, final_estimator=fit_final_estimator(X_meta, plan, kind,
                                                                                        final_estimator))
    from sklearn.base import clone

    fitted = {name: clone(est).fit(X, np.asarray(y)) for name, est in estimators.items()}
    return model, fitted
