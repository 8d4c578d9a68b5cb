"""Factories for tests: offers and status updates shaped as pymesos delivers them (addict.Dict)."""

from __future__ import annotations

import itertools
from typing import Any

from addict import Dict

_offer_ids = itertools.count(1)


def make_offer(agent: str = "a1", cpus: float = 4.0, mem: float = 4096.0, disk: float = 10000.0, gpus: float = 0.0,
               attributes: dict[str, Any] | None = None, hostname: str | None = None, role: str = "*",
               offer_id: str | None = None) -> Dict:
    """One offer in the v1 JSON shape a real master sends (see the recorded transcript)."""
    resources = [{"name": name, "type": "SCALAR", "scalar": {"value": float(value)}, "role": role}
                 for name, value in (("cpus", cpus), ("mem", mem), ("disk", disk), ("gpus", gpus)) if value]
    attrs = []
    for name, value in (attributes or {}).items():
        if isinstance(value, (int, float)):
            attrs.append({"name": name, "type": "SCALAR", "scalar": {"value": float(value)}})
        else:
            attrs.append({"name": name, "type": "TEXT", "text": {"value": str(value)}})
    return Dict({
        "id": {"value": offer_id or f"O{next(_offer_ids)}"},
        "framework_id": {"value": "F1"},
        "agent_id": {"value": agent},
        "hostname": hostname or f"{agent}.example",
        "resources": resources,
        "attributes": attrs,
    })


def make_status(task_id: str, state: str, agent: str = "a1", data: str | None = None, message: str = "",
                reason: str | None = None, uuid: str | None = "dXVpZA==") -> Dict:
    status: dict[str, Any] = {"task_id": {"value": task_id}, "state": state, "agent_id": {"value": agent},
                              "source": "SOURCE_EXECUTOR"}
    if uuid:
        status["uuid"] = uuid
    if data is not None:
        status["data"] = data
    if message:
        status["message"] = message
    if reason:
        status["reason"] = reason
    return Dict(status)
