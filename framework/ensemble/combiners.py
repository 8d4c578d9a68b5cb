"""Combiners: pure functions over the members' outputs on one shard, matching scikit-learn.

Every combiner returns a *structured* array, one record per row, whose field names are
``output_columns`` and whose dtype is ``output_dtype``:

* ``mean`` / ``weighted_mean`` / ``median``: ``["prediction"]`` (float64).
* ``hard_vote``: ``["prediction"]`` (the label dtype of the union of the members' classes).
* ``soft_vote``: ``["prediction", "proba_<c>" for each class c of the sorted union]``.
* ``stacking``: ``["prediction"]`` plus ``"proba_<c>"`` columns when the final estimator is a
  classifier with ``predict_proba`` (see :mod:`framework.ensemble.stacking`).

A combiner may be given a subset of its members (degraded integration, leave-one-out
evaluation): it then combines the present members in spec order with their weights, which is
what the scikit-learn ensemble built from just those members would compute.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from framework.ensemble.specs import MemberSpec, encode_labels, label_array, union_classes

METHODS = ("mean", "weighted_mean", "median", "hard_vote", "soft_vote", "stacking")


class Combiner(Protocol):
    """What the streaming integrator needs from a combiner."""

    method: str
    output_columns: list[str]
    output_dtype: np.dtype
    inputs: tuple[str, ...]
    supports_subsets: bool

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


def as_matrix(result: np.ndarray, prefix: str = "proba_") -> np.ndarray:
    """Return the ``proba_*`` fields of structured ``result`` as a float (n, k) matrix."""
    names = [n for n in result.dtype.names if n.startswith(prefix)]
    return np.column_stack([np.asarray(result[n], dtype=float) for n in names]) if names else np.empty((len(result), 0))


def proba_column_names(classes: np.ndarray) -> list[str]:
    """``proba_<class>`` for each class."""
    return [f"proba_{c}" for c in classes.tolist()]


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


def member_score(spec: MemberSpec, output: np.ndarray) -> np.ndarray:
    """The 1-D values a member contributes to ``mean``/``weighted_mean``/``median``.

    * ``predict``: the prediction itself (a regressor's value or a classifier's numeric label);
    * ``predict_proba``: the column of class ``proba_class`` (located in ``classes`` by label);
    * ``decision_function``: the 1-D binary score, or the column of ``proba_class`` when 2-D.
    """
    output = np.asarray(output)
    if spec.output == "predict" or (spec.output == "decision_function" and output.ndim == 1):
        if output.ndim != 1:
            raise ValueError(f"member {spec.name}: {spec.output} output must be 1-D, got shape {output.shape}")
        if output.dtype.kind not in "biuf":
            raise ValueError(f"member {spec.name}: non-numeric {spec.output} output cannot be averaged")
        return output
    if spec.proba_class is None or not spec.classes:
        raise ValueError(f"member {spec.name}: {spec.output} output needs proba_class and classes to pick a column")
    if output.ndim != 2 or output.shape[1] != len(spec.classes):
        raise ValueError(f"member {spec.name}: {spec.output} output of shape {output.shape} does not match "
                         f"its {len(spec.classes)} classes")
    return output[:, class_index(spec.classes, spec.proba_class, spec.name)]


class _Base:
    method: str
    inputs: tuple[str, ...]
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
        return list(self.output_dtype.names)

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


class MeanCombiner(_Base):
    """``mean`` (unweighted), ``weighted_mean`` and ``median`` of the members' scores.

    ``mean``/``weighted_mean`` equal ``VotingRegressor.predict``: ``np.average`` over the
    (n, members) matrix along axis 1; ``mean`` ignores the weights. ``median`` is
    ``np.median`` along the same axis (unweighted; non-unit weights are rejected).
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


class HardVoteCombiner(_Base):
    """Weighted majority of predicted labels, as ``VotingClassifier(voting="hard")``.

    Labels are encoded by their index in the sorted union of the members' classes (a
    ``LabelEncoder`` on that union); per row the weighted count of each code is accumulated in
    member order and the arg-max taken, so ties go to the smallest label.
    """

    def __init__(self, method: str, members: Sequence[MemberSpec]) -> None:
        super().__init__(method, members)
        self.classes = union_classes(members)
        self.output_dtype = np.dtype([("prediction", self.classes.dtype)])

    def combine(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        present = self.present(outputs)
        weights = self.weights(present) or [1.0] * len(present)
        n = len(np.asarray(outputs[present[0].name]))
        counts = np.zeros((n, len(self.classes)), dtype=np.float64)
        rows = np.arange(n)
        for m, w in zip(present, weights):
            pred = np.asarray(outputs[m.name])
            if pred.shape != (n,):
                raise ValueError(f"member {m.name}: hard vote needs 1-D predicted labels of {n} rows, got {pred.shape}")
            counts[rows, encode_labels(pred, self.classes, f"member {m.name}")] += w
        return records({"prediction": self.classes[np.argmax(counts, axis=1)]}, self.output_dtype)


class SoftVoteCombiner(_Base):
    """Weighted average of class probabilities, as ``VotingClassifier(voting="soft")``.

    Each member's ``predict_proba`` columns are placed by label into the sorted union of all
    members' classes (0 for a class the member lacks); ``np.average`` over members (axis 0)
    then arg-max gives the label.
    """

    def __init__(self, method: str, members: Sequence[MemberSpec]) -> None:
        super().__init__(method, members)
        self.classes = union_classes(members)
        self.positions = {m.name: np.searchsorted(self.classes, label_array(m.classes)) for m in members}
        self.output_dtype = np.dtype([("prediction", self.classes.dtype)]
                                     + [(c, np.float64) for c in proba_column_names(self.classes)])

    def aligned(self, member: MemberSpec, proba: np.ndarray) -> np.ndarray:
        """The member's probabilities in the union's class order."""
        proba = np.asarray(proba)
        pos = self.positions[member.name]
        if proba.ndim != 2 or proba.shape[1] != len(pos):
            raise ValueError(f"member {member.name}: predict_proba of shape {proba.shape} does not match "
                             f"its {len(pos)} classes")
        if len(pos) == len(self.classes) and np.array_equal(pos, np.arange(len(pos))):
            return proba
        full = np.zeros((proba.shape[0], len(self.classes)), dtype=proba.dtype)
        full[:, pos] = proba
        return full

    def average(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Weighted average probability, shape (n, n_classes)."""
        present = self.present(outputs)
        stacked = np.asarray([self.aligned(m, outputs[m.name]) for m in present])
        return np.average(stacked, axis=0, weights=self.weights(present))

    def combine(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        avg = self.average(outputs)
        columns = {"prediction": self.classes[np.argmax(avg, axis=1)]}
        columns.update({name: avg[:, j] for j, name in enumerate(proba_column_names(self.classes))})
        return records(columns, self.output_dtype)


def make_combiner(method: str, members: Sequence[MemberSpec], **params: Any) -> Combiner:
    """Build the combiner named ``method`` for ``members``.

    Parameters
    ----------
    method : str
        One of ``mean``, ``weighted_mean``, ``median``, ``hard_vote``, ``soft_vote``, ``stacking``.
    members : sequence of MemberSpec
        The members, in the order their outputs are stacked.
    **params
        ``stacking`` needs ``model=`` (a :class:`~framework.ensemble.stacking.FittedStacking`, or
        ``model_path=`` to a saved one). Other methods take no parameters.

    Raises
    ------
    ValueError
        Unknown method, unexpected parameter, or members unfit for the method.
    """
    members = list(members)
    if method == "stacking":
        from framework.ensemble.stacking import StackingCombiner, load_stacking

        unknown = set(params) - {"model", "model_path"}
        if unknown:
            raise ValueError(f"stacking: unknown parameters {sorted(unknown)}")
        model = params.get("model")
        if model is None and params.get("model_path") is not None:
            model = load_stacking(params["model_path"])
        if model is None:
            raise ValueError("stacking: needs model= (a fitted FittedStacking) or model_path=")
        return StackingCombiner(members, model)
    if params:
        raise ValueError(f"{method}: unexpected parameters {sorted(params)}")
    if method in ("mean", "weighted_mean", "median"):
        return MeanCombiner(method, members)
    if method == "hard_vote":
        bad = [m.name for m in members if m.output != "predict" or m.kind != "classifier"]
        if bad:
            raise ValueError(f"hard_vote: members must be classifiers outputting predict: {', '.join(bad)}")
        return HardVoteCombiner(method, members)
    if method == "soft_vote":
        bad = [m.name for m in members if m.output != "predict_proba"]
        if bad:
            raise ValueError(f"soft_vote: members must output predict_proba: {', '.join(bad)}")
        return SoftVoteCombiner(method, members)
    raise ValueError(f"unknown integration method {method!r}; expected one of {', '.join(METHODS)}")
