"""The 1-D identical-bin special case: detection, arc-flow exactness, validity through pack()."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework.packing import Agent, MaxPerAgent, Resources, TaskDemand, first_fit_decreasing, pack
from framework.packing.arcflow import build_graph, solve_arcflow
from framework.packing.onedim import as_1d, ffd_bins, mbs_bins
from framework.packing.problem import Problem

from .packing_helpers import capped, check_plan
from .test_quality import _min_bins


def _types(w: list[int]) -> tuple[np.ndarray, np.ndarray]:
    sizes, counts = np.unique(np.array(w), return_counts=True)
    return sizes[::-1].copy(), counts[::-1].copy()


@pytest.mark.parametrize("seed", range(25))
def test_arcflow_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    w = sorted(rng.integers(5, 100, size=int(rng.integers(1, 9))).tolist(), reverse=True)
    sizes, counts = _types(w)
    graph = build_graph(sizes, counts, 100, 10_000)
    bins, bound, proven = solve_arcflow(sizes, counts, 100, len(w), 1, 10.0, graph)
    best = _min_bins(w, 100)
    assert proven and bins is not None and len(bins) == best == bound
    packed = sorted(int(sizes[i]) for b in bins for i in b)
    assert packed == sorted(w)
    assert all(sum(int(sizes[i]) for i in b) <= 100 for b in bins)


def test_detection_needs_the_special_case():
    p = Problem.simple(np.array([[3.0], [4.0]]), np.array([[10.0], [10.0]]))
    assert as_1d(p) is not None
    assert as_1d(Problem.simple(np.array([[3.0, 1.0]]), np.array([[10.0, 5.0]]))) is None
    assert as_1d(Problem.simple(np.array([[3.0]]), np.array([[10.0], [12.0]]))) is None
    assert as_1d(Problem.simple(np.array([[0.35]]), np.array([[1.0]]))) is not None   # scaled by 100
    assert as_1d(Problem.simple(np.array([[1 / 3]]), np.array([[1.0]]))) is None      # not a decimal grid


def test_mbs_and_ffd_pack_everything():
    rng = np.random.default_rng(3)
    w = rng.integers(10, 60, size=80).astype(float)
    d = as_1d(Problem.simple(w[:, None], np.full((80, 1), 100.0)))
    for bins in (ffd_bins(d), mbs_bins(d, float("inf"))):
        assert sorted(int(d.sizes[i]) for b in bins for i in b) == sorted(w.astype(int).tolist())
        assert all(sum(int(d.sizes[i]) for i in b) <= d.cap for b in bins)


def _cpu_instance(cpus: list[int], n_agents: int, cap: int = 10) -> tuple[list[TaskDemand], list[Agent]]:
    tasks = [TaskDemand(f"t{i}", "m", Resources(cpus=c), Resources()) for i, c in enumerate(cpus)]
    agents = [Agent(f"a{j}", f"h{j}", (f"o{j}",), Resources(cap, 64, 100, 0), {}) for j in range(n_agents)]
    return tasks, agents


SET = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@SET
@given(st.lists(st.integers(1, 10), min_size=1, max_size=14), st.integers(1, 16))
def test_pack_1d_valid_and_never_worse_than_ffd(cpus, n_agents):
    tasks, agents = _cpu_instance(cpus, n_agents)
    plan = pack(tasks, agents, options=capped(max_iterations=500))
    check_plan(plan, tasks, agents)
    ffd = first_fit_decreasing(tasks, agents)
    assert (plan.placed_count, -plan.cost) >= (ffd.placed_count, -ffd.cost)
    if plan.proven_optimal and not plan.unplaced:
        assert plan.cost == _min_bins(sorted(cpus, reverse=True), 10)


@SET
@given(st.lists(st.integers(1, 10), min_size=1, max_size=14))
def test_1d_one_more_identical_agent_never_costs_more(cpus):
    """A real guarantee for the 1-D path: enough identical agents -> the plan does not depend
    on how many more are offered (iteration-capped search, no deadline)."""
    tasks, agents = _cpu_instance(cpus, len(cpus))
    opts = capped(max_iterations=300)
    base = pack(tasks, agents, options=opts)
    more = pack(tasks, agents + _cpu_instance([], len(cpus) + 1)[1][-1:], options=opts)
    assert more.cost <= base.cost and more.assignments == base.assignments


def test_constraints_leave_the_special_case():
    tasks, agents = _cpu_instance([6, 6, 6], 3)
    tasks = [TaskDemand(t.task_id, t.model, t.resources, t.executor, (MaxPerAgent(1),)) for t in tasks]
    plan = pack(tasks, agents, options=capped())
    check_plan(plan, tasks, agents)
    assert plan.placed_count == 3


def test_many_tiny_items_do_not_recurse_too_deep():
    tasks, agents = _cpu_instance([1] * 3000, 5, cap=1000)
    tasks += [TaskDemand("big", "m", Resources(cpus=999), Resources())]
    agents += _cpu_instance([], 6, cap=1000)[1][5:]
    plan = pack(tasks, agents, options=capped(max_iterations=300))
    check_plan(plan, tasks, agents)
    assert plan.placed_count == 3001 and len(plan.assignments) == 4   # ceil(3999 / 1000)
