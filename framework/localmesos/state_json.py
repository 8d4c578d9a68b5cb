"""``GET /master/state``: the master's records as Mesos' state JSON."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .allocator import offered_on, used_on
from .protocol import VERSION
from .records import Framework
from .resources import Resources, attribute_state_value

if TYPE_CHECKING:  # pragma: no cover - typing only; master.py never imports this module
    from .master import Master

__all__ = ["VERSION", "framework_state", "master_state"]


def framework_state(framework: Framework, active: bool) -> dict[str, Any]:
    used = framework.used()
    offered = Resources()
    for offer in framework.offers.values():
        offered = offered + offer.resources
    info = framework.info
    return {
        "id": framework.id, "name": info.get("name", ""), "user": info.get("user", ""),
        "principal": info.get("principal"), "hostname": info.get("hostname", ""),
        "webui_url": info.get("webui_url", ""), "role": info.get("role", "*"),
        "roles": info.get("roles", [info.get("role", "*")]),
        "failover_timeout": float(info.get("failover_timeout", 0.0) or 0.0),
        "checkpoint": bool(info.get("checkpoint", False)),
        "capabilities": sorted(framework.capabilities()),
        "active": framework.connected and active, "connected": framework.connected, "recovered": False,
        "suppressed_roles": ["*"] if framework.suppressed else [],
        "registered_time": framework.registered_time,
        "reregistered_time": framework.reregistered_time or framework.registered_time,
        "unregistered_time": framework.unregistered_time or 0,
        "resources": used.to_state(), "used_resources": used.to_state(),
        "offered_resources": offered.to_state(),
        "tasks": [t.to_state() for t in framework.tasks.values()],
        "unreachable_tasks": [],
        "completed_tasks": [t.to_state() for t in framework.completed_tasks],
        "offers": [{"id": o.id, "framework_id": framework.id, "slave_id": o.agent_id,
                    "resources": o.resources.to_state()} for o in framework.offers.values()],
        "executors": [{"executor_id": eid, "slave_id": aid, "name": e["info"].get("name", ""),
                       "framework_id": framework.id, "resources": e["resources"].to_state()}
                      for (aid, eid), e in framework.executors.items()],
    }


def master_state(master: "Master") -> dict[str, Any]:
    """The whole state document (call with the cluster lock held)."""
    slaves = []
    for agent_id, agent in master.agents.items():
        used = used_on(master.frameworks, agent_id)
        offered = offered_on(master.frameworks, agent_id)
        slaves.append({
            "id": agent_id, "hostname": agent.hostname, "port": agent.port,
            "attributes": {a["name"]: attribute_state_value(a) for a in agent.attributes},
            "pid": f"slave(1)@{agent.host}:{agent.port}", "registered_time": agent.registered_time,
            "resources": agent.total.to_state(), "used_resources": used.to_state(),
            "offered_resources": offered.to_state(), "reserved_resources": {},
            "unreserved_resources": agent.total.to_state(),
            "free_resources": (agent.total - used).to_state(),
            "active": True, "deactivated": False, "version": VERSION,
            "capabilities": ["MULTI_ROLE", "HIERARCHICAL_ROLE", "RESERVATION_REFINEMENT"],
        })
    return {
        "version": VERSION, "build_date": "", "build_time": master.start_time, "build_user": "",
        "start_time": master.start_time, "elected_time": master.elected_time, "id": master.id,
        "pid": f"master@{master.address}", "hostname": master.host,
        "leader": f"master@{master.address}", "leader_info": master.master_info(),
        "capabilities": ["AGENT_UPDATE", "AGENT_DRAINING"],
        "activated_slaves": len(master.agents), "deactivated_slaves": 0,
        "unreachable_slaves": len(master.unreachable_agents),
        "recovered_slaves": [],
        "flags": {"allocation_interval": f"{master.allocation_interval}secs",
                  "authenticate_frameworks": "true" if master.credentials else "false",
                  "work_dir": "", "offer_timeout": str(master.offer_timeout or "")},
        "slaves": slaves,
        "frameworks": [framework_state(f, f.id in master.frameworks) for f in master.frameworks.values()],
        "completed_frameworks": [framework_state(f, False) for f in master.completed_frameworks.values()],
        "orphan_tasks": [], "unregistered_frameworks": [],
    }
