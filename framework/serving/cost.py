"""What a deployment costs per hour, and the least it could cost (the packer's lower bound).

Prices are the batch cost model's (``[pricing]``, ``framework.packing.resolve_price``), read per
hour for a deployment: every agent that holds at least one replica costs its price, and each
replica adds ``[pricing] unit_prices`` (per resource-second, as for batch tasks) x its
resources x 3600.  ``lower_bound_per_hour`` is the packer's bound on the agents' cost of
placing the desired replicas on the given agents (``pack``'s ``Plan.lower_bound``: proven
optimal plans give their cost; else the fractional cover / Martello–Toth L2 of
``framework.packing.bounds``), plus the same unit term.
Pure: no Mesos, no clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from framework.packing import Agent, CostModel, PackingOptions, Resources, TaskDemand, pack
from framework.packing.bounds import cost_lower_bound
from framework.packing.compile import compile_problem
from framework.serving.placement import ReplicaView, ServeSnapshot

SECONDS_PER_HOUR = 3600.0
NO_UNIT_PRICES = CostModel()
NOTHING = Resources()
BOUND_OPTIONS = PackingOptions(time_budget_s=math.inf, max_iterations=300, exact_max_nodes=100)
"""The packer's search for the bound: capped by steps, not time, so that the bound depends on its
inputs only, never on how loaded the machine is (a time budget that a busy machine cuts short
leaves the fractional bound: 0.83 instead of 1.0 for the bench's three replicas on its cheap
agent, and a deployment at the optimum looks 20 % over it); enough for the exact phase on a
deployment's few replicas (tens of milliseconds; computed only when its inputs change)."""
MEMO_SIZE = 64
"""The most bounds a ``deployment_cost`` memo holds (then it starts again)."""


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
                         agent_reserve: Resources = NOTHING, options: PackingOptions = BOUND_OPTIONS) -> float:
    """A lower bound on the hourly cost of any placement of ``desired`` replicas per member on
    ``agents`` (their whole capacity for us, see :func:`whole_agents`; every agent at its price,
    whether in use or not).  ``executors``: per member, its own executor's resources
    (``per_model``); ``agent_reserve``: the shared executor's, taken off every agent.

    The bound is the packer's: ``pack``'s ``Plan.lower_bound`` when it places every replica (the
    plan's cost itself when its exact phase proves the plan optimal, as on small deployments),
    and never below ``cost_lower_bound`` (fractional cover / Martello–Toth L2) of all of them.
    Within a time budget (``options``) a loaded machine may leave the weaker of the two; a
    deterministic bound takes ``time_budget_s=math.inf`` (and a ``max_iterations`` cap).  It costs
    a packing: compute it when the desired counts or the agents change, not per request."""
    executors = executors or {}
    tasks = [TaskDemand(f"{member}#{i}", member, demands[member], executors.get(member, Resources()))
             for member, count in sorted(desired.items()) for i in range(count)]
    if not tasks or not agents:
        return unit_cost_per_hour(desired, demands, cost_model) if tasks else 0.0
    fresh = [dataclasses.replace(a, in_use=False, loaded_models=frozenset(), running_tasks={},
                                 capacity=(a.capacity - agent_reserve).nonnegative()) for a in agents]
    bound = cost_lower_bound(compile_problem(tasks, fresh).problem)
    plan = pack(tasks, fresh, NO_UNIT_PRICES, options)
    if not plan.unplaced:
        bound = max(bound, plan.lower_bound)
    return bound + unit_cost_per_hour(desired, demands, cost_model)


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


def measure_agents(offered: Sequence[Agent], snapshot: ServeSnapshot) -> list[Agent]:
    """Each offered agent as it is for us: its free capacity plus what the snapshot's replicas
    (draining ones too: they hold their resources until they end) and executors hold there.
    Take it when the offers arrive, with the replicas as they are then: Mesos offers what none of
    them holds, so offer and replicas describe one moment.  Made later (a replica launched from
    that offer, or ended since), the sum counts a replica twice or not at all, and the bound
    read from it flips with every offer cycle (two agents of one cpu holding 0.83 cpus of
    replicas look like 0.5 cpus, or 1.5).  For :func:`deployment_cost` with ``whole=True``."""
    demands = {r.member: NOTHING for r in snapshot.replicas}
    demands.update({m: t.demand for m, t in snapshot.targets.items()})
    here = {a.agent_id for a in offered}
    held = {agent_id: res for agent_id, res in _executors_held(snapshot).items() if agent_id in here}
    replicas = [r for r in snapshot.replicas if r.agent_id in here]
    return whole_agents(offered, replicas, demands, {}, executors=held)


def _rounded(resources: Resources) -> tuple[float, ...]:
    return tuple(round(v, 9) for v in resources.as_tuple())


def _executors_held(snapshot: ServeSnapshot) -> dict[str, Resources]:
    """Per agent running an executor of ours, what it holds: the shared executor's reserve plus
    the per-model executors of the members it serves."""
    held: dict[str, Resources] = {}
    for agent_id, members in snapshot.executors.items():
        own = [snapshot.targets[m].executor for m in members if m in snapshot.targets]
        held[agent_id] = sum(own, snapshot.agent_reserve)
    return held


@dataclass(frozen=True)
class CostReport:
    """A deployment's cost per hour as placed, and the least any placement of its desired
    replicas on the known agents could cost (for ``/metrics`` and the status page)."""

    cost_per_hour: float
    lower_bound_per_hour: float

    @property
    def ratio(self) -> float:
        """Cost over its lower bound (1.0: no placement is cheaper; inf: a cost with a bound of 0)."""
        if self.lower_bound_per_hour > 0:
            return self.cost_per_hour / self.lower_bound_per_hour
        return 1.0 if self.cost_per_hour <= 0 else math.inf


def deployment_cost(snapshot: ServeSnapshot, agents: Sequence[Agent], default_price: float = 1.0,
                    options: PackingOptions = BOUND_OPTIONS, memo: dict[str, float] | None = None,
                    whole: bool = False) -> CostReport:
    """:func:`cost_per_hour` of the snapshot's replicas (draining ones too: they still hold their
    agents) and :func:`lower_bound_per_hour` of its desired counts on the agents as they are for
    us: ``agents`` already made so (``whole``: each from :func:`measure_agents` when it was
    offered; what a running controller passes), or, without ``whole``, ``agents`` as offered made
    whole now (:func:`whole_agents`: plus what our replicas and executors hold there; right only
    when the replicas have not changed since those offers).  Agents holding replicas that
    ``agents`` lacks count what the replicas hold.  An agent whose price is known neither from
    ``agents`` nor from the snapshot counts ``default_price`` (``[pricing] default``).  ``memo``:
    bounds already computed, by their inputs (the bound costs a packing; a caller that asks every
    second keeps one, so that it packs again only when the desired counts or the agents changed)."""
    prices = {r.agent_id: default_price for r in snapshot.replicas}
    prices.update(snapshot.agent_prices)
    prices.update({a.agent_id: a.price for a in agents})
    demands = {r.member: NOTHING for r in snapshot.replicas}  # members no longer in the job
    demands.update({m: t.demand for m, t in snapshot.targets.items()})
    held = _executors_held(snapshot)
    if whole:
        known = {a.agent_id for a in agents}
        extra = whole_agents([], [r for r in snapshot.replicas if r.agent_id not in known], demands, prices,
                             executors={a: r for a, r in held.items() if a not in known})
        whole_list = list(agents) + extra
    else:
        whole_list = whole_agents(agents, snapshot.replicas, demands, prices, executors=held)
    cost = cost_per_hour(snapshot.replicas, prices, demands, snapshot.cost_model)
    inputs = ({m: t.desired for m, t in snapshot.targets.items()}, whole_list, demands, snapshot.cost_model,
              {m: t.executor for m, t in snapshot.targets.items()}, snapshot.agent_reserve, options)
    # Keyed by what the bound reads, not by the rest (lower_bound_per_hour resets it): the
    # offers' ids change with every offer cycle, which ports are free and what runs where with
    # every launch; sorted and rounded, so that equal inputs give one key whatever the order the
    # members were met in or the float noise of adding and taking back what replicas hold.
    unoffered = sorted((a.agent_id, a.price, _rounded(a.capacity), tuple(sorted(a.attributes.items())))
                       for a in whole_list)
    key = repr((sorted(inputs[0].items()), unoffered, sorted((m, _rounded(demands[m])) for m in inputs[0]),
                *inputs[3:])) if memo is not None else ""
    bound = memo.get(key) if memo is not None else None
    if bound is None:
        bound = lower_bound_per_hour(*inputs)
        if memo is not None:
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[key] = bound
    return CostReport(cost, bound)
