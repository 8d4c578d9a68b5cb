"""Cost-minimising multi-resource packer (no Mesos imports).

``pack`` places tasks onto agents: as many tasks as possible, then least cost (sum of the
prices of newly used agents, plus optional resource unit prices x duration). Tasks of one
model on one agent share one executor, counted once. Phases: static filters, agent-by-agent
construction, pool-and-swap improvement, an exact HiGHS solve on small instances, and a
lower bound (Martello–Toth L2 / fractional cover) whose gap is logged to
``framework.packing``. One special case is detected inside ``pack``: tasks using a single
resource on identical, equally priced agents with no executors or constraints are solved as
1-D bin packing (``onedim``: FFD floor, MBS', ruin-and-recreate, arc-flow model).

Constraints are plug-ins (``constraints/``, one module each): a label for failure reasons, a
static feasibility mask over agents and, for counting ones, per-model limits (tasks per
agent, agents to span) that every search phase enforces; job-file keys map to them through a
registry. Module order (no cycles): agents -> constraints -> model -> problem -> compile ->
construct/bounds/improve/... -> plan_builder -> baseline -> packer.

The time budget covers the whole ``pack`` call: the search stops early enough (a step is not
started when the longest step so far would cross the deadline) to leave an estimate of the
plan-building time. HiGHS phases can overrun their limit somewhat.

Notes: ``Plan.lower_bound`` bounds the cost of placing the tasks the plan places (when some
stay unplaced it is not a bound over other task subsets). Results are deterministic for a
given input when the iteration cap (``PackingOptions.max_iterations``) rather than the
deadline ends the search: ``time_budget_s=math.inf`` removes the deadline (HiGHS solves
then end on ``exact_max_nodes`` or optimality), which is how the quality tests run.

Monotonicity ("one more agent never costs more") holds (a) when both decisions are proven
optimal and (b) on the 1-D path when at least as many identical agents as FFD needs are
offered: extra identical agents get higher indices and are never opened before the plan's
own, so the iteration-capped plan does not change. It is *not* guaranteed for heuristic
decisions in general: the extra agent changes the opening order (price per useful capacity)
and the agent-emptying search, and a greedy start that opens it can end in a worse local
optimum; a safeguard would need the plan without that agent, which ``pack`` does not know.
"""

from .agents import (RESOURCE_NAMES, Agent, PortRanges, Resources, count_ports, format_port_ranges,
                     normalize_port_ranges, parse_port_ranges)
from .baseline import first_fit_decreasing
from .constraints import (AttributeEquals, AvoidAgents, Constraint, ConstraintValueError, MaxPerAgent, ModelLimits,
                          NeedsGpu, SpreadAtLeast)
from .model import CostModel, DeclineReason, PackingOptions, Plan, PriceTable, TaskDemand, Unplaced, resolve_price
from .packer import pack

__all__ = ["RESOURCE_NAMES", "Agent", "AttributeEquals", "AvoidAgents", "Constraint", "ConstraintValueError",
           "CostModel", "DeclineReason", "MaxPerAgent", "ModelLimits", "NeedsGpu", "PackingOptions", "Plan",
           "PortRanges", "PriceTable", "Resources", "SpreadAtLeast", "TaskDemand", "Unplaced", "count_ports",
           "first_fit_decreasing", "format_port_ranges", "normalize_port_ranges", "pack", "parse_port_ranges",
           "resolve_price"]
