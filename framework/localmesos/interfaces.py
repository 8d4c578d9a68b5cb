"""How the master and its agents talk to each other, without importing each other.

The master sees agents as ``AgentLink``s; an agent sees its master as a ``MasterLink``. The
cluster (``cluster.py``) wires the concrete ``Master`` and ``Agent`` together.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol

from .resources import Resources


class AgentLink(Protocol):
    """What the master asks of an agent (every call with the cluster lock held)."""

    agent_id: str
    hostname: str
    host: str
    port: int
    total: Resources
    attributes: list[dict[str, Any]]
    registered_time: float

    def run_task(self, framework_info: dict[str, Any], task: dict[str, Any]) -> None: ...

    def run_task_group(self, framework_info: dict[str, Any], executor: dict[str, Any],
                       tasks: list[dict[str, Any]]) -> None: ...

    def kill_task(self, framework_id: str, task_id: str, kill_policy: Optional[dict[str, Any]]) -> None: ...

    def acknowledge(self, framework_id: str, task_id: str, uuid: str) -> Optional[dict[str, Any]]: ...

    def framework_message(self, framework_id: str, executor_id: str, data: str) -> None: ...

    def shutdown_executor_by_id(self, framework_id: str, executor_id: str) -> None: ...

    def shutdown_framework(self, framework_id: str) -> None: ...


class MasterLink(Protocol):
    """What an agent tells its master (every call with the cluster lock held)."""

    def register_agent(self, agent: AgentLink) -> str:
        """Admit ``agent``; returns its agent id."""
        ...

    def status_update(self, agent_id: str, framework_id: str, status: dict[str, Any], latest_state: str) -> None:
        ...

    def task_latest_state(self, framework_id: str, task_id: str, state: str) -> None: ...

    def executor_exited(self, agent_id: str, framework_id: str, executor_id: str, status: Optional[int]) -> None:
        ...

    def executor_message(self, agent_id: str, framework_id: str, executor_id: str, data: str) -> None: ...
