"""Member specifications, label helpers and the ensemble's exceptions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from framework.errors import FrameworkError

FEATURES_KEY = "__features__"
"""Pseudo-member name under which the shard's feature rows are passed (stacking with passthrough)."""


class EnsembleCompatibilityError(FrameworkError):
    """The members, their specs and the data do not fit together; lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} ensemble compatibility problem(s):\n{lines}")


class IntegrationError(FrameworkError):
    """The members' outputs could not be integrated into a result."""


@dataclass(frozen=True)
class MemberSpec:
    """One ensemble member as the integration core sees it.

    Parameters
    ----------
    name : str
        Unique member name (key of the outputs mapping).
    kind : {"regressor", "classifier"}
        What the estimator is.
    output : {"predict", "predict_proba", "decision_function"}
        The method the executor calls on each shard.
    weight : float
        Weight in ``weighted_mean``, ``hard_vote`` and ``soft_vote``.
    proba_class : str, int or None
        For ``mean``/``weighted_mean``/``median``: the class whose ``predict_proba`` (or
        multi-column ``decision_function``) column enters the average.
    classes : tuple or None
        The member's ``classes_`` in the member's own column order.
    features : tuple of str or None
        The data columns the member is given, in order; None: every column of the data.
    """

    name: str
    kind: Literal["regressor", "classifier"]
    output: Literal["predict", "predict_proba", "decision_function"]
    weight: float = 1.0
    proba_class: str | int | None = None
    classes: tuple | None = None
    features: tuple[str, ...] | None = None


def label_array(labels: Sequence[Any]) -> np.ndarray:
    """Return labels as a typed (never object) numpy array.

    Parameters
    ----------
    labels : sequence
        Class labels (numpy scalars, Python ints/floats/strs/bools).

    Returns
    -------
    numpy.ndarray
        1-D array of kind ``b``, ``i``, ``u``, ``f`` or ``U``.
    """
    arr = np.asarray(list(labels))
    if arr.dtype.kind == "O":
        try:
            arr = np.asarray([str(v) for v in arr]) if all(isinstance(v, str) for v in arr) else arr.astype(float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"labels of mixed or unsupported type: {list(labels)[:5]!r}") from exc
    if arr.dtype.kind == "S":
        arr = arr.astype(str)
    return arr


def label_kind(labels: np.ndarray) -> str:
    """Return ``"numeric"``, ``"bool"`` or ``"string"`` for a label array."""
    kind = np.asarray(labels).dtype.kind
    if kind == "b":
        return "bool"
    if kind in "iuf":
        return "numeric"
    if kind in "US":
        return "string"
    return "other"


def union_classes(members: Sequence[MemberSpec]) -> np.ndarray:
    """Sorted union of the members' classes (the order a ``LabelEncoder`` on that union gives).

    Raises
    ------
    ValueError
        If a member has no ``classes``.
    """
    missing = [m.name for m in members if not m.classes]
    if missing:
        raise ValueError(f"members without classes (fill MemberSpec.classes from classes_): {', '.join(missing)}")
    return np.unique(np.concatenate([label_array(m.classes) for m in members]))


def encode_labels(labels: np.ndarray, classes: np.ndarray, who: str) -> np.ndarray:
    """Map labels to their index in the sorted ``classes``; ValueError naming ``who`` on unknown labels."""
    labels = np.asarray(labels)
    idx = np.searchsorted(classes, labels)
    idx_clipped = np.minimum(idx, len(classes) - 1)
    bad = classes[idx_clipped] != labels
    if np.any(bad):
        unknown = np.unique(labels[bad])[:5]
        raise ValueError(f"{who}: labels {unknown.tolist()!r} are not among the classes {classes.tolist()!r}")
    return idx_clipped
