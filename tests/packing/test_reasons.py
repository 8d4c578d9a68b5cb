"""Unplaced reasons, decline reasons, executor sharing and the logged gap."""

import logging

from framework.packing import (Agent, AttributeEquals, MaxPerAgent, PackingOptions, Resources,
                               SpreadAtLeast, TaskDemand, pack)

from .packing_helpers import capped, check_plan

CAPPED = capped()   # the assertions below are about plan quality: no deadline, capped search


def agent(i, cpus=4, mem=8, zone="x", gpus=0, **kw):
    return Agent(f"a{i}", f"h{i}", (f"o{i}",), Resources(cpus, mem, 10, gpus), {"zone": zone}, **kw)


def task(i, model="m", cpus=1, mem=1, exec_mem=0, cons=(), gpus=0):
    return TaskDemand(f"t{i}", model, Resources(cpus, mem, 0, gpus), Resources(0, exec_mem, 0, 0), tuple(cons))


def test_unplaced_counts_attribute_filter_and_exhausted_resource():
    agents = [agent(0, mem=4), agent(1, mem=64, zone="y"), agent(2, mem=6)]
    tasks = [task(0, mem=8, cons=[AttributeEquals("zone", "x")])]
    plan = pack(tasks, agents, options=CAPPED)
    u = plan.unplaced["t0"]
    assert dict(u.filtered) == {"attribute_equals(zone=x)": 1}
    assert dict(u.exhausted) == {"mem": 2}
    assert u.describe() == "t0: mem exhausted on 2 agents; attribute_equals(zone=x) filtered 1"
    assert plan.declined == {"a0": "never_fits", "a1": "never_fits", "a2": "never_fits"}
    check_plan(plan, tasks, agents)


def test_exhausted_counts_reflect_the_plan_not_the_empty_agents():
    agents = [agent(0, cpus=2), agent(1, cpus=2)]
    tasks = [task(i, cpus=1.5) for i in range(3)]
    plan = pack(tasks, agents, options=CAPPED)
    assert plan.placed_count == 2 and len(plan.unplaced) == 1
    (u,) = plan.unplaced.values()
    assert dict(u.exhausted) == {"cpus": 2} and not u.filtered


def test_max_per_agent_and_gpu_filters():
    agents = [agent(0), agent(1), agent(2, gpus=1)]
    tasks = [task(i, cons=[MaxPerAgent(1)]) for i in range(4)] + [task(9, model="g", gpus=1, cpus=8)]
    plan = pack(tasks, agents, options=CAPPED)
    assert plan.placed_count == 3
    reasons = {k: (dict(v.filtered), dict(v.exhausted)) for k, v in plan.unplaced.items()}
    (m_reason,) = [r for k, r in reasons.items() if k != "t9"]
    assert m_reason == ({"max_per_agent(1)": 3}, {})
    assert reasons["t9"] == ({"needs_gpu": 2}, {"cpus": 1})
    check_plan(plan, tasks, agents)


def test_spread_puts_first_tasks_on_distinct_agents():
    agents = [agent(i, cpus=8, mem=32) for i in range(4)]
    tasks = [task(i, cons=[SpreadAtLeast(3)]) for i in range(6)]
    plan = pack(tasks, agents, options=CAPPED)
    assert plan.placed_count == 6 and len(plan.assignments) == 3
    check_plan(plan, tasks, agents)


def test_decline_unneeded_vs_never_fits():
    agents = [agent(0), agent(1), agent(2, mem=0.5), agent(3, zone="y")]
    tasks = [task(0, cons=[AttributeEquals("zone", "x")])]
    plan = pack(tasks, agents, options=CAPPED)
    assert len(plan.assignments) == 1
    assert plan.declined == {"a1": "unneeded", "a2": "never_fits", "a3": "never_fits"}


def test_executor_counted_once_per_agent_and_model_and_not_where_loaded():
    tasks = [task(i, mem=3, exec_mem=4, cpus=0.5) for i in range(3)]
    # 4 + 3 + 3 = 10: two shards share one executor on a 10 GiB agent, the third needs another
    plan = pack(tasks, [agent(0, mem=10), agent(1, mem=10)], options=CAPPED)
    assert sorted(len(v) for v in plan.assignments.values()) == [1, 2]
    assert all(v == ("m",) for v in plan.new_executors.values())
    # executor already loaded on a0: all three fit (9 <= 10) and nothing new is started
    agents = [agent(0, mem=10, loaded_models=frozenset({"m"})), agent(1, mem=10)]
    plan = pack(tasks, agents, options=CAPPED)
    assert plan.assignments == {"a0": ("t0", "t1", "t2")} and plan.new_executors == {}
    check_plan(plan, tasks, agents)


def test_colocation_beats_spreading_when_executor_is_big():
    # each agent fits executor + 2 shards; FFD-like spreading would need 3 executors
    tasks = [task(i, model=f"m{i % 2}", mem=1, exec_mem=5, cpus=0.1) for i in range(4)]
    agents = [agent(i, mem=7) for i in range(4)]
    plan = pack(tasks, agents, options=CAPPED)
    assert len(plan.assignments) == 2 and plan.proven_optimal
    for ids in plan.assignments.values():
        assert len({t[1:] for t in ids}) and len({int(t[1:]) % 2 for t in ids}) == 1


def test_in_use_agents_are_free_and_price_counts():
    agents = [agent(0, price=5.0), agent(1, price=1.0, in_use=True), agent(2, price=2.0)]
    tasks = [task(i, cpus=2) for i in range(3)]
    plan = pack(tasks, agents, options=CAPPED)
    assert set(plan.assignments) == {"a1", "a2"} and plan.cost == 2.0 and plan.proven_optimal


def test_gap_is_logged(caplog):
    caplog.set_level(logging.INFO, logger="framework.packing")
    pack([task(0)], [agent(0)], options=PackingOptions())
    assert any("lower bound" in r.getMessage() and "gap" in r.getMessage() for r in caplog.records)
