"""Call validation in the style of Mesos' JSON -> protobuf conversion, and status helpers."""
from __future__ import annotations

import base64
import math
import time
import uuid as uuidlib
from typing import Any, Optional

from .httputil import HTTPError

VERSION = "1.11.0"
"""The Mesos version the embedded cluster reports."""

# message name -> {field: (message name or scalar kind, required, repeated)}; scalar kinds are
# "string", "bytes" (base64 text), "double", "int", "bool" and "enum:<A|B|...>" ("enum" = any name).
_ID: dict[str, tuple[str, bool, bool]] = {"value": ("string", True, False)}
_SCHEMA: dict[str, dict[str, tuple[str, bool, bool]]] = {
    "ID": _ID,
    "SchedulerCall": {
        "type": ("enum", False, False),
        "framework_id": ("ID", False, False), "subscribe": ("Subscribe", False, False),
        "accept": ("Accept", False, False), "decline": ("Decline", False, False),
        "kill": ("Kill", False, False), "acknowledge": ("Acknowledge", False, False),
        "reconcile": ("Reconcile", False, False), "message": ("Message", False, False),
        "shutdown": ("Shutdown", False, False),
    },
    "Subscribe": {"framework_info": ("FrameworkInfo", True, False), "suppressed_roles": ("string", False, True)},
    "FrameworkInfo": {
        "user": ("string", True, False), "name": ("string", True, False), "id": ("ID", False, False),
        "failover_timeout": ("double", False, False), "checkpoint": ("bool", False, False),
        "role": ("string", False, False), "roles": ("string", False, True), "hostname": ("string", False, False),
        "principal": ("string", False, False), "webui_url": ("string", False, False),
        "capabilities": ("Capability", False, True), "labels": ("Labels", False, False),
    },
    "Capability": {"type": ("enum", False, False)},
    "Labels": {"labels": ("Label", False, True)},
    "Label": {"key": ("string", True, False), "value": ("string", False, False)},
    "Filters": {"refuse_seconds": ("double", False, False)},
    "Accept": {"offer_ids": ("ID", False, True), "operations": ("Operation", False, True),
               "filters": ("Filters", False, False)},
    "Decline": {"offer_ids": ("ID", False, True), "filters": ("Filters", False, False)},
    "Operation": {"type": ("enum", False, False), "launch": ("Launch", False, False),
                  "launch_group": ("LaunchGroup", False, False)},
    "Launch": {"task_infos": ("TaskInfo", False, True)},
    "LaunchGroup": {"executor": ("ExecutorInfo", True, False), "task_group": ("TaskGroup", True, False)},
    "TaskGroup": {"tasks": ("TaskInfo", False, True)},
    "TaskInfo": {
        "name": ("string", True, False), "task_id": ("ID", True, False), "agent_id": ("ID", True, False),
        "resources": ("Resource", False, True), "executor": ("ExecutorInfo", False, False),
        "command": ("CommandInfo", False, False), "data": ("bytes", False, False),
        "labels": ("Labels", False, False), "kill_policy": ("KillPolicy", False, False),
    },
    "ExecutorInfo": {
        "executor_id": ("ID", True, False), "framework_id": ("ID", False, False),
        "command": ("CommandInfo", False, False), "resources": ("Resource", False, True),
        "name": ("string", False, False), "source": ("string", False, False), "data": ("bytes", False, False),
        "shutdown_grace_period": ("DurationInfo", False, False), "labels": ("Labels", False, False),
    },
    "DurationInfo": {"nanoseconds": ("int", True, False)},
    "KillPolicy": {"grace_period": ("DurationInfo", False, False)},
    "CommandInfo": {"uris": ("URI", False, True), "environment": ("Environment", False, False),
                    "shell": ("bool", False, False), "value": ("string", False, False),
                    "arguments": ("string", False, True), "user": ("string", False, False)},
    "URI": {"value": ("string", True, False), "executable": ("bool", False, False),
            "extract": ("bool", False, False), "cache": ("bool", False, False),
            "output_file": ("string", False, False)},
    "Environment": {"variables": ("Variable", False, True)},
    "Variable": {"name": ("string", True, False), "type": ("enum:VALUE|SECRET|UNKNOWN", False, False),
                 "value": ("string", False, False)},
    "Resource": {"name": ("string", True, False), "type": ("enum:SCALAR|RANGES|SET|TEXT", True, False),
                 "scalar": ("Scalar", False, False), "ranges": ("Ranges", False, False),
                 "set": ("Set", False, False), "role": ("string", False, False)},
    "Scalar": {"value": ("double", True, False)},
    "Ranges": {"range": ("Range", False, True)},
    "Range": {"begin": ("int", True, False), "end": ("int", True, False)},
    "Set": {"item": ("string", False, True)},
    "Kill": {"task_id": ("ID", True, False), "agent_id": ("ID", False, False),
             "kill_policy": ("KillPolicy", False, False)},
    "Acknowledge": {"agent_id": ("ID", True, False), "task_id": ("ID", True, False), "uuid": ("bytes", True, False)},
    "Reconcile": {"tasks": ("ReconcileTask", False, True)},
    "ReconcileTask": {"task_id": ("ID", True, False), "agent_id": ("ID", False, False)},
    "Message": {"agent_id": ("ID", True, False), "executor_id": ("ID", True, False), "data": ("bytes", True, False)},
    "Shutdown": {"executor_id": ("ID", True, False), "agent_id": ("ID", True, False)},
    "ExecutorCall": {
        "type": ("enum", False, False),
        "framework_id": ("ID", True, False), "executor_id": ("ID", True, False),
        "subscribe": ("ExecutorSubscribe", False, False), "update": ("ExecutorUpdate", False, False),
        "message": ("ExecutorMessage", False, False),
    },
    "ExecutorSubscribe": {"unacknowledged_tasks": ("TaskInfo", False, True),
                          "unacknowledged_updates": ("ExecutorUpdate", False, True)},
    "ExecutorUpdate": {"status": ("TaskStatus", True, False)},
    "TaskStatus": {"task_id": ("ID", True, False), "state": ("enum", True, False),
                   "agent_id": ("ID", False, False), "executor_id": ("ID", False, False),
                   "message": ("string", False, False), "source": ("enum", False, False),
                   "reason": ("enum", False, False), "data": ("bytes", False, False),
                   "timestamp": ("double", False, False), "uuid": ("bytes", False, False),
                   "healthy": ("bool", False, False)},
    "ExecutorMessage": {"data": ("bytes", True, False)},
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
        items = field if repeated else [field]
        if repeated and not isinstance(field, list):
            raise HTTPError(400, f"Failed to convert JSON into Call protobuf: Not expecting a JSON "
                                 f"{_json_kind(field)} for field '{name}'")
        for index, item in enumerate(items):
            if sub in _SCHEMA:
                _check_object(item, name)
                _missing(sub, item, f"{path}[{index}]." if repeated else f"{path}.", out)
            else:
                _check_scalar(item, sub, name)


def _check_scalar(value: Any, kind: str, name: str) -> None:
    """Mesos' JSON -> protobuf conversion of one scalar field (400 with stout's text)."""
    ok: bool
    if kind in ("string", "bytes") or kind.startswith("enum"):
        ok = isinstance(value, str)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "double":
        ok = ((isinstance(value, (int, float)) and not isinstance(value, bool)) or _numeric(value, float)) \
            and math.isfinite(float(value))
    else:  # int
        ok = (isinstance(value, int) and not isinstance(value, bool)) or _numeric(value, int)
    if not ok:
        raise HTTPError(400, f"Failed to convert JSON into Call protobuf: Not expecting a JSON "
                             f"{_json_kind(value)} for field '{name}'")
    if kind.startswith("enum:") and value not in kind[5:].split("|"):
        raise HTTPError(400, f"Failed to convert JSON into Call protobuf: Failed to find enum for '{value}'")


def _numeric(value: Any, kind: type) -> bool:
    """stout also takes numbers written as strings."""
    if not isinstance(value, str):
        return False
    try:
        return math.isfinite(float(kind(value)))
    except (ValueError, OverflowError):
        return False


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
