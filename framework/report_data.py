"""What the HTML run report shows, gathered as plain JSON-able data (no matplotlib here).

Sources, in order of preference (nothing is kept twice):

* the **journal** (``framework.journal``): every task attempt with its agent, state and wall-clock
  launch and end times;
* the **offer rounds**: :class:`RoundRecorder` wraps :func:`framework.rounds.decide` (the
  scheduler's ``decide`` argument) and keeps, per round that packed something, the packer's cost
  and lower bound, which of its launches were backup copies, and the largest capacity each agent
  offered.  It is the one piece of bookkeeping the report adds;
* the job's **demands** (cpus and mem of one task per model, ``JobDemands.demand``);
* the **evaluation** (``framework.ensemble.evaluation``) and, for classifiers and 0/1 scores, the
  members' kept outputs, from which :func:`classifier_curves` computes confusion matrices and
  ROC curves.

:func:`run_data` joins them into the ``run`` section of the report's JSON; the page
(``framework.report_html``) is drawn from that JSON alone.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from framework.ensemble.outputs import member_score, member_view
from framework.ensemble.specs import MemberSpec, label_array
from framework.offers import OfferView
from framework.rounds import RoundDecision, RoundSnapshot, decide

ROC_POINTS = 200
"""At most this many points per ROC curve in the report (the curve is thinned evenly)."""


class RoundRecorder:
    """Wraps the offer round's ``decide``: records, for the report, what each round packed.

    Called on the scheduler's decision worker; ``rounds``, ``backups`` and ``agents`` are read by
    the job's main thread once the run is over (appends under a lock)."""

    def __init__(self, inner: Callable[[RoundSnapshot, Sequence[OfferView], float], RoundDecision] = decide,
                 clock: Callable[[], float] = time.time) -> None:
        self.inner, self.clock = inner, clock
        self.rounds: list[dict[str, Any]] = []
        self.backups: set[str] = set()
        self.agents: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, snapshot: RoundSnapshot, offers: Sequence[OfferView], now: float) -> RoundDecision:
        decision = self.inner(snapshot, offers, now)
        self.record(decision)
        return decision

    def record(self, decision: RoundDecision) -> None:
        """Keep what ``decision`` packed (rounds that packed nothing are left out)."""
        plan = decision.plan
        with self._lock:
            for launch in decision.launches:
                agent = launch.agent
                seen = self.agents.setdefault(agent.agent_id, {"hostname": agent.hostname, "cpus": 0.0, "mem": 0.0})
                seen["cpus"] = max(seen["cpus"], agent.capacity.cpus)
                seen["mem"] = max(seen["mem"], agent.capacity.mem)
            self.backups.update(task.task_id for task in decision.backups)
            if plan is None or not decision.launches:
                return
            self.rounds.append({"time": self.clock(), "cost": plan.cost, "lower_bound": plan.lower_bound,
                                "gap": plan.gap, "proven_optimal": plan.proven_optimal,
                                "tasks": len(decision.tasks), "backups": len(decision.backups)})


def attempts_from_journal(items: Mapping[str, Any], backups: Iterable[str],
                          demands: Mapping[str, tuple[float, float]], hostnames: Mapping[str, str],
                          compute_seconds: Mapping[str, float] | None = None) -> list[dict]:
    """Every task attempt the journal records (``Journal.items()``), oldest first, as report rows:
    task id, item, model, agent (hostname where known), start and end (wall clock; end None
    while active), Mesos state, whether it was a retry (an attempt after a failed one of the same
    item) or a backup copy, the cpus and mem it asked for, and ``compute``: the seconds its
    executor measured it computing (``compute_seconds``, by task id; None where unknown)."""
    compute_seconds = compute_seconds or {}
    backups = set(backups)
    rows = []
    for item in items.values():
        failed_before = False
        for attempt in item.attempts:
            cpus, mem = demands.get(item.model, (0.0, 0.0))
            backup = attempt.task_id in backups
            rows.append({"task_id": attempt.task_id, "item": item.key, "model": item.model,
                         "agent": hostnames.get(attempt.agent_id or "", attempt.agent_id or "?"),
                         "start": attempt.launched_at, "end": None if attempt.active else attempt.updated_at,
                         "state": attempt.state, "retry": failed_before and not backup, "backup": backup,
                         "cpus": cpus, "mem": mem, "compute": compute_seconds.get(attempt.task_id)})
            if attempt.state not in ("TASK_FINISHED",) and not attempt.active and not backup:
                failed_before = True
    rows.sort(key=lambda r: (r["start"], r["task_id"]))
    return rows


def _thin(x: np.ndarray, y: np.ndarray, points: int = ROC_POINTS) -> tuple[list[float], list[float]]:
    if len(x) > points:
        keep = np.unique(np.linspace(0, len(x) - 1, points).round().astype(int))
        x, y = x[keep], y[keep]
    return [float(v) for v in x], [float(v) for v in y]


def _roc(positive: np.ndarray, score: np.ndarray) -> dict[str, Any] | None:
    from sklearn import metrics

    if positive.all() or not positive.any():
        return None
    fpr, tpr, _ = metrics.roc_curve(positive, score)
    fx, ty = _thin(fpr, tpr)
    return {"fpr": fx, "tpr": ty, "auc": float(metrics.auc(fpr, tpr))}


def _confusion(y: np.ndarray, predicted: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    from sklearn import metrics

    matrix = metrics.confusion_matrix(y, predicted, labels=labels)
    return {"labels": [str(v) for v in labels], "matrix": matrix.astype(int).tolist()}


def classifier_curves(task: str, y_true: Any, member_outputs: Mapping[str, np.ndarray], ensemble_output: np.ndarray,
                      members: Sequence[MemberSpec], classes: np.ndarray | None) -> dict[str, Any] | None:
    """Confusion matrices and ROC curves of each member and of the ensemble, for a
    ``classification`` or ``score`` (0/1 labels) evaluation; None for a regression.

    Binary labels: one ROC curve per member (its score or probability of the positive class)
    and for the ensemble; more classes: one-vs-rest, micro-averaged.  A member without scores
    (hard labels only) has a confusion matrix but no ROC curve."""
    if task not in ("classification", "score"):
        return None
    y = np.asarray(y_true)
    curves: dict[str, Any] = {"confusion": {}, "roc": {}, "positive": None}
    if task == "score":
        positive = np.asarray(y, dtype=float) == 1.0
        curves["positive"] = "1"
        scores = {m.name: np.asarray(member_score(m, member_outputs[m.name]), dtype=float) for m in members}
        scores["ensemble"] = np.asarray(ensemble_output["prediction"], dtype=float)
        for name, score in scores.items():
            curves["confusion"][name] = _confusion(positive.astype(int), (score >= 0.5).astype(int), np.array([0, 1]))
            roc = _roc(positive, score)
            if roc is not None:
                curves["roc"][name] = roc
        curves["note"] = "each member's contributed value as a score for class 1; labels at threshold 0.5"
        return curves
    seen = np.unique(y)
    outputs: dict[str, tuple[Any, Any, Any]] = {m.name: member_view(m, member_outputs[m.name]) for m in members}
    ensemble_proba = None
    names = [n for n in ensemble_output.dtype.names or () if n.startswith("proba_")]
    if names and classes is not None:
        ensemble_proba = np.column_stack([np.asarray(ensemble_output[n], dtype=float) for n in names])
    outputs["ensemble"] = (np.asarray(ensemble_output["prediction"]), ensemble_proba,
                           label_array(tuple(classes)) if classes is not None else None)
    labels = seen
    for _predicted, _proba, member_classes in outputs.values():
        if member_classes is not None:
            labels = np.union1d(labels, member_classes)
    binary = len(labels) == 2
    curves["positive"] = str(labels[1]) if binary else None
    for name, (predicted, proba, member_classes) in outputs.items():
        if predicted is None:
            continue
        curves["confusion"][name] = _confusion(y, np.asarray(predicted), labels)
        if proba is None or member_classes is None:
            continue
        full = np.zeros((len(y), len(labels)))
        full[:, np.searchsorted(labels, member_classes)] = np.asarray(proba, dtype=float)
        if binary:
            roc = _roc(y == labels[1], full[:, 1])
        else:
            roc = _roc((y[:, None] == labels[None, :]).ravel(), full.ravel())
        if roc is not None:
            curves["roc"][name] = roc
    if not binary:
        curves["note"] = "ROC one-vs-rest, micro-averaged over the classes"
    return curves


def run_data(attempts: list[dict], recorder: RoundRecorder, started: float, finished: float,
             note: str | None = None) -> dict[str, Any]:
    """The report's ``run`` section: attempts, agents (largest offered capacity), rounds, the
    run's wall-clock start and end, and a note when something could not be recorded."""
    agents = {info["hostname"]: {"cpus": info["cpus"], "mem": info["mem"]} for info in recorder.agents.values()}
    for attempt in attempts:
        agents.setdefault(attempt["agent"], {"cpus": None, "mem": None})
    return {"started": started, "finished": finished, "attempts": attempts, "agents": agents,
            "rounds": list(recorder.rounds), **({"note": note} if note else {})}

