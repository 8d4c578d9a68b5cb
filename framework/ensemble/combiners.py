"""What every combiner is: a pure function over the members' outputs on one shard.

A combiner returns a *structured* array, one record per row, whose field names are
``output_columns`` and whose dtype is ``output_dtype``. The methods themselves live in
:mod:`framework.ensemble.methods` (one module per family, each registered in
:mod:`framework.ensemble.registry`, which declares its columns):

* ``mean`` / ``weighted_mean`` / ``median``: ``["prediction"]`` (float64).
* ``hard_vote``: ``["prediction"]`` (the label dtype of the union of the members' classes).
* ``soft_vote``: ``["prediction", "proba_<c>" for each class c of the sorted union]``.
* ``stacking``: ``["prediction"]`` plus ``"proba_<c>"`` columns when the final estimator is a
  classifier with ``predict_proba`` (see :mod:`framework.ensemble.stacking`).

A combiner may be given a subset of its members (degraded integration, leave-one-out
evaluation) when it ``supports_subsets``: it then combines the present members in spec order
with their weights, which is what the scikit-learn ensemble built from just those members would
compute.
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import numpy as np

from framework.ensemble.specs import MemberSpec


class Combiner(Protocol):
    """What the streaming integrator and the evaluation need from a combiner."""

    @property
    def method(self) -> str:
        """The registered integration method's name."""
        ...

    @property
    def inputs(self) -> tuple[str, ...]:
        """The names whose outputs :meth:`combine` takes (members, and maybe ``FEATURES_KEY``)."""
        ...

    @property
    def output_dtype(self) -> np.dtype:
        """The structured dtype of :meth:`combine`'s records."""
        ...

    @property
    def output_columns(self) -> list[str]:
        """The field names of ``output_dtype``."""
        ...

    @property
    def supports_subsets(self) -> bool:
        """Whether a subset of the members can be combined (degraded answers, contributions)."""
        ...

    @property
    def predicts_labels(self) -> bool:
        """Whether ``prediction`` is a class label (then ``classes`` orders the ``proba_*`` columns)."""
        ...

    @property
    def classes(self) -> np.ndarray | None:
        """The classes of the ``proba_*`` columns, or None."""
        ...

    def combine(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Combine member name -> raw output on one shard into the shard's result records."""
        ...


def records(columns: Mapping[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
    """Pack equal-length columns into a structured array of ``dtype``."""
    n = len(next(iter(columns.values())))
    out = np.empty(n, dtype=dtype)
    for name, values in columns.items():
        out[name] = values
    return out


def field_names(dtype: np.dtype) -> list[str]:
    """The field names of a structured dtype (empty for a plain one)."""
    return list(dtype.names or ())


def as_matrix(result: np.ndarray, prefix: str = "proba_") -> np.ndarray:
    """Return the ``proba_*`` fields of structured ``result`` as a float (n, k) matrix."""
    names = [n for n in field_names(result.dtype) if n.startswith(prefix)]
    return np.column_stack([np.asarray(result[n], dtype=float) for n in names]) if names else np.empty((len(result), 0))


def proba_column_names(classes: np.ndarray) -> list[str]:
    """``proba_<class>`` for each class."""
    return [f"proba_{c}" for c in classes.tolist()]


class MemberCombiner:
    """Base of the combiners over a fixed list of members: names, subsets and weights.

    Subclasses set ``output_dtype`` (and ``classes`` when they predict labels) in ``__init__``
    and implement ``combine``.
    """

    output_dtype: np.dtype
    classes: np.ndarray | None = None
    predicts_labels = False
    supports_subsets = True

    def __init__(self, method: str, members: Sequence[MemberSpec]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate member names: {names}")
        self.method = method
        self.members = tuple(members)
        self.inputs = tuple(names)

    @property
    def output_columns(self) -> list[str]:
        return field_names(self.output_dtype)

    def present(self, outputs: Mapping[str, np.ndarray]) -> list[MemberSpec]:
        """Members present in ``outputs``, in spec order; ValueError on unknown names or none."""
        unknown = set(outputs) - set(self.inputs)
        if unknown:
            raise ValueError(f"{self.method}: outputs for unknown members {sorted(unknown)}")
        present = [m for m in self.members if m.name in outputs]
        if not present:
            raise ValueError(f"{self.method}: no member outputs to combine")
        return present

    def weights(self, present: Sequence[MemberSpec]) -> list[float] | None:
        """The present members' weights, or None when all are 1 (scikit-learn's ``weights=None``)."""
        w = [float(m.weight) for m in present]
        return None if all(x == 1.0 for x in w) else w

    def combine(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError
