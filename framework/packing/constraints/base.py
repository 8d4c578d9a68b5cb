"""The constraint plug-in interface and the registry of job-file keys.

A constraint is a small frozen value attached to a task (``TaskDemand.constraints``), in the
manner of Fenzo's ``ConstraintEvaluator`` and Nomad's feasibility checkers. It may provide:

* ``label()``: its name in placement-failure reasons (``Unplaced.filtered``);
* ``feasible(agents)``: a static mask over the offered agents (True where the task may go),
  or None when it filters nothing statically;
* ``limits()``: for counting constraints, what the search phases enforce per model: at most
  ``per_agent`` tasks of the model on one agent (running ones included) and at least
  ``min_agents`` distinct agents for the model. The packer folds every limit of a model into
  the tightest ``per_agent`` and the largest ``min_agents``; the construction, improvement,
  exact and selection phases see only those two numbers per model.

A constraint class with a ``job_key`` is registered with :func:`register`; the job file's
``constraints = { <job_key> = ... }`` entry is then parsed by its ``from_job`` classmethod,
which raises :class:`ConstraintValueError` naming the bad field. Constraints must be hashable
(frozen dataclasses): equal constraints share one computed mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence, TypeVar

import numpy as np

from ..agents import Agent


@dataclass(frozen=True)
class ModelLimits:
    """What a counting constraint asks of its model's tasks (None: nothing)."""

    per_agent: int | None = None
    min_agents: int | None = None


class ConstraintValueError(ValueError):
    """A job-file value a constraint cannot take. ``field``: the sub-field under the
    constraint's key ('' for the value itself); ``problem``: 'must be ..., got ...'."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


class Constraint:
    """Base of every placement constraint; the defaults filter nothing and limit nothing."""

    name: ClassVar[str] = "constraint"
    job_key: ClassVar[str | None] = None
    """The key under a model's ``constraints`` table in the job file (None: not a job field)."""

    def label(self) -> str:
        """How placement failures name this constraint."""
        return self.name

    def feasible(self, agents: Sequence[Agent]) -> np.ndarray | None:
        """Bool mask over ``agents`` (True: the task may go there), or None: no static filter."""
        return None

    def limits(self) -> ModelLimits | None:
        """Per-model counting limits, or None for a purely static constraint."""
        return None

    @classmethod
    def from_job(cls, value: object) -> tuple[Constraint, ...]:
        """The constraints one job-file value stands for; raise ConstraintValueError."""
        raise NotImplementedError(f"{cls.__name__} has no job-file form")


C = TypeVar("C", bound=type[Constraint])
_JOB_KEYS: dict[str, type[Constraint]] = {}


def register(cls: C) -> C:
    """Make ``cls.job_key`` a job-file constraint parsed by ``cls.from_job`` (class decorator)."""
    key = cls.job_key
    if not key:
        raise ValueError(f"{cls.__name__} has no job_key to register")
    known = _JOB_KEYS.get(key)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"constraint key {key!r} is already taken by {known.__qualname__}")
    _JOB_KEYS[key] = cls
    return cls


def unregister(key: str) -> None:
    """Forget a job-file key (tests that register their own constraint clean up with this)."""
    _JOB_KEYS.pop(key, None)


def job_keys() -> tuple[str, ...]:
    """Registered job-file keys, sorted: the order in which a model's constraints are parsed."""
    return tuple(sorted(_JOB_KEYS))


def from_job(key: str, value: object) -> tuple[Constraint, ...]:
    """Parse one job-file entry through the plug-in registered for ``key``."""
    if key not in _JOB_KEYS:
        raise ConstraintValueError("", f"is not a known constraint (known: {', '.join(job_keys())})")
    return _JOB_KEYS[key].from_job(value)


def whole_number(value: object, minimum: int) -> int:
    """A job-file integer of at least ``minimum`` (bools and floats rejected)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConstraintValueError("", f"must be int, got {value!r}")
    if value < minimum:
        raise ConstraintValueError("", f"must be at least {minimum}, got {value}")
    return value
