"""The master: scheduler API, allocator (offers, filters), task bookkeeping, /master/state."""
from __future__ import annotations

import base64
import copy
import socket
import struct
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from . import protocol
from .httputil import EventStream, Handler, HTTPError, Server
from .protocol import is_terminal, make_status
from .resources import Resources, attribute_state_value

if TYPE_CHECKING:  # pragma: no cover
    from .agent import Agent

VERSION = "1.11.0"
DEFAULT_REFUSE_SECONDS = 5.0
MAX_REFUSE_SECONDS = 365 * 24 * 3600.0


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
    agent_id: str
    resources: Resources
    expires: float


@dataclass
class Framework:
    id: str
    info: dict[str, Any]
    registered_time: float
    stream: Optional[EventStream] = None
    suppressed: bool = False
    failover_deadline: Optional[float] = None
    offers: dict[str, Offer] = field(default_factory=dict)
    filters: list[Filter] = field(default_factory=list)
    tasks: dict[str, Task] = field(default_factory=dict)
    completed_tasks: list[Task] = field(default_factory=list)
    executors: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    unregistered_time: Optional[float] = None

    @property
    def connected(self) -> bool:
        return self.stream is not None

    def capabilities(self) -> set[str]:
        return {c.get("type") for c in self.info.get("capabilities", []) if isinstance(c, dict)}

    def send(self, event: dict[str, Any]) -> None:
        if self.stream is not None:
            self.stream.send(event)


class Master:
    """Holds all master state; every method runs with ``self.lock`` held."""

    def __init__(self, lock: threading.RLock, host: str = "127.0.0.1", port: int = 0,
                 credentials: Optional[dict[str, str]] = None, heartbeat_interval: float = 15.0,
                 allocation_interval: float = 1.0, offer_timeout: Optional[float] = None,
                 removed_close_delay: float = 1.0) -> None:
        self.lock = lock
        self.host = host
        self.credentials = dict(credentials) if credentials else None
        self.heartbeat_interval = heartbeat_interval
        self.allocation_interval = allocation_interval
        self.offer_timeout = offer_timeout
        self.removed_close_delay = removed_close_delay
        self.id = str(uuidlib.uuid4())
        self.start_time = time.time()
        self.agents: dict[str, "Agent"] = {}
        self.frameworks: dict[str, Framework] = {}
        self.completed_frameworks: dict[str, Framework] = {}
        self._next_framework = 0
        self._next_agent = 0
        self.removed_agents: dict[str, "Agent"] = {}
        self._next_offer = 0
        self._next_allocation = 0.0
        self._allocate_now = False
        self.allocation_wanted = threading.Event()
        """Set when an allocation should run now (REVIVE, new agent, ...): wakes the cluster's clock."""
        self.server = Server((host, port), MasterHandler, self)
        self.port = self.server.server_address[1]

    # ------------------------------------------------------------ basics
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def master_info(self) -> dict[str, Any]:
        try:
            ip = struct.unpack("<I", socket.inet_aton(self.host))[0]
        except OSError:
            ip = 0
        return {
            "id": self.id, "ip": ip, "port": self.port, "pid": f"master@{self.address}",
            "hostname": self.host, "version": VERSION,
            "address": {"hostname": self.host, "ip": self.host, "port": self.port},
            "capabilities": [{"type": "AGENT_UPDATE"}, {"type": "AGENT_DRAINING"}],
        }

    def register_agent(self, agent: "Agent") -> str:
        agent_id = f"{self.id}-S{self._next_agent}"
        self._next_agent += 1
        self.agents[agent_id] = agent
        self._request_allocation()
        return agent_id

    def remove_agent(self, agent_id: str) -> None:
        """Agent removed (like failed health checks): RESCIND its offers, TASK_LOST its tasks
        (REASON_AGENT_REMOVED, no uuid), FAILURE {agent_id} to every framework."""
        agent = self.agents.pop(agent_id, None)
        if agent is None:
            return
        self.removed_agents[agent_id] = agent
        for framework in self.frameworks.values():
            for offer in list(framework.offers.values()):
                if offer.agent_id == agent_id:
                    self._remove_offer(framework, offer, rescind=True)
            for task in list(framework.tasks.values()):
                if task.agent_id != agent_id:
                    continue
                status = make_status(task.task_id, "TASK_LOST", "SOURCE_MASTER",
                                     message=f"Agent {agent.hostname} removed: agent removed by the operator",
                                     reason="REASON_AGENT_REMOVED", agent_id=agent_id)
                task.state = task.latest_state = "TASK_LOST"
                task.statuses.append({"state": "TASK_LOST", "timestamp": status["timestamp"]})
                del framework.tasks[task.task_id]
                framework.completed_tasks.append(task)
                framework.send({"type": "UPDATE", "update": {"status": status}})
            for key in [k for k in framework.executors if k[0] == agent_id]:
                del framework.executors[key]
            framework.send({"type": "FAILURE", "failure": {"agent_id": {"value": agent_id}}})

    # ------------------------------------------------------------ subscribe
    def subscribe(self, call: dict[str, Any], stream: EventStream) -> None:
        info = copy.deepcopy(call["subscribe"]["framework_info"])
        framework_id = (info.get("id") or {}).get("value")
        if framework_id and framework_id in self.completed_frameworks:
            stream.send({"type": "ERROR", "error": {"message": "Framework has been removed"}})
            stream.close(self.removed_close_delay)
            return
        framework = self.frameworks.get(framework_id) if framework_id else None
        if framework is None:
            if not framework_id:
                framework_id = f"{self.id}-{self._next_framework:04d}"
                self._next_framework += 1
            info["id"] = {"value": framework_id}
            framework = Framework(id=framework_id, info=info, registered_time=time.time())
            self.frameworks[framework_id] = framework
        else:
            old = framework.stream
            if old is not None:
                framework.stream = None
                old.send({"type": "ERROR", "error": {"message": "Framework failed over"}})
                old.close()
            for offer in list(framework.offers.values()):
                self._remove_offer(framework, offer)
            info["id"] = {"value": framework_id}
            framework.info = info
            framework.failover_deadline = None
            framework.unregistered_time = None
        framework.stream = stream
        framework.suppressed = bool(call["subscribe"].get("suppressed_roles"))
        stream.on_close = lambda s, fid=framework_id: self._stream_closed(fid, s)
        stream.send({"type": "SUBSCRIBED", "subscribed": {
            "framework_id": {"value": framework_id},
            "heartbeat_interval_seconds": float(self.heartbeat_interval),
            "master_info": self.master_info(),
        }})
        # Mesos' heartbeater sends its first HEARTBEAT right away, then one per interval.
        stream.send({"type": "HEARTBEAT"})
        self._request_allocation()

    def _stream_closed(self, framework_id: str, stream: EventStream) -> None:
        with self.lock:
            framework = self.frameworks.get(framework_id)
            if framework is None or framework.stream is not stream:
                return
            framework.stream = None
            framework.unregistered_time = time.time()
            for offer in list(framework.offers.values()):
                self._remove_offer(framework, offer)
            timeout = float(framework.info.get("failover_timeout", 0.0) or 0.0)
            framework.failover_deadline = time.monotonic() + max(0.0, timeout)
            if timeout <= 0:
                self.remove_framework(framework)

    def remove_framework(self, framework: Framework) -> None:
        """TEARDOWN or failover timeout: shut down executors, forget tasks and offers."""
        if framework.id not in self.frameworks:
            return
        del self.frameworks[framework.id]
        for offer in list(framework.offers.values()):
            self._remove_offer(framework, offer)
        framework.filters.clear()
        for agent in self.agents.values():
            agent.shutdown_framework(framework.id)
        now = time.time()
        for task in framework.tasks.values():
            if not is_terminal(task.state):
                task.state = task.latest_state = "TASK_KILLED"
                task.statuses.append({"state": "TASK_KILLED", "timestamp": now})
            framework.completed_tasks.append(task)
        framework.tasks.clear()
        framework.executors.clear()
        framework.unregistered_time = framework.unregistered_time or now
        if framework.stream is not None:
            stream, framework.stream = framework.stream, None
            stream.close()
        self.completed_frameworks[framework.id] = framework
        self._request_allocation()

    # ------------------------------------------------------------ calls
    def handle_call(self, call: dict[str, Any], framework: Framework) -> None:
        kind = call["type"]
        body = call.get(kind.lower()) or {}
        if kind == "TEARDOWN":
            self.remove_framework(framework)
        elif kind == "ACCEPT":
            self._accept(framework, body)
        elif kind == "DECLINE":
            self._decline(framework, body)
        elif kind == "REVIVE":
            framework.suppressed = False
            framework.filters.clear()
            self._request_allocation()
        elif kind == "SUPPRESS":
            framework.suppressed = True
        elif kind == "KILL":
            self._kill(framework, body)
        elif kind == "ACKNOWLEDGE":
            self._acknowledge(framework, body)
        elif kind == "RECONCILE":
            self._reconcile(framework, body)
        elif kind == "MESSAGE":
            agent = self.agents.get(body["agent_id"]["value"])
            if agent is not None:
                agent.framework_message(framework.id, body["executor_id"]["value"], body["data"])
        elif kind == "SHUTDOWN":
            agent = self.agents.get(body["agent_id"]["value"])
            if agent is not None:
                agent.shutdown_executor_by_id(framework.id, body["executor_id"]["value"])
        # REQUEST, ACCEPT/DECLINE_INVERSE_OFFERS, RECONCILE_OPERATIONS...: accepted and ignored.

    def _refuse_seconds(self, body: dict[str, Any]) -> float:
        filters = body.get("filters") or {}
        value = filters.get("refuse_seconds", DEFAULT_REFUSE_SECONDS)
        try:
            value = float(value)
        except (TypeError, ValueError):
            value = DEFAULT_REFUSE_SECONDS
        if value < 0:
            value = DEFAULT_REFUSE_SECONDS
        return min(value, MAX_REFUSE_SECONDS)

    def _add_filter(self, framework: Framework, agent_id: str, resources: Resources, seconds: float) -> None:
        if seconds > 0 and not resources.is_empty():
            framework.filters.append(Filter(agent_id, resources, time.monotonic() + seconds))

    def _decline(self, framework: Framework, body: dict[str, Any]) -> None:
        seconds = self._refuse_seconds(body)
        for offer_id in body.get("offer_ids", []):
            offer = framework.offers.get(offer_id.get("value"))
            if offer is not None:
                self._remove_offer(framework, offer)
                self._add_filter(framework, offer.agent_id, offer.resources, seconds)

    def _remove_offer(self, framework: Framework, offer: Offer, rescind: bool = False) -> None:
        framework.offers.pop(offer.id, None)
        if rescind:
            framework.send({"type": "RESCIND", "rescind": {"offer_id": {"value": offer.id}}})

    def _accept(self, framework: Framework, body: dict[str, Any]) -> None:
        operations = body.get("operations", [])
        offer_ids = [o.get("value", "") for o in body.get("offer_ids", [])]
        error: Optional[str] = None
        offers: list[Offer] = []
        seen: set[str] = set()
        if not offer_ids:
            error = "No offers specified"
        for offer_id in offer_ids:
            if offer_id in seen:
                error = error or f"Duplicate offer {offer_id} in accept"
                continue
            seen.add(offer_id)
            offer = framework.offers.get(offer_id)
            if offer is None:
                error = error or f"Offer {offer_id} is no longer valid"
            else:
                offers.append(offer)
        if error is None and len({o.agent_id for o in offers}) > 1:
            error = "Aggregated offers must belong to one single agent"
        for offer in offers:
            self._remove_offer(framework, offer)
        if error is not None:
            for task in _operation_tasks(operations):
                self._send_master_update(framework, task, "TASK_LOST", "REASON_INVALID_OFFERS",
                                         f"Task launched with invalid offers: {error}")
            return
        agent_id = offers[0].agent_id
        agent = self.agents[agent_id]
        available = Resources()
        for offer in offers:
            available = available + offer.resources
        for operation in operations:
            kind = operation.get("type")
            if kind == "LAUNCH":
                for task in (operation.get("launch") or {}).get("task_infos", []):
                    available = self._launch(framework, agent, task, available)
            elif kind == "LAUNCH_GROUP":
                group = operation.get("launch_group") or {}
                available = self._launch_group(framework, agent, group, available)
        self._add_filter(framework, agent_id, available, self._refuse_seconds(body))

    def _send_master_update(self, framework: Framework, task: dict[str, Any], state: str, reason: str,
                            message: str) -> None:
        agent_id = (task.get("agent_id") or {}).get("value")
        status = make_status(task.get("task_id", {}).get("value", ""), state, "SOURCE_MASTER",
                             message=message, reason=reason, agent_id=agent_id)
        framework.send({"type": "UPDATE", "update": {"status": status}})

    def _validate_task(self, framework: Framework, agent: "Agent", task: dict[str, Any],
                       pending_ids: set[str]) -> Optional[str]:
        task_id = task["task_id"]["value"]
        if task_id in framework.tasks or task_id in pending_ids:
            return f"Task has duplicate ID: {task_id}"
        if task["agent_id"].get("value") != agent.agent_id:
            return (f"Task uses agent {task['agent_id'].get('value')} "
                    f"but the offers are for agent {agent.agent_id}")
        if ("executor" in task) == ("command" in task):
            return "Task should have at least one (but not both) of CommandInfo or ExecutorInfo present"
        if not task.get("resources"):
            return "Task uses no resources"
        executor = task.get("executor")
        if executor is not None:
            fid = (executor.get("framework_id") or {}).get("value")
            if fid is not None and fid != framework.id:
                return f"ExecutorInfo has an invalid FrameworkID (Actual: {fid} vs Expected: {framework.id})"
            existing = framework.executors.get((agent.agent_id, executor["executor_id"]["value"]))
            if existing is not None and not _compatible(existing["info"], executor):
                return ("ExecutorInfo is not compatible with existing ExecutorInfo with same ExecutorID "
                        f"'{executor['executor_id']['value']}'")
        if "command" in task and not (task["command"].get("value") or task["command"].get("shell") is False):
            return "Command is missing value"
        return None

    def _task_resources(self, task: dict[str, Any]) -> Resources:
        return Resources.from_json(task.get("resources"))

    def _launch(self, framework: Framework, agent: "Agent", task: dict[str, Any],
                available: Resources) -> Resources:
        """Validate one LAUNCH task against what is left of the offers; start it or TASK_ERROR."""
        try:
            error = self._validate_task(framework, agent, task, set())
            resources = self._task_resources(task)
            executor = task.get("executor")
            required = resources
            new_executor = False
            if executor is not None and (agent.agent_id, executor["executor_id"]["value"]) not in framework.executors:
                required = required + Resources.from_json(executor.get("resources"))
                new_executor = True
        except ValueError as exc:
            error = str(exc)
        if error is None and not available.contains(required):
            error = (f"Total resources {required} required by task and its executor "
                     f"is more than available {available}")
        if error is not None:
            self._send_master_update(framework, task, "TASK_ERROR", "REASON_TASK_INVALID", error)
            return available
        task = _with_allocation(copy.deepcopy(task))
        if executor is not None:
            executor = task["executor"]
            executor["framework_id"] = {"value": framework.id}
            executor.setdefault("command", {}).setdefault("shell", True)
            executor_id = executor["executor_id"]["value"]
            if new_executor:
                framework.executors[(agent.agent_id, executor_id)] = {
                    "info": executor, "resources": Resources.from_json(executor.get("resources"))}
        else:
            task["command"].setdefault("shell", True)
            executor_id = task["task_id"]["value"]
        record = Task(info=task, framework_id=framework.id, agent_id=agent.agent_id,
                      executor_id=executor_id, resources=resources)
        record.statuses.append({"state": "TASK_STAGING", "timestamp": time.time()})
        framework.tasks[record.task_id] = record
        agent.run_task(copy.deepcopy(framework.info), copy.deepcopy(task))
        return available - required

    def _launch_group(self, framework: Framework, agent: "Agent", group: dict[str, Any],
                      available: Resources) -> Resources:
        """LAUNCH_GROUP: all tasks or none, delivered together to the group's executor."""
        executor = group.get("executor") or {}
        tasks = (group.get("task_group") or {}).get("tasks", [])
        error: Optional[str] = None
        required = Resources()
        executor_id = executor.get("executor_id", {}).get("value", "")
        try:
            if not (executor.get("command") or {}).get("value"):
                error = ("localmesos runs task-group executors from ExecutorInfo.command; "
                         "the built-in default executor is not implemented")
            seen: set[str] = set()
            for task in tasks:
                task_id = task["task_id"]["value"]
                if task_id in framework.tasks or task_id in seen:
                    error = error or f"Task has duplicate ID: {task_id}"
                seen.add(task_id)
                if "executor" in task:
                    error = error or "'TaskInfo.executor' must not be set"
                if not task.get("resources"):
                    error = error or "Task uses no resources"
                if task["agent_id"].get("value") != agent.agent_id:
                    error = error or f"Task uses agent {task['agent_id'].get('value')} but the offers are for " \
                                     f"agent {agent.agent_id}"
                required = required + Resources.from_json(task.get("resources"))
            existing = framework.executors.get((agent.agent_id, executor_id))
            if existing is not None and not _compatible(existing["info"], executor):
                error = error or ("ExecutorInfo is not compatible with existing ExecutorInfo with same "
                                  f"ExecutorID '{executor_id}'")
            if existing is None:
                required = required + Resources.from_json(executor.get("resources"))
        except ValueError as exc:
            error = str(exc)
        if error is None and not available.contains(required):
            error = (f"Total resources {required} required by task group and its executor "
                     f"is more than available {available}")
        if error is not None:
            for task in tasks:
                self._send_master_update(framework, task, "TASK_ERROR", "REASON_TASK_INVALID", error)
            return available
        executor = _with_allocation({"executor": copy.deepcopy(executor)})["executor"]
        executor["framework_id"] = {"value": framework.id}
        executor.setdefault("command", {}).setdefault("shell", True)
        if (agent.agent_id, executor_id) not in framework.executors:
            framework.executors[(agent.agent_id, executor_id)] = {
                "info": executor, "resources": Resources.from_json(executor.get("resources"))}
        prepared = []
        for task in tasks:
            task = _with_allocation(copy.deepcopy(task))
            record = Task(info=task, framework_id=framework.id, agent_id=agent.agent_id,
                          executor_id=executor_id, resources=Resources.from_json(task.get("resources")))
            record.statuses.append({"state": "TASK_STAGING", "timestamp": time.time()})
            framework.tasks[record.task_id] = record
            prepared.append(task)
        agent.run_task_group(copy.deepcopy(framework.info), copy.deepcopy(executor), prepared)
        return available - required

    def _kill(self, framework: Framework, body: dict[str, Any]) -> None:
        task_id = body["task_id"]["value"]
        task = framework.tasks.get(task_id)
        if task is None:
            status = make_status(task_id, "TASK_LOST", "SOURCE_MASTER", message="Reconciliation: Task is unknown",
                                 reason="REASON_RECONCILIATION")
            framework.send({"type": "UPDATE", "update": {"status": status}})
            return
        agent = self.agents.get(task.agent_id)
        if agent is not None:
            agent.kill_task(framework.id, task_id, body.get("kill_policy"))

    def _acknowledge(self, framework: Framework, body: dict[str, Any]) -> None:
        agent = self.agents.get(body["agent_id"]["value"])
        task_id = body["task_id"]["value"]
        if agent is None:
            return
        acked = agent.acknowledge(framework.id, task_id, body["uuid"])
        task = framework.tasks.get(task_id)
        if acked is not None and task is not None and is_terminal(acked.get("state", "")) \
                and task.last_status is not None and task.last_status.get("uuid") == body["uuid"]:
            del framework.tasks[task_id]
            framework.completed_tasks.append(task)
            del framework.completed_tasks[:-1000]

    def _reconcile(self, framework: Framework, body: dict[str, Any]) -> None:
        entries = body.get("tasks") or []
        if not entries:
            for task in framework.tasks.values():
                framework.send(self._reconcile_update(task))
            return
        for entry in entries:
            task_id = entry["task_id"]["value"]
            task = framework.tasks.get(task_id)
            if task is not None:
                framework.send(self._reconcile_update(task))
                continue
            agent_id = (entry.get("agent_id") or {}).get("value")
            if agent_id and agent_id in self.agents:
                status = make_status(task_id, "TASK_LOST", "SOURCE_MASTER",
                                     message="Reconciliation: Task is unknown to the agent",
                                     reason="REASON_RECONCILIATION", agent_id=agent_id)
            else:
                status = make_status(task_id, "TASK_LOST", "SOURCE_MASTER", message="Reconciliation: Task is unknown",
                                     reason="REASON_RECONCILIATION")
            framework.send({"type": "UPDATE", "update": {"status": status}})

    def _reconcile_update(self, task: Task) -> dict[str, Any]:
        status = make_status(task.task_id, task.state, "SOURCE_MASTER", message="Reconciliation: Latest task state",
                             reason="REASON_RECONCILIATION", agent_id=task.agent_id)
        if task.last_status and "container_status" in task.last_status:
            status["container_status"] = copy.deepcopy(task.last_status["container_status"])
        return {"type": "UPDATE", "update": {"status": status}}

    # ------------------------------------------------------------ from agents
    def status_update(self, agent_id: str, framework_id: str, status: dict[str, Any], latest_state: str) -> None:
        """An agent forwards the head of a task's update queue."""
        framework = self.frameworks.get(framework_id)
        if framework is None:
            return
        task = framework.tasks.get(status["task_id"]["value"])
        if task is not None:
            if task.state != status["state"] or task.last_status is None \
                    or task.last_status.get("uuid") != status.get("uuid"):
                task.statuses.append({"state": status["state"], "timestamp": status.get("timestamp", time.time())})
            task.state = status["state"]
            task.latest_state = latest_state
            task.last_status = {k: v for k, v in status.items() if k != "data"}
        framework.send({"type": "UPDATE", "update": {"status": status}})

    def task_latest_state(self, framework_id: str, task_id: str, state: str) -> None:
        """The agent learned a newer state (used for resource accounting, like Mesos' latest_state)."""
        framework = self.frameworks.get(framework_id)
        task = framework.tasks.get(task_id) if framework else None
        if task is not None:
            task.latest_state = state

    def executor_exited(self, agent_id: str, framework_id: str, executor_id: str, status: Optional[int]) -> None:
        framework = self.frameworks.get(framework_id)
        if framework is None:
            return
        framework.executors.pop((agent_id, executor_id), None)
        if status is not None:
            framework.send({"type": "FAILURE", "failure": {
                "agent_id": {"value": agent_id}, "executor_id": {"value": executor_id}, "status": status}})

    def executor_message(self, agent_id: str, framework_id: str, executor_id: str, data: str) -> None:
        framework = self.frameworks.get(framework_id)
        if framework is not None:
            framework.send({"type": "MESSAGE", "message": {
                "agent_id": {"value": agent_id}, "executor_id": {"value": executor_id}, "data": data}})

    # ------------------------------------------------------------ allocation
    def used(self, agent_id: str) -> Resources:
        used = Resources()
        for framework in self.frameworks.values():
            for task in framework.tasks.values():
                if task.agent_id == agent_id and task.uses_resources():
                    used = used + task.resources
            for (aid, _), executor in framework.executors.items():
                if aid == agent_id:
                    used = used + executor["resources"]
        return used

    def offered(self, agent_id: str) -> Resources:
        offered = Resources()
        for framework in self.frameworks.values():
            for offer in framework.offers.values():
                if offer.agent_id == agent_id:
                    offered = offered + offer.resources
        return offered

    def tick(self) -> None:
        now = time.monotonic()
        for framework in list(self.frameworks.values()):
            if framework.stream is None and framework.failover_deadline is not None \
                    and now >= framework.failover_deadline:
                self.remove_framework(framework)
        if self.offer_timeout is not None:
            for framework in self.frameworks.values():
                for offer in list(framework.offers.values()):
                    if now - offer.created >= self.offer_timeout:
                        self._remove_offer(framework, offer, rescind=True)
                        self._request_allocation()
        if self._allocate_now or now >= self._next_allocation:
            self._allocate_now = False
            self._next_allocation = now + self.allocation_interval
            self.allocate()

    def _request_allocation(self) -> None:
        """Allocate at the next tick, which comes at once (as Mesos' allocator runs a batch as soon
        as it is asked to, rather than at the next allocation interval)."""
        self._allocate_now = True
        self.allocation_wanted.set()

    def allocate(self) -> None:
        now = time.monotonic()
        frameworks = [f for f in self.frameworks.values() if f.connected and not f.suppressed]
        frameworks.sort(key=self._share)
        free = {aid: agent.total - self.used(aid) - self.offered(aid) for aid, agent in self.agents.items()}
        for framework in frameworks:
            framework.filters = [f for f in framework.filters if f.expires > now]
            new_offers = []
            for agent_id, agent in self.agents.items():
                available = free[agent_id]
                if not available.allocatable():
                    continue
                if agent.total.scalar("gpus") > 0 and "GPU_RESOURCES" not in framework.capabilities():
                    continue
                if any(f.agent_id == agent_id and f.resources.contains(available) for f in framework.filters):
                    continue
                offer = Offer(id=f"{self.id}-O{self._next_offer}", framework_id=framework.id,
                              agent_id=agent_id, resources=available, created=now)
                self._next_offer += 1
                framework.offers[offer.id] = offer
                free[agent_id] = Resources()
                new_offers.append(self._offer_json(framework, offer, agent))
            if new_offers:
                framework.send({"type": "OFFERS", "offers": {"offers": new_offers}})

    def _share(self, framework: Framework) -> float:
        totals = Resources()
        for agent in self.agents.values():
            totals = totals + agent.total
        used = Resources()
        for task in framework.tasks.values():
            if task.uses_resources():
                used = used + task.resources
        shares = [used.scalar(n) / totals.scalar(n) for n in ("cpus", "mem") if totals.scalar(n) > 0]
        return max(shares, default=0.0)

    def _offer_json(self, framework: Framework, offer: Offer, agent: "Agent") -> dict[str, Any]:
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

    # ------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        def framework_state(framework: Framework) -> dict[str, Any]:
            used = Resources()
            for task in framework.tasks.values():
                if task.uses_resources():
                    used = used + task.resources
            for executor in framework.executors.values():
                used = used + executor["resources"]
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
                "capabilities": sorted(framework.capabilities() - {None}),
                "active": framework.connected and framework.id in self.frameworks,
                "connected": framework.connected, "recovered": False,
                "suppressed_roles": ["*"] if framework.suppressed else [],
                "registered_time": framework.registered_time, "reregistered_time": framework.registered_time,
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

        slaves = []
        for agent_id, agent in self.agents.items():
            used = self.used(agent_id)
            offered = self.offered(agent_id)
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
            "version": VERSION, "build_date": "", "build_time": self.start_time, "build_user": "",
            "start_time": self.start_time, "elected_time": self.start_time, "id": self.id,
            "pid": f"master@{self.address}", "hostname": self.host,
            "leader": f"master@{self.address}", "leader_info": self.master_info(),
            "capabilities": ["AGENT_UPDATE", "AGENT_DRAINING"],
            "activated_slaves": len(self.agents), "deactivated_slaves": 0, "unreachable_slaves": 0,
            "recovered_slaves": [],
            "flags": {"allocation_interval": f"{self.allocation_interval}secs",
                      "authenticate_frameworks": "true" if self.credentials else "false",
                      "work_dir": "", "offer_timeout": str(self.offer_timeout or "")},
            "slaves": slaves,
            "frameworks": [framework_state(f) for f in self.frameworks.values()],
            "completed_frameworks": [framework_state(f) for f in self.completed_frameworks.values()],
            "orphan_tasks": [], "unregistered_frameworks": [],
        }


def _operation_tasks(operations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    for operation in operations:
        if operation.get("type") == "LAUNCH":
            tasks += (operation.get("launch") or {}).get("task_infos", [])
        elif operation.get("type") == "LAUNCH_GROUP":
            tasks += ((operation.get("launch_group") or {}).get("task_group") or {}).get("tasks", [])
    return tasks


def _compatible(existing: dict[str, Any], new: dict[str, Any]) -> bool:
    def key(info: dict[str, Any]) -> Any:
        command = dict(info.get("command") or {})
        command.setdefault("shell", True)
        return (command, Resources.from_json(info.get("resources")))
    return key(existing) == key(new)


def _with_allocation(task: dict[str, Any]) -> dict[str, Any]:
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


class MasterHandler(Handler):
    """HTTP endpoints of the master."""

    server: Server

    @property
    def master(self) -> Master:
        return self.server.owner

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/version":
            self.reply_json(200, {"version": VERSION, "build_date": "", "build_time": self.master.start_time,
                                  "build_user": "", "git_sha": ""})
        elif path in ("/master/state", "/state", "/master/state.json", "/state.json"):
            with self.master.lock:
                state = self.master.state()
            self.reply_json(200, state)
        elif path == "/api/v1/scheduler":
            self._scheduler()
        elif path in ("/health", "/master/health"):
            self.reply(200)
        else:
            self.reply(404)

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] == "/api/v1/scheduler":
            self._scheduler()
        else:
            self.read_body()
            self.reply(404)

    def _authenticate(self) -> Optional[str]:
        credentials = self.master.credentials
        if not credentials:
            return None
        auth = self.basic_auth()
        if auth is None or credentials.get(auth[0]) != auth[1]:
            raise HTTPError(401, "", {"WWW-Authenticate": 'Basic realm="mesos"'})
        return auth[0]

    def _scheduler(self) -> None:
        try:
            try:
                principal = self._authenticate()
            except HTTPError:
                self.read_body()
                raise
            call = self.parse_call("scheduler")
            protocol.check_required(call, "SchedulerCall")
            _validate_scheduler_call(call)
            if call["type"] == "SUBSCRIBE":
                self._subscribe(call, principal)
                return
            with self.master.lock:
                framework_id = call["framework_id"]["value"]
                framework = self.master.frameworks.get(framework_id)
                if framework is None:
                    raise HTTPError(400, "Framework cannot be found")
                if principal is not None and framework.info.get("principal") not in (None, principal):
                    raise HTTPError(400, f"Authenticated principal '{principal}' does not match principal "
                                         f"'{framework.info.get('principal')}' set in `FrameworkInfo`")
                if framework.stream is None:
                    raise HTTPError(403, "Framework is not subscribed")
                stream_id = self.headers.get("Mesos-Stream-Id")
                if stream_id is None:
                    raise HTTPError(400, "All non-subscribe calls should include the 'Mesos-Stream-Id' header")
                if stream_id != framework.stream.stream_id:
                    raise HTTPError(400, f"The stream ID '{stream_id}' included in this request didn't match the "
                                         f"stream ID currently associated with framework ID {framework_id}")
                self.master.handle_call(call, framework)
            self.reply(202)
        except HTTPError as error:
            self.reply_error(error)

    def _subscribe(self, call: dict[str, Any], principal: Optional[str]) -> None:
        if "Mesos-Stream-Id" in self.headers:
            raise HTTPError(400, "Subscribe calls should not include the 'Mesos-Stream-Id' header")
        info = call["subscribe"]["framework_info"]
        if principal is not None and info.get("principal") not in (None, principal):
            raise HTTPError(400, f"Authenticated principal '{principal}' does not match principal "
                                 f"'{info.get('principal')}' set in `FrameworkInfo`")
        master = self.master
        stream = EventStream(str(uuidlib.uuid4()), heartbeat=lambda: {"type": "HEARTBEAT"},
                             heartbeat_interval=master.heartbeat_interval)
        with master.lock:
            master.subscribe(call, stream)
        self.start_stream({"Mesos-Stream-Id": stream.stream_id})
        stream.serve(self)


_NEEDS_BODY = {"ACCEPT", "DECLINE", "KILL", "ACKNOWLEDGE", "RECONCILE", "MESSAGE", "SHUTDOWN",
               "ACCEPT_INVERSE_OFFERS", "DECLINE_INVERSE_OFFERS", "REQUEST", "UPDATE_FRAMEWORK",
               "ACKNOWLEDGE_OPERATION_STATUS", "RECONCILE_OPERATIONS"}
_KNOWN_CALLS = _NEEDS_BODY | {"SUBSCRIBE", "TEARDOWN", "REVIVE", "SUPPRESS"}


def _validate_scheduler_call(call: dict[str, Any]) -> None:
    def fail(message: str) -> None:
        raise HTTPError(400, "Failed to validate scheduler::Call: " + message)

    kind = call.get("type")
    if kind not in _KNOWN_CALLS:
        fail("Expecting 'type' to be present")
    if kind == "SUBSCRIBE":
        if "subscribe" not in call:
            fail("Expecting 'subscribe' to be present")
        info_id = call["subscribe"]["framework_info"].get("id")
        if ("framework_id" in call or info_id is not None) and call.get("framework_id") != info_id:
            fail("'framework_id' differs from 'subscribe.framework_info.id'")
        return
    if "framework_id" not in call:
        fail("Expecting 'framework_id' to be present")
    if kind == "UPDATE_FRAMEWORK":
        raise HTTPError(400, "localmesos does not implement UPDATE_FRAMEWORK")
    if kind in _NEEDS_BODY and kind.lower() not in call:
        fail(f"Expecting '{kind.lower()}' to be present")
    if kind == "ACKNOWLEDGE" and protocol.valid_uuid(call["acknowledge"]["uuid"]) is None:
        fail("Not a valid UUID")
    if kind == "MESSAGE":
        try:
            base64.b64decode(call["message"]["data"], validate=True)
        except (ValueError, TypeError):
            raise HTTPError(400, "Failed to convert JSON into Call protobuf: Failed to base64-decode 'data'") from None
