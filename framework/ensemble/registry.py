"""The registry of integration methods: the one list of their names and of what each declares.

An integration method is one module in :mod:`framework.ensemble.methods` (every module there is
imported) that calls :func:`register` with an :class:`IntegrationMethod`: its name, which members
it accepts (kinds, outputs) and its further compatibility checks, whether it predicts labels,
its output columns, how it is evaluated and a factory. The job file's ``integration`` choices
(:mod:`framework.jobspec`), :func:`make_combiner`, the checks before launch
(:mod:`framework.ensemble.compat`) and the evaluation (:mod:`framework.ensemble.evaluation`) all
read it, so adding a method touches no other file.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from framework.ensemble.combiners import Combiner
from framework.ensemble.specs import KINDS, OUTPUTS, Kind, MemberSpec, Output


class Evaluation(StrEnum):
    """How the evaluation report judges an ensemble and its members."""

    LABELS = "labels"
    """The ensemble predicts labels: classification metrics (accuracy, ROC AUC, log loss) for it
    and for each member's predicted labels (votes)."""
    SCORES = "scores"
    """The ensemble's value is an average of what the members contribute: regression metrics,
    or score metrics (ROC AUC, log loss...) against 0/1 labels; each member is judged on the
    value it contributes (mean, weighted_mean, median)."""
    FITTED = "fitted"
    """A fitted layer over the members: classification metrics when it predicts labels, else
    regression metrics; classifier members are judged as classifiers (stacking)."""


MemberClasses = Mapping[str, "np.ndarray | None"]
"""Member name -> its classes (from the spec or the estimator's ``classes_``), None if it has none."""

Checks = Callable[[str, Sequence[MemberSpec], MemberClasses], list[str]]
"""Method-specific compatibility checks: ``(method, members, classes) -> problems`` (each names its member)."""

Factory = Callable[[str, Sequence[MemberSpec], Mapping[str, Any]], Combiner]
"""Builds the combiner: ``(method, members, params) -> Combiner``; ValueError on unfit members."""


def no_checks(method: str, members: Sequence[MemberSpec], classes: MemberClasses) -> list[str]:
    """For methods whose acceptance (kinds, outputs) says everything."""
    return []


@dataclass(frozen=True)
class IntegrationMethod:
    """What an integration method declares.

    Attributes
    ----------
    name : str
        The job file's ``integration`` value.
    factory : Factory
        Builds the combiner from members and parameters.
    evaluation : Evaluation
        How the evaluation report judges it.
    predicts_labels : bool or None
        Whether ``prediction`` is a class label; None: decided when fitted (stacking: a
        classifier's). The built combiner's ``predicts_labels`` is the answer for one ensemble.
    output_columns : tuple of str
        The columns it produces, as patterns: ``"proba_*"`` stands for one column per class
        (zero or more).
    kinds, outputs : tuple
        The member kinds and outputs it accepts.
    checks : Checks
        Further compatibility checks before launch (beyond kinds and outputs).
    params : tuple of str
        Keyword parameters its factory takes.
    train_table : str or None
        The job-file table holding the labelled rows it is fitted on (``"stacking"``), None if
        it is not fitted.
    supports_subsets : bool
        Whether it can combine a subset of the members (degraded answers, contributions).
    summary : str
        One line for humans.
    """

    name: str
    factory: Factory
    evaluation: Evaluation
    predicts_labels: bool | None
    output_columns: tuple[str, ...]
    kinds: tuple[Kind, ...] = KINDS
    outputs: tuple[Output, ...] = OUTPUTS
    checks: Checks = no_checks
    params: tuple[str, ...] = ()
    train_table: str | None = None
    supports_subsets: bool = True
    summary: str = ""

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c == "_" for c in self.name):
            raise ValueError(f"integration method name must be letters, digits or '_', got {self.name!r}")
        for kind in self.kinds:
            if kind not in KINDS:
                raise ValueError(f"{self.name}: unknown member kind {kind!r}; expected {', '.join(KINDS)}")
        for output in self.outputs:
            if output not in OUTPUTS:
                raise ValueError(f"{self.name}: unknown member output {output!r}; expected {', '.join(OUTPUTS)}")
        if not self.kinds or not self.outputs:
            raise ValueError(f"{self.name}: must accept at least one member kind and output")
        labels = self.evaluation is Evaluation.LABELS
        if self.predicts_labels is not None and labels != self.predicts_labels:
            raise ValueError(f"{self.name}: evaluation {self.evaluation.value!r} does not fit "
                             f"predicts_labels={self.predicts_labels}")
        if self.predicts_labels is None and self.evaluation is not Evaluation.FITTED:
            raise ValueError(f"{self.name}: only a fitted method (evaluation 'fitted') decides predicts_labels later")

    def accepts(self, member: MemberSpec) -> bool:
        """Whether the member's kind and output are among those the method accepts."""
        return member.kind in self.kinds and member.output in self.outputs

    def acceptance_problems(self, members: Sequence[MemberSpec]) -> list[str]:
        """Each member whose kind or output the method does not accept, one line per problem."""
        problems = []
        for m in members:
            if m.kind not in self.kinds:
                wanted = " or ".join(f"{k}s" for k in self.kinds)
                problems.append(f"model {m.name}: {self.name} needs {wanted}, it is a {m.kind}")
            if m.output not in self.outputs:
                problems.append(f"model {m.name}: {self.name} needs output {' or '.join(self.outputs)}, "
                                f"not {m.output}")
        return problems

    def problems(self, members: Sequence[MemberSpec], classes: MemberClasses) -> list[str]:
        """Acceptance problems, then the method's own checks."""
        return self.acceptance_problems(members) + self.checks(self.name, members, classes)

    def columns_match(self, columns: Sequence[str]) -> bool:
        """Whether a combiner's actual ``output_columns`` fit the declared patterns, in order."""
        rest = list(columns)
        for pattern in self.output_columns:
            if "*" in pattern:
                while rest and fnmatch.fnmatchcase(rest[0], pattern):
                    rest.pop(0)
            elif rest and rest[0] == pattern:
                rest.pop(0)
            else:
                return False
        return not rest

    def build(self, members: Sequence[MemberSpec], params: Mapping[str, Any]) -> Combiner:
        """Check the parameters and the members' kinds and outputs, then call the factory."""
        unexpected = set(params) - set(self.params)
        if unexpected:
            raise ValueError(f"{self.name}: unexpected parameters {sorted(unexpected)}")
        bad = [m.name for m in members if not self.accepts(m)]
        if bad:
            raise ValueError(f"{self.name}: members must {self._accepted()}: {', '.join(bad)}")
        return self.factory(self.name, members, params)

    def _accepted(self) -> str:
        kinds = "" if set(self.kinds) == set(KINDS) else " or ".join(f"{k}s" for k in self.kinds)
        outputs = "" if set(self.outputs) == set(OUTPUTS) else " or ".join(self.outputs)
        if kinds and outputs:
            return f"be {kinds} outputting {outputs}"
        return f"be {kinds}" if kinds else f"output {outputs}"


_METHODS: dict[str, IntegrationMethod] = {}


def register(method: IntegrationMethod) -> IntegrationMethod:
    """Add ``method``; ValueError if its name is taken."""
    if method.name in _METHODS:
        raise ValueError(f"integration method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a registered method (for tests that register their own)."""
    _METHODS.pop(name, None)


def method_names() -> tuple[str, ...]:
    """The registered methods' names, in registration order (the built-in ones first)."""
    return tuple(_METHODS)


def method(name: str) -> IntegrationMethod:
    """The registered method ``name``; ValueError naming the known ones otherwise."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown integration method {name!r}; expected one of {', '.join(_METHODS)}") from None


def make_combiner(name: str, members: Sequence[MemberSpec], **params: Any) -> Combiner:
    """Build the combiner of the registered method ``name`` for ``members``.

    Parameters
    ----------
    name : str
        A registered method (:func:`method_names`).
    members : sequence of MemberSpec
        The members, in the order their outputs are stacked.
    **params
        The method's parameters (``stacking``: ``model=`` a fitted
        :class:`~framework.ensemble.stacking.FittedStacking`, or ``model_path=``).

    Raises
    ------
    ValueError
        Unknown method, unexpected parameter, or members unfit for the method.
    """
    return method(name).build(list(members), params)
