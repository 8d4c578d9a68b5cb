"""LocalCluster: one master plus several agents in this process, each on its own loopback port."""
from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .agent import PROCESS_RECORDS, Agent, ExecutorRun, kill_session, process_alive
from .httputil import Server
from .master import Master
from .master_http import serve_master
from .resources import Resources


DEFAULT_PRINCIPAL = "mesos-ensemble"
"""The principal of generated credentials."""


def generate_secret() -> str:
    """A fresh random secret (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


@dataclass
class AgentSpec:
    """Resources and attributes of one agent (``resources`` like ``{"cpus": 2, "mem": 4096}``;
    ``"ports": "[31000-32000]"`` for ranges: an agent that names no ports offers those, as a
    Mesos agent does, and ``"ports": "[]"`` none)."""

    hostname: str = "localhost"
    resources: Mapping[str, Any] = field(default_factory=lambda: {"cpus": 2, "mem": 4096, "disk": 10000, "gpus": 0})
    attributes: Mapping[str, Any] = field(default_factory=dict)
    port: int = 0
    executor_environment_variables: Optional[Mapping[str, str]] = None
    """Mesos' agent flag ``--executor_environment_variables``: the exact base environment of this
    agent's executors (None = the cluster's setting)."""


def recorded_processes(work_dir: Path) -> list[tuple[int, int]]:
    """``(session, pid)`` of every executor process a cluster working in ``work_dir`` started, from
    the launchers' pid files, which outlive the cluster's process and its sandboxes (not a work dir
    the cluster created itself: that goes when it stops)."""
    found = []
    for pid_file in sorted((Path(work_dir) / PROCESS_RECORDS).glob("*.pids")):
        try:
            numbers = [int(p) for p in pid_file.read_text().split()]
        except (OSError, ValueError):
            continue
        found += [(numbers[0], pid) for pid in numbers]
    return found


def live_processes(records: Sequence[tuple[int, int]]) -> list[int]:
    """Pids among ``records`` still running (zombies count as gone)."""
    return [pid for sid, pid in records if process_alive(pid, sid)]


class LocalCluster:
    """An embedded Mesos cluster speaking the v1 HTTP APIs over loopback.

    Fault injection for tests: ``kill_agent`` (the agent's process dies: its executors with it, the
    master marks it unreachable), ``restart_agent``, ``remove_agent`` (operator removal) and
    ``restart_master`` (the master fails over, keeping its state)."""

    def __init__(self, agents: Sequence[AgentSpec] = (), work_dir: Optional[Path] = None,
                 credentials: Optional[Mapping[str, str]] = None, keep_sandboxes: bool = False,
                 host: str = "127.0.0.1", master_port: int = 0, *,
                 heartbeat_interval: float = 15.0, allocation_interval: float = 1.0,
                 status_update_retry_interval: float = 10.0, executor_shutdown_grace_period: float = 5.0,
                 executor_registration_timeout: float = 60.0, command_kill_grace_period: float = 3.0,
                 offer_timeout: Optional[float] = None, tick_interval: float = 0.05,
                 executor_environment_variables: Optional[Mapping[str, str]] = None) -> None:
        self.agent_specs = list(agents) or [AgentSpec()]
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="localmesos-"))
        self.credentials = dict(credentials) if credentials else None
        self.keep_sandboxes = keep_sandboxes
        self.host = host
        self.master_port = master_port
        self.options: dict[str, Any] = dict(
                            heartbeat_interval=heartbeat_interval, allocation_interval=allocation_interval,
                            status_update_retry_interval=status_update_retry_interval,
                            executor_shutdown_grace_period=executor_shutdown_grace_period,
                            executor_registration_timeout=executor_registration_timeout,
                            command_kill_grace_period=command_kill_grace_period, offer_timeout=offer_timeout)
        self.tick_interval = tick_interval
        self.executor_environment_variables = (dict(executor_environment_variables)
                                               if executor_environment_variables is not None else None)
        self.lock = threading.RLock()
        self.master: Optional[Master] = None
        self._master_server: Optional[Server] = None
        self.agents: list[Agent] = []
        """Agents in service (killed and removed agents leave this list)."""
        self._every_agent: list[Agent] = []
        self._specs: dict[int, AgentSpec] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @classmethod
    def with_generated_credentials(cls, agents: Sequence[AgentSpec] = (), principal: str = DEFAULT_PRINCIPAL,
                                   **options: Any) -> "tuple[LocalCluster, tuple[str, str]]":
        """A cluster (not started) requiring framework authentication by ``principal`` with a fresh
        random secret, and that ``(principal, secret)`` for the framework's driver. ``options`` are
        the constructor's (except ``credentials``). The secret exists only in this process."""
        if "credentials" in options:
            raise TypeError("with_generated_credentials() generates the credentials itself")
        secret = generate_secret()
        return cls(agents, credentials={principal: secret}, **options), (principal, secret)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "LocalCluster":
        if self.master is not None:
            raise RuntimeError("cluster already started")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        o = self.options
        self.master = Master(self.lock, self.host, self.credentials, heartbeat_interval=o["heartbeat_interval"],
                             allocation_interval=o["allocation_interval"], offer_timeout=o["offer_timeout"])
        self._master_server = serve_master(self.master, self.host, self.master_port)
        with self.lock:
            for spec in self.agent_specs:
                self._add_agent(spec, spec.port)
        self._threads.append(self._master_server.start("localmesos-master"))
        ticker = threading.Thread(target=self._tick_loop, name="localmesos-clock", daemon=True)
        ticker.start()
        self._threads.append(ticker)
        return self

    def _add_agent(self, spec: AgentSpec, port: int) -> Agent:
        assert self.master is not None
        o = self.options
        agent = Agent(self.master, self.lock, spec.hostname, Resources.for_agent(spec.resources),
                      dict(spec.attributes), self.work_dir, self.host, port,
                      executor_shutdown_grace_period=o["executor_shutdown_grace_period"],
                      status_update_retry_interval=o["status_update_retry_interval"],
                      executor_registration_timeout=o["executor_registration_timeout"],
                      command_kill_grace_period=o["command_kill_grace_period"],
                      executor_environment_variables=(spec.executor_environment_variables
                                                      if spec.executor_environment_variables is not None
                                                      else self.executor_environment_variables))
        self.agents.append(agent)
        self._every_agent.append(agent)
        self._specs[id(agent)] = spec
        self._threads.append(agent.server.start(f"localmesos-agent-{agent.hostname}"))
        return agent

    def _tick_loop(self) -> None:
        assert self.master is not None
        wanted = self.master.allocation_wanted
        while not self._stop.is_set():
            wanted.wait(self.tick_interval)
            wanted.clear()
            with self.lock:
                if self._stop.is_set():
                    return
                if self._master_server is not None:  # a master that is down keeps no time
                    self.master.tick()
                for agent in self.agents:
                    agent.tick()

    @property
    def master_address(self) -> str:
        if self.master is None:
            raise RuntimeError("cluster not started")
        return self.master.address

    def agent_endpoints(self) -> dict[str, str]:
        """agent id -> ``host:port`` of its executor API."""
        return {agent.agent_id: agent.endpoint for agent in self.agents}

    def state(self) -> dict[str, Any]:
        from .state_json import master_state
        if self.master is None:
            raise RuntimeError("cluster not started")
        with self.lock:
            return master_state(self.master)

    # ------------------------------------------------------------ faults
    def _find_agent(self, agent: str) -> Agent:
        matches = [a for a in self.agents if agent in (a.agent_id, a.hostname) and not a.stopping]
        if not matches:
            raise KeyError(agent)
        return matches[0]

    def _take_down(self, agent: str, unreachable: bool) -> Agent:
        if self.master is None:
            raise RuntimeError("cluster not started")
        with self.lock:
            target = self._find_agent(agent)
            runs = target.kill_all()
            self.agents.remove(target)
            self.master.remove_agent(target.agent_id, unreachable=unreachable)
        for run in runs:
            if run.waiter is not None:
                run.waiter.join(timeout=5)
        target.server.shutdown()
        target.server.server_close()
        return target

    def remove_agent(self, agent: str) -> None:
        """Remove an agent (by hostname or id) as an operator would: its executors are killed,
        frameworks get RESCIND for its offers, TASK_LOST (TASK_GONE_BY_OPERATOR if PARTITION_AWARE,
        REASON_AGENT_REMOVED, no uuid) and FAILURE {agent_id}."""
        self._take_down(agent, unreachable=False)

    def kill_agent(self, agent: str) -> str:
        """The agent's process dies (by hostname or id): its executors die with it (SIGKILL to
        their sessions), its port closes, and the master, its health checks failing, marks it
        unreachable: RESCIND, TASK_LOST (TASK_UNREACHABLE if PARTITION_AWARE, REASON_AGENT_REMOVED,
        no uuid) per task, FAILURE {agent_id}. Returns the killed agent's id."""
        return self._take_down(agent, unreachable=True).agent_id

    def restart_agent(self, agent: str) -> str:
        """Start a killed or removed agent again (by hostname or old id) on the same port, with
        the same resources: without checkpointing it comes back empty, under a new agent id,
        which it returns."""
        if self.master is None:
            raise RuntimeError("cluster not started")
        gone = [a for a in self._every_agent if a not in self.agents and agent in (a.agent_id, a.hostname)]
        if not gone:
            raise KeyError(agent)
        with self.lock:
            return self._add_agent(self._specs[id(gone[-1])], gone[-1].port).agent_id

    def restart_master(self, downtime: float = 0.0) -> None:
        """The master process restarts (fails over) keeping its state: every framework's
        subscription breaks, the port refuses connections for ``downtime`` seconds, then a master
        with the same frameworks, tasks and agents serves on the same port. Frameworks
        re-subscribe with their id within ``failover_timeout`` (counted from the restart) and
        reconcile; agents and executors are untouched."""
        if self.master is None or self._master_server is None:
            raise RuntimeError("cluster not started")
        server, self._master_server = self._master_server, None
        server.shutdown()
        server.server_close()
        with self.lock:
            self.master.failed_over()
        if downtime > 0:
            time.sleep(downtime)
        self._master_server = serve_master(self.master, self.host, self.master.port)
        self._threads.append(self._master_server.start("localmesos-master"))
        self.master.allocation_wanted.set()

    # ------------------------------------------------------------ processes
    def _all_runs(self) -> list[ExecutorRun]:
        with self.lock:
            return [run for agent in self._every_agent for run in agent.completed_runs + agent.runs()]

    def executor_pids(self) -> list[int]:
        """Session ids (launcher pids) of live executors of agents in service."""
        with self.lock:
            return [run.proc.pid for agent in self.agents for run in agent.runs()
                    if run.proc is not None and run.proc.poll() is None]

    def process_records(self) -> list[tuple[int, int]]:
        """``(session, pid)`` of every process this cluster started: each executor's launcher
        (the session leader) and the executor it ran (from the launcher's pid file)."""
        return [record for run in self._all_runs() for record in run.processes()]

    def live_processes(self) -> list[int]:
        """Pids among ``process_records`` that are still running (zombies count as gone)."""
        return live_processes(self.process_records())

    def stop(self, timeout: Optional[float] = None) -> None:
        """SHUTDOWN every executor, kill their sessions after the grace period, close all ports."""
        if self.master is None or self._stop.is_set():
            return
        grace = self.options["executor_shutdown_grace_period"] if timeout is None else timeout
        # The master goes away first: no new subscriptions while executors shut down.
        if self._master_server is not None:
            self._master_server.shutdown()
            self._master_server.server_close()
        with self.lock:
            for framework in list(self.master.frameworks.values()):
                if framework.stream is not None:
                    framework.stream.close()
            runs = [run for agent in self.agents for run in agent.begin_stop()]
        deadline = time.monotonic() + grace
        for run in runs:
            while run.proc is None and run.state == "LAUNCHING" and time.monotonic() < deadline:
                time.sleep(0.05)
            if run.proc is not None:
                try:
                    run.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except Exception:  # noqa: BLE001 - TimeoutExpired
                    pass
        self._stop.set()
        self.master.allocation_wanted.set()
        for run in runs:
            if run.proc is not None:
                kill_session(run.proc.pid)
                try:
                    run.proc.wait(timeout=5)
                except Exception:  # noqa: BLE001
                    pass
                kill_session(run.proc.pid)
            if run.waiter is not None:
                run.waiter.join(timeout=5)
        for agent in self.agents:
            agent.server.shutdown()
            agent.server.server_close()
        with self.lock:
            for run in runs:
                if run.stream is not None:
                    run.stream.close()
        for thread in self._threads:
            thread.join(timeout=5)
        if not self.keep_sandboxes:
            shutil.rmtree(self.work_dir / "slaves", ignore_errors=True)
            if self._own_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
