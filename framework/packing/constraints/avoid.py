"""Not on these agents: a retried task avoids the agents it already failed on (set by the scheduler)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..agents import Agent
from .base import Constraint


@dataclass(frozen=True)
class AvoidAgents(Constraint):
    """Not on these agents."""

    agent_ids: frozenset[str]
    name = "avoid_agents"

    def label(self) -> str:
        # reasons count it under its name: the ids change with every retry
        return self.name

    def feasible(self, agents: Sequence[Agent]) -> np.ndarray:
        return np.array([ag.agent_id not in self.agent_ids for ag in agents], dtype=bool)

    def describe(self) -> str:
        """The constraint with its agent ids, for logs."""
        return f"avoid_agents({','.join(sorted(self.agent_ids))})"
