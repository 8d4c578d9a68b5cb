"""First-fit decreasing baseline: tasks by decreasing normalised size, first agent that fits."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .compile import compile_problem
from .model import Agent, CostModel, Plan, TaskDemand
from .plan_builder import build_plan
from .problem import Problem, State

DEFAULT_COST_MODEL = CostModel()


def ffd_state(p: Problem) -> State:
    """FFD on the array form (agents in input order; constraints and executors respected)."""
    s = State(p)
    for t in np.lexsort((np.arange(p.T), -p.size)):
        mask = s.fits_mask(int(t))
        if mask.any():
            s.add(int(t), int(np.argmax(mask)))
    return s


def first_fit_decreasing(tasks: Sequence[TaskDemand], agents: Sequence[Agent],
                         cost_model: CostModel = DEFAULT_COST_MODEL) -> Plan:
    compiled = compile_problem(tasks, agents)
    state = ffd_state(compiled.problem)
    return build_plan(compiled, state, cost_model, proven=False, elapsed=0.0, log=False)
