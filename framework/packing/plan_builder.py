"""A placement state -> the ``Plan``: assignments, new executors, declines, reasons, log."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from .bounds import cost_lower_bound
from .compile import Compiled
from .construct import empty_fits
from .model import CostModel, DeclineReason, Plan, TaskDemand, Unplaced
from .problem import Problem, State

log = logging.getLogger("framework.packing")


def unit_cost(tasks: Sequence[TaskDemand], placed: np.ndarray, cost_model: CostModel) -> float:
    if cost_model.unit_prices.is_zero():
        return 0.0
    unit = np.array(cost_model.unit_prices.as_tuple())
    total = 0.0
    for t, ok in zip(tasks, placed):
        if ok and t.duration:
            total += float(np.dot(unit, t.resources.as_tuple())) * float(t.duration)
    return total


def build_plan(c: Compiled, state: State, cost_model: CostModel, proven: bool, elapsed: float,
               lb: float | None = None, log: bool = True) -> Plan:
    p = c.problem
    placed = state.where >= 0
    if lb is None:
        lb = min(cost_lower_bound(p, placed), state.cost())
    extra = unit_cost(c.tasks, placed, cost_model)
    assignments: dict[str, tuple[str, ...]] = {}
    new_exec: dict[str, tuple[str, ...]] = {}
    declined: dict[str, DeclineReason] = {}
    never = _never_fits(p)
    placed_idx = np.flatnonzero(placed)
    by_agent = placed_idx[np.argsort(state.where[placed_idx], kind="stable")]
    bounds = np.searchsorted(state.where[by_agent], np.arange(p.A + 1))
    fresh = (state.cnt > 0) & ~p.loaded
    fresh_a, fresh_m = np.nonzero(fresh)
    fresh_at = np.searchsorted(fresh_a, np.arange(p.A + 1))
    for a, ag in enumerate(c.agents):
        lo, hi = bounds[a], bounds[a + 1]
        if hi > lo:
            assignments[ag.agent_id] = tuple(c.tasks[t].task_id for t in by_agent[lo:hi].tolist())
            ms = fresh_m[fresh_at[a]:fresh_at[a + 1]]
            if len(ms):
                new_exec[ag.agent_id] = tuple(c.models[m] for m in ms.tolist())
        else:
            declined[ag.agent_id] = "never_fits" if never[a] else "unneeded"
    unplaced: dict[str, Unplaced] = {}
    types = p.task_types()
    seen: dict[int, Unplaced] = {}   # tasks of one type (same model, demand, filters) share reasons
    for t in np.flatnonzero(~placed).tolist():
        ty = int(types[0][t])
        if ty not in seen or c.tasks[t].constraints != c.tasks[int(types[1][ty][0])].constraints:
            seen[ty] = _reasons(c, state, t)
        r = seen[ty]
        unplaced[c.tasks[t].task_id] = Unplaced(c.tasks[t].task_id, r.exhausted, r.filtered)
    plan = Plan(assignments, new_exec, declined, unplaced, float(state.cost() + extra), float(lb + extra),
                bool(proven))
    if log:
        _log(plan, len(c.tasks), len(c.agents), elapsed)
    return plan


def _never_fits(p: Problem) -> np.ndarray:
    """Agents where no task could ever be placed, even alone on the empty agent."""
    if p.T == 0:
        return np.ones(p.A, bool)
    reps = np.array([m[0] for m in p.task_types()[1]], dtype=np.int64)
    mo = p.model_of[reps]
    fits = empty_fits(p, p.demand[reps], mo, p.allowed[reps], p.exec_dem[mo])
    fits &= p.running.T[mo] < p.max_per[mo][:, None]
    return np.asarray(~fits.any(axis=0))


def _reasons(c: Compiled, state: State, t: int) -> Unplaced:
    """Nomad-style counts: the first filter that rejects each agent, else exhausted resources."""
    p = c.problem
    m = p.model_of[t]
    filtered: dict[str, int] = {}
    exhausted: dict[str, int] = {}
    rejected = np.zeros(p.A, bool)
    for label, ok in c.filters[t]:
        hit = ~ok & ~rejected
        if hit.any():
            filtered[label] = filtered.get(label, 0) + int(hit.sum())
        rejected |= ~ok
    full = (state.cnt[:, m] + p.running[:, m]) >= p.max_per[m]
    hit = full & ~rejected
    if hit.any():
        filtered[c.max_label.get(m, "max_per_agent")] = int(hit.sum())
    rejected |= full
    if state.distinct[m] < p.spread[m]:
        busy = (state.cnt[:, m] + p.running[:, m]) > 0
        hit = busy & ~rejected
        if hit.any():
            filtered[c.spread_label.get(m, "spread_at_least")] = int(hit.sum())
        rejected |= busy
    need = (state.cnt[:, m] == 0) & ~p.loaded[:, m]
    new = state.load + p.demand[t] + need[:, None] * p.exec_dem[m]
    over = (new > p.cap_tol) & ~rejected[:, None]
    for r, name in enumerate(c.resource_names):
        if over[:, r].any():
            exhausted[name] = int(over[:, r].sum())
    return Unplaced(c.tasks[t].task_id, exhausted, filtered)


def _log(plan: Plan, n_tasks: int, n_agents: int, elapsed: float) -> None:
    log.info("packed %d/%d tasks on %d of %d agents: cost %.4g, lower bound %.4g, gap %.2f%%%s, %.1f ms",
             plan.placed_count, n_tasks, len(plan.assignments), n_agents, plan.cost, plan.lower_bound,
             100 * plan.gap, " (proven optimal)" if plan.proven_optimal else "", 1000 * elapsed)
    for u in plan.unplaced.values():
        log.info("unplaced %s", u.describe())
