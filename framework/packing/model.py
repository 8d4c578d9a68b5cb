"""Value types of the packer: resources, agents, task demands, constraints, plans."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Mapping

RESOURCE_NAMES = ("cpus", "mem", "disk", "gpus")
EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Resources:
    """A vector of scalar Mesos resources."""

    cpus: float = 0.0
    mem: float = 0.0
    disk: float = 0.0
    gpus: float = 0.0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.mem + other.mem,
                         self.disk + other.disk, self.gpus + other.gpus)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpus - other.cpus, self.mem - other.mem,
                         self.disk - other.disk, self.gpus - other.gpus)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.cpus, self.mem, self.disk, self.gpus)

    def nonnegative(self) -> Resources:
        """Each component raised to at least 0 (what is left after a subtraction)."""
        return Resources(*(max(0.0, v) for v in self.as_tuple()))

    def fits_in(self, other: Resources) -> bool:
        """True if every component is at most ``other``'s (relative/absolute epsilon)."""
        return all(a <= b + EPS * max(1.0, abs(b)) for a, b in zip(self.as_tuple(), other.as_tuple()))

    def as_dict(self) -> dict[str, float]:
        return dict(zip(RESOURCE_NAMES, self.as_tuple()))

    def is_zero(self) -> bool:
        return all(v == 0.0 for v in self.as_tuple())

    @classmethod
    def from_mapping(cls, m: Mapping[str, float]) -> Resources:
        unknown = set(m) - set(RESOURCE_NAMES)
        if unknown:
            raise ValueError(f"unknown resources: {sorted(unknown)}")
        return cls(**{k: float(v) for k, v in m.items()})


@dataclass(frozen=True)
class AttributeEquals:
    """The agent's attribute ``attribute`` must equal ``value`` (compared as strings)."""

    attribute: str
    value: str
    name = "attribute_equals"

    def label(self) -> str:
        return f"attribute_equals({self.attribute}={self.value})"


@dataclass(frozen=True)
class MaxPerAgent:
    """At most ``limit`` tasks of this task's model per agent (running ones included)."""

    limit: int
    name = "max_per_agent"

    def label(self) -> str:
        return f"max_per_agent({self.limit})"


@dataclass(frozen=True)
class SpreadAtLeast:
    """The model's tasks spread over at least ``agents`` agents (agents already running it count).

    When fewer tasks exist or can be placed, the requirement is min(agents, running agents
    + placed tasks): the first tasks of the model go to distinct agents.
    """

    agents: int
    name = "spread_at_least"

    def label(self) -> str:
        return f"spread_at_least({self.agents})"


@dataclass(frozen=True)
class AvoidAgents:
    """Not on these agents (a retried task avoids the agents it already failed on)."""

    agent_ids: frozenset[str]
    name = "avoid_agents"

    def label(self) -> str:
        return f"avoid_agents({','.join(sorted(self.agent_ids))})"


Constraint = AttributeEquals | MaxPerAgent | SpreadAtLeast | AvoidAgents


@dataclass(frozen=True)
class Agent:
    agent_id: str
    hostname: str
    offer_ids: tuple[str, ...]
    capacity: Resources
    attributes: Mapping[str, str | float]
    price: float = 1.0
    in_use: bool = False
    loaded_models: frozenset[str] = frozenset()
    running_tasks: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskDemand:
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
            key = _attr_text(attributes[name])
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


def _attr_text(value: str | float) -> str:
    """Attribute value as text: floats with integral values print without '.0'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class PackingOptions:
    time_budget_s: float = 0.05
    exact: bool = True
    seed: int = 0                      # seeds the improvement phase's randomness
    max_iterations: int = 200_000      # cap on improvement moves (determinism under slack budgets)
    exact_max_vars: int = 20_000       # larger models skip the HiGHS phase


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
