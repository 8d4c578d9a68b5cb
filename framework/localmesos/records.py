"""The master's records: tasks, offers, refuse filters and frameworks (plain data, no I/O)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .httputil import EventStream
from .protocol import is_terminal
from .resources import Resources


@dataclass
class Task:
    """The master's view of a task."""

    info: dict[str, Any]
    framework_id: str
    agent_id: str
    executor_id: str
    resources: Resources
    state: str = "TASK_STAGING"
    latest_state: str = "TASK_STAGING"
    last_status: Optional[dict[str, Any]] = None
    statuses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def task_id(self) -> str:
        return self.info["task_id"]["value"]

    def uses_resources(self) -> bool:
        return not is_terminal(self.latest_state)

    def to_state(self) -> dict[str, Any]:
        out = {
            "id": self.task_id, "name": self.info.get("name", ""), "framework_id": self.framework_id,
            "executor_id": "" if "command" in self.info and "executor" not in self.info else self.executor_id,
            "slave_id": self.agent_id, "state": self.state,
            "resources": self.resources.to_state(), "role": "*",
            "statuses": [dict(s) for s in self.statuses],
        }
        if self.info.get("labels"):
            out["labels"] = self.info["labels"].get("labels", [])
        return out


@dataclass
class Offer:
    id: str
    framework_id: str
    agent_id: str
    resources: Resources
    created: float


@dataclass
class Filter:
    """Resources of an agent a framework refused until ``expires`` (monotonic seconds)."""

    agent_id: str
    resources: Resources
    expires: float


@dataclass
class Framework:
    id: str
    info: dict[str, Any]
    registered_time: float
    stream: Optional[EventStream] = None
    principal: Optional[str] = None
    """The authenticated principal that subscribed it (None without authentication)."""
    suppressed: bool = False
    failover_deadline: Optional[float] = None
    offers: dict[str, Offer] = field(default_factory=dict)
    filters: list[Filter] = field(default_factory=list)
    tasks: dict[str, Task] = field(default_factory=dict)
    completed_tasks: list[Task] = field(default_factory=list)
    executors: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    unregistered_time: Optional[float] = None
    reregistered_time: Optional[float] = None

    @property
    def connected(self) -> bool:
        return self.stream is not None

    def capabilities(self) -> set[str]:
        return {str(c["type"]) for c in self.info.get("capabilities", []) if isinstance(c, dict) and "type" in c}

    def partition_aware(self) -> bool:
        return "PARTITION_AWARE" in self.capabilities()

    def send(self, event: dict[str, Any]) -> None:
        if self.stream is not None:
            self.stream.send(event)

    def used(self) -> Resources:
        """Resources of its live tasks and executors."""
        used = Resources()
        for task in self.tasks.values():
            if task.uses_resources():
                used = used + task.resources
        for executor in self.executors.values():
            used = used + executor["resources"]
        return used
