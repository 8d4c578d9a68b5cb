"""``max_per_agent = N``: at most N tasks of the model per agent (running ones included)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Constraint, ModelLimits, register, whole_number


@register
@dataclass(frozen=True)
class MaxPerAgent(Constraint):
    """At most ``limit`` tasks of this task's model per agent (running ones included)."""

    limit: int
    name = "max_per_agent"
    job_key = "max_per_agent"

    def label(self) -> str:
        return f"max_per_agent({self.limit})"

    def limits(self) -> ModelLimits:
        return ModelLimits(per_agent=self.limit)

    @classmethod
    def from_job(cls, value: object) -> tuple[Constraint, ...]:
        return (cls(whole_number(value, 1)),)
