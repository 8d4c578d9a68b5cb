"""The one place that builds Mesos messages (TaskInfo, ExecutorInfo, CommandInfo with URIs).

Values in, v1 JSON dicts out, exactly as pymesos passes them to the master.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ExecutorLaunch:
    """What one of our executors on one agent looks like (for one model, or shared by all).
    Mesos requires every task of one executor id to carry an identical ExecutorInfo, so this is
    built once and reused.  Models and shards are not fetcher URIs: the executor downloads what
    its tasks name, once, so one ExecutorInfo serves every model."""

    executor_id: str
    serves: str
    python: str
    executor_package_url: str
    workers: int
    resources: tuple[dict[str, Any], ...]


def executor_info(launch: ExecutorLaunch) -> dict[str, Any]:
    """ExecutorInfo: the executor package travels as a fetcher URI (extracted into the sandbox)."""
    return {
        "executor_id": {"value": launch.executor_id},
        "name": f"mesos-ensemble executor for {launch.serves}",
        "source": "mesos-ensemble",
        "command": {
            "shell": True,
            "value": f"exec {shlex.quote(launch.python)} -m executor",
            "uris": [
                {"value": launch.executor_package_url, "extract": True, "executable": False, "cache": False},
            ],
            "environment": {
                "variables": [
                    {"name": "MESOS_ENSEMBLE_WORKERS", "type": "VALUE", "value": str(launch.workers)},
                    {"name": "PYTHONPATH", "type": "VALUE", "value": "."},
                    {"name": "PYTHONUNBUFFERED", "type": "VALUE", "value": "1"},
                    {"name": "OMP_NUM_THREADS", "type": "VALUE", "value": "1"},
                    {"name": "OPENBLAS_NUM_THREADS", "type": "VALUE", "value": "1"},
                ]
            },
        },
        "resources": list(launch.resources),
    }


def task_info(
    task_id: str,
    name: str,
    agent_id: str,
    resources: list[dict[str, Any]],
    executor: dict[str, Any],
    payload: bytes,
) -> dict[str, Any]:
    """TaskInfo for a task run by our executor; ``payload`` travels base64 in ``data``."""
    return {
        "task_id": {"value": task_id},
        "agent_id": {"value": agent_id},
        "name": name,
        "resources": resources,
        "executor": executor,
        "data": base64.b64encode(payload).decode("ascii"),
    }


def framework_info(name: str, user: str, role: str, failover_timeout: float, principal: str | None,
                   framework_id: str | None = None, gpus: bool = False) -> dict[str, Any]:
    """FrameworkInfo for SUBSCRIBE (pymesos adds nothing but the id it learns).

    ``gpus``: declare the GPU_RESOURCES capability, without which Mesos never offers GPU agents.
    """
    info: dict[str, Any] = {
        "user": user,
        "name": name,
        "failover_timeout": failover_timeout,
        "checkpoint": False,
    }
    if role != "*":
        info["role"] = role
    if principal:
        info["principal"] = principal
    if framework_id:
        info["id"] = {"value": framework_id}
    if gpus:
        info["capabilities"] = [{"type": "GPU_RESOURCES"}]
    return info
