"""Cost-minimising multi-resource packer (no Mesos imports).

``pack`` places tasks onto agents: as many tasks as possible, then least cost (sum of the
prices of newly used agents, plus optional resource unit prices x duration). Tasks of one
model on one agent share one executor, counted once. Phases: static filters, agent-by-agent
construction, pool-and-swap improvement, an exact HiGHS solve on small instances, and a
lower bound (Martello–Toth L2 / fractional cover) whose gap is logged to
``framework.packing``.

Notes: ``Plan.lower_bound`` bounds the cost of placing the tasks the plan places (when some
stay unplaced it is not a bound over other task subsets). Results are deterministic for a
given input when the iteration cap (``PackingOptions.max_iterations``) rather than the
deadline ends the search. Offering one more agent never raises the cost when both decisions
are proven optimal; for heuristic decisions this is not guaranteed.
"""

from .baseline import first_fit_decreasing
from .model import (RESOURCE_NAMES, Agent, AttributeEquals, AvoidAgents, Constraint, CostModel, DeclineReason,
                    MaxPerAgent, PackingOptions, Plan, PriceTable, Resources, SpreadAtLeast,
                    TaskDemand, Unplaced, resolve_price)
from .packer import pack

__all__ = ["RESOURCE_NAMES", "Agent", "AttributeEquals", "AvoidAgents", "Constraint", "CostModel", "DeclineReason",
           "MaxPerAgent", "PackingOptions", "Plan", "PriceTable", "Resources", "SpreadAtLeast",
           "TaskDemand", "Unplaced", "first_fit_decreasing", "pack", "resolve_price"]
