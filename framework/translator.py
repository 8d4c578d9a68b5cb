"""The one place that speaks Mesos: every message the framework builds and every one it reads.

Outgoing (values in, v1 JSON dicts out, exactly as pymesos passes them to the master):
FrameworkInfo, ExecutorInfo with its CommandInfo, TaskInfo, resources carved from offers,
filters, offer and task ids for ACCEPT/DECLINE/KILL/RECONCILE.  Incoming (pymesos dicts or
addict.Dicts in, the project's values out): offers as :class:`OfferView`, status updates as
:class:`StatusUpdate`, ids as strings.  Only the scalar resources our role may use are counted
(unreserved ``*`` and our role's), and the unreserved ``ports`` ranges (a task names the ports it
listens on: :func:`assign_ports` picks them, ``task_info(..., ports=...)`` carries them).
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import logging
import shlex
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

from executor.protocol import BundlePayload, BundleResult, ResultEnvelope, TaskPayload
from framework.offers import OfferView
from framework.packing import PortRanges, Resources, normalize_port_ranges

SCALARS = ("cpus", "mem", "disk", "gpus")

__all__ = ["Message", "OfferView", "StatusUpdate", "PoolAllocator", "ExecutorLaunch", "read_id", "read_offer",
           "read_status", "read_master", "fan_out", "offered_cpus", "bundle_info",
           "executor_id_of", "id_message", "executor_id", "offer_ids", "filters",
           "reconcile_tasks", "executor_info", "task_info", "framework_info", "assign_ports", "ports_resource",
           "acknowledge"]

Message = dict[str, Any]
"""A Mesos v1 JSON object as pymesos sends it."""

log = logging.getLogger(__name__)


def acknowledge(driver: Any, status: Any) -> None:
    """Acknowledge a status update (drivers run with explicit acknowledgements: Mesos resends an
    update until it is acknowledged).  Master-generated updates carry no uuid and need none; a
    failed acknowledgement is resent by Mesos, so it is only logged."""
    if not status or not status.get("uuid"):
        return
    try:
        driver.acknowledgeStatusUpdate(status)
    except Exception as error:  # not connected: Mesos resends the update later
        log.info("could not acknowledge an update of %s: %s", status.get("task_id"), error)


# --- reading -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StatusUpdate:
    """A task status update as the framework reads it."""

    task_id: str
    state: str
    reason: str = ""
    message: str = ""
    data: str | None = None
    """The executor's base64 result envelope (on TASK_FINISHED)."""
    agent_id: str | None = None
    envelope: ResultEnvelope | None = None
    """A bundled item's result envelope instead of ``data``: decoded by :func:`fan_out` from its
    bundle's update (not encoded again for the main thread to decode again)."""


def read_id(value: Mapping[str, Any]) -> str:
    """An id message (``{"value": ...}``: framework, agent, executor, offer or task id)."""
    return str(value["value"])


def _role_of(resource: Mapping[str, Any]) -> str:
    reservations = resource.get("reservations") or []
    if reservations:
        return str(reservations[-1].get("role", "*"))
    return str(resource.get("role") or "*")


def read_offer(offer: Mapping[str, Any], role: str) -> OfferView:
    """Read one offer as pymesos delivers it (dict or addict.Dict)."""
    pools = []
    ports: list[tuple[int, int]] = []
    for resource in offer.get("resources") or []:
        name = resource.get("name")
        if name in SCALARS and resource.get("type", "SCALAR") == "SCALAR":
            resource_role = _role_of(resource)
            if resource_role in ("*", role):
                pools.append((name, resource_role, float(resource["scalar"]["value"])))
        elif name == "ports" and resource.get("type") == "RANGES" and _role_of(resource) == "*":
            # Unreserved only: a launch names its ports without a role (see ports_resource).
            ports += [(int(r["begin"]), int(r["end"])) for r in (resource.get("ranges") or {}).get("range") or []]
    attributes: dict[str, str | float] = {}
    for attribute in offer.get("attributes") or []:
        kind = attribute.get("type")
        if kind == "SCALAR":
            attributes[attribute["name"]] = float(attribute["scalar"]["value"])
        elif kind == "TEXT":
            attributes[attribute["name"]] = str(attribute["text"]["value"])
        elif kind == "SET":
            attributes[attribute["name"]] = ",".join(attribute.get("set", {}).get("item", []))
    return OfferView(
        offer_id=read_id(offer["id"]),
        agent_id=read_id(offer["agent_id"]),
        hostname=str(offer.get("hostname") or ""),
        pools=tuple(pools),
        attributes=attributes,
        ports=normalize_port_ranges(ports),
    )


def read_status(status: Mapping[str, Any]) -> StatusUpdate:
    """Read a status update as pymesos delivers it."""
    agent = status.get("agent_id")
    return StatusUpdate(
        task_id=read_id(status["task_id"]),
        state=str(status.get("state") or ""),
        reason=str(status.get("reason") or ""),
        message=str(status.get("message") or ""),
        data=status.get("data") or None,
        agent_id=read_id(agent) if agent and agent.get("value") else None,
    )


def fan_out(update: StatusUpdate, task_ids: list[str]) -> list[StatusUpdate]:
    """A bundle's status update as one update per item it carries (``task_ids``, the items' own
    task ids): a terminal TASK_FINISHED gives each item its own result envelope (the decoded
    :class:`ResultEnvelope` itself, in ``envelope``: encoding it again as base64 JSON for the main thread to decode
    again was 0.1 ms per item, half of it on the IO thread before its REVIVE), or its failure as a
    TASK_FAILED; any other state (a whole-bundle failure or loss included) goes to every item."""
    if update.state != "TASK_FINISHED":
        return [dataclasses.replace(update, task_id=task_id) for task_id in task_ids]
    try:
        outcome = BundleResult.from_json(base64.b64decode(update.data or ""))
    except (ValueError, TypeError) as error:
        message = f"infrastructure: unreadable bundle result: {error}"
        return [StatusUpdate(task_id, "TASK_FAILED", update.reason, message, None, update.agent_id)
                for task_id in task_ids]
    parts = []
    for task_id in task_ids:
        envelope, failure = outcome.results.get(task_id), outcome.failures.get(task_id)
        if envelope is not None:
            parts.append(StatusUpdate(task_id, "TASK_FINISHED", update.reason, "", None, update.agent_id, envelope))
        elif failure is not None:
            parts.append(StatusUpdate(task_id, "TASK_FAILED", update.reason, failure.status_message(),
                                      base64.b64encode(failure.to_json()).decode("ascii"), update.agent_id))
        else:
            parts.append(StatusUpdate(task_id, "TASK_FAILED", update.reason,
                                      "infrastructure: the bundle's result says nothing of this task", None,
                                      update.agent_id))
    return parts


def offered_cpus(views: Iterable[OfferView]) -> dict[str, float]:
    """Per agent, the cpus its offers hold (for our role)."""
    cpus: dict[str, float] = defaultdict(float)
    for view in views:
        cpus[view.agent_id] += sum(amount for name, _role, amount in view.pools if name == "cpus")
    return dict(cpus)


def read_master(master_info: Mapping[str, Any]) -> str:
    """``host:port`` of a MasterInfo, for the log."""
    return f"{master_info.get('hostname')}:{master_info.get('port')}"


def executor_id_of(info: Mapping[str, Any]) -> str:
    """The executor id of an ExecutorInfo this module built."""
    return read_id(info["executor_id"])


# --- building ------------------------------------------------------------------------------
def id_message(value: str) -> Message:
    return {"value": value}


def executor_id(key: str, generation: int) -> str:
    """The id of our executor ``key`` on an agent; ``generation`` counts its earlier, lost ones."""
    return f"{key}.g{generation}"


def offer_ids(ids: Iterable[str]) -> list[Message]:
    """The offer ids of one ACCEPT or DECLINE."""
    return [id_message(i) for i in ids]


def filters(refuse_seconds: float) -> Message:
    """Filters of an ACCEPT or DECLINE: how long the master keeps the rest from us."""
    return {"refuse_seconds": refuse_seconds}


def reconcile_tasks(task_ids: Iterable[str]) -> list[Message]:
    """RECONCILE arguments for the given tasks."""
    return [{"task_id": id_message(t)} for t in task_ids]


class PoolAllocator:
    """Carves task and executor resources out of an agent's offered pools, keeping roles.

    A launch must name resources exactly as offered (same role), so each demand is taken from
    our role's reservations first, then from unreserved resources.
    """

    def __init__(self, views: Iterable[OfferView], role: str) -> None:
        self.remaining: dict[tuple[str, str], float] = defaultdict(float)
        for view in views:
            for name, resource_role, amount in view.pools:
                self.remaining[(name, resource_role)] += amount
        self.role_order = [role, "*"] if role != "*" else ["*"]

    def take(self, demand: Resources) -> list[Message]:
        resources: list[Message] = []
        for name in SCALARS:
            needed = getattr(demand, name)
            for role in self.role_order:
                if needed <= 1e-9:
                    break
                available = self.remaining.get((name, role), 0.0)
                amount = min(needed, available)
                if amount > 1e-9:
                    self.remaining[(name, role)] = available - amount
                    needed -= amount
                    entry: Message = {"name": name, "type": "SCALAR", "scalar": {"value": round(amount, 6)}}
                    if role != "*":
                        entry["role"] = role
                    resources.append(entry)
            if needed > 1e-6:
                raise ValueError(f"{name}: {needed} more than the offers hold (packer over-committed)")
        return resources


def free_ports(free_ranges: Iterable[tuple[int, int]], taken: Iterable[int] = ()) -> Iterator[int]:
    """The ports of the inclusive ``free_ranges`` (an agent's offered ``port_ranges``), lowest
    first, none of ``taken``; lazily, so a caller can stop at the first it can use."""
    skip = set(taken)
    for begin, end in normalize_port_ranges(free_ranges):
        yield from (port for port in range(begin, end + 1) if port not in skip)


def assign_ports(free_ranges: Iterable[tuple[int, int]], count: int, taken: Iterable[int] = ()) -> list[int]:
    """``count`` ports from the inclusive ``free_ranges`` (an agent's offered ``port_ranges``),
    lowest first, none of ``taken`` (those already given to other tasks of this round).
    Raises ValueError when the ranges hold fewer than ``count`` such ports."""
    if count < 0:
        raise ValueError(f"a negative number of ports: {count}")
    chosen = list(itertools.islice(free_ports(free_ranges, taken), count))
    if len(chosen) < count:
        raise ValueError(f"ports: {count} wanted, the offered ranges hold {len(chosen)} free")
    return chosen


def ports_resource(ports: Iterable[int]) -> Message:
    """The unreserved ``ports`` RANGES resource naming exactly ``ports`` (adjacent ones merged)."""
    ranges: PortRanges = normalize_port_ranges((p, p) for p in ports)
    return {"name": "ports", "type": "RANGES",
            "ranges": {"range": [{"begin": begin, "end": end} for begin, end in ranges]}}


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
    resources: tuple[Message, ...]


def executor_info(launch: ExecutorLaunch) -> Message:
    """ExecutorInfo: the executor package travels as a fetcher URI (extracted into the sandbox)."""
    return {
        "executor_id": id_message(launch.executor_id),
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
    resources: list[Message],
    executor: Message,
    payload: bytes,
    ports: Sequence[int] = (),
) -> Message:
    """TaskInfo for a task run by our executor; ``payload`` travels base64 in ``data``.
    ``ports`` (from :func:`assign_ports`) are added to ``resources`` as a ``ports`` RANGES resource."""
    return {
        "task_id": id_message(task_id),
        "agent_id": id_message(agent_id),
        "name": name,
        "resources": list(resources) + ([ports_resource(ports)] if ports else []),
        "executor": executor,
        "data": base64.b64encode(payload).decode("ascii"),
    }


def bundle_info(
    task_id: str,
    name: str,
    agent_id: str,
    resources: list[Message],
    executor: Message,
    payloads: list[TaskPayload],
) -> Message:
    """TaskInfo of a bundle: several items' payloads in one Mesos task (see ``BundlePayload``)."""
    return task_info(task_id, name, agent_id, resources, executor, BundlePayload(task_id, payloads).to_json())


def framework_info(name: str, user: str, role: str, failover_timeout: float, principal: str | None,
                   framework_id: str | None = None, gpus: bool = False, webui_url: str | None = None) -> Message:
    """FrameworkInfo for SUBSCRIBE (pymesos adds nothing but the id it learns).

    ``gpus``: declare the GPU_RESOURCES capability, without which Mesos never offers GPU agents.
    ``webui_url``: the framework's own status page (a Mesos UI links to it).
    """
    info: Message = {
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
        info["id"] = id_message(framework_id)
    if gpus:
        info["capabilities"] = [{"type": "GPU_RESOURCES"}]
    if webui_url:
        info["webui_url"] = webui_url
    return info
