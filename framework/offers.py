"""Offers as the packer sees them: :class:`OfferView` values (read from Mesos offers by
``framework.translator``) in, one :class:`Agent` per agent out.  Several offers of one agent
are merged, so they are accepted or declined together.  Pure: no Mesos messages here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from framework.packing import (Agent, PortRanges, PriceTable, Resources, count_ports, normalize_port_ranges,
                               resolve_price)


@dataclass(frozen=True)
class OfferView:
    """The parts of one Mesos offer the framework uses."""

    offer_id: str
    agent_id: str
    hostname: str
    pools: tuple[tuple[str, str, float], ...]  # (resource name, role, amount)
    attributes: Mapping[str, str | float]
    ports: PortRanges = ()
    """The ``ports`` ranges of the offer our role may use (inclusive ``(begin, end)``)."""


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
    """One :class:`Agent` per agent id, in a deterministic (agent id) order; its
    ``port_ranges`` are its offers' ports merged, and ``capacity.ports`` counts them."""
    grouped: dict[str, list[OfferView]] = defaultdict(list)
    for view in views:
        grouped[view.agent_id].append(view)
    agents = []
    for agent_id in sorted(grouped):
        offers = grouped[agent_id]
        attributes = dict(offers[0].attributes)
        ports = normalize_port_ranges(r for v in offers for r in v.ports)
        capacity = total(p for v in offers for p in v.pools)
        agents.append(
            Agent(
                agent_id=agent_id,
                hostname=offers[0].hostname,
                offer_ids=tuple(v.offer_id for v in offers),
                capacity=replace(capacity, ports=capacity.ports + count_ports(ports)),
                attributes=attributes,
                price=resolve_price(offers[0].hostname, attributes, prices),
                in_use=in_use.get(agent_id, False),
                loaded_models=loaded_models.get(agent_id, frozenset()),
                running_tasks=dict(running_tasks.get(agent_id, {})),
                port_ranges=ports,
            )
        )
    return agents
