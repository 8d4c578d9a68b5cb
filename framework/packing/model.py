"""Value types of the packer: task demands, prices, options and plans.

Resources and agents are in ``agents``, constraints in ``constraints``; both are re-exported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Mapping

from .agents import EPS, RESOURCE_NAMES, Agent, Resources, attr_text
from .constraints import AttributeEquals, AvoidAgents, Constraint, MaxPerAgent, SpreadAtLeast

__all__ = ["EPS", "RESOURCE_NAMES", "Agent", "AttributeEquals", "AvoidAgents", "Constraint", "CostModel",
           "DeclineReason", "MaxPerAgent", "PackingOptions", "Plan", "PriceTable", "Resources", "SpreadAtLeast",
           "TaskDemand", "Unplaced", "resolve_price"]


@dataclass(frozen=True)
class TaskDemand:
    """One task to place: its model, resources, its model's executor and its constraints."""

    task_id: str
    model: str
    resources: Resources
    executor: Resources
    constraints: tuple[Constraint, ...] = ()
    duration: float | None = None


@dataclass(frozen=True)
class CostModel:
    """``unit_prices``: price per unit of resource per second of a task's duration.

    The resource term covers task resources only (executor resources are not charged);
    it does not depend on placement, so it shifts cost and lower bound equally.
    """

    unit_prices: Resources = Resources()


@dataclass(frozen=True)
class PriceTable:
    attribute: str = "price"
    by_hostname: Mapping[str, float] = field(default_factory=dict)
    by_attribute: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    default: float = 1.0


def resolve_price(hostname: str, attributes: Mapping[str, str | float], table: PriceTable) -> float:
    """Price of an agent. Precedence, first match wins:

    1. ``table.by_hostname[hostname]``;
    2. ``table.by_attribute[name][str(attributes[name])]``, names tried in sorted order;
    3. the scalar attribute ``table.attribute`` (a number, or a string that parses as one);
    4. ``table.default``.
    Negative or non-finite prices are rejected (ValueError).
    """
    def check(price: float, source: str) -> float:
        price = float(price)
        if not math.isfinite(price) or price < 0:
            raise ValueError(f"invalid price {price!r} from {source} for {hostname!r}")
        return price

    if hostname in table.by_hostname:
        return check(table.by_hostname[hostname], "hostname table")
    for name in sorted(table.by_attribute):
        if name in attributes:
            values = table.by_attribute[name]
            key = attr_text(attributes[name])
            if key in values:
                return check(values[key], f"attribute table {name}")
    if table.attribute in attributes:
        try:
            scalar = float(attributes[table.attribute])
        except (TypeError, ValueError):
            scalar = None  # not numeric: fall through to the default
        if scalar is not None:
            return check(scalar, f"attribute {table.attribute}")
    return check(table.default, "default")


@dataclass(frozen=True)
class PackingOptions:
    """How long and how hard ``pack`` searches.

    The product runs on the time budget. ``time_budget_s=math.inf`` means no deadline: the
    search then ends on ``max_iterations`` (and the round caps of the 1-D phases) and each
    HiGHS solve on ``exact_max_nodes`` or a proof of optimality, so the plan depends only on
    the input and the options, never on machine load (what tests of plan quality use).
    """

    time_budget_s: float = 0.05
    exact: bool = True
    seed: int = 0                      # seeds the improvement phase's randomness
    max_iterations: int = 200_000      # cap on search steps (improvement moves, pool and LNS rounds)
    exact_max_vars: int = 20_000       # larger models skip the HiGHS phase
    exact_max_nodes: int | None = None  # branch-and-bound node cap of each HiGHS solve (None: none)


@dataclass(frozen=True)
class Unplaced:
    task_id: str
    exhausted: Mapping[str, int]
    filtered: Mapping[str, int]

    def describe(self) -> str:
        parts = [f"{name} exhausted on {n} agent{'s' if n != 1 else ''}"
                 for name, n in self.exhausted.items() if n]
        parts += [f"{name} filtered {n}" for name, n in self.filtered.items() if n]
        return f"{self.task_id}: " + ("; ".join(parts) if parts else "no agents offered")


DeclineReason = Literal["unneeded", "never_fits"]


@dataclass(frozen=True)
class Plan:
    assignments: Mapping[str, tuple[str, ...]]
    new_executors: Mapping[str, tuple[str, ...]]
    declined: Mapping[str, DeclineReason]
    unplaced: Mapping[str, Unplaced]
    cost: float
    lower_bound: float
    proven_optimal: bool

    @property
    def placed_count(self) -> int:
        return sum(len(v) for v in self.assignments.values())

    @property
    def used_agents(self) -> tuple[str, ...]:
        return tuple(self.assignments)

    @property
    def gap(self) -> float:
        """Relative gap (cost - lower_bound) / cost; 0 when cost is 0."""
        if self.cost <= 0:
            return 0.0
        return max(0.0, (self.cost - self.lower_bound) / self.cost)
