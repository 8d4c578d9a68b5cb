"""``attribute = { zone = "a" }``: the agent's attribute must equal the value (as text)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..agents import Agent, attr_text
from .base import Constraint, ConstraintValueError, register


@register
@dataclass(frozen=True)
class AttributeEquals(Constraint):
    """The agent's attribute ``attribute`` must equal ``value`` (compared as strings)."""

    attribute: str
    value: str
    name = "attribute_equals"
    job_key = "attribute"

    def label(self) -> str:
        return f"attribute_equals({self.attribute}={self.value})"

    def feasible(self, agents: Sequence[Agent]) -> np.ndarray:
        return np.array([self.attribute in ag.attributes and attr_text(ag.attributes[self.attribute]) == self.value
                         for ag in agents], dtype=bool)

    @classmethod
    def from_job(cls, value: object) -> tuple[Constraint, ...]:
        """One constraint per attribute, in sorted attribute order."""
        if not isinstance(value, dict):
            raise ConstraintValueError("", f"must be dict, got {value!r}")
        found: list[Constraint] = []
        for key, wanted in sorted(value.items()):
            if not isinstance(wanted, (str, int, float)):
                raise ConstraintValueError(str(key), f"must be a string or number, got {wanted!r}")
            found.append(cls(str(key), str(wanted)))
        return tuple(found)
