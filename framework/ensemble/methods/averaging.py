"""``mean``, ``weighted_mean`` and ``median``: averages of the values the members contribute."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from framework.ensemble.combiners import MemberCombiner, records
from framework.ensemble.outputs import member_score
from framework.ensemble.registry import Evaluation, IntegrationMethod, MemberClasses, register
from framework.ensemble.specs import MemberSpec, class_index, label_kind


class MeanCombiner(MemberCombiner):
    """``mean`` (unweighted), ``weighted_mean`` and ``median`` of the members' scores.

    ``mean``/``weighted_mean`` equal ``VotingRegressor.predict``: ``np.average`` over the
    (n, members) matrix along axis 1; ``mean`` ignores the weights. ``median`` is
    ``np.median`` along the same axis (unweighted; non-unit weights are rejected).
    Each member contributes :func:`~framework.ensemble.outputs.member_score`.
    """

    def __init__(self, method: str, members: Sequence[MemberSpec]) -> None:
        super().__init__(method, members)
        if method == "median" and any(float(m.weight) != 1.0 for m in members):
            raise ValueError("median: member weights are not supported (weights must all be 1.0)")
        for m in members:
            if m.output != "predict" and m.output != "decision_function" and m.proba_class is None:
                raise ValueError(f"{method}: member {m.name} outputs {m.output} but has no proba_class")
        self.output_dtype = np.dtype([("prediction", np.float64)])

    def combine(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        present = self.present(outputs)
        matrix = np.asarray([member_score(m, outputs[m.name]) for m in present]).T
        if self.method == "median":
            value = np.median(matrix, axis=1)
        else:
            weights = self.weights(present) if self.method == "weighted_mean" else None
            value = np.average(matrix, axis=1, weights=weights)
        return records({"prediction": value}, self.output_dtype)


def score_problems(method: str, members: Sequence[MemberSpec], classes: MemberClasses) -> list[str]:
    """Each member must contribute one number per row: a ``predict_proba`` member (or a
    multi-column ``decision_function``) names a ``proba_class`` among its classes; a classifier
    whose ``predict`` enters has numeric labels."""
    problems = []
    for m in members:
        c = classes.get(m.name)
        if m.output == "predict_proba" or (m.output == "decision_function" and c is not None and len(c) > 2):
            if m.proba_class is None:
                problems.append(f"model {m.name}: {method} of {m.output} needs proba_class (which class's column)")
            elif c is None:
                problems.append(f"model {m.name}: no classes to locate proba_class {m.proba_class!r}")
            else:
                try:
                    class_index(list(c), m.proba_class, m.name)
                except ValueError as exc:
                    problems.append(f"model {m.name}: {exc}".replace(f"member {m.name}: ", ""))
        if m.output == "predict" and m.kind == "classifier" and c is not None and label_kind(c) == "string":
            problems.append(f"model {m.name}: {method} cannot average its string labels; use proba_class")
    return problems


def _factory(method: str, members: Sequence[MemberSpec], params: Mapping[str, Any]) -> MeanCombiner:
    return MeanCombiner(method, members)


for _name, _summary in (("mean", "unweighted average of the members' values (VotingRegressor)"),
                        ("weighted_mean", "weighted average of the members' values (VotingRegressor(weights=))"),
                        ("median", "median of the members' values")):
    register(IntegrationMethod(name=_name, factory=_factory, evaluation=Evaluation.SCORES, predicts_labels=False,
                               output_columns=("prediction",), checks=score_problems, summary=_summary))
