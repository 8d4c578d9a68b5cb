"""The packer's ``ports`` dimension (issue 15): a count of free ports per agent; serving replicas
ask for one, batch tasks for none (and then the problem is exactly the four-resource one)."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework.packing import Agent, Resources, TaskDemand, pack
from framework.packing.compile import compile_problem

from .packing_helpers import capped, check_plan


def _agent(i: int, cpus: float, ports: int, price: float = 1.0) -> Agent:
    ranges = ((31000, 31000 + ports - 1),) if ports else ()
    return Agent(f"a{i}", f"h{i}", (f"o{i}",), Resources(cpus, 4096, 100, 0, ports), {}, price=price,
                 port_ranges=ranges)


def _replica(i: int, model: str = "m", cpus: float = 0.5) -> TaskDemand:
    return TaskDemand(f"r{i}", model, Resources(cpus, 64, 0, 0, 1), Resources(0.1, 32))


def _batch(i: int, model: str = "m", cpus: float = 0.5) -> TaskDemand:
    return TaskDemand(f"t{i}", model, Resources(cpus, 64), Resources(0.1, 32))


def test_a_problem_no_task_asks_ports_of_keeps_the_four_scalar_dimensions() -> None:
    compiled = compile_problem([_batch(i) for i in range(3)], [_agent(0, 4, 1000)])
    assert compiled.resource_names == ("cpus", "mem", "disk", "gpus")
    assert compiled.problem.R == 4 and compiled.problem.cap.shape == (1, 4)
    with_ports = compile_problem([_batch(0), _replica(1)], [_agent(0, 4, 1000)])
    assert with_ports.resource_names == ("cpus", "mem", "disk", "gpus", "ports")
    assert with_ports.problem.cap[0, 4] == 1000 and list(with_ports.problem.demand[:, 4]) == [0, 1]


@given(cpus=st.lists(st.sampled_from([0.25, 0.5, 1.0, 1.5]), min_size=1, max_size=12),
       agents=st.lists(st.tuples(st.sampled_from([2.0, 4.0, 8.0]), st.integers(0, 1001),
                                 st.sampled_from([0.5, 1.0, 2.0])), min_size=1, max_size=5))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_batch_plans_do_not_depend_on_the_ports_agents_offer(cpus: list[float],
                                                              agents: list[tuple[float, int, float]]) -> None:
    tasks = [_batch(i, f"m{i % 2}", c) for i, c in enumerate(cpus)]
    with_ports = [_agent(i, c, p, price) for i, (c, p, price) in enumerate(agents)]
    without = [_agent(i, c, 0, price) for i, (c, p, price) in enumerate(agents)]
    a = pack(tasks, with_ports, options=capped(100))
    b = pack(tasks, without, options=capped(100))
    assert (a.assignments, a.new_executors, a.declined, a.cost, a.lower_bound) == \
           (b.assignments, b.new_executors, b.declined, b.cost, b.lower_bound)


@given(replicas=st.integers(1, 10), batch=st.integers(0, 6),
       ports=st.lists(st.integers(0, 3), min_size=1, max_size=4))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_never_more_port_needing_tasks_on_an_agent_than_it_has_free_ports(replicas: int, batch: int,
                                                                         ports: list[int]) -> None:
    agents = [_agent(i, 8, p) for i, p in enumerate(ports)]
    tasks = [_replica(i) for i in range(replicas)] + [_batch(i) for i in range(batch)]
    plan = pack(tasks, agents, options=capped(300))
    check_plan(plan, tasks, agents)
    needing = Counter(agent for agent, ids in plan.assignments.items() for t in ids if t.startswith("r"))
    for agent in agents:
        assert needing[agent.agent_id] <= agent.capacity.ports
    # cpus are plentiful: every batch task is placed, and as many replicas as there are ports
    assert plan.placed_count == batch + min(replicas, sum(ports))


def test_replicas_beyond_the_free_ports_wait_with_ports_named_as_exhausted() -> None:
    agents = [_agent(0, 8, 2), _agent(1, 8, 1)]
    plan = pack([_replica(i) for i in range(4)], agents, options=capped(300))
    assert plan.placed_count == 3
    (waiting,) = plan.unplaced.values()
    assert waiting.exhausted == {"ports": 2}
