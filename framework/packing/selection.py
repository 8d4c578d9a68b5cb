"""Select-then-pack for priced heterogeneous agents.

When tasks are small next to agents, the cost is decided mostly by *which* agents are
opened. A small HiGHS knapsack-cover MILP picks the cheapest agent set whose capacity
covers the demand (task resources plus the executor load of a reference plan) times a
slack factor; the construction then fills the chosen agents first.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from .construct import construct
from .highs import milp_options
from .problem import Problem, State


def choose_agents(p: Problem, need: np.ndarray, time_limit: float,
                  node_limit: int | None = None) -> np.ndarray | None:
    """Cheapest agent set with sum of capacities >= need per resource (None if none found)."""
    rows = [r for r in range(p.R) if need[r] > 1e-9]
    if not rows:
        return np.zeros(0, np.int64)
    res = milp(p.price, integrality=np.ones(p.A), bounds=Bounds(0, 1),
               constraints=LinearConstraint(p.cap[:, rows].T, need[rows], np.inf),
               options=milp_options(max(0.005, time_limit), node_limit, mip_rel_gap=1e-4))
    if res.x is None:
        return None
    return np.flatnonzero(res.x > 0.5)


def select_then_pack(ref: State, slacks: tuple[float, ...], time_limit: float,
                     deadline: float = float("inf"), construct_s: float = 0.0,
                     node_limit: int | None = None) -> list[State]:
    """One packed state per slack factor (agent set from ``choose_agents``), as long as
    another construction (``construct_s`` seconds) still fits before ``deadline``."""
    p = ref.p
    exec_load = sum((ref.cnt[:, m] > 0).sum() * p.exec_dem[m] for m in range(p.M) if p.has_exec[m])
    need = p.demand[ref.where >= 0].sum(axis=0) + exec_load
    out = []
    for slack in slacks:
        if time.perf_counter() + 1.5 * construct_s + time_limit / len(slacks) > deadline:
            break
        chosen = choose_agents(p, need * slack, time_limit / len(slacks), node_limit)
        if chosen is None:
            continue
        s = State(p)
        per = (p.cap[chosen] / p.scale).sum(axis=1)
        order = chosen[np.lexsort((chosen, -per))]   # biggest first: fewer executor copies
        construct(s, first=list(order))
        out.append(s)
    return out
