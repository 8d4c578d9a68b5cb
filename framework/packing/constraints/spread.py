"""``spread_over = K``: the model's tasks span at least K agents."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Constraint, ModelLimits, register, whole_number


@register
@dataclass(frozen=True)
class SpreadAtLeast(Constraint):
    """The model's tasks spread over at least ``agents`` agents (agents already running it count).

    When fewer tasks exist or can be placed, the requirement is min(agents, running agents
    + placed tasks): the first tasks of the model go to distinct agents.
    """

    agents: int
    name = "spread_at_least"
    job_key = "spread_over"

    def label(self) -> str:
        return f"spread_at_least({self.agents})"

    def limits(self) -> ModelLimits:
        return ModelLimits(min_agents=self.agents)

    @classmethod
    def from_job(cls, value: object) -> tuple[Constraint, ...]:
        return (cls(whole_number(value, 1)),)
