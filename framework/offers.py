"""Offer adapter: pymesos offer dicts in, the packer's :class:`Agent` values out.

Only the scalar resources our role may use are counted (unreserved ``*`` and our role's).
Several offers of one agent are merged, so they are accepted or declined together.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from framework.packing import Agent, PriceTable, Resources, resolve_price

SCALARS = ("cpus", "mem", "disk", "gpus")


@dataclass(frozen=True)
class OfferView:
    """The parts of one Mesos offer the framework uses."""

    offer_id: str
    agent_id: str
    hostname: str
    pools: tuple[tuple[str, str, float], ...]  # (resource name, role, amount)
    attributes: Mapping[str, str | float]


def _role_of(resource: Mapping[str, Any]) -> str:
    reservations = resource.get("reservations") or []
    if reservations:
        return str(reservations[-1].get("role", "*"))
    return str(resource.get("role") or "*")


def view_offer(offer: Mapping[str, Any], role: str) -> OfferView:
    """Read one offer as pymesos delivers it (dict or addict.Dict)."""
    pools = []
    for resource in offer.get("resources") or []:
        name = resource.get("name")
        if name in SCALARS and resource.get("type", "SCALAR") == "SCALAR":
            resource_role = _role_of(resource)
            if resource_role in ("*", role):
                pools.append((name, resource_role, float(resource["scalar"]["value"])))
    attributes: dict[str, str | float] = {}
    for attribute in offer.get("attributes") or []:
        kind = attribute.get("type")
        if kind == "SCALAR":
            attributes[attribute["name"]] = float(attribute["scalar"]["value"])
        elif kind == "TEXT":
            attributes[attribute["name"]] = str(attribute["text"]["value"])
        elif kind == "SET":
            attributes[attribute["name"]] = ",".join(attribute.get("set", {}).get("item", []))
    return OfferView(
        offer_id=str(offer["id"]["value"]),
        agent_id=str(offer["agent_id"]["value"]),
        hostname=str(offer.get("hostname") or ""),
        pools=tuple(pools),
        attributes=attributes,
    )


def total(pools: Iterable[tuple[str, str, float]]) -> Resources:
    sums: dict[str, float] = defaultdict(float)
    for name, _role, amount in pools:
        sums[name] += amount
    return Resources(**sums)


def merge_by_agent(
    views: Iterable[OfferView],
    prices: PriceTable,
    in_use: Mapping[str, bool],
    loaded_models: Mapping[str, frozenset[str]],
    running_tasks: Mapping[str, Mapping[str, int]],
) -> list[Agent]:
    """One :class:`Agent` per agent id, in a deterministic (agent id) order."""
    grouped: dict[str, list[OfferView]] = defaultdict(list)
    for view in views:
        grouped[view.agent_id].append(view)
    agents = []
    for agent_id in sorted(grouped):
        offers = grouped[agent_id]
        attributes = dict(offers[0].attributes)
        agents.append(
            Agent(
                agent_id=agent_id,
                hostname=offers[0].hostname,
                offer_ids=tuple(v.offer_id for v in offers),
                capacity=total(p for v in offers for p in v.pools),
                attributes=attributes,
                price=resolve_price(offers[0].hostname, attributes, prices),
                in_use=in_use.get(agent_id, False),
                loaded_models=loaded_models.get(agent_id, frozenset()),
                running_tasks=dict(running_tasks.get(agent_id, {})),
            )
        )
    return agents


class PoolAllocator:
    """Carves task and executor resources out of an agent's offered pools, keeping roles.

    A launch must name resources exactly as offered (same role), so each demand is taken from
    our role's reservations first, then from unreserved resources.
    """

    def __init__(self, views: Iterable[OfferView], role: str) -> None:
        self.remaining: dict[tuple[str, str], float] = defaultdict(float)
        for view in views:
            for name, resource_role, amount in view.pools:
                self.remaining[(name, resource_role)] += amount
        self.role_order = [role, "*"] if role != "*" else ["*"]

    def take(self, demand: Resources) -> list[dict[str, Any]]:
        resources: list[dict[str, Any]] = []
        for name in SCALARS:
            needed = getattr(demand, name)
            for role in self.role_order:
                if needed <= 1e-9:
                    break
                available = self.remaining.get((name, role), 0.0)
                amount = min(needed, available)
                if amount > 1e-9:
                    self.remaining[(name, role)] = available - amount
                    needed -= amount
                    entry: dict[str, Any] = {"name": name, "type": "SCALAR", "scalar": {"value": round(amount, 6)}}
                    if role != "*":
                        entry["role"] = role
                    resources.append(entry)
            if needed > 1e-6:
                raise ValueError(f"{name}: {needed} more than the offers hold (packer over-committed)")
        return resources
