"""Property-based checks of pack(): validity, bound, determinism, monotonicity, exactness."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from framework.packing import (Agent, AttributeEquals, MaxPerAgent, PackingOptions, Plan,
                               Resources, SpreadAtLeast, TaskDemand, first_fit_decreasing, pack)

from .packing_helpers import capped, check_plan

MODELS = ["m0", "m1", "m2"]


@st.composite
def instances(draw, max_tasks=8, max_agents=5):
    n_agents = draw(st.integers(1, max_agents))
    agents = []
    for i in range(n_agents):
        running = {}
        loaded = set()
        for m in MODELS:
            if draw(st.integers(0, 5)) == 0:
                loaded.add(m)
                if draw(st.booleans()):
                    running[m] = draw(st.integers(1, 2))
        agents.append(Agent(
            f"a{i}", f"h{i}", (f"o{i}",),
            Resources(draw(st.integers(1, 8)), draw(st.integers(1, 16)), 10, draw(st.sampled_from([0, 0, 1]))),
            {"zone": draw(st.sampled_from(["x", "y"]))},
            price=draw(st.sampled_from([0.5, 1.0, 1.0, 2.0])),
            in_use=draw(st.integers(0, 6)) == 0,
            loaded_models=frozenset(loaded), running_tasks=running))
    per_model = {m: draw(st.lists(st.sampled_from(["zone", "max", "spread"]), max_size=2, unique=True))
                 for m in MODELS}
    execs = {m: Resources(0, draw(st.integers(0, 4)), 0, 0) for m in MODELS}
    n_tasks = draw(st.integers(0, max_tasks))
    tasks = []
    for i in range(n_tasks):
        m = draw(st.sampled_from(MODELS))
        cons = []
        for kind in per_model[m]:
            if kind == "zone":
                cons.append(AttributeEquals("zone", "x"))
            elif kind == "max":
                cons.append(MaxPerAgent(2))
            else:
                cons.append(SpreadAtLeast(2))
        tasks.append(TaskDemand(f"t{i}", m, Resources(draw(st.integers(0, 4)), draw(st.integers(1, 8)), 1,
                                                      draw(st.sampled_from([0, 0, 0, 1]))),
                                execs[m], tuple(cons)))
    return tasks, agents


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)


@SETTINGS
@given(instances())
def test_plans_are_valid_and_bounded(inst):
    tasks, agents = inst
    for options in (PackingOptions(), PackingOptions(exact=False)):
        check_plan(pack(tasks, agents, options=options), tasks, agents)
    check_plan(first_fit_decreasing(tasks, agents), tasks, agents)


@SETTINGS
@given(instances())
def test_same_input_same_plan(inst):
    tasks, agents = inst
    opts = capped(max_iterations=300)
    assert pack(tasks, agents, options=opts) == pack(tasks, agents, options=opts)


@SETTINGS
@given(instances(max_agents=4), st.integers(1, 8), st.integers(1, 16), st.sampled_from([0.5, 1.0, 3.0]))
def test_one_more_agent_never_costs_more(inst, cpus, mem, price):
    """Guaranteed when both decisions are proven optimal (always so on instances this small)."""
    tasks, agents = inst
    extra = Agent("extra", "hx", ("ox",), Resources(cpus, mem, 10, 1), {"zone": "x"}, price=price)
    opts = capped(max_iterations=300)
    without = pack(tasks, agents, options=opts)
    with_extra = pack(tasks, agents + [extra], options=opts)
    assert with_extra.placed_count >= without.placed_count
    assume(without.proven_optimal and with_extra.proven_optimal)
    if with_extra.placed_count == without.placed_count:
        assert with_extra.cost <= without.cost + 1e-9


def _brute_force(tasks, agents) -> tuple[int, float]:
    """Best (placed, -cost) over every assignment, each checked by the independent checker."""
    best = (-1, 0.0)
    options = [None] + [a.agent_id for a in agents]
    for choice in itertools.product(options, repeat=len(tasks)):
        assign: dict[str, list[str]] = {}
        for t, a in zip(tasks, choice):
            if a is not None:
                assign.setdefault(a, []).append(t.task_id)
        new_exec = {}
        for aid, tids in assign.items():
            agent = next(a for a in agents if a.agent_id == aid)
            ms = sorted({t.model for t in tasks if t.task_id in tids} - agent.loaded_models)
            if ms:
                new_exec[aid] = tuple(ms)
        cost = sum(0.0 if a.in_use else a.price for a in agents if a.agent_id in assign)
        plan = Plan({a: tuple(v) for a, v in assign.items()}, new_exec,
                    {a.agent_id: "unneeded" for a in agents if a.agent_id not in assign},
                    {t.task_id: None for t, a in zip(tasks, choice) if a is None}, cost, 0.0, False)
        try:
            check_plan(plan, tasks, agents)
        except AssertionError:
            continue
        placed = sum(a is not None for a in choice)
        if (placed, -cost) > (best[0], -best[1]):
            best = (placed, cost)
    return best


@settings(max_examples=40, deadline=None, derandomize=True)
@given(instances(max_tasks=5, max_agents=3))
def test_proven_optimal_plans_match_brute_force(inst):
    tasks, agents = inst
    plan = pack(tasks, agents, options=capped(max_iterations=300))
    placed, cost = _brute_force(tasks, agents)
    assert plan.placed_count == placed
    if plan.proven_optimal:
        assert abs(plan.cost - cost) < 1e-9
    assert plan.lower_bound <= cost + 1e-9 or plan.placed_count < len(tasks)
