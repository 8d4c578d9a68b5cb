"""An agent: executor HTTP API, sandboxes, executor processes, reliable status updates."""
from __future__ import annotations

import copy
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from . import protocol
from .fetcher import FetchError, fetch_all
from .httputil import EventStream, Handler, HTTPError, Server
from .interfaces import MasterLink
from .protocol import format_duration, is_terminal, make_status
from .resources import Resources, attribute_json

COMMAND_EXECUTOR = Path(__file__).with_name("command_executor.py")
LAUNCHER = Path(__file__).with_name("launcher.py")
BASE_ENVIRONMENT = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME", "PYTHONPATH")
"""Variables of the agent's environment an executor inherits by default (plus every ``LC_*``)."""
PROCESS_RECORDS = "processes"
"""Directory (under the cluster's work dir) of the launchers' pid files."""

# Executor run states.
LAUNCHING, REGISTERING, RUNNING, TERMINATING, TERMINATED = (
    "LAUNCHING", "REGISTERING", "RUNNING", "TERMINATING", "TERMINATED")


@dataclass
class ExecutorRun:
    """One executor container (process session) of a framework on this agent."""

    framework_id: str
    executor_id: str
    info: dict[str, Any]
    container_id: str
    directory: Path
    command_task: bool
    uris: list[dict[str, Any]]
    grace_period: float
    state: str = LAUNCHING
    proc: Optional[subprocess.Popen] = None
    stream: Optional[EventStream] = None
    queued: dict[str, dict[str, Any]] = field(default_factory=dict)
    launched: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_states: dict[str, str] = field(default_factory=dict)
    kill_requested: set[str] = field(default_factory=set)
    groups: dict[str, str] = field(default_factory=dict)  # queued task id -> first task id of its group
    registration_deadline: Optional[float] = None
    kill_deadline: Optional[float] = None
    waiter: Optional[threading.Thread] = None
    watchdog_fd: Optional[int] = None
    child_pids: list[int] = field(default_factory=list)
    """Write end of the launcher's watchdog pipe: open while this agent's process lives."""

    pid_file: Optional[Path] = None
    """Where the launcher records ``SESSION CHILD``: ``<work_dir>/processes/<container>.pids``,
    outside the sandboxes so the record outlives their removal."""

    def processes(self) -> list[tuple[int, int]]:
        """``(session, pid)`` of the processes this run started (launcher and executor)."""
        if self.proc is None:
            return []
        if not self.child_pids and self.pid_file is not None:
            try:
                self.child_pids = [int(p) for p in self.pid_file.read_text().split()[1:]]
            except (OSError, ValueError):
                pass
        return [(self.proc.pid, pid) for pid in [self.proc.pid, *self.child_pids]]

    def live_tasks(self) -> list[str]:
        ids = list(self.queued) + list(self.launched)
        return [t for t in ids if not is_terminal(self.task_states.get(t, "TASK_STAGING"))]


@dataclass
class UpdateQueue:
    """Per-task FIFO of reliable status updates; only the head is in flight."""

    pending: deque = field(default_factory=deque)
    seen: set[str] = field(default_factory=set)
    next_retry: float = 0.0
    interval: float = 10.0
    latest_state: str = "TASK_STAGING"


@dataclass
class AgentFramework:
    info: dict[str, Any]
    executors: dict[str, ExecutorRun] = field(default_factory=dict)
    updates: dict[str, UpdateQueue] = field(default_factory=dict)
    terminating: bool = False


class Agent:
    """An in-process Mesos agent with its own HTTP port; methods run with ``lock`` held."""

    def __init__(self, master: MasterLink, lock: threading.RLock, hostname: str, resources: Resources,
                 attributes: dict[str, Any], work_dir: Path, host: str = "127.0.0.1", port: int = 0,
                 executor_shutdown_grace_period: float = 5.0, status_update_retry_interval: float = 10.0,
                 status_update_retry_max: float = 600.0, executor_registration_timeout: float = 60.0,
                 command_kill_grace_period: float = 3.0,
                 executor_environment_variables: Optional[Mapping[str, str]] = None) -> None:
        self.master = master
        self.executor_environment_variables = (dict(executor_environment_variables)
                                               if executor_environment_variables is not None else None)
        """Mesos' ``--executor_environment_variables``: the exact base environment of executors;
        None = ``base_environment()`` of this process (never its whole environment)."""
        self.lock = lock
        self.hostname = hostname
        self.total = resources
        self.attributes = [attribute_json(k, v) for k, v in attributes.items()]
        self.work_dir = Path(work_dir)
        self.host = host
        self.grace_period = executor_shutdown_grace_period
        self.retry_interval = status_update_retry_interval
        self.retry_max = status_update_retry_max
        self.registration_timeout = executor_registration_timeout
        self.command_kill_grace_period = command_kill_grace_period
        self.frameworks: dict[str, AgentFramework] = {}
        self.completed_runs: list[ExecutorRun] = []
        self.registered_time = time.time()
        self.stopping = False
        self.server = Server((host, port), AgentHandler, self)
        self.port = self.server.server_address[1]
        self.agent_id = master.register_agent(self)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def agent_info(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "port": self.port, "resources": self.total.to_json(role=False),
                "attributes": copy.deepcopy(self.attributes), "id": {"value": self.agent_id}}

    def runs(self) -> list[ExecutorRun]:
        return [run for fw in self.frameworks.values() for run in fw.executors.values()]

    # ------------------------------------------------------------ launching
    def run_task(self, framework_info: dict[str, Any], task: dict[str, Any]) -> None:
        """Master asks to run a task (already validated)."""
        if "command" in task:
            executor_id = task["task_id"]["value"]
        else:
            executor_id = task["executor"]["executor_id"]["value"]
        self._run(framework_info, executor_id, task, [task], group=False)

    def run_task_group(self, framework_info: dict[str, Any], executor: dict[str, Any],
                       tasks: list[dict[str, Any]]) -> None:
        """Master asks to run a task group on ``executor`` (delivered as one LAUNCH_GROUP)."""
        self._run(framework_info, executor["executor_id"]["value"], {"executor": executor}, tasks, group=True)

    def _run(self, framework_info: dict[str, Any], executor_id: str, source: dict[str, Any],
             tasks: list[dict[str, Any]], group: bool) -> None:
        framework_id = framework_info["id"]["value"]
        framework = self.frameworks.get(framework_id)
        if framework is None:
            framework = self.frameworks[framework_id] = AgentFramework(info=framework_info)
        framework.info = framework_info
        framework.terminating = False
        run = framework.executors.get(executor_id)
        if run is not None and run.state in (TERMINATING, TERMINATED):
            for task in tasks:
                self._agent_update(framework_id, task["task_id"]["value"], "TASK_LOST",
                                   "REASON_EXECUTOR_TERMINATED", "Executor terminating", executor_id)
            return
        new = run is None
        if run is None:
            run = self._new_run(framework_id, executor_id, source)
            framework.executors[executor_id] = run
        ids = [task["task_id"]["value"] for task in tasks]
        if run.state == RUNNING and run.stream is not None:
            for task_id, task in zip(ids, tasks):
                run.launched[task_id] = task
            self._deliver(run, tasks, group)
        else:
            for task_id, task in zip(ids, tasks):
                run.queued[task_id] = task
                if group:
                    run.groups[task_id] = ids[0]
        if new:
            threading.Thread(target=self._launch, args=(run,), name=f"launch-{executor_id}", daemon=True).start()

    def _deliver(self, run: ExecutorRun, tasks: list[dict[str, Any]], group: bool) -> None:
        assert run.stream is not None
        if group:
            run.stream.send({"type": "LAUNCH_GROUP", "launch_group": {"task_group": {"tasks": tasks}}})
        else:
            for task in tasks:
                run.stream.send({"type": "LAUNCH", "launch": {"task": task}})

    def _new_run(self, framework_id: str, executor_id: str, task: dict[str, Any]) -> ExecutorRun:
        container_id = str(uuidlib.uuid4())
        base = (self.work_dir / "slaves" / self.agent_id / "frameworks" / framework_id / "executors"
                / executor_id / "runs")
        if "command" in task:
            command = task["command"]
            shown = command.get("value", "")
            info = {
                "executor_id": {"value": executor_id}, "framework_id": {"value": framework_id},
                "command": {"value": f"{shlex.quote(sys.executable)} {shlex.quote(str(COMMAND_EXECUTOR))}",
                            "shell": True, "environment": copy.deepcopy(command.get("environment", {}))},
                "name": (f"Command Executor (Task: {executor_id}) "
                         f"(Command: sh -c '{shown[:15]}{'...' if len(shown) > 15 else ''}')"),
                "source": executor_id,
            }
            uris = command.get("uris", [])
            grace = self.grace_period
        else:
            info = task["executor"]
            uris = (info.get("command") or {}).get("uris", [])
            nanos = (info.get("shutdown_grace_period") or {}).get("nanoseconds")
            grace = float(nanos) / 1e9 if nanos is not None else self.grace_period
        return ExecutorRun(framework_id=framework_id, executor_id=executor_id, info=info,
                           container_id=container_id, directory=base / container_id,
                           command_task="command" in task, uris=uris, grace_period=grace,
                           pid_file=self.work_dir / PROCESS_RECORDS / f"{container_id}.pids")

    def _environment(self, run: ExecutorRun) -> dict[str, str]:
        base = self.executor_environment_variables
        env = dict(base) if base is not None else base_environment(os.environ)
        framework = self.frameworks[run.framework_id]
        checkpoint = bool(framework.info.get("checkpoint", False))
        env.update({
            "MESOS_FRAMEWORK_ID": run.framework_id, "MESOS_EXECUTOR_ID": run.executor_id,
            "MESOS_AGENT_ENDPOINT": self.endpoint, "MESOS_DIRECTORY": str(run.directory),
            "MESOS_SANDBOX": str(run.directory), "MESOS_SLAVE_ID": self.agent_id,
            "MESOS_SLAVE_PID": f"slave(1)@{self.endpoint}", "MESOS_CHECKPOINT": "1" if checkpoint else "0",
            "MESOS_HTTP_COMMAND_EXECUTOR": "0",
            "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD": format_duration(run.grace_period),
            "LIBPROCESS_PORT": "0", "LIBPROCESS_IP": self.host,
        })
        if checkpoint:
            env["MESOS_RECOVERY_TIMEOUT"] = "15mins"
            env["MESOS_SUBSCRIPTION_BACKOFF_MAX"] = "2secs"
        if run.command_task:
            env["LOCALMESOS_COMMAND_KILL_GRACE"] = str(self.command_kill_grace_period)
        for variable in ((run.info.get("command") or {}).get("environment") or {}).get("variables", []):
            if variable.get("type", "VALUE") == "VALUE":
                env[variable["name"]] = str(variable.get("value", ""))
        return env

    def _launch(self, run: ExecutorRun) -> None:
        """Runs on its own thread: sandbox, fetcher, then spawn the executor."""
        try:
            run.directory.mkdir(parents=True, exist_ok=True)
            (self.work_dir / PROCESS_RECORDS).mkdir(parents=True, exist_ok=True)
            latest = run.directory.parent / "latest"
            if latest.is_symlink():
                latest.unlink()
            latest.symlink_to(run.directory.name)
            fetch_all(run.uris, run.directory)
        except (FetchError, OSError) as exc:
            with self.lock:
                self._executor_terminated(run, -1, "REASON_CONTAINER_LAUNCH_FAILED",
                                          f"Failed to launch container: {exc}")
            return
        with self.lock:
            if run.state != LAUNCHING or self.stopping:
                self._executor_terminated(run, None, "REASON_EXECUTOR_TERMINATED", "Executor terminated")
                return
            command = run.info.get("command") or {}
            try:
                env = self._environment(run)
                stdout = open(run.directory / "stdout", "ab")
                stderr = open(run.directory / "stderr", "ab")
                try:
                    if command.get("shell", True):
                        argv: list[str] = ["/bin/sh", "-c", command.get("value", "")]
                        executable = ""
                    else:
                        argv = list(command.get("arguments") or [command.get("value", "")])
                        executable = command.get("value") or ""
                        _check_executable(executable or (argv[0] if argv else ""), run.directory, env)
                    read_fd, write_fd = os.pipe()
                    try:
                        run.proc = subprocess.Popen(
                            [sys.executable, "-I", "-S", str(LAUNCHER), str(read_fd), str(run.pid_file),
                             executable, *argv],
                            cwd=run.directory, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                            start_new_session=True, close_fds=True, pass_fds=(read_fd,))
                    except BaseException:
                        os.close(write_fd)
                        raise
                    finally:
                        os.close(read_fd)
                    run.watchdog_fd = write_fd
                finally:
                    stdout.close()
                    stderr.close()
            except OSError as exc:
                self._executor_terminated(run, -1, "REASON_CONTAINER_LAUNCH_FAILED",
                                          f"Failed to launch container: {exc}")
                return
            run.state = REGISTERING
            run.registration_deadline = time.monotonic() + self.registration_timeout
            run.waiter = threading.Thread(target=self._wait, args=(run,), name=f"wait-{run.executor_id}",
                                          daemon=True)
            run.waiter.start()

    def _wait(self, run: ExecutorRun) -> None:
        assert run.proc is not None
        code = run.proc.wait()
        run.processes()  # keep the record of its pids before the sandbox can go
        raw = (code << 8) if code >= 0 else -code  # raw wait(2) status
        with self.lock:
            kill_session(run.proc.pid)
            if run.watchdog_fd is not None:
                os.close(run.watchdog_fd)
                run.watchdog_fd = None
            self._executor_terminated(run, raw, "REASON_EXECUTOR_TERMINATED", "Executor terminated")

    def _executor_terminated(self, run: ExecutorRun, raw_status: Optional[int], reason: str, message: str) -> None:
        if run.state == TERMINATED:
            return
        run.state = TERMINATED
        if run.stream is not None:
            run.stream.close()
            run.stream = None
        framework = self.frameworks.get(run.framework_id)
        report = framework is not None and not framework.terminating
        if report:
            self.master.executor_exited(self.agent_id, run.framework_id, run.executor_id,
                                        None if run.command_task or raw_status is None else raw_status)
            for task_id in run.live_tasks():
                state = "TASK_KILLED" if task_id in run.kill_requested else "TASK_FAILED"
                self._agent_update(run.framework_id, task_id, state, reason, message, run.executor_id)
        else:
            self.master.executor_exited(self.agent_id, run.framework_id, run.executor_id, None)
        if framework is not None and framework.executors.get(run.executor_id) is run:
            del framework.executors[run.executor_id]
        self.completed_runs.append(run)
        if framework is not None and framework.terminating and not framework.executors:
            self.frameworks.pop(run.framework_id, None)

    # ------------------------------------------------------------ status updates
    def _agent_update(self, framework_id: str, task_id: str, state: str, reason: str, message: str,
                      executor_id: Optional[str]) -> None:
        status = make_status(task_id, state, "SOURCE_AGENT", message=message, reason=reason,
                             agent_id=self.agent_id, executor_id=executor_id, with_uuid=True)
        self._enqueue_update(framework_id, status)

    def _enqueue_update(self, framework_id: str, status: dict[str, Any]) -> bool:
        framework = self.frameworks.get(framework_id)
        if framework is None or framework.terminating:
            return False
        task_id = status["task_id"]["value"]
        for run in framework.executors.values():
            if task_id in run.queued or task_id in run.launched:
                run.task_states[task_id] = status["state"]
        queue = framework.updates.get(task_id)
        if queue is None:
            queue = framework.updates[task_id] = UpdateQueue(interval=self.retry_interval)
        if status["uuid"] in queue.seen:
            return False
        queue.seen.add(status["uuid"])
        queue.pending.append(status)
        queue.latest_state = status["state"]
        if len(queue.pending) == 1:
            self._forward(framework_id, queue, reset=True)
        else:
            self.master.task_latest_state(framework_id, task_id, queue.latest_state)
        return True

    def _forward(self, framework_id: str, queue: UpdateQueue, reset: bool = False) -> None:
        if reset:
            queue.interval = self.retry_interval
        else:
            queue.interval = min(queue.interval * 2, self.retry_max)
        queue.next_retry = time.monotonic() + queue.interval
        self.master.status_update(self.agent_id, framework_id, copy.deepcopy(queue.pending[0]), queue.latest_state)

    def acknowledge(self, framework_id: str, task_id: str, uuid: str) -> Optional[dict[str, Any]]:
        """Scheduler ACK via the master; returns the acknowledged status if it was the head."""
        framework = self.frameworks.get(framework_id)
        queue = framework.updates.get(task_id) if framework else None
        if framework is None or queue is None or not queue.pending or queue.pending[0].get("uuid") != uuid:
            return None
        acked = queue.pending.popleft()
        if queue.pending:
            self._forward(framework_id, queue, reset=True)
        elif is_terminal(acked["state"]):
            del framework.updates[task_id]
            for run in framework.executors.values():
                run.queued.pop(task_id, None)
                if run.launched.pop(task_id, None) is not None:
                    run.task_states.pop(task_id, None)
        return acked

    # ------------------------------------------------------------ scheduler-driven actions
    def kill_task(self, framework_id: str, task_id: str, kill_policy: Optional[dict[str, Any]]) -> None:
        framework = self.frameworks.get(framework_id)
        if framework is None:
            return
        for run in list(framework.executors.values()):
            if task_id in run.queued:
                del run.queued[task_id]
                run.groups.pop(task_id, None)
                run.launched[task_id] = {}
                self._agent_update(framework_id, task_id, "TASK_KILLED", "REASON_TASK_KILLED_DURING_LAUNCH",
                                   "Killed before delivery to the executor", run.executor_id)
                if not run.live_tasks():
                    self.shutdown_executor(run)
                return
            if task_id in run.launched and not is_terminal(run.task_states.get(task_id, "TASK_STAGING")):
                run.kill_requested.add(task_id)
                if run.stream is not None:
                    kill: dict[str, Any] = {"task_id": {"value": task_id}}
                    if kill_policy:
                        kill["kill_policy"] = kill_policy
                    run.stream.send({"type": "KILL", "kill": kill})
                return

    def framework_message(self, framework_id: str, executor_id: str, data: str) -> None:
        framework = self.frameworks.get(framework_id)
        run = framework.executors.get(executor_id) if framework else None
        if run is not None and run.stream is not None and run.state == RUNNING:
            run.stream.send({"type": "MESSAGE", "message": {"data": data}})

    def shutdown_executor_by_id(self, framework_id: str, executor_id: str) -> None:
        framework = self.frameworks.get(framework_id)
        run = framework.executors.get(executor_id) if framework else None
        if run is not None:
            self.shutdown_executor(run)

    def shutdown_executor(self, run: ExecutorRun) -> None:
        """SHUTDOWN event, then kill the session after the grace period."""
        if run.state in (TERMINATING, TERMINATED):
            return
        previous = run.state
        run.state = TERMINATING
        if previous == LAUNCHING:
            return  # the launch thread notices and finishes the run
        if run.stream is not None:
            run.stream.send({"type": "SHUTDOWN"})
            run.kill_deadline = time.monotonic() + run.grace_period
        else:
            run.kill_deadline = time.monotonic()
            self._kill_run(run)

    def shutdown_framework(self, framework_id: str) -> None:
        framework = self.frameworks.get(framework_id)
        if framework is None:
            return
        framework.terminating = True
        framework.updates.clear()
        for run in list(framework.executors.values()):
            self.shutdown_executor(run)
        if not framework.executors:
            del self.frameworks[framework_id]

    def _kill_run(self, run: ExecutorRun) -> None:
        if run.proc is not None:
            kill_session(run.proc.pid)

    def tick(self) -> None:
        now = time.monotonic()
        for framework_id, framework in list(self.frameworks.items()):
            for queue in framework.updates.values():
                if queue.pending and now >= queue.next_retry:
                    self._forward(framework_id, queue)
            for run in list(framework.executors.values()):
                if run.state == TERMINATING and run.kill_deadline is not None and now >= run.kill_deadline:
                    run.kill_deadline = None
                    self._kill_run(run)
                elif run.state == REGISTERING and run.registration_deadline is not None \
                        and now >= run.registration_deadline:
                    run.registration_deadline = None
                    message = f"Executor did not register within {format_duration(self.registration_timeout)}"
                    for task_id in run.live_tasks():
                        self._agent_update(framework_id, task_id, "TASK_FAILED",
                                           "REASON_EXECUTOR_REGISTRATION_TIMEOUT", message, run.executor_id)
                        run.task_states[task_id] = "TASK_FAILED"
                    run.state = TERMINATING
                    self._kill_run(run)

    # ------------------------------------------------------------ stop
    def _terminate_frameworks(self) -> list[ExecutorRun]:
        """Stop accepting work and drop pending updates; return the executors still running."""
        self.stopping = True
        for framework in self.frameworks.values():
            framework.terminating = True
            framework.updates.clear()
        return self.runs()

    def kill_all(self) -> list[ExecutorRun]:
        """Agent removed: destroy every executor at once, without status updates."""
        runs = self._terminate_frameworks()
        for run in runs:
            run.state = TERMINATING
            if run.stream is not None:
                run.stream.close()
            self._kill_run(run)
        return runs

    def begin_stop(self) -> list[ExecutorRun]:
        """Send SHUTDOWN to every executor; returns the runs to wait for."""
        runs = self._terminate_frameworks()
        for run in runs:
            self.shutdown_executor(run)
        return runs

    # ------------------------------------------------------------ executor API
    def executor_call(self, call: dict[str, Any]) -> tuple[Optional[EventStream], int]:
        """Handle one executor call; returns (stream for SUBSCRIBE, HTTP status)."""
        kind = call.get("type")
        fail = lambda message: HTTPError(400, "Failed to validate executor::Call: " + message)  # noqa: E731
        if kind not in ("SUBSCRIBE", "UPDATE", "MESSAGE", "HEARTBEAT"):
            raise fail("Expecting 'type' to be present")
        if kind != "HEARTBEAT" and kind.lower() not in call:
            raise fail(f"Expecting '{kind.lower()}' to be present")
        if kind == "UPDATE":
            status = call["update"]["status"]
            if "uuid" not in status:
                raise fail("Expecting 'uuid' to be present")
            if protocol.valid_uuid(status["uuid"]) is None:
                raise fail("Not a valid UUID")
            if status.get("state") not in protocol.TASK_STATES:
                raise HTTPError(400, "Failed to convert JSON into Call protobuf: Missing required fields: "
                                     "update.status.state")
            if status.get("source", "SOURCE_EXECUTOR") != "SOURCE_EXECUTOR":
                raise fail(f"Received Call from executor '{call['executor_id']['value']}' of framework "
                           f"'{call['framework_id']['value']}' with invalid source, expecting 'SOURCE_EXECUTOR'")
            if status["state"] == "TASK_STAGING":
                raise fail(f"Received TASK_STAGING from executor '{call['executor_id']['value']}' of framework "
                           f"'{call['framework_id']['value']}' which is not allowed")
            if "executor_id" in status and status["executor_id"] != call["executor_id"]:
                raise fail(f"ExecutorID in Call: {call['executor_id'].get('value')} does not match ExecutorID in "
                           f"TaskStatus: {status['executor_id'].get('value')}")
        framework = self.frameworks.get(call["framework_id"]["value"])
        if framework is None:
            raise HTTPError(400, "Framework cannot be found")
        run = framework.executors.get(call["executor_id"]["value"])
        if run is None:
            raise HTTPError(400, "Executor cannot be found")
        if kind == "SUBSCRIBE":
            return self._subscribe(framework, run, call["subscribe"]), 200
        if run.state == REGISTERING or run.stream is None:
            raise HTTPError(403, "Executor is not subscribed")
        if kind == "UPDATE":
            status = copy.deepcopy(call["update"]["status"])
            status["source"] = "SOURCE_EXECUTOR"
            self._executor_update(framework, run, status)
        elif kind == "MESSAGE":
            self.master.executor_message(self.agent_id, run.framework_id, run.executor_id, call["message"]["data"])
        return None, 202

    def _executor_update(self, framework: AgentFramework, run: ExecutorRun, status: dict[str, Any]) -> None:
        status["agent_id"] = {"value": self.agent_id}
        status.setdefault("timestamp", time.time())
        status["container_status"] = {
            "container_id": {"value": run.container_id},
            "network_infos": [{"ip_addresses": [{"protocol": "IPv4", "ip_address": self.host}]}],
            "executor_pid": run.proc.pid if run.proc else 0,
        }
        task_id = status["task_id"]["value"]
        if task_id not in run.launched and task_id not in run.queued:
            run.launched[task_id] = {}
        self._enqueue_update(run.framework_id, status)
        if run.stream is not None:
            run.stream.send({"type": "ACKNOWLEDGED", "acknowledged": {
                "task_id": {"value": task_id}, "uuid": status["uuid"]}})

    def _subscribe(self, framework: AgentFramework, run: ExecutorRun, body: dict[str, Any]) -> EventStream:
        stream = EventStream(heartbeat=lambda: {"type": "HEARTBEAT"}, heartbeat_interval=1800.0)
        if run.stream is not None:
            run.stream.close()
        if framework.terminating or run.state in (TERMINATING, TERMINATED):
            stream.send({"type": "SHUTDOWN"})
            return stream
        run.stream = stream
        run.state = RUNNING
        run.registration_deadline = None
        stream.on_close = lambda s, r=run: self._executor_stream_closed(r, s)
        executor_info = copy.deepcopy(run.info)
        executor_info.pop("source", None)
        stream.send({"type": "SUBSCRIBED", "subscribed": {
            "executor_info": executor_info, "framework_info": copy.deepcopy(framework.info),
            "agent_info": self.agent_info(), "container_id": {"value": run.container_id}}})
        for update in body.get("unacknowledged_updates", []):
            status = copy.deepcopy(update["status"])
            if protocol.valid_uuid(status.get("uuid")) is not None:
                status["source"] = "SOURCE_EXECUTOR"
                self._executor_update(framework, run, status)
        known = {t["task_id"]["value"] for t in body.get("unacknowledged_tasks", []) if "task_id" in t}
        for task_id, task in list(run.launched.items()):
            if task and task_id not in known and task_id not in run.task_states:
                self._agent_update(run.framework_id, task_id, "TASK_LOST", "REASON_EXECUTOR_REREGISTRATION_TIMEOUT",
                                   "Task was not received by the executor", run.executor_id)
        pending = list(run.queued.items())
        groups = dict(run.groups)
        run.queued.clear()
        run.groups.clear()
        delivered: set[str] = set()
        for task_id, task in pending:
            run.launched[task_id] = task
            key = groups.get(task_id)
            if key is None:
                self._deliver(run, [task], group=False)
            elif key not in delivered:
                delivered.add(key)
                self._deliver(run, [t for tid, t in pending if groups.get(tid) == key], group=True)
        return stream

    def _executor_stream_closed(self, run: ExecutorRun, stream: EventStream) -> None:
        with self.lock:
            if run.stream is stream:
                run.stream = None


def base_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The default base environment of an executor: ``BASE_ENVIRONMENT`` and ``LC_*`` from
    ``environ``; nothing else of the agent's process (its secrets, tokens, MESOS_* settings)."""
    return {key: value for key, value in environ.items() if key in BASE_ENVIRONMENT or key.startswith("LC_")}


def kill_session(sid: int, sig: int = signal.SIGKILL) -> None:
    """Kill every process of session ``sid`` (the executor and everything it spawned)."""
    try:
        os.killpg(sid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in session_members(sid):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _check_executable(name: str, cwd: Path, env: dict[str, str]) -> None:
    """Raise OSError (a container launch failure, as Popen would) when ``name`` cannot be executed;
    the launcher would otherwise only be able to exit 127."""
    if "/" in name:
        path: Optional[str] = str(cwd / name)
        if not (path and os.path.isfile(path) and os.access(path, os.X_OK)):
            raise FileNotFoundError(2, "No such executable file", name)
    elif shutil.which(name, path=env.get("PATH", os.defpath)) is None:
        raise FileNotFoundError(2, "No such file or directory", name)


def process_alive(pid: int, sid: int) -> bool:
    """Whether process ``pid`` exists, is not a zombie and still belongs to session ``sid``
    (reads that one process' /proc entry; Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("utf-8", "replace")
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2:].split()
    return len(fields) > 3 and fields[0] not in ("Z", "X") and fields[3] == str(sid)


def session_members(sid: int) -> list[int]:
    """Pids whose session id is ``sid`` (Linux /proc)."""
    members: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return members
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode("utf-8", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        # fields[0] is state; session is field 6 of stat => index 3 after the command name.
        if len(fields) > 3 and fields[3] == str(sid) and fields[0] != "Z":
            members.append(int(entry))
    return members


class AgentHandler(Handler):
    """HTTP endpoints of an agent."""

    server: Server

    @property
    def agent(self) -> Agent:
        return self.server.owner

    def do_GET(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] == "/api/v1/executor":
            self._executor()
        elif self.path.split("?", 1)[0] in ("/health", "/slave(1)/health"):
            self.reply(200)
        else:
            self.reply(404)

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] == "/api/v1/executor":
            self._executor()
        elif self.discard_body():
            self.reply(404)

    def _executor(self) -> None:
        try:
            call = self.parse_call("executor")
            protocol.check_required(call, "ExecutorCall")
            with self.agent.lock:
                stream, status = self.agent.executor_call(call)
        except HTTPError as error:
            self.reply_error(error)
            return
        if stream is None:
            self.reply(status)
            return
        self.start_stream()
        stream.serve(self)
