"""``pack``: filters, construction, improvement, exact phase, bound, reasons, declines."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from .baseline import DEFAULT_COST_MODEL, ffd_state
from .bounds import cost_lower_bound
from .compile import compile_problem
from .construct import construct
from .exact import candidate_agents, model_size, solve_exact
from .improve import Budget, improve, pool_search
from .model import Agent, CostModel, PackingOptions, Plan, TaskDemand
from .onedim import as_1d, solve_1d
from .plan_builder import build_plan
from .problem import Problem, State
from .selection import select_then_pack

PLAN_SHARE = 0.15         # at most this share of the time budget is kept for building the Plan
PLAN_PER_TASK_S = 5e-6    # estimated plan-building time per task
FFD_PER_TASK_S = 2e-5     # estimated FFD time per task; FFD runs as a floor when the budget
FFD_FLOOR_FACTOR = 20     # is at least this many times its estimate
DEFAULT_OPTIONS = PackingOptions()
TINY_EXACT_SIZE = 200
"""Exact models at most this big (``model_size``: a deployment's few replicas on a few agents)
are solved by HiGHS first; the heuristic phases run only if it did not prove its plan optimal.
Such a proof takes milliseconds, where the improvement phase would spend its whole budget (or
``max_iterations`` rounds: 0.1 s for ``serve``'s cost bound of four replicas on two agents)
failing to reach a lower bound that is not tight."""


def solve(p: Problem, options: PackingOptions, start: float | None = None) -> tuple[State, float, bool]:
    """Array-level decision: (state, agent-cost lower bound for its placed tasks, proven)."""
    start = time.perf_counter() if start is None else start
    # the search stops early enough to leave time for building the plan afterwards
    end = start + options.time_budget_s - min(PLAN_SHARE * options.time_budget_s, PLAN_PER_TASK_S * p.T + 0.002)
    budget = Budget(end, options.max_iterations)
    rng = np.random.default_rng(options.seed)
    one = as_1d(p)
    if one is not None:
        res = solve_1d(p, one, budget.deadline, rng, options.max_iterations, options.exact_max_nodes)
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
    if options.exact and p.T * p.A <= TINY_EXACT_SIZE and state.cost() > lb + 1e-9 \
            and model_size(p, candidate_agents(p, state)) <= TINY_EXACT_SIZE:
        exact, optimal = solve_exact(p, state, 0.9 * (end - time.perf_counter()), options.exact_max_nodes)
        if exact is not None and optimal and (exact.placed(), -exact.cost()) >= (state.placed(), -state.cost()):
            return exact, exact.cost() if (exact.where >= 0).all() else lb, True
    if state.cost() > lb + 1e-9 and _heterogeneous(p):
        for cand in select_then_pack(state, (1.0, 1.02, 1.05, 1.1), 0.25 * options.time_budget_s,
                                     budget.deadline, t_construct, options.exact_max_nodes):
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
        exact, optimal = solve_exact(p, state, left * 0.9, options.exact_max_nodes)
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


def pack(tasks: Sequence[TaskDemand], agents: Sequence[Agent], cost_model: CostModel = DEFAULT_COST_MODEL,
         options: PackingOptions = DEFAULT_OPTIONS) -> Plan:
    """Place as many tasks as possible at least cost; see the package docstring."""
    start = time.perf_counter()
    compiled = compile_problem(tasks, agents)
    state, lb, proven = solve(compiled.problem, options, start)
    return build_plan(compiled, state, cost_model, proven, time.perf_counter() - start, lb=lb)


