"""Independent plan checker for the packing tests (does not reuse the packer's state code)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from framework.packing import (Agent, AttributeEquals, MaxPerAgent, PackingOptions, Plan, Resources, SpreadAtLeast,
                               TaskDemand)


def capped(max_iterations: int = 2000, exact_max_nodes: int | None = 10_000, exact: bool = True) -> PackingOptions:
    """No deadline: the search ends on its iteration cap and each HiGHS solve on its node cap
    (or a proof), so what a test asserts about plan quality does not depend on machine load."""
    return PackingOptions(time_budget_s=math.inf, max_iterations=max_iterations, exact_max_nodes=exact_max_nodes,
                          exact=exact)


def check_plan(plan: Plan, tasks: list[TaskDemand], agents: list[Agent]) -> None:
    by_id = {t.task_id: t for t in tasks}
    agents_by_id = {a.agent_id: a for a in agents}
    seen = Counter(t for ts in plan.assignments.values() for t in ts)
    assert all(n == 1 for n in seen.values()), "task placed twice"
    assert set(seen) | set(plan.unplaced) == set(by_id) and not (set(seen) & set(plan.unplaced))
    assert set(plan.assignments) | set(plan.declined) == set(agents_by_id)
    assert not (set(plan.assignments) & set(plan.declined))
    cost = 0.0
    spread_agents: dict[str, set] = defaultdict(set)
    for a in agents:
        for m, n in a.running_tasks.items():
            if n > 0:
                spread_agents[m].add(a.agent_id)
    for aid, tids in plan.assignments.items():
        agent = agents_by_id[aid]
        assert tids, "used agent without tasks"
        cost += 0.0 if agent.in_use else agent.price
        total = Resources()
        models = Counter(by_id[t].model for t in tids)
        for t in tids:
            task = by_id[t]
            total = total + task.resources
            for c in task.constraints:
                if isinstance(c, AttributeEquals):
                    v = agent.attributes.get(c.attribute)
                    text = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
                    assert v is not None and text == c.value
                if isinstance(c, MaxPerAgent):
                    assert models[task.model] + agent.running_tasks.get(task.model, 0) <= c.limit
            if task.resources.gpus > 0:
                assert agent.capacity.gpus > 0
        expected_new = []
        for m in sorted(models):
            spread_agents[m].add(aid)
            if m not in agent.loaded_models:
                ex = Resources()
                for t in tids:
                    if by_id[t].model == m:
                        ex = Resources(*(max(x, y) for x, y in zip(ex.as_tuple(), by_id[t].executor.as_tuple())))
                total = total + ex
                expected_new.append(m)
        assert tuple(expected_new) == tuple(sorted(plan.new_executors.get(aid, ())))
        assert total.fits_in(agent.capacity), f"{aid} over-committed: {total} > {agent.capacity}"
    placed = Counter(by_id[t].model for ts in plan.assignments.values() for t in ts)
    for t in tasks:
        for c in t.constraints:
            if isinstance(c, SpreadAtLeast):
                running = sum(1 for a in agents if a.running_tasks.get(t.model, 0) > 0)
                assert len(spread_agents[t.model]) >= min(c.agents, running + placed[t.model])
    assert abs(plan.cost - cost) < 1e-6
    assert plan.cost >= plan.lower_bound - 1e-6
