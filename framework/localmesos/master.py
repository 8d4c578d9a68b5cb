"""The master's core: agents, framework subscriptions and failover, scheduler calls, task records.

Its neighbours: ``allocator.py`` (offers and filters), ``validation.py`` (launch checks),
``state_json.py`` (``/master/state``), ``master_http.py`` (the HTTP endpoints). Agents are reached
through ``interfaces.AgentLink``; nothing here imports ``agent.py``.
"""
from __future__ import annotations

import copy
import socket
import struct
import threading
import time
import uuid as uuidlib
from typing import Any, Optional

from .allocator import Allocator, add_filter, refuse_seconds
from .httputil import EventStream
from .interfaces import AgentLink
from .protocol import VERSION, is_terminal, make_status
from .records import Framework, Offer, Task
from .resources import Resources
from .validation import group_error, launch_error, operation_tasks, with_allocation

PRINCIPAL_CHANGE = "Changing framework's principal is not allowed."


class Master:
    """Holds all master state; every method runs with ``self.lock`` held."""

    def __init__(self, lock: threading.RLock, host: str = "127.0.0.1",
                 credentials: Optional[dict[str, str]] = None, heartbeat_interval: float = 15.0,
                 allocation_interval: float = 1.0, offer_timeout: Optional[float] = None,
                 removed_close_delay: float = 1.0) -> None:
        self.lock = lock
        self.host = host
        self.port = 0
        """Set by ``master_http.serve_master`` once bound."""
        self.credentials = dict(credentials) if credentials else None
        self.heartbeat_interval = heartbeat_interval
        self.allocation_interval = allocation_interval
        self.offer_timeout = offer_timeout
        self.removed_close_delay = removed_close_delay
        self.id = str(uuidlib.uuid4())
        self.start_time = self.elected_time = time.time()
        self.agents: dict[str, AgentLink] = {}
        self.removed_agents: dict[str, AgentLink] = {}
        self.unreachable_agents: dict[str, AgentLink] = {}
        self.frameworks: dict[str, Framework] = {}
        self.completed_frameworks: dict[str, Framework] = {}
        self._next_framework = 0
        self._next_agent = 0
        self.allocator = Allocator(self.id)
        self._next_allocation = 0.0
        self._allocate_now = False
        self.allocation_wanted = threading.Event()
        """Set when an allocation should run now (REVIVE, new agent, ...): wakes the cluster's clock."""

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

    def register_agent(self, agent: AgentLink) -> str:
        agent_id = f"{self.id}-S{self._next_agent}"
        self._next_agent += 1
        self.agents[agent_id] = agent
        self._request_allocation()
        return agent_id

    def remove_agent(self, agent_id: str, unreachable: bool = False) -> None:
        """The agent is gone: RESCIND its offers, one master update per task (no uuid), then
        FAILURE {agent_id} to every framework.

        ``unreachable=False`` is an operator's removal (TASK_LOST, TASK_GONE_BY_OPERATOR for
        PARTITION_AWARE frameworks); ``unreachable=True`` is a failed health check (TASK_LOST,
        TASK_UNREACHABLE for PARTITION_AWARE frameworks). Both carry REASON_AGENT_REMOVED."""
        agent = self.agents.pop(agent_id, None)
        if agent is None:
            return
        (self.unreachable_agents if unreachable else self.removed_agents)[agent_id] = agent
        message = (f"Agent {agent.hostname} is unreachable: health check timed out" if unreachable
                   else f"Agent {agent.hostname} removed: agent removed by the operator")
        for framework in self.frameworks.values():
            for offer in list(framework.offers.values()):
                if offer.agent_id == agent_id:
                    self._remove_offer(framework, offer, rescind=True)
            aware_state = "TASK_UNREACHABLE" if unreachable else "TASK_GONE_BY_OPERATOR"
            state = aware_state if framework.partition_aware() else "TASK_LOST"
            for task in list(framework.tasks.values()):
                if task.agent_id != agent_id:
                    continue
                status = make_status(task.task_id, state, "SOURCE_MASTER", message=message,
                                     reason="REASON_AGENT_REMOVED", agent_id=agent_id)
                task.state = task.latest_state = state
                task.statuses.append({"state": state, "timestamp": status["timestamp"]})
                del framework.tasks[task.task_id]
                framework.completed_tasks.append(task)
                framework.send({"type": "UPDATE", "update": {"status": status}})
            for key in [k for k in framework.executors if k[0] == agent_id]:
                del framework.executors[key]
            framework.send({"type": "FAILURE", "failure": {"agent_id": {"value": agent_id}}})

    # ------------------------------------------------------------ subscribe
    def subscribe(self, call: dict[str, Any], stream: EventStream, principal: Optional[str] = None) -> None:
        """SUBSCRIBE: a new framework, or a failover of a known one (only by the principal that
        registered it: another principal gets ERROR and the framework is untouched)."""
        info = copy.deepcopy(call["subscribe"]["framework_info"])
        framework_id = (info.get("id") or {}).get("value")
        if framework_id and framework_id in self.completed_frameworks:
            stream.send({"type": "ERROR", "error": {"message": "Framework has been removed"}})
            stream.close(self.removed_close_delay)
            return
        framework = self.frameworks.get(framework_id) if framework_id else None
        if framework is not None and framework.principal != principal:
            stream.send({"type": "ERROR", "error": {"message": PRINCIPAL_CHANGE}})
            stream.close(self.removed_close_delay)
            return
        if framework is None:
            if not framework_id:
                framework_id = f"{self.id}-{self._next_framework:04d}"
                self._next_framework += 1
            info["id"] = {"value": framework_id}
            framework = Framework(id=framework_id, info=info, registered_time=time.time(), principal=principal)
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
            framework.reregistered_time = time.time()
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
            self.disconnect(framework)

    def disconnect(self, framework: Framework) -> None:
        """The subscription is gone: rescind offers and start the failover timeout."""
        stream, framework.stream = framework.stream, None
        if stream is not None:
            stream.close()
        framework.unregistered_time = time.time()
        for offer in list(framework.offers.values()):
            self._remove_offer(framework, offer)
        timeout = float(framework.info.get("failover_timeout", 0.0) or 0.0)
        framework.failover_deadline = time.monotonic() + max(0.0, timeout)
        if timeout <= 0:
            self.remove_framework(framework)

    def failed_over(self) -> None:
        """This master process lost its leadership (a restart): every subscription ends, and
        disconnected frameworks get their whole failover timeout again from the new election."""
        self.elected_time = time.time()
        for framework in list(self.frameworks.values()):
            if framework.stream is not None:
                self.disconnect(framework)
            elif framework.id in self.frameworks:
                timeout = float(framework.info.get("failover_timeout", 0.0) or 0.0)
                framework.failover_deadline = time.monotonic() + max(0.0, timeout)

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

    def _decline(self, framework: Framework, body: dict[str, Any]) -> None:
        seconds = refuse_seconds(body)
        for offer_id in body.get("offer_ids", []):
            offer = framework.offers.get(offer_id.get("value"))
            if offer is not None:
                self._remove_offer(framework, offer)
                add_filter(framework, offer.agent_id, offer.resources, seconds)

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
            for task in operation_tasks(operations):
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
        add_filter(framework, agent_id, available, refuse_seconds(body))

    def _send_master_update(self, framework: Framework, task: dict[str, Any], state: str, reason: str,
                            message: str) -> None:
        agent_id = (task.get("agent_id") or {}).get("value")
        status = make_status(task.get("task_id", {}).get("value", ""), state, "SOURCE_MASTER",
                             message=message, reason=reason, agent_id=agent_id)
        framework.send({"type": "UPDATE", "update": {"status": status}})

    def _add_executor(self, framework: Framework, agent_id: str, executor: dict[str, Any]) -> None:
        executor["framework_id"] = {"value": framework.id}
        executor.setdefault("command", {}).setdefault("shell", True)
        key = (agent_id, executor["executor_id"]["value"])
        if key not in framework.executors:
            framework.executors[key] = {"info": executor, "resources": Resources.from_json(executor.get("resources"))}

    def _record_task(self, framework: Framework, agent_id: str, task: dict[str, Any], executor_id: str) -> None:
        record = Task(info=task, framework_id=framework.id, agent_id=agent_id, executor_id=executor_id,
                      resources=Resources.from_json(task.get("resources")))
        record.statuses.append({"state": "TASK_STAGING", "timestamp": time.time()})
        framework.tasks[record.task_id] = record

    def _launch(self, framework: Framework, agent: AgentLink, task: dict[str, Any],
                available: Resources) -> Resources:
        """Validate one LAUNCH task against what is left of the offers; start it or TASK_ERROR."""
        error, required, _new = launch_error(framework, agent.agent_id, task, available)
        if error is not None:
            self._send_master_update(framework, task, "TASK_ERROR", "REASON_TASK_INVALID", error)
            return available
        task = with_allocation(copy.deepcopy(task))
        if "executor" in task:
            self._add_executor(framework, agent.agent_id, task["executor"])
            executor_id = task["executor"]["executor_id"]["value"]
        else:
            task["command"].setdefault("shell", True)
            executor_id = task["task_id"]["value"]
        self._record_task(framework, agent.agent_id, task, executor_id)
        agent.run_task(copy.deepcopy(framework.info), copy.deepcopy(task))
        return available - required

    def _launch_group(self, framework: Framework, agent: AgentLink, group: dict[str, Any],
                      available: Resources) -> Resources:
        """LAUNCH_GROUP: all tasks or none, delivered together to the group's executor."""
        executor = group.get("executor") or {}
        tasks = (group.get("task_group") or {}).get("tasks", [])
        error, required, _new = group_error(framework, agent.agent_id, executor, tasks, available)
        if error is not None:
            for task in tasks:
                self._send_master_update(framework, task, "TASK_ERROR", "REASON_TASK_INVALID", error)
            return available
        executor = with_allocation({"executor": copy.deepcopy(executor)})["executor"]
        self._add_executor(framework, agent.agent_id, executor)
        executor_id = executor["executor_id"]["value"]
        prepared = []
        for task in tasks:
            task = with_allocation(copy.deepcopy(task))
            self._record_task(framework, agent.agent_id, task, executor_id)
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
        aware = framework.partition_aware()
        for entry in entries:
            task_id = entry["task_id"]["value"]
            known = framework.tasks.get(task_id)
            if known is not None:
                framework.send(self._reconcile_update(known))
                continue
            agent_id = (entry.get("agent_id") or {}).get("value")
            if agent_id and agent_id in self.agents:
                state, message = "TASK_GONE", "Reconciliation: Task is unknown to the agent"
            elif agent_id and agent_id in self.unreachable_agents:
                state, message = "TASK_UNREACHABLE", "Reconciliation: Task is unreachable"
            elif agent_id and agent_id in self.removed_agents:
                state, message = "TASK_GONE_BY_OPERATOR", "Reconciliation: Task is gone"
            else:
                state, message, agent_id = "TASK_UNKNOWN", "Reconciliation: Task is unknown", None
            status = make_status(task_id, state if aware else "TASK_LOST", "SOURCE_MASTER", message=message,
                                 reason="REASON_RECONCILIATION", agent_id=agent_id)
            framework.send({"type": "UPDATE", "update": {"status": status}})

    def _reconcile_update(self, task: Task) -> dict[str, Any]:
        status = make_status(task.task_id, task.state, "SOURCE_MASTER", message="Reconciliation: Latest task state",
                             reason="REASON_RECONCILIATION", agent_id=task.agent_id)
        if task.last_status and "container_status" in task.last_status:
            status["container_status"] = copy.deepcopy(task.last_status["container_status"])
        return {"type": "UPDATE", "update": {"status": status}}

    # ------------------------------------------------------------ from agents (MasterLink)
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

    # ------------------------------------------------------------ clock and allocation
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
        self.allocator.allocate(self.frameworks, self.agents)
