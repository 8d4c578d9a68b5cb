"""Task demands and agents -> the array form (``Problem``), through the constraint plug-ins.

Each constraint's static mask (``Constraint.feasible``) narrows the (tasks x agents)
``allowed`` matrix; equal constraints share one mask. Counting constraints
(``Constraint.limits``) fold into one per-agent limit and one spread per model, which is
all the search phases see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .agents import RESOURCE_NAMES, SCALAR_NAMES, Agent
from .constraints import Constraint, NeedsGpu
from .model import TaskDemand
from .problem import BIG, Problem

Filter = tuple[str, np.ndarray]
"""A static filter of one task: (label for reasons, agents passing)."""

_NEEDS_GPU = NeedsGpu()


@dataclass
class Compiled:
    """The array form plus what the plan builder needs to name things and explain failures."""

    tasks: Sequence[TaskDemand]
    agents: Sequence[Agent]
    problem: Problem
    models: list[str]
    filters: list[list[Filter]]
    max_label: dict[int, str]      # model index -> label of its tightest per-agent limit
    spread_label: dict[int, str]   # model index -> label of its largest spread
    resource_names: tuple[str, ...] = SCALAR_NAMES  # name of each column of the problem's arrays


def compile_problem(tasks: Sequence[TaskDemand], agents: Sequence[Agent]) -> Compiled:
    ids = [t.task_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate task ids")
    if len({a.agent_id for a in agents}) != len(agents):
        raise ValueError("duplicate agent ids")
    models = sorted({t.model for t in tasks})
    index = {m: i for i, m in enumerate(models)}
    T, A, M = len(tasks), len(agents), len(models)
    n = len(RESOURCE_NAMES)
    demand = np.array([t.resources.as_tuple() for t in tasks], float).reshape(T, n)
    model_of = np.array([index[t.model] for t in tasks], dtype=np.int64)
    exec_dem = np.zeros((M, n))
    for t in tasks:  # the largest executor declared for a model counts
        exec_dem[index[t.model]] = np.maximum(exec_dem[index[t.model]], t.executor.as_tuple())
    cap = np.array([a.capacity.as_tuple() for a in agents], float).reshape(A, n)
    # Dimensions beyond the scalars (ports) only when asked for: a problem nobody asks ports of
    # is exactly the four-resource one (same sizes, same search).
    keep = [r for r, name in enumerate(RESOURCE_NAMES)
            if name in SCALAR_NAMES or (demand[:, r] > 0).any() or (exec_dem[:, r] > 0).any()]
    demand, exec_dem, cap = demand[:, keep], exec_dem[:, keep], cap[:, keep]
    price = np.array([0.0 if a.in_use else float(a.price) for a in agents])
    loaded = np.zeros((A, M), bool)
    running = np.zeros((A, M), np.int64)
    for j, a in enumerate(agents):
        for m in a.loaded_models:
            if m in index:
                loaded[j, index[m]] = True
        for m, n in a.running_tasks.items():
            if m in index:
                running[j, index[m]] = int(n)
    cache: dict[Constraint, np.ndarray | None] = {}
    filters = [static_filters(t, agents, cache) for t in tasks]
    allowed = np.ones((T, A), bool)
    for i, fs in enumerate(filters):
        for _, ok in fs:
            allowed[i] &= ok
    max_per, spread, max_label, spread_label = model_limits(tasks, models)
    p = Problem(demand, model_of, exec_dem, cap, price, loaded, running, allowed, max_per, spread)
    return Compiled(tasks, agents, p, models, filters, max_label, spread_label,
                    tuple(RESOURCE_NAMES[r] for r in keep))


def implied_constraints(task: TaskDemand) -> tuple[Constraint, ...]:
    """Constraints a task has without declaring them: gpus only on agents with gpus."""
    return (_NEEDS_GPU,) if task.resources.gpus > 0 else ()


def static_filters(task: TaskDemand, agents: Sequence[Agent],
                   cache: dict[Constraint, np.ndarray | None]) -> list[Filter]:
    """(label, agents passing) for each static filter of the task: its declared constraints
    in order, then the implied ones. ``cache`` keeps one mask per distinct constraint."""
    out = []
    for c in task.constraints + implied_constraints(task):
        if c not in cache:
            cache[c] = c.feasible(agents)
        mask = cache[c]
        if mask is not None:
            out.append((c.label(), mask))
    return out


def model_limits(tasks: Sequence[TaskDemand],
                 models: list[str]) -> tuple[np.ndarray, np.ndarray, dict[int, str], dict[int, str]]:
    """Per model: the tightest per-agent limit and the largest spread over its tasks'
    counting constraints, plus the labels of the constraints that set them."""
    index = {m: i for i, m in enumerate(models)}
    max_per = np.full(len(models), BIG, dtype=np.int64)
    spread = np.zeros(len(models), dtype=np.int64)
    max_label: dict[int, str] = {}
    spread_label: dict[int, str] = {}
    for t in tasks:
        m = index[t.model]
        for c in t.constraints:
            lim = c.limits()
            if lim is None:
                continue
            if lim.per_agent is not None and lim.per_agent < max_per[m]:
                max_per[m] = max(0, lim.per_agent)
                max_label[m] = c.label()
            if lim.min_agents is not None and lim.min_agents > spread[m]:
                spread[m] = lim.min_agents
                spread_label[m] = c.label()
    return max_per, spread, max_label, spread_label
