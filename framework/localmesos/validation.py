"""Launch validation as the Mesos master does it: one function per check, one resource check.

Every function returns the first error text (Mesos' wording) or None; nothing here sends events.
"""
from __future__ import annotations

from typing import Any, Optional

from .records import Framework
from .resources import Resources


def operation_tasks(operations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every TaskInfo of the LAUNCH and LAUNCH_GROUP operations of an ACCEPT."""
    tasks: list[dict[str, Any]] = []
    for operation in operations:
        if operation.get("type") == "LAUNCH":
            tasks += (operation.get("launch") or {}).get("task_infos", [])
        elif operation.get("type") == "LAUNCH_GROUP":
            tasks += ((operation.get("launch_group") or {}).get("task_group") or {}).get("tasks", [])
    return tasks


def compatible(existing: dict[str, Any], new: dict[str, Any]) -> bool:
    """Same command and resources: a second ExecutorInfo may reuse a running executor."""
    def key(info: dict[str, Any]) -> Any:
        command = dict(info.get("command") or {})
        command.setdefault("shell", True)
        return (command, Resources.from_json(info.get("resources")))
    return key(existing) == key(new)


def with_allocation(task: dict[str, Any]) -> dict[str, Any]:
    """Add ``allocation_info`` to resources as the master does before sending to agents."""
    def fix(resources: list[dict[str, Any]]) -> None:
        for resource in resources:
            resource.setdefault("allocation_info", {"role": "*"})
            if "scalar" in resource and "value" in resource["scalar"]:
                resource["scalar"]["value"] = float(resource["scalar"]["value"])
    fix(task.get("resources", []))
    if "executor" in task:
        fix(task["executor"].get("resources", []))
    return task


def fits(required: Resources, available: Resources, what: str) -> Optional[str]:
    """The one resource check: ``required`` (tasks plus a new executor) within the offers."""
    if available.contains(required):
        return None
    return f"Total resources {required} required by {what} and its executor is more than available {available}"


def task_error(framework: Framework, agent_id: str, task: dict[str, Any], seen: set[str],
               in_group: bool = False) -> Optional[str]:
    """Checks of one TaskInfo (alone, or as a member of a task group)."""
    task_id = task["task_id"]["value"]
    if task_id in framework.tasks or task_id in seen:
        return f"Task has duplicate ID: {task_id}"
    if task["agent_id"].get("value") != agent_id:
        return f"Task uses agent {task['agent_id'].get('value')} but the offers are for agent {agent_id}"
    if in_group:
        if "executor" in task:
            return "'TaskInfo.executor' must not be set"
    elif ("executor" in task) == ("command" in task):
        return "Task should have at least one (but not both) of CommandInfo or ExecutorInfo present"
    if not task.get("resources"):
        return "Task uses no resources"
    executor = task.get("executor")
    if executor is not None:
        error = executor_error(framework, agent_id, executor)
        if error is not None:
            return error
    if "command" in task and not (task["command"].get("value") or task["command"].get("shell") is False):
        return "Command is missing value"
    return None


def executor_error(framework: Framework, agent_id: str, executor: dict[str, Any]) -> Optional[str]:
    """An ExecutorInfo must belong to the framework and match a running executor of the same id."""
    fid = (executor.get("framework_id") or {}).get("value")
    if fid is not None and fid != framework.id:
        return f"ExecutorInfo has an invalid FrameworkID (Actual: {fid} vs Expected: {framework.id})"
    existing = framework.executors.get((agent_id, executor["executor_id"]["value"]))
    if existing is not None and not compatible(existing["info"], executor):
        return ("ExecutorInfo is not compatible with existing ExecutorInfo with same ExecutorID "
                f"'{executor['executor_id']['value']}'")
    return None


def launch_requirement(framework: Framework, agent_id: str, executor: Optional[dict[str, Any]],
                       tasks: list[dict[str, Any]]) -> tuple[Resources, bool]:
    """Resources the tasks need, plus the executor's when it is not running yet; and whether it is new."""
    required = Resources()
    for task in tasks:
        required = required + Resources.from_json(task.get("resources"))
    new_executor = executor is not None and (agent_id, executor["executor_id"]["value"]) not in framework.executors
    if new_executor and executor is not None:
        required = required + Resources.from_json(executor.get("resources"))
    return required, new_executor


def launch_error(framework: Framework, agent_id: str, task: dict[str, Any],
                 available: Resources) -> tuple[Optional[str], Resources, bool]:
    """Validate one LAUNCH task: (error, resources required, executor is new)."""
    try:
        error = task_error(framework, agent_id, task, set())
        required, new_executor = launch_requirement(framework, agent_id, task.get("executor"), [task])
    except ValueError as exc:
        return str(exc), Resources(), False
    return error or fits(required, available, "task"), required, new_executor


def group_error(framework: Framework, agent_id: str, executor: dict[str, Any], tasks: list[dict[str, Any]],
                available: Resources) -> tuple[Optional[str], Resources, bool]:
    """Validate a LAUNCH_GROUP (all tasks or none): (error, resources required, executor is new)."""
    error: Optional[str] = None
    try:
        if not (executor.get("command") or {}).get("value"):
            error = ("localmesos runs task-group executors from ExecutorInfo.command; "
                     "the built-in default executor is not implemented")
        seen: set[str] = set()
        for task in tasks:
            error = error or task_error(framework, agent_id, task, seen, in_group=True)
            seen.add(task["task_id"]["value"])
        error = error or executor_error(framework, agent_id, executor)
        required, new_executor = launch_requirement(framework, agent_id, executor, tasks)
    except (ValueError, KeyError, TypeError) as exc:
        return error or str(exc), Resources(), False
    return error or fits(required, available, "task group"), required, new_executor
