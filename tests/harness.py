"""Test harness (Nomad-style): a fake pymesos ``SchedulerDriver`` and an in-process mock Mesos.

``FakeDriver`` records every call the scheduler makes.  ``InProcessMesos`` extends it into a
tiny mock master for whole-job tests: it registers the framework, offers the configured agents
(honouring suppress/revive), and runs each launched task through the real executor runner on
the task's real payload, answering with TASK_RUNNING and TASK_FINISHED (or TASK_FAILED).
By default an agent is offered only when idle, whole; with ``partial_offers`` it is offered
what its running tasks and our executors leave free, as a Mesos master does, and a launch that
asks for more than was offered is recorded in ``overcommitted``.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from addict import Dict

from executor.main import build_result_data, bundle_item_inline, upload_envelope
from executor.protocol import (BundlePayload, BundleResult, ResultEnvelope, TaskFailure, TaskPayload, TaskUsage,
                               decode_task)
from executor.runner import SandboxCache, TaskError, compute_measured, fetch_inputs
from factories import make_offer, make_status


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.02) -> Any:
    """Poll until ``condition()`` is true and return its value (``timeout`` only guards against hangs)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class FakeDriver:
    """Records launches, declines, suppress/revive, kills, reconciliations and acknowledgements."""

    scheduler: Any = None
    launches: list[tuple[list[str], list[dict[str, Any]], dict[str, Any]]] = field(default_factory=list)
    declines: list[tuple[list[str], dict[str, Any]]] = field(default_factory=list)
    suppressed: int = 0
    revived: int = 0
    kills: list[str] = field(default_factory=list)
    reconciles: list[list[Any]] = field(default_factory=list)
    acks: list[Any] = field(default_factory=list)
    stopped: bool = False

    @staticmethod
    def _ids(offer_ids: Any) -> list[str]:
        ids = offer_ids if isinstance(offer_ids, list) else [offer_ids]
        return [o["value"] for o in ids]

    def launchTasks(self, offer_ids: Any, tasks: list[dict[str, Any]], filters: Any = None) -> None:  # noqa: N802
        self.launches.append((self._ids(offer_ids), tasks, dict(filters or {})))

    def declineOffer(self, offer_ids: Any, filters: Any = None) -> None:  # noqa: N802
        self.declines.append((self._ids(offer_ids), dict(filters or {})))

    def suppressOffers(self, roles: Any = ()) -> None:  # noqa: N802
        self.suppressed += 1

    def reviveOffers(self, roles: Any = ()) -> None:  # noqa: N802
        self.revived += 1

    def killTask(self, task_id: Any) -> None:  # noqa: N802
        self.kills.append(task_id["value"])

    def reconcileTasks(self, tasks: list[Any]) -> None:  # noqa: N802
        self.reconciles.append(tasks)

    def acknowledgeStatusUpdate(self, status: Any) -> None:  # noqa: N802
        self.acks.append(status)

    def start(self) -> None:
        pass

    def stop(self, failover: bool = False) -> None:
        self.stopped = True

    def join(self) -> None:
        pass


FailureRule = Callable[[TaskPayload, str], str | None]
"""(payload, agent id) -> a failure message to report instead of running the task, or None."""

DelayRule = Callable[[TaskPayload, str], float]
"""(payload, agent id) -> seconds the task takes before it runs (a slow agent); a kill ends it."""


class InProcessMesos(FakeDriver):
    """A mock master and agents in one thread: offers in, real executor-runner results out."""

    def __init__(self, scheduler: Any, agents: list[dict[str, Any]], sandbox: Path,
                 fail: FailureRule | None = None, delay: DelayRule | None = None, partial_offers: bool = False) -> None:
        super().__init__(scheduler)
        self.agents, self.sandbox, self.fail, self.delay = agents, sandbox, fail, delay
        self.partial_offers = partial_offers
        self._used: dict[str, dict[str, float]] = {}     # agent -> resources held by running tasks and executors
        self._executors: set[tuple[str, str]] = set()    # (agent, executor id) started
        self._offered: dict[str, tuple[str, dict[str, float]]] = {}  # offer id -> (agent, resources)
        self.overcommitted: list[str] = []
        self.partial_offers_made = 0
        self._killed: set[str] = set()
        self.caches: dict[str, SandboxCache] = {}
        self._busy: dict[str, int] = {}
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="in-process-mesos", daemon=True)
        self._suppressed_now = False
        self._lock = threading.Lock()

    @classmethod
    def factory(cls, agents: list[dict[str, Any]], sandbox: Path, fail: FailureRule | None = None,
                delay: DelayRule | None = None, partial_offers: bool = False) -> Callable[..., "InProcessMesos"]:
        def build(scheduler: Any, info: dict[str, Any], master: str, principal: Any, secret: Any) -> InProcessMesos:
            driver = cls(scheduler, agents, sandbox, fail, delay, partial_offers)
            build.last = driver  # type: ignore[attr-defined]
            return driver
        return build

    def start(self) -> None:
        self.scheduler.registered(self, Dict({"value": "F1"}), Dict({"hostname": "mock", "port": 5050}))
        self._thread.start()

    def stop(self, failover: bool = False) -> None:
        self.stopped = True
        self._wake.set()

    def join(self) -> None:
        self._thread.join(timeout=10)

    def suppressOffers(self, roles: Any = ()) -> None:  # noqa: N802
        super().suppressOffers(roles)
        self._suppressed_now = True

    def reviveOffers(self, roles: Any = ()) -> None:  # noqa: N802
        super().reviveOffers(roles)
        self._suppressed_now = False
        self._wake.set()

    def killTask(self, task_id: Any) -> None:  # noqa: N802
        super().killTask(task_id)
        with self._lock:
            self._killed.add(task_id["value"])

    def launchTasks(self, offer_ids: Any, tasks: list[dict[str, Any]], filters: Any = None) -> None:  # noqa: N802
        super().launchTasks(offer_ids, tasks, filters)
        self._hold(self._ids(offer_ids), tasks)
        for task in tasks:
            with self._lock:
                self._busy[task["agent_id"]["value"]] = self._busy.get(task["agent_id"]["value"], 0) + 1
            threading.Thread(target=self._run_task, args=(task,), daemon=True).start()

    def _cache(self, executor: dict[str, Any], agent: str) -> SandboxCache:
        """The executor's sandbox and download cache, one per (agent, executor id) as in Mesos."""
        key = f"{agent}/{executor['executor_id']['value']}"
        with self._lock:
            if key not in self.caches:
                sandbox = self.sandbox / key
                sandbox.mkdir(parents=True)
                self.caches[key] = SandboxCache(sandbox)
            return self.caches[key]

    @staticmethod
    def _amounts(resources: list[dict[str, Any]]) -> dict[str, float]:
        amounts: dict[str, float] = {}
        for resource in resources:
            amounts[resource["name"]] = amounts.get(resource["name"], 0.0) + resource["scalar"]["value"]
        return amounts

    def _hold(self, offer_ids: list[str], tasks: list[dict[str, Any]]) -> None:
        """Charge the launch to its agent: the tasks and any executor started by it."""
        with self._lock:
            offered: dict[str, float] = {}
            for offer_id in offer_ids:
                for name, amount in self._offered.pop(offer_id, ("", {}))[1].items():
                    offered[name] = offered.get(name, 0.0) + amount
            asked: dict[str, float] = {}
            if not self.partial_offers:
                return
            for task in tasks:
                agent = task["agent_id"]["value"]
                executor = (agent, task["executor"]["executor_id"]["value"])
                parts = [self._amounts(task["resources"])]
                if executor not in self._executors:
                    self._executors.add(executor)
                    parts.append(self._amounts(task["executor"]["resources"]))
                for part in parts:
                    for name, amount in part.items():
                        asked[name] = asked.get(name, 0.0) + amount
                        used = self._used.setdefault(agent, {})
                        used[name] = used.get(name, 0.0) + amount
            for name, amount in asked.items():
                if amount > offered.get(name, 0.0) + 1e-6:
                    self.overcommitted.append(f"{offer_ids}: {name} {amount} > offered {offered.get(name, 0.0)}")

    def _release(self, task: dict[str, Any]) -> None:
        with self._lock:
            used = self._used.setdefault(task["agent_id"]["value"], {})
            for name, amount in self._amounts(task["resources"]).items():
                used[name] = used.get(name, 0.0) - amount

    def _offers(self) -> list[Any]:
        """Idle agents, whole; or, with ``partial_offers``, every agent with something left free.
        An agent with an offer outstanding is not offered again (as a master does)."""
        offers = []
        with self._lock:
            outstanding = {agent for agent, _resources in self._offered.values()}
            for spec in self.agents:
                agent = spec["agent"]
                if agent in outstanding:
                    continue
                if not self.partial_offers:
                    if not self._busy.get(agent):
                        offer = make_offer(**spec)
                        self._offered[offer["id"]["value"]] = (agent, {})
                        offers.append(offer)
                    continue
                used = self._used.get(agent, {})
                free = {name: float(spec.get(name, default)) - used.get(name, 0.0)
                        for name, default in (("cpus", 4.0), ("mem", 4096.0), ("disk", 10000.0), ("gpus", 0.0))}
                if free["cpus"] < 0.01 or free["mem"] < 1.0:
                    continue
                self.partial_offers_made += bool(used)
                offer = make_offer(**{**spec, **{k: round(v, 6) for k, v in free.items()}})
                self._offered[offer["id"]["value"]] = (agent, {k: v for k, v in free.items() if v})
                offers.append(offer)
        return offers

    def declineOffer(self, offer_ids: Any, filters: Any = None) -> None:  # noqa: N802
        super().declineOffer(offer_ids, filters)
        with self._lock:
            for offer_id in self._ids(offer_ids):
                self._offered.pop(offer_id, None)

    def _loop(self) -> None:
        while not self.stopped:
            offers = [] if self._suppressed_now else self._offers()
            if offers:
                self.scheduler.resourceOffers(self, offers)
            self._wake.wait(timeout=0.05)
            self._wake.clear()

    def _run_task(self, task: dict[str, Any]) -> None:
        task_id, agent = task["task_id"]["value"], task["agent_id"]["value"]
        decoded = decode_task(base64.b64decode(task["data"]))
        if isinstance(decoded, BundlePayload):
            self._run_bundle(task, decoded)
            return
        payload = decoded
        self.scheduler.statusUpdate(self, make_status(task_id, "TASK_RUNNING", agent))
        failure = self.fail(payload, agent) if self.fail else None
        deadline = time.monotonic() + (self.delay(payload, agent) if self.delay else 0.0)
        while time.monotonic() < deadline and task_id not in self._killed:
            time.sleep(0.01)
        if task_id in self._killed:
            update = make_status(task_id, "TASK_KILLED", agent, message="killed by the framework")
        elif failure is None:
            try:
                cache = self._cache(task["executor"], agent)
                output, usage = compute_measured(payload, *fetch_inputs(payload, cache), cache)
                data = base64.b64encode(build_result_data(payload, output, usage)).decode()
                update = make_status(task_id, "TASK_FINISHED", agent, data=data)
            except TaskError as error:
                update = make_status(task_id, "TASK_FAILED", agent, message=str(error))
        else:
            update = make_status(task_id, "TASK_FAILED", agent, message=failure)
        time.sleep(0.001)
        if self.partial_offers:
            self._release(task)
        with self._lock:
            self._busy[agent] -= 1
        self.scheduler.statusUpdate(self, update)
        self._wake.set()

    def _run_bundle(self, task: dict[str, Any], bundle: BundlePayload) -> None:
        """A bundle of items, as the executor runs one: the items one after the other (each
        item's failure rule and delay applied to it), one terminal update for them all."""
        task_id, agent = task["task_id"]["value"], task["agent_id"]["value"]
        self.scheduler.statusUpdate(self, make_status(task_id, "TASK_RUNNING", agent))
        outcome = BundleResult()
        for payload in bundle.items:
            deadline = time.monotonic() + (self.delay(payload, agent) if self.delay else 0.0)
            while time.monotonic() < deadline and task_id not in self._killed:
                time.sleep(0.01)
            if task_id in self._killed:
                break
            failure = self.fail(payload, agent) if self.fail else None
            if failure is not None:
                outcome.failures[payload.task_id] = (TaskFailure.from_status(None, failure)
                                                     or TaskFailure("infrastructure", "", failure))
                continue
            try:
                cache = self._cache(task["executor"], agent)
                output, usage = compute_measured(payload, *fetch_inputs(payload, cache), cache)
                outcome.results[payload.task_id] = bundle_item_envelope(payload, output, usage, bundle.inline_limit)
            except TaskError as error:
                outcome.failures[payload.task_id] = TaskFailure("infrastructure", type(error).__name__, str(error))
        if task_id in self._killed:
            update = make_status(task_id, "TASK_KILLED", agent, message="killed by the framework")
        else:
            update = make_status(task_id, "TASK_FINISHED", agent, data=base64.b64encode(outcome.to_json()).decode())
        if self.partial_offers:
            self._release(task)
        with self._lock:
            self._busy[agent] -= 1
        self.scheduler.statusUpdate(self, update)
        self._wake.set()


def bundle_item_envelope(payload: TaskPayload, output: Any, usage: TaskUsage, inline_left: int) -> ResultEnvelope:
    """One bundled item's result as the executor makes it: inline while the bundle's budget
    (``inline_left`` bytes) lasts, else uploaded (the executor uploads on a thread of its own)."""
    envelope = bundle_item_inline(payload, output, usage, inline_left)
    if isinstance(envelope, ResultEnvelope):
        return envelope
    return upload_envelope(payload, *envelope)


def skip_or_fail_without(message: str) -> None:
    """A system package a test needs (Chromium, ZooKeeper) is missing: skip here, but fail in CI
    (``CI`` set, as ``.ci/run`` does after installing them), so a missing package never passes."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run_cli(*args: str | Path, columns: int | None = 120, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    """``python -m framework.cli ARGS`` in a subprocess, its output captured as text (unbuffered;
    ``columns``: the terminal width the help and tables are laid out for)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"COLUMNS": str(columns)} if columns else {})}
    return subprocess.run([sys.executable, "-m", "framework.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
