"""LocalCluster: one master plus several agents in this process, each on its own loopback port."""
from __future__ import annotations

import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .agent import Agent, kill_session
from .master import Master
from .resources import Resources


@dataclass
class AgentSpec:
    """Resources and attributes of one agent (``resources`` like ``{"cpus": 2, "mem": 4096}``;
    ``"ports": "[31000-32000]"`` for ranges)."""

    hostname: str = "localhost"
    resources: Mapping[str, Any] = field(default_factory=lambda: {"cpus": 2, "mem": 4096, "disk": 10000, "gpus": 0})
    attributes: Mapping[str, Any] = field(default_factory=dict)
    port: int = 0


class LocalCluster:
    """An embedded Mesos cluster speaking the v1 HTTP APIs over loopback."""

    def __init__(self, agents: Sequence[AgentSpec] = (), work_dir: Optional[Path] = None,
                 credentials: Optional[Mapping[str, str]] = None, keep_sandboxes: bool = False,
                 host: str = "127.0.0.1", master_port: int = 0, *,
                 heartbeat_interval: float = 15.0, allocation_interval: float = 1.0,
                 status_update_retry_interval: float = 10.0, executor_shutdown_grace_period: float = 5.0,
                 executor_registration_timeout: float = 60.0, command_kill_grace_period: float = 3.0,
                 offer_timeout: Optional[float] = None, tick_interval: float = 0.05) -> None:
        self.agent_specs = list(agents) or [AgentSpec()]
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="localmesos-"))
        self.credentials = dict(credentials) if credentials else None
        self.keep_sandboxes = keep_sandboxes
        self.host = host
        self.master_port = master_port
        self.options = dict(heartbeat_interval=heartbeat_interval, allocation_interval=allocation_interval,
                            status_update_retry_interval=status_update_retry_interval,
                            executor_shutdown_grace_period=executor_shutdown_grace_period,
                            executor_registration_timeout=executor_registration_timeout,
                            command_kill_grace_period=command_kill_grace_period, offer_timeout=offer_timeout)
        self.tick_interval = tick_interval
        self.lock = threading.RLock()
        self.master: Optional[Master] = None
        self.agents: list[Agent] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------ lifecycle
    def start(self) -> "LocalCluster":
        if self.master is not None:
            raise RuntimeError("cluster already started")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        o = self.options
        self.master = Master(self.lock, self.host, self.master_port, self.credentials,
                             heartbeat_interval=o["heartbeat_interval"],
                             allocation_interval=o["allocation_interval"], offer_timeout=o["offer_timeout"])
        with self.lock:
            for spec in self.agent_specs:
                self.agents.append(Agent(
                    self.master, self.lock, spec.hostname, Resources.from_spec(spec.resources),
                    dict(spec.attributes), self.work_dir, self.host, spec.port,
                    executor_shutdown_grace_period=o["executor_shutdown_grace_period"],
                    status_update_retry_interval=o["status_update_retry_interval"],
                    executor_registration_timeout=o["executor_registration_timeout"],
                    command_kill_grace_period=o["command_kill_grace_period"]))
        self._threads.append(self.master.server.start("localmesos-master"))
        for agent in self.agents:
            self._threads.append(agent.server.start(f"localmesos-agent-{agent.hostname}"))
        ticker = threading.Thread(target=self._tick_loop, name="localmesos-clock", daemon=True)
        ticker.start()
        self._threads.append(ticker)
        return self

    def _tick_loop(self) -> None:
        wanted = self.master.allocation_wanted  # type: ignore[union-attr]
        while not self._stop.is_set():
            wanted.wait(self.tick_interval)
            wanted.clear()
            with self.lock:
                if self._stop.is_set():
                    return
                self.master.tick()  # type: ignore[union-attr]
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
        if self.master is None:
            raise RuntimeError("cluster not started")
        with self.lock:
            return self.master.state()

    def remove_agent(self, agent: str) -> None:
        """Remove an agent (by hostname or id) as if it failed: its executors are killed, frameworks
        get RESCIND for its offers, TASK_LOST (REASON_AGENT_REMOVED) and FAILURE {agent_id}."""
        if self.master is None:
            raise RuntimeError("cluster not started")
        with self.lock:
            matches = [a for a in self.agents if agent in (a.agent_id, a.hostname) and not a.stopping]
            if not matches:
                raise KeyError(agent)
            target = matches[0]
            runs = target.kill_all()
            self.master.remove_agent(target.agent_id)
        for run in runs:
            if run.waiter is not None:
                run.waiter.join(timeout=5)
        target.server.shutdown()
        target.server.server_close()

    def executor_pids(self) -> list[int]:
        """Pids of live executor processes (session leaders)."""
        with self.lock:
            return [run.proc.pid for agent in self.agents for run in agent.runs()
                    if run.proc is not None and run.proc.poll() is None]

    def stop(self, timeout: Optional[float] = None) -> None:
        """SHUTDOWN every executor, kill their sessions after the grace period, close all ports."""
        if self.master is None or self._stop.is_set():
            return
        grace = self.options["executor_shutdown_grace_period"] if timeout is None else timeout
        # The master goes away first: no new subscriptions while executors shut down.
        self.master.server.shutdown()
        self.master.server.server_close()
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
        self.master.allocation_wanted.set()  # type: ignore[union-attr]
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
            if agent.agent_id in self.master.agents:
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
