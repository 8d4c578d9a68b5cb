"""Call validation in the style of Mesos' JSON -> protobuf conversion, and status helpers."""
from __future__ import annotations

import base64
import time
import uuid as uuidlib
from typing import Any, Optional

from .httputil import HTTPError

VERSION = "1.11.0"
"""The Mesos version the embedded cluster reports."""

# message name -> {field: (message type or None, required, repeated)}
_ID: dict[str, tuple[Optional[str], bool, bool]] = {"value": (None, True, False)}
_SCHEMA: dict[str, dict[str, tuple[Optional[str], bool, bool]]] = {
    "ID": _ID,
    "SchedulerCall": {
        "framework_id": ("ID", False, False), "subscribe": ("Subscribe", False, False),
        "accept": ("Accept", False, False), "decline": ("Decline", False, False),
        "kill": ("Kill", False, False), "acknowledge": ("Acknowledge", False, False),
        "reconcile": ("Reconcile", False, False), "message": ("Message", False, False),
        "shutdown": ("Shutdown", False, False),
    },
    "Subscribe": {"framework_info": ("FrameworkInfo", True, False)},
    "FrameworkInfo": {"user": (None, True, False), "name": (None, True, False), "id": ("ID", False, False)},
    "Accept": {"offer_ids": ("ID", False, True), "operations": ("Operation", False, True)},
    "Decline": {"offer_ids": ("ID", False, True)},
    "Operation": {"launch": ("Launch", False, False), "launch_group": ("LaunchGroup", False, False)},
    "Launch": {"task_infos": ("TaskInfo", False, True)},
    "LaunchGroup": {"executor": ("ExecutorInfo", True, False), "task_group": ("TaskGroup", True, False)},
    "TaskGroup": {"tasks": ("TaskInfo", False, True)},
    "TaskInfo": {
        "name": (None, True, False), "task_id": ("ID", True, False), "agent_id": ("ID", True, False),
        "resources": ("Resource", False, True), "executor": ("ExecutorInfo", False, False),
        "command": ("CommandInfo", False, False),
    },
    "ExecutorInfo": {
        "executor_id": ("ID", True, False), "framework_id": ("ID", False, False),
        "command": ("CommandInfo", False, False), "resources": ("Resource", False, True),
    },
    "CommandInfo": {"uris": ("URI", False, True), "environment": ("Environment", False, False)},
    "URI": {"value": (None, True, False)},
    "Environment": {"variables": ("Variable", False, True)},
    "Variable": {"name": (None, True, False)},
    "Resource": {"name": (None, True, False), "type": (None, True, False),
                 "scalar": ("Scalar", False, False), "ranges": ("Ranges", False, False)},
    "Scalar": {"value": (None, True, False)},
    "Ranges": {"range": ("Range", False, True)},
    "Range": {"begin": (None, True, False), "end": (None, True, False)},
    "Kill": {"task_id": ("ID", True, False), "agent_id": ("ID", False, False)},
    "Acknowledge": {"agent_id": ("ID", True, False), "task_id": ("ID", True, False), "uuid": (None, True, False)},
    "Reconcile": {"tasks": ("ReconcileTask", False, True)},
    "ReconcileTask": {"task_id": ("ID", True, False), "agent_id": ("ID", False, False)},
    "Message": {"agent_id": ("ID", True, False), "executor_id": ("ID", True, False), "data": (None, True, False)},
    "Shutdown": {"executor_id": ("ID", True, False), "agent_id": ("ID", True, False)},
    "ExecutorCall": {
        "framework_id": ("ID", True, False), "executor_id": ("ID", True, False),
        "subscribe": ("ExecutorSubscribe", False, False), "update": ("ExecutorUpdate", False, False),
        "message": ("ExecutorMessage", False, False),
    },
    "ExecutorSubscribe": {"unacknowledged_tasks": ("TaskInfo", False, True),
                          "unacknowledged_updates": ("ExecutorUpdate", False, True)},
    "ExecutorUpdate": {"status": ("TaskStatus", True, False)},
    "TaskStatus": {"task_id": ("ID", True, False), "state": (None, True, False),
                   "agent_id": ("ID", False, False), "executor_id": ("ID", False, False)},
    "ExecutorMessage": {"data": (None, True, False)},
}


def _missing(message: str, value: Any, prefix: str, out: list[str]) -> None:
    schema = _SCHEMA[message]
    for name, (sub, required, repeated) in schema.items():
        path = f"{prefix}{name}"
        if name not in value or value[name] is None:
            if required:
                out.append(path)
            continue
        field = value[name]
        if repeated:
            if not isinstance(field, list):
                raise HTTPError(400, f"Failed to convert JSON into Call protobuf: Not expecting a JSON "
                                     f"{_json_kind(field)} for field '{name}'")
            if sub:
                for index, item in enumerate(field):
                    _check_object(item, name)
                    _missing(sub, item, f"{path}[{index}].", out)
        elif sub:
            _check_object(field, name)
            _missing(sub, field, f"{path}.", out)


def _json_kind(value: Any) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object"


def _check_object(value: Any, name: str) -> None:
    if not isinstance(value, dict):
        raise HTTPError(400, f"Failed to convert JSON into Call protobuf: Not expecting a JSON "
                             f"{_json_kind(value)} for field '{name}'")


def check_required(call: dict[str, Any], message: str) -> None:
    """400 like Mesos when proto2 required fields are missing."""
    missing: list[str] = []
    _missing(message, call, "", missing)
    if missing:
        raise HTTPError(400, "Failed to convert JSON into Call protobuf: Missing required fields: "
                             + ", ".join(missing))


def valid_uuid(value: Any) -> Optional[bytes]:
    """Decoded 16-byte uuid, or None."""
    if not isinstance(value, str):
        return None
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        return None
    return raw if len(raw) == 16 else None


def new_uuid() -> str:
    return base64.b64encode(uuidlib.uuid4().bytes).decode("ascii")


TERMINAL_STATES = frozenset({
    "TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED",
    "TASK_GONE", "TASK_GONE_BY_OPERATOR",
})
TASK_STATES = frozenset(TERMINAL_STATES | {
    "TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_UNREACHABLE", "TASK_UNKNOWN",
})


def is_terminal(state: str) -> bool:
    return state in TERMINAL_STATES


def make_status(task_id: str, state: str, source: str, *, message: Optional[str] = None,
                reason: Optional[str] = None, agent_id: Optional[str] = None,
                executor_id: Optional[str] = None, with_uuid: bool = False) -> dict[str, Any]:
    """A TaskStatus in the field order real Mesos prints."""
    status: dict[str, Any] = {"task_id": {"value": task_id}, "state": state}
    if message is not None:
        status["message"] = message
    status["source"] = source
    if reason is not None:
        status["reason"] = reason
    if agent_id is not None:
        status["agent_id"] = {"value": agent_id}
    if executor_id is not None:
        status["executor_id"] = {"value": executor_id}
    status["timestamp"] = time.time()
    if with_uuid:
        status["uuid"] = new_uuid()
    return status


def format_duration(seconds: float) -> str:
    """stout Duration text: ``5secs``, ``2500ms``, ``3mins``."""
    ns = int(round(seconds * 1e9))
    for unit, size in (("weeks", 604800 * 10**9), ("days", 86400 * 10**9), ("hrs", 3600 * 10**9),
                       ("mins", 60 * 10**9), ("secs", 10**9), ("ms", 10**6), ("us", 10**3)):
        if ns >= size and ns % size == 0:
            return f"{ns // size}{unit}"
    if ns >= 10**9:
        return f"{ns / 1e9:g}secs"
    return f"{ns}ns"
