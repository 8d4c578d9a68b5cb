"""``pack``: filters, construction, improvement, exact phase, bound, reasons, declines."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .baseline import ffd_state
from .bounds import cost_lower_bound
from .constraints import model_limits, static_filters
from .construct import construct
from .exact import candidate_agents, model_size, solve_exact
from .improve import Budget, improve, pool_search
from .onedim import as_1d, solve_1d
from .model import (RESOURCE_NAMES, Agent, CostModel, DeclineReason, PackingOptions, Plan,
                    TaskDemand, Unplaced)
from .problem import Problem, State
from .selection import select_then_pack

log = logging.getLogger("framework.packing")
PLAN_SHARE = 0.15         # at most this share of the time budget is kept for building the Plan
PLAN_PER_TASK_S = 5e-6    # estimated plan-building time per task
FFD_PER_TASK_S = 2e-5     # estimated FFD time per task; FFD runs as a floor when the budget
FFD_FLOOR_FACTOR = 20     # is at least this many times its estimate


@dataclass
class Compiled:
    tasks: Sequence[TaskDemand]
    agents: Sequence[Agent]
    problem: Problem
    models: list[str]
    filters: list[list[tuple[str, np.ndarray]]]
    max_label: dict
    spread_label: dict


def compile_problem(tasks: Sequence[TaskDemand], agents: Sequence[Agent]) -> Compiled:
    ids = [t.task_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate task ids")
    if len({a.agent_id for a in agents}) != len(agents):
        raise ValueError("duplicate agent ids")
    models = sorted({t.model for t in tasks})
    index = {m: i for i, m in enumerate(models)}
    T, A, M = len(tasks), len(agents), len(models)
    demand = np.array([t.resources.as_tuple() for t in tasks], float).reshape(T, 4)
    model_of = np.array([index[t.model] for t in tasks], dtype=np.int64)
    exec_dem = np.zeros((M, 4))
    for t in tasks:  # the largest executor declared for a model counts
        exec_dem[index[t.model]] = np.maximum(exec_dem[index[t.model]], t.executor.as_tuple())
    cap = np.array([a.capacity.as_tuple() for a in agents], float).reshape(A, 4)
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
    cache: dict = {}
    filters = [static_filters(t, agents, cache) for t in tasks]
    allowed = np.ones((T, A), bool)
    for i, fs in enumerate(filters):
        for _, ok in fs:
            allowed[i] &= ok
    max_per, spread, max_label, spread_label = model_limits(tasks, models)
    p = Problem(demand, model_of, exec_dem, cap, price, loaded, running, allowed, max_per, spread)
    return Compiled(tasks, agents, p, models, filters, max_label, spread_label)


def solve(p: Problem, options: PackingOptions, start: float | None = None) -> tuple[State, float, bool]:
    """Array-level decision: (state, agent-cost lower bound for its placed tasks, proven)."""
    start = time.perf_counter() if start is None else start
    # the search stops early enough to leave time for building the plan afterwards
    end = start + options.time_budget_s - min(PLAN_SHARE * options.time_budget_s, PLAN_PER_TASK_S * p.T + 0.002)
    budget = Budget(end, options.max_iterations)
    rng = np.random.default_rng(options.seed)
    one = as_1d(p)
    if one is not None:
        res = solve_1d(p, one, budget.deadline, rng, options.max_iterations)
        if res is not None:
            return res
    state = State(p)
    t_construct = time.perf_counter()
    construct(state)
    t_construct = time.perf_counter() - t_construct
    if (state.where < 0).any():  # try to place more through swaps, any agent may open
        trial = state.copy()
        pool = [int(t) for t in np.flatnonzero(trial.where < 0) if p.allowed[t].any()]
        pool_search(trial, pool, np.ones(p.A, bool), budget, rng, 200)
        if trial.placed() > state.placed() and trial.spread_ok():
            state = trial
    if options.time_budget_s >= FFD_FLOOR_FACTOR * FFD_PER_TASK_S * p.T:  # FFD as a floor
        ffd = ffd_state(p)
        if (ffd.placed(), -ffd.cost()) > (state.placed(), -state.cost()) and ffd.spread_ok():
            state = ffd
    lb = cost_lower_bound(p, state.where >= 0)
    if state.cost() > lb + 1e-9 and _heterogeneous(p):
        for cand in select_then_pack(state, (1.0, 1.02, 1.05, 1.1), 0.25 * options.time_budget_s,
                                     budget.deadline, t_construct):
            if (cand.placed(), -cand.cost()) > (state.placed(), -state.cost()) and cand.spread_ok():
                state = cand
    # skip even sizing the exact model on big instances (sizing alone costs tens of ms)
    size = model_size(p, candidate_agents(p, state)) if options.exact and p.T * p.A <= 50 * options.exact_max_vars \
        else options.exact_max_vars + 1
    small = options.exact and size <= options.exact_max_vars
    if small and (size <= 1000 or _heterogeneous(p)):  # HiGHS likely to help: leave it 60%
        budget.deadline = start + 0.4 * options.time_budget_s
    state = improve(state, lb, budget, rng)
    budget.deadline = end
    all_placed = bool((state.where >= 0).all())
    proven = all_placed and state.cost() <= lb + 1e-9
    left = budget.deadline - time.perf_counter()
    if small and not proven and left > 0.005:
        if True:
            exact, optimal = solve_exact(p, state, left * 0.9)
            if exact is not None:
                better = (exact.placed(), -exact.cost()) > (state.placed(), -state.cost())
                if better or (optimal and (exact.placed(), -exact.cost()) == (state.placed(), -state.cost())):
                    state = exact
                if optimal:
                    proven = True
                    lb = max(lb, state.cost()) if (state.where >= 0).all() else lb
    if proven:
        lb = max(lb, state.cost()) if (state.where >= 0).all() else lb
    return state, min(lb, state.cost()) if (state.where >= 0).all() else lb, proven


def _heterogeneous(p: Problem) -> bool:
    priced = p.price > 0
    return bool(priced.any()) and not (np.all(p.price[priced] == p.price[priced][0])
                                       and np.all(p.cap == p.cap[0]))


def pack(tasks: Sequence[TaskDemand], agents: Sequence[Agent], cost_model: CostModel = CostModel(),
         options: PackingOptions = PackingOptions()) -> Plan:
    """Place as many tasks as possible at least cost; see the package docstring."""
    start = time.perf_counter()
    compiled = compile_problem(tasks, agents)
    state, lb, proven = solve(compiled.problem, options, start)
    return build_plan(compiled, state, cost_model, proven, time.perf_counter() - start, lb=lb)


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
    if p.types is None:
        from .construct import task_types
        p.types = task_types(p)
    seen: dict[int, Unplaced] = {}   # tasks of one type (same model, demand, filters) share reasons
    for t in np.flatnonzero(~placed).tolist():
        ty = int(p.types[0][t])
        if ty not in seen or c.tasks[t].constraints != c.tasks[int(p.types[1][ty][0])].constraints:
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
    from .construct import empty_fits, task_types
    if p.types is None:
        p.types = task_types(p)
    reps = np.array([m[0] for m in p.types[1]], dtype=np.int64)
    mo = p.model_of[reps]
    fits = empty_fits(p, p.demand[reps], mo, p.allowed[reps], p.exec_dem[mo])
    fits &= p.running.T[mo] < p.max_per[mo][:, None]
    return ~fits.any(axis=0)


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
    for r, name in enumerate(RESOURCE_NAMES[:p.R]):
        if over[:, r].any():
            exhausted[name] = int(over[:, r].sum())
    return Unplaced(c.tasks[t].task_id, exhausted, filtered)


def _log(plan: Plan, n_tasks: int, n_agents: int, elapsed: float) -> None:
    log.info("packed %d/%d tasks on %d of %d agents: cost %.4g, lower bound %.4g, gap %.2f%%%s, %.1f ms",
             plan.placed_count, n_tasks, len(plan.assignments), n_agents, plan.cost, plan.lower_bound,
             100 * plan.gap, " (proven optimal)" if plan.proven_optimal else "", 1000 * elapsed)
    for u in plan.unplaced.values():
        log.info("unplaced %s", u.describe())
