"""The allocator: which framework gets which agent's free resources, refuse filters, offer JSON."""
from __future__ import annotations

import copy
import time
from typing import Any, Mapping

from .interfaces import AgentLink
from .records import Filter, Framework, Offer
from .resources import Resources

DEFAULT_REFUSE_SECONDS = 5.0
MAX_REFUSE_SECONDS = 365 * 24 * 3600.0


def refuse_seconds(body: dict[str, Any]) -> float:
    """``filters.refuse_seconds`` of an ACCEPT/DECLINE (default 5 s, negative = default, capped)."""
    filters = body.get("filters") or {}
    value = filters.get("refuse_seconds", DEFAULT_REFUSE_SECONDS)
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = DEFAULT_REFUSE_SECONDS
    if value < 0:
        value = DEFAULT_REFUSE_SECONDS
    return min(value, MAX_REFUSE_SECONDS)


def add_filter(framework: Framework, agent_id: str, resources: Resources, seconds: float) -> None:
    """Hide offers of ``agent_id`` no larger than ``resources`` from ``framework`` for ``seconds``."""
    if seconds > 0 and not resources.is_empty():
        framework.filters.append(Filter(agent_id, resources, time.monotonic() + seconds))


def used_on(frameworks: Mapping[str, Framework], agent_id: str) -> Resources:
    """Resources of live tasks and executors on ``agent_id``."""
    used = Resources()
    for framework in frameworks.values():
        for task in framework.tasks.values():
            if task.agent_id == agent_id and task.uses_resources():
                used = used + task.resources
        for (aid, _), executor in framework.executors.items():
            if aid == agent_id:
                used = used + executor["resources"]
    return used


def offered_on(frameworks: Mapping[str, Framework], agent_id: str) -> Resources:
    """Resources of ``agent_id`` in outstanding offers."""
    offered = Resources()
    for framework in frameworks.values():
        for offer in framework.offers.values():
            if offer.agent_id == agent_id:
                offered = offered + offer.resources
    return offered


def dominant_share(framework: Framework, agents: Mapping[str, AgentLink]) -> float:
    """DRF share over cpus and mem of the framework's live tasks."""
    totals = Resources()
    for agent in agents.values():
        totals = totals + agent.total
    used = Resources()
    for task in framework.tasks.values():
        if task.uses_resources():
            used = used + task.resources
    shares = [used.scalar(n) / totals.scalar(n) for n in ("cpus", "mem") if totals.scalar(n) > 0]
    return max(shares, default=0.0)


def offer_json(framework: Framework, offer: Offer, agent: AgentLink) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": {"value": offer.id}, "framework_id": {"value": framework.id},
        "agent_id": {"value": agent.agent_id}, "hostname": agent.hostname,
        "url": {"scheme": "http", "address": {"hostname": agent.host, "ip": agent.host, "port": agent.port},
                "path": "/slave(1)"},
        "resources": offer.resources.to_json(role=True),
        "attributes": copy.deepcopy(agent.attributes),
    }
    executor_ids = sorted(eid for (aid, eid) in framework.executors if aid == agent.agent_id)
    if executor_ids:
        data["executor_ids"] = [{"value": e} for e in executor_ids]
    return data


class Allocator:
    """Offers every agent's unallocated resources to connected, unsuppressed frameworks, lowest
    dominant share first, honouring refuse filters and GPU_RESOURCES."""

    def __init__(self, master_id: str) -> None:
        self.master_id = master_id
        self._next_offer = 0

    def allocate(self, frameworks: Mapping[str, Framework], agents: Mapping[str, AgentLink]) -> None:
        now = time.monotonic()
        candidates = [f for f in frameworks.values() if f.connected and not f.suppressed]
        candidates.sort(key=lambda f: dominant_share(f, agents))
        free = {aid: agent.total - used_on(frameworks, aid) - offered_on(frameworks, aid)
                for aid, agent in agents.items()}
        for framework in candidates:
            framework.filters = [f for f in framework.filters if f.expires > now]
            new_offers = []
            for agent_id, agent in agents.items():
                available = free[agent_id]
                if not available.allocatable():
                    continue
                if agent.total.scalar("gpus") > 0 and "GPU_RESOURCES" not in framework.capabilities():
                    continue
                if any(f.agent_id == agent_id and f.resources.contains(available) for f in framework.filters):
                    continue
                offer = Offer(id=f"{self.master_id}-O{self._next_offer}", framework_id=framework.id,
                              agent_id=agent_id, resources=available, created=now)
                self._next_offer += 1
                framework.offers[offer.id] = offer
                free[agent_id] = Resources()
                new_offers.append(offer_json(framework, offer, agent))
            if new_offers:
                framework.send({"type": "OFFERS", "offers": {"offers": new_offers}})
