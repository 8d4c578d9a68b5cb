"""Placement constraints as plug-ins: each has a ``name``/``label`` and a static agent check.

Static checks (attribute equality, gpu need) become the (tasks x agents) ``allowed`` mask;
dynamic ones (per-agent limit, spread) become per-model numbers enforced by the state.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .model import Agent, AttributeEquals, AvoidAgents, MaxPerAgent, SpreadAtLeast, TaskDemand, _attr_text

NEEDS_GPU = "needs_gpu"


def attribute_check(c: AttributeEquals, agents: Sequence[Agent]) -> np.ndarray:
    return np.array([c.attribute in ag.attributes and _attr_text(ag.attributes[c.attribute]) == c.value
                     for ag in agents], dtype=bool)


def static_filters(task: TaskDemand, agents: Sequence[Agent],
                   cache: dict) -> list[tuple[str, np.ndarray]]:
    """(label, agents passing) for each static filter of the task, in declaration order."""
    out = []
    for c in task.constraints:
        if isinstance(c, AttributeEquals):
            key = ("attr", c.attribute, c.value)
            if key not in cache:
                cache[key] = attribute_check(c, agents)
            out.append((c.label(), cache[key]))
        elif isinstance(c, AvoidAgents):
            out.append((c.name, np.array([ag.agent_id not in c.agent_ids for ag in agents], dtype=bool)))
    if task.resources.gpus > 0:
        if "gpu" not in cache:
            cache["gpu"] = np.array([ag.capacity.gpus > 0 for ag in agents], dtype=bool)
        out.append((NEEDS_GPU, cache["gpu"]))
    return out


def model_limits(tasks: Sequence[TaskDemand], models: list[str]) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """Per model: tightest MaxPerAgent and largest SpreadAtLeast, plus their labels."""
    index = {m: i for i, m in enumerate(models)}
    big = np.iinfo(np.int64).max // 4
    max_per = np.full(len(models), big, dtype=np.int64)
    spread = np.zeros(len(models), dtype=np.int64)
    max_label: dict[int, str] = {}
    spread_label: dict[int, str] = {}
    for t in tasks:
        m = index[t.model]
        for c in t.constraints:
            if isinstance(c, MaxPerAgent) and c.limit < max_per[m]:
                max_per[m] = max(0, c.limit)
                max_label[m] = c.label()
            elif isinstance(c, SpreadAtLeast) and c.agents > spread[m]:
                spread[m] = c.agents
                spread_label[m] = c.label()
    return max_per, spread, max_label, spread_label
