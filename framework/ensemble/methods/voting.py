"""``hard_vote`` and ``soft_vote``: ``VotingClassifier`` over the members' labels or probabilities."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from framework.ensemble.combiners import MemberCombiner, proba_column_names, records
from framework.ensemble.registry import Evaluation, IntegrationMethod, MemberClasses, register
from framework.ensemble.specs import MemberSpec, align_columns, encode_labels, label_array, label_kind, union_classes


class HardVoteCombiner(MemberCombiner):
    """Weighted majority of predicted labels, as ``VotingClassifier(voting="hard")``.

    Labels are encoded by their index in the sorted union of the members' classes (a
    ``LabelEncoder`` on that union); per row the weighted count of each code is accumulated in
    member order and the arg-max taken, so ties go to the smallest label.
    """

    predicts_labels = True

    def __init__(self, method: str, members: Sequence[MemberSpec]) -> None:
        super().__init__(method, members)
        self.union = union_classes(members)
        self.classes = self.union
        self.output_dtype = np.dtype([("prediction", self.union.dtype)])

    def combine(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        classes = self.union
        present = self.present(outputs)
        weights = self.weights(present) or [1.0] * len(present)
        n = len(np.asarray(outputs[present[0].name]))
        counts = np.zeros((n, len(classes)), dtype=np.float64)
        rows = np.arange(n)
        for m, w in zip(present, weights):
            pred = np.asarray(outputs[m.name])
            if pred.shape != (n,):
                raise ValueError(f"member {m.name}: hard vote needs 1-D predicted labels of {n} rows, got {pred.shape}")
            counts[rows, encode_labels(pred, classes, f"member {m.name}")] += w
        return records({"prediction": classes[np.argmax(counts, axis=1)]}, self.output_dtype)


class SoftVoteCombiner(MemberCombiner):
    """Weighted average of class probabilities, as ``VotingClassifier(voting="soft")``.

    Each member's ``predict_proba`` columns are placed by label into the sorted union of all
    members' classes (0 for a class the member lacks); ``np.average`` over members (axis 0)
    then arg-max gives the label.
    """

    predicts_labels = True

    def __init__(self, method: str, members: Sequence[MemberSpec]) -> None:
        super().__init__(method, members)
        self.union = union_classes(members)
        self.classes = self.union
        self.positions = {m.name: encode_labels(label_array(m.classes or ()), self.union, f"member {m.name}")
                          for m in members}
        self.output_dtype = np.dtype([("prediction", self.union.dtype)]
                                     + [(c, np.float64) for c in proba_column_names(self.union)])

    def aligned(self, member: MemberSpec, proba: np.ndarray) -> np.ndarray:
        """The member's probabilities in the union's class order."""
        return align_columns(proba, self.positions[member.name], len(self.union),
                             who=f"member {member.name}: predict_proba")

    def average(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Weighted average probability, shape (n, n_classes)."""
        present = self.present(outputs)
        stacked = np.asarray([self.aligned(m, outputs[m.name]) for m in present])
        return np.average(stacked, axis=0, weights=self.weights(present))

    def combine(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        avg = self.average(outputs)
        columns = {"prediction": self.union[np.argmax(avg, axis=1)]}
        columns.update({name: avg[:, j] for j, name in enumerate(proba_column_names(self.union))})
        return records(columns, self.output_dtype)


def vote_problems(method: str, members: Sequence[MemberSpec], classes: MemberClasses) -> list[str]:
    """Every member has classes, all of one label type (numeric, bool or string); a hard vote's
    members predict the same set of classes (a soft vote aligns subsets and orders by label)."""
    problems = [f"model {m.name}: {method} needs its classes (classes_)" for m in members
                if classes.get(m.name) is None]
    known = {n: c for n, c in classes.items() if c is not None}
    kinds = {n: label_kind(c) for n, c in known.items()}
    if len(set(kinds.values())) > 1:
        problems.append(f"{method}: members' labels are of different types: "
                        + ", ".join(f"{n}: {k}" for n, k in kinds.items()))
    elif method == "hard_vote" and len({tuple(np.unique(c).tolist()) for c in known.values()}) > 1:
        problems.append("hard_vote: members predict different class sets: "
                        + "; ".join(f"{n}: {np.unique(c).tolist()}" for n, c in known.items()))
    return problems


def _hard(method: str, members: Sequence[MemberSpec], params: Mapping[str, Any]) -> HardVoteCombiner:
    return HardVoteCombiner(method, members)


def _soft(method: str, members: Sequence[MemberSpec], params: Mapping[str, Any]) -> SoftVoteCombiner:
    return SoftVoteCombiner(method, members)


register(IntegrationMethod(
    name="hard_vote", factory=_hard, evaluation=Evaluation.LABELS, predicts_labels=True,
    output_columns=("prediction",), kinds=("classifier",), outputs=("predict",), checks=vote_problems,
    summary="weighted majority of the predicted labels (VotingClassifier(voting='hard'))"))
register(IntegrationMethod(
    name="soft_vote", factory=_soft, evaluation=Evaluation.LABELS, predicts_labels=True,
    output_columns=("prediction", "proba_*"), kinds=("classifier",), outputs=("predict_proba",),
    checks=vote_problems,
    summary="weighted average of the class probabilities (VotingClassifier(voting='soft'))"))
