"""Evaluation report: members and ensemble against the label column.

Report layout (JSON-ready dict)::

    {"method", "rows", "task": "classification" | "regression" | "score",
     "members": {name: metrics}, "ensemble": metrics,
     "disagreement": {"measure": ..., "pairs": [{"a", "b", ...}]},
     "contribution": {name: {"metric", "higher_is_better", "ensemble", "without", "gain"} | {"note"}},
     "notes": [...]}

Which of the three tasks applies is declared by the method's registry entry
(:class:`~framework.ensemble.registry.Evaluation`) and the combiner's ``predicts_labels``:

* ``classification`` (votes, classifier stacking): accuracy; ROC AUC (binary, or one-vs-rest
  macro for multi-class) and log loss where probabilities exist (a member's probabilities are
  placed by label into the union of its classes and the labels seen).
* ``regression`` (mean/median/stacking of values): RMSE, MAE, R2.
* ``score``: a mean/median ensemble against 0/1 labels (the
  founding example: a regressor's value averaged with a classifier's P(class 1)): both the
  regression metrics and accuracy at threshold 0.5, ROC AUC and log loss (scores clipped to
  [1e-15, 1 - 1e-15]); each member is scored on the value it contributes.
* disagreement: classification -> fraction of rows whose predicted labels differ; otherwise the
  mean absolute difference and the Pearson correlation of the contributed values.
* contribution: the ensemble recombined without the member (same combiner, remaining members
  and weights); ``gain`` > 0 means the member improves the primary metric (accuracy,
  RMSE or ROC AUC for the three tasks). Stacking cannot drop a member (not reported).
A metric that cannot be computed (e.g. a single class) is ``None``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from framework import atomic
from framework.ensemble import registry
from framework.ensemble.combiners import Combiner, as_matrix
from framework.ensemble.integrator import StreamingIntegrator
from framework.ensemble.outputs import member_score, member_view
from framework.ensemble.registry import Evaluation
from framework.ensemble.specs import MemberSpec, align_columns

Task = Literal["classification", "regression", "score"]

EPS = 1e-15
CHUNK_ROWS = 65536


def _safe(fn: Callable[[], float]) -> float | None:
    try:
        value = float(fn())
    except (ValueError, TypeError, IndexError):
        return None
    return None if math.isnan(value) else value


def classification_metrics(y: np.ndarray, labels: np.ndarray, proba: np.ndarray | None,
                           classes: np.ndarray | None) -> dict[str, float | None]:
    """Accuracy, and ROC AUC / log loss when ``proba`` (columns = ``classes``) is given."""
    from sklearn import metrics

    out: dict[str, float | None] = {"accuracy": _safe(lambda: metrics.accuracy_score(y, labels))}
    if proba is None or classes is None:
        return out
    union = np.union1d(classes, np.unique(y))
    full = align_columns(proba, np.searchsorted(union, classes), len(union), dtype=np.float64, who="probabilities")
    if len(union) == 2:
        out["roc_auc"] = _safe(lambda: metrics.roc_auc_score(y == union[1], full[:, 1]))
    else:
        out["roc_auc"] = _safe(lambda: metrics.roc_auc_score(y, full, multi_class="ovr", labels=union))
    clipped = np.clip(full, EPS, 1 - EPS)
    out["log_loss"] = _safe(lambda: metrics.log_loss(y, clipped / clipped.sum(axis=1, keepdims=True), labels=union))
    return out


def regression_metrics(y: np.ndarray, values: np.ndarray) -> dict[str, float | None]:
    """RMSE, MAE and R2."""
    from sklearn import metrics

    y, values = np.asarray(y, dtype=float), np.asarray(values, dtype=float)
    return {"rmse": _safe(lambda: math.sqrt(metrics.mean_squared_error(y, values))),
            "mae": _safe(lambda: metrics.mean_absolute_error(y, values)),
            "r2": _safe(lambda: metrics.r2_score(y, values))}


def score_metrics(y: np.ndarray, score: np.ndarray) -> dict[str, float | None]:
    """Regression metrics plus accuracy at 0.5, ROC AUC and log loss of a [0, 1] score vs 0/1 labels."""
    from sklearn import metrics

    y01, score = np.asarray(y, dtype=float), np.asarray(score, dtype=float)
    out = regression_metrics(y01, score)
    out["accuracy"] = _safe(lambda: metrics.accuracy_score(y01, (score >= 0.5).astype(float)))
    out["roc_auc"] = _safe(lambda: metrics.roc_auc_score(y01, score))
    inside = bool(np.all((score >= 0) & (score <= 1)))
    out["log_loss"] = _safe(lambda: metrics.log_loss(y01, np.clip(score, EPS, 1 - EPS), labels=[0.0, 1.0])) \
        if inside else None
    return out


def is_score_task(y: np.ndarray, ensemble_values: np.ndarray) -> bool:
    """0/1 labels: the averaged values are scores for class 1 (log loss only where inside [0, 1])."""
    try:
        yf = np.asarray(y, dtype=float)
    except (TypeError, ValueError):
        return False
    return bool(np.all(np.isin(yf, (0.0, 1.0))) and np.all(np.isfinite(np.asarray(ensemble_values, dtype=float))))


def predicts_labels(combiner: Combiner) -> bool:
    """Whether the ensemble's prediction is a class label (votes, classifier stacking)."""
    return bool(combiner.predicts_labels)


def task_of(combiner: Combiner, y: np.ndarray, ensemble_output: np.ndarray) -> Task:
    """``classification``, ``regression`` or ``score``, from the method's declared evaluation."""
    if combiner.predicts_labels:
        return "classification"
    if registry.method(combiner.method).evaluation is Evaluation.SCORES:
        return "score" if is_score_task(y, ensemble_output["prediction"]) else "regression"
    return "regression"


def ensemble_classes(combiner: Combiner) -> np.ndarray | None:
    """The classes of the ensemble's ``proba_*`` columns."""
    return combiner.classes


def output_metrics(task: Task, y: np.ndarray, result: np.ndarray, combiner: Combiner) -> dict[str, float | None]:
    """Metrics of a combined (structured) output."""
    if task == "classification":
        proba = as_matrix(result)
        return classification_metrics(y, np.asarray(result["prediction"]), proba if proba.shape[1] else None,
                                      ensemble_classes(combiner))
    values = np.asarray(result["prediction"], dtype=float)
    return score_metrics(y, values) if task == "score" else regression_metrics(y, values)


def combine_all(combiner: Combiner, outputs: Mapping[str, np.ndarray], rows: int) -> np.ndarray:
    """Run the combiner over all rows in chunks."""
    parts = [combiner.combine({n: np.asarray(o[s:s + CHUNK_ROWS]) for n, o in outputs.items()})
             for s in range(0, rows, CHUNK_ROWS)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=combiner.output_dtype)


PRIMARY: dict[Task, tuple[str, bool]] = {"classification": ("accuracy", True), "regression": ("rmse", False),
                                         "score": ("roc_auc", True)}


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    return _safe(lambda: np.corrcoef(a, b)[0, 1])


def disagreement(task: Task, members: Sequence[MemberSpec], outputs: Mapping[str, np.ndarray]) -> dict:
    """Pairwise disagreement between members (see the module docstring)."""
    pairs = []
    if task == "classification":
        labels = {m.name: member_view(m, outputs[m.name])[0] for m in members}
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                la, lb = labels[a.name], labels[b.name]
                value = None if la is None or lb is None else float(np.mean(np.asarray(la) != np.asarray(lb)))
                pairs.append({"a": a.name, "b": b.name, "fraction_differing": value})
        return {"measure": "fraction of rows with different predicted labels", "pairs": pairs}
    values = {m.name: np.asarray(member_score(m, outputs[m.name]), dtype=float) for m in members}
    for i, a in enumerate(members):
        for b in members[i + 1:]:
            va, vb = values[a.name], values[b.name]
            corr = _correlation(va, vb) if va.std() > 0 and vb.std() > 0 else None
            pairs.append({"a": a.name, "b": b.name, "mean_abs_difference": float(np.mean(np.abs(va - vb))),
                          "correlation": corr})
    return {"measure": "mean absolute difference and Pearson correlation of contributed values", "pairs": pairs}


def evaluate(y_true: Any, member_outputs: Mapping[str, np.ndarray], ensemble_output: np.ndarray,
             members: Sequence[MemberSpec], combiner: Combiner,
             extra_inputs: Mapping[str, np.ndarray] | None = None) -> dict:
    """Build the evaluation report (layout in the module docstring).

    Parameters
    ----------
    y_true : array-like of shape (n,)
    member_outputs : mapping
        Member name -> its raw output on all rows (may be memory-mapped).
    ensemble_output : ndarray
        The combiner's structured output on all rows.
    members : sequence of MemberSpec
        The members that were used.
    combiner : Combiner
    extra_inputs : mapping, optional
        Further combiner inputs (stacking passthrough features).
    """
    y = np.asarray(y_true)
    if y.ndim != 1 or len(y) != len(ensemble_output):
        raise ValueError(f"labels of shape {y.shape} for {len(ensemble_output)} output rows")
    members = [m for m in members if m.name in member_outputs]
    task = task_of(combiner, y, ensemble_output)
    fitted_layer = registry.method(combiner.method).evaluation is Evaluation.FITTED
    report: dict[str, Any] = {"method": combiner.method, "rows": int(len(y)), "task": task, "members": {},
                              "notes": []}
    for m in members:
        out = np.asarray(member_outputs[m.name])
        as_classifier = task == "classification" or (
            task == "regression" and m.kind == "classifier" and m.output != "predict" and fitted_layer)
        contributes_value = m.kind == "regressor" or m.output == "predict" or m.proba_class is not None or out.ndim == 1
        if not as_classifier and contributes_value:
            value = member_score(m, out)
            report["members"][m.name] = score_metrics(y, value) if task == "score" else regression_metrics(y, value)
        else:
            labels, proba, classes = member_view(m, out)
            report["members"][m.name] = (classification_metrics(y, labels, proba, classes) if labels is not None
                                         else {"note": "no labels"})
    report["ensemble"] = output_metrics(task, y, ensemble_output, combiner)
    try:
        report["disagreement"] = disagreement(task, members, member_outputs)
    except ValueError as exc:
        report["disagreement"] = {"measure": None, "pairs": [], "note": str(exc)}
    metric, higher = PRIMARY[task]
    full = report["ensemble"].get(metric)
    report["contribution"] = {}
    for m in members:
        if not combiner.supports_subsets or len(members) < 2:
            report["contribution"][m.name] = {"note": "the ensemble cannot be recombined without this member"}
            continue
        rest = {n: o for n, o in member_outputs.items() if n != m.name}
        rest.update(extra_inputs or {})
        without = output_metrics(task, y, combine_all(combiner, rest, len(y)), combiner).get(metric)
        gain = None if full is None or without is None else (full - without if higher else without - full)
        report["contribution"][m.name] = {"metric": metric, "higher_is_better": higher, "ensemble": full,
                                          "without": without, "gain": gain}
    return report


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_report(report: Mapping[str, Any]) -> str:
    """A readable text table of the report."""
    rows = dict(report.get("members", {}))
    rows["ENSEMBLE"] = report.get("ensemble", {})
    columns: list[str] = []
    for metrics_ in rows.values():
        columns += [k for k in metrics_ if k not in columns and k != "note"]
    width = max([len(n) for n in rows] + [6])
    lines = [f"Evaluation: {report.get('method')} ({report.get('task')}), {report.get('rows')} rows",
             "  ".join([f"{'model':<{width}}"] + [f"{c:>10}" for c in columns])]
    for name, metrics_ in rows.items():
        lines.append("  ".join([f"{name:<{width}}"] + [f"{_fmt(metrics_.get(c)):>10}" for c in columns]))
    dis = report.get("disagreement", {})
    if dis.get("pairs"):
        lines += ["", f"Disagreement ({dis.get('measure')}):"]
        for p in dis["pairs"]:
            values = ", ".join(f"{k} {_fmt(v)}" for k, v in p.items() if k not in ("a", "b"))
            lines.append(f"  {p['a']} vs {p['b']}: {values}")
    contribution = report.get("contribution", {})
    if contribution:
        lines += ["", "Contribution (ensemble without the member):"]
        for name, c in contribution.items():
            if "note" in c:
                lines.append(f"  {name}: {c['note']}")
            else:
                lines.append(f"  {name}: {c['metric']} {_fmt(c['ensemble'])} -> {_fmt(c['without'])} without it "
                             f"(gain {_fmt(c['gain'])})")
    missing = report.get("members_missing")
    if missing:
        lines += ["", "Missing members:"] + [f"  {n}: {r}" for n, r in missing.items()]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report_json(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the report as JSON, replacing ``path`` atomically (:mod:`framework.atomic`)."""
    with atomic.atomic_open(path, "w") as fh:
        json.dump(_jsonable(dict(report)), fh, indent=2, sort_keys=False)
    return Path(path)


def evaluate_integration(integrator: StreamingIntegrator, y_true: Any) -> dict:
    """Evaluation report of a finished integration's used members and ensemble (it needs
    ``keep_member_outputs_dir``), with the members it had to leave out."""
    kept = integrator.kept_outputs()
    report = evaluate(y_true, kept.member_outputs, kept.ensemble_output, kept.members, integrator.combiner,
                      extra_inputs=kept.extra_inputs)
    report["members_missing"] = dict(kept.members_missing)
    return report


class EvaluatingIntegrator(StreamingIntegrator):
    """A :class:`~framework.ensemble.integrator.StreamingIntegrator` with ``evaluate(y_true)``.

    The package exports it as ``framework.ensemble.StreamingIntegrator`` so that callers of
    ``integrator.evaluate(labels)`` keep working while the integrator itself knows nothing of
    the evaluation; new code calls :func:`evaluate_integration`.
    """

    def evaluate(self, y_true: Any) -> dict:
        """:func:`evaluate_integration` of this integration."""
        return evaluate_integration(self, y_true)
