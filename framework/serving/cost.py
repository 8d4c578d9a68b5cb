"""What a deployment costs per hour, and the least it could cost (the packer's lower bound).

Prices are the batch cost model's (``[pricing]``, ``framework.packing.resolve_price``), read per
hour for a deployment: every agent that holds at least one replica costs its price, and each
replica adds ``[pricing] unit_prices`` (per resource-second, as for batch tasks) x its
resources x 3600.  ``lower_bound_per_hour`` is the packer's bound
(``framework.packing.bounds.cost_lower_bound``: Martello–Toth L2 / fractional cover) on the
agents' cost of placing the desired replicas on the given agents, plus the same unit term.
Pure: no Mesos, no clock.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

from framework.packing import Agent, CostModel, Resources, TaskDemand
from framework.packing.bounds import cost_lower_bound
from framework.packing.compile import compile_problem
from framework.serving.placement import ReplicaView

SECONDS_PER_HOUR = 3600.0
NO_UNIT_PRICES = CostModel()
NOTHING = Resources()


def unit_cost_per_hour(counts: Mapping[str, int], demands: Mapping[str, Resources], cost_model: CostModel) -> float:
    """``unit_prices`` x resources x 3600 over ``counts`` replicas per member."""
    unit = cost_model.unit_prices.as_tuple()
    return SECONDS_PER_HOUR * sum(n * sum(p * r for p, r in zip(unit, demands[m].as_tuple()))
                                  for m, n in counts.items() if n > 0)


def cost_per_hour(replicas: Iterable[ReplicaView], agent_prices: Mapping[str, float],
                  demands: Mapping[str, Resources] | None = None, cost_model: CostModel = NO_UNIT_PRICES) -> float:
    """The hourly cost of ``replicas`` as placed: each agent holding one at its price (an agent
    missing from ``agent_prices`` raises ``KeyError``), plus the unit term when ``cost_model`` has
    unit prices (then ``demands`` must name every replica's member)."""
    replicas = list(replicas)
    agents = {r.agent_id for r in replicas}
    total = sum(agent_prices[a] for a in agents)
    if not cost_model.unit_prices.is_zero():
        counts: dict[str, int] = defaultdict(int)
        for replica in replicas:
            counts[replica.member] += 1
        total += unit_cost_per_hour(counts, demands or {}, cost_model)
    return total


def lower_bound_per_hour(desired: Mapping[str, int], agents: Sequence[Agent], demands: Mapping[str, Resources],
                         cost_model: CostModel = NO_UNIT_PRICES, executors: Mapping[str, Resources] | None = None,
                         agent_reserve: Resources = NOTHING) -> float:
    """A lower bound on the hourly cost of any placement of ``desired`` replicas per member on
    ``agents`` (their whole capacity for us, see :func:`whole_agents`; every agent at its price,
    whether in use or not).  ``executors``: per member, its own executor's resources
    (``per_model``); ``agent_reserve``: the shared executor's, taken off every agent."""
    executors = executors or {}
    tasks = [TaskDemand(f"{member}#{i}", member, demands[member], executors.get(member, Resources()))
             for member, count in sorted(desired.items()) for i in range(count)]
    if not tasks or not agents:
        return unit_cost_per_hour(desired, demands, cost_model) if tasks else 0.0
    fresh = [dataclasses.replace(a, in_use=False, loaded_models=frozenset(), running_tasks={},
                                 capacity=(a.capacity - agent_reserve).nonnegative()) for a in agents]
    problem = compile_problem(tasks, fresh).problem
    return cost_lower_bound(problem) + unit_cost_per_hour(desired, demands, cost_model)


def whole_agents(offered: Sequence[Agent], replicas: Iterable[ReplicaView], demands: Mapping[str, Resources],
                 agent_prices: Mapping[str, float], hostnames: Mapping[str, str] | None = None,
                 executors: Mapping[str, Resources] | None = None) -> list[Agent]:
    """The agents as they are for us: each offered agent's free capacity plus what our replicas
    there hold (and ``executors``: per agent, what our executor there holds), and the agents
    that hold replicas but offer nothing now, with the capacity of those replicas (a floor:
    their free capacity is not known).  For :func:`lower_bound_per_hour` of a running deployment."""
    used: dict[str, Resources] = defaultdict(Resources)
    for replica in replicas:
        used[replica.agent_id] = used[replica.agent_id] + demands[replica.member]
    for agent_id, held in (executors or {}).items():
        used[agent_id] = used[agent_id] + held
    agents = [dataclasses.replace(a, capacity=a.capacity + used.get(a.agent_id, Resources())) for a in offered]
    seen = {a.agent_id for a in offered}
    for agent_id in sorted(set(used) - seen):
        agents.append(Agent(agent_id, (hostnames or {}).get(agent_id, agent_id), (), used[agent_id], {},
                            price=agent_prices[agent_id]))
    return agents
