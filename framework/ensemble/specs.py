"""Member specifications, class labels and their alignment, and the ensemble's exceptions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence, get_args

import numpy as np

from framework.errors import FrameworkError

Kind = Literal["regressor", "classifier"]
"""What a member's estimator is."""
KINDS: tuple[Kind, ...] = get_args(Kind)

Output = Literal["predict", "predict_proba", "decision_function"]
"""The method the executor calls on a member for each shard."""
OUTPUTS: tuple[Output, ...] = get_args(Output)

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
    kind: Kind
    output: Output
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
    return np.unique(np.concatenate([label_array(m.classes or ()) for m in members]))


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


def class_index(classes: Sequence[Any], wanted: Any, who: str) -> int:
    """Index of ``wanted`` in ``classes`` (exact match, else match on ``str``); ValueError naming ``who``."""
    values = list(classes)
    for i, c in enumerate(values):
        if isinstance(c, (bool, np.bool_)) == isinstance(wanted, (bool, np.bool_)) and c == wanted:
            return i
    for i, c in enumerate(values):
        if str(c) == str(wanted):
            return i
    raise ValueError(f"member {who}: proba_class {wanted!r} is not among its classes {[str(c) for c in values]}")


def align_columns(values: np.ndarray, positions: np.ndarray, n_classes: int, fill: float = 0.0,
                  dtype: Any = None, who: str = "output") -> np.ndarray:
    """Per-class columns placed at ``positions`` of ``n_classes`` columns; the other columns are ``fill``.

    The one class alignment of the ensemble: a member's ``predict_proba`` placed by label into
    the union of the members' classes (soft vote, evaluation), into the stacking classes, and a
    fold's columns at the class codes its training rows had (as ``cross_val_predict`` pads them).

    Parameters
    ----------
    values : ndarray of shape (n, k)
        One column per class of its owner, in the owner's order.
    positions : ndarray of shape (k,)
        The column each of them goes to (``encode_labels`` of the owner's classes).
    n_classes : int
        Columns of the result.
    fill : float
        Value of a class the owner lacks (0 for probabilities; ``cross_val_predict`` uses the
        dtype's minimum for decision functions).
    dtype : dtype, optional
        The result's dtype; default: that of ``values``.

    Returns
    -------
    ndarray of shape (n, n_classes)
        ``values`` itself when already aligned (same positions, same dtype), else a new array.
    """
    values = np.asarray(values)
    positions = np.asarray(positions, dtype=np.intp)
    if values.ndim != 2 or values.shape[1] != len(positions):
        raise ValueError(f"{who} of shape {values.shape} does not match its {len(positions)} classes")
    dtype = values.dtype if dtype is None else np.dtype(dtype)
    if len(positions) == n_classes and values.dtype == dtype and np.array_equal(positions, np.arange(n_classes)):
        return values
    full = np.full((values.shape[0], n_classes), fill, dtype=dtype)
    full[:, positions] = values
    return full
