"""One request's member outputs integrated exactly as the batch job integrates a shard.

The combiner is the job's own (:func:`framework.ensemble.make_combiner` with the job's
integration method and parameters): the gateway hands it the members' raw outputs for the
request's rows, as the streaming integrator hands it a shard's, so the numbers are the batch
job's for the same rows. With ``min_members`` below the number of members, the members that
answered are combined (spec order, their weights), as the batch job's degraded integration does.
Nothing here does I/O.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from framework import ensemble
from framework.ensemble import FEATURES_KEY, Combiner, IntegrationError, MemberSpec, member_column

CombinerFactory = Callable[[Sequence[MemberSpec]], Combiner]
"""Builds the job's combiner for its members."""


def combiner_factory(integration: str, **params: Any) -> CombinerFactory:
    """The factory of the registered integration method ``integration`` (``params``: its own,
    e.g. stacking's ``model_path=``), as the batch job builds it."""
    ensemble.method(integration)  # ValueError naming the known methods
    return lambda members: ensemble.make_combiner(integration, members, **params)


def json_value(value: Any) -> Any:
    """A numpy scalar as the plain Python value JSON carries (``float`` round-trips exactly)."""
    return value.item() if isinstance(value, np.generic) else value


class RequestCombiner:
    """Integrates the members' outputs on one request's rows.

    Parameters
    ----------
    combiner : Combiner
        The job's combiner, built for ``members``.
    members : sequence of MemberSpec
        The job's members, in spec order.
    min_members : int, optional
        Fewest members whose outputs make an answer (default: every member).
    """

    def __init__(self, combiner: Combiner, members: Sequence[MemberSpec], min_members: int | None = None) -> None:
        self.combiner = combiner
        self.members = tuple(members)
        names = [m.name for m in self.members]
        expected = [n for n in combiner.inputs if n != FEATURES_KEY]
        if sorted(names) != sorted(expected):
            raise ValueError(f"members {names} differ from the combiner's {expected}")
        self.min_members = len(names) if min_members is None else int(min_members)
        if not 1 <= self.min_members <= len(names):
            raise ValueError(f"min_members must be between 1 and {len(names)}, got {min_members}")
        if self.min_members < len(names) and not combiner.supports_subsets:
            raise ValueError(f"{combiner.method} needs every member; min_members must be {len(names)}")
        self.specs = {m.name: m for m in self.members}
        self.needs_features = FEATURES_KEY in combiner.inputs
        self.classes = combiner.classes
        self.proba_columns = [c for c in combiner.output_columns if c.startswith("proba_")]

    def combine(self, outputs: Mapping[str, np.ndarray], features: np.ndarray | None = None) -> np.ndarray:
        """The structured result records for the request's rows from the members that answered.

        Raises
        ------
        IntegrationError
            Fewer than ``min_members`` answered (naming the missing ones).
        """
        present = [m.name for m in self.members if m.name in outputs]
        if len(present) < self.min_members:
            missing = [m.name for m in self.members if m.name not in outputs]
            raise IntegrationError(f"only {len(present)} of {len(self.members)} members answered "
                                   f"(min_members={self.min_members}); missing: {', '.join(missing)}")
        inputs = {name: np.asarray(outputs[name]) for name in present}
        if self.needs_features:
            if features is None:
                raise IntegrationError(f"{self.combiner.method} needs the request's features")
            inputs[FEATURES_KEY] = features
        return self.combiner.combine(inputs)

    def predictions(self, records: np.ndarray) -> list[Any]:
        """One JSON value per row: the ensemble's value, or for a label-predicting ensemble
        ``{"label": ..., "proba": {"<class>": p, ...}}`` (``proba`` when it has probabilities)."""
        labels = records["prediction"].tolist()
        if not self.combiner.predicts_labels:
            return labels
        if not self.proba_columns:
            return [{"label": label} for label in labels]
        names = [c[len("proba_"):] for c in self.proba_columns]
        if self.classes is not None and len(self.classes) == len(names):
            names = [str(c) for c in self.classes.tolist()]
        columns = [records[c].tolist() for c in self.proba_columns]
        return [{"label": label, "proba": {name: column[i] for name, column in zip(names, columns)}}
                for i, label in enumerate(labels)]

    def member_values(self, outputs: Mapping[str, np.ndarray]) -> dict[str, list[Any]]:
        """What each member that answered said for each row: its label when the ensemble
        predicts labels, else the value it contributes (the batch job's ``explain`` columns)."""
        labels = self.combiner.predicts_labels
        said: dict[str, list[Any]] = {}
        for name in (m.name for m in self.members if m.name in outputs):
            raw = np.asarray(outputs[name])
            try:
                said[name] = member_column(self.specs[name], raw, labels).tolist()
            except ValueError:  # no one value per row (e.g. stacked probabilities without proba_class)
                said[name] = raw.tolist()
        return said
