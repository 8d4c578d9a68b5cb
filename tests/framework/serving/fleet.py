"""A deployment on a simulated clock: the real :class:`ServingController` (its decisions, its
feeding of the autoscaler, placement and cost bound) driven step by step against a small
simulated Mesos master and agents, with a load model standing in for the gateway's samples.

No threads of ours, no sockets, no sleeping: :meth:`Fleet.run_until` advances a virtual clock in
ticks of the controller's own ``TICK_SECONDS``; each tick delivers, in the order a Mesos master
sends them, the status updates due (a replica starts, turns ready after ``start_s``, ends
``kill_s`` after its kill) and then offers of every agent's free resources (honouring refuse
filters: a declined or partly used agent is offered again after ``refuse_seconds``, or at once
when more of it became free), and runs one controller step on them (``ServingController._step``,
what its worker thread runs).  The resources Mesos accounts are the launches' own: each task's
resources and ports, and each executor's resources from its first launch on an agent until the
controller shuts it down (SHUTDOWN: it exits ``kill_s`` later and its resources are offered again,
as on a Mesos agent).  The bench's shape by default: two agents of 1 cpu priced 1 and 2 per hour;
forest / boosting / logistic replicas of 0.5 / 0.25 / 0.1 cpus less the shared executor's 0.01.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from factories import make_offer, make_status
from framework import translator
from framework.packing import Agent, PriceTable, Resources
from framework.serving import controller as controller_module
from framework.serving import placement
from framework.serving.autoscale import RECENT_S, SHORT_S, MemberLoad
from framework.serving.controller import ReplicaState, ServedMember, ServingController
from framework.serving.routing import ReplicaTable
from framework.serving.service import ServeRunner
from framework.serving.spec import ReplicaBounds, ServeSpec
from framework.translator import Message, PoolAllocator

WINDOW_S = 10.0
"""The gateway's load window (``GatewayOptions.window_s``)."""
RESERVE = Resources(cpus=0.01, mem=160.0)
"""The shared executor's resources (what ``framework.catalog`` gives three small models)."""


@dataclass(frozen=True)
class Member:
    name: str
    cpus: float
    """The replica's cpus as launched (the executor's share carved out)."""
    capacity_rps: float
    """What one replica carries at the target latency (the load model's)."""
    min_replicas: int = 1
    max_replicas: int = 2
    mem: float = 544.0
    busy_at_capacity: float = 0.45
    """The share of the time a replica is busy at ``capacity_rps`` (a batching replica meets its
    target latency without being busy all the time): the gateway's busy measure, when measured."""
    standby_replicas: int = 0
    busy_growth: float = 0.0
    """How much more replica time a request costs per ready replica beyond the first, as a share
    (fewer requests coalesce into one call, more replicas share the cores): 0.3 makes one request
    cost 1.3 times as much with two replicas as with one."""

    @property
    def service_s(self) -> float:
        """Replica-seconds one request costs on one replica."""
        return self.busy_at_capacity / self.capacity_rps

    def busy(self, rate: float, ready: int) -> float:
        """The gateway's busy measure at ``rate`` on ``ready`` replicas (at most all of them busy)."""
        return min(float(ready), rate * self.service_s * (1.0 + self.busy_growth * max(0, ready - 1)))


BENCH_MEMBERS = (Member("forest", 0.49, 8.0), Member("boosting", 0.24, 12.0),
                 Member("logistic", 0.09, 100.0, max_replicas=1))
BENCH_AGENTS = {"cheap": 1.0, "dear": 2.0}


class Catalog:
    """The controller's ``ReplicaCatalog`` for the simulated members: one shared executor."""

    def __init__(self, members: Mapping[str, Member], reserve: Resources = RESERVE) -> None:
        self.members = dict(members)
        self.agent_reserve = reserve

    def executor_key(self, member: str) -> str:
        return "ensemble"

    def executor_models(self, key: str) -> frozenset[str]:
        return frozenset(self.members)

    def executor_info(self, key: str, agent: Agent, allocator: PoolAllocator, generation: int) -> Message:
        return {"executor_id": translator.id_message(translator.executor_id(key, generation)),
                "resources": allocator.take(self.agent_reserve)}

    def replica_target(self, member: str, desired: int, sha256: str) -> placement.MemberTarget:
        m = self.members[member]
        return placement.MemberTarget(member, desired, sha256, placement.replica_demand(m.cpus, m.mem))

    def replica_info(self, member: str, task_id: str, agent: Agent, allocator: PoolAllocator, executor: Message,
                     port: int, predict_mode: str | None = None, sha256: str | None = None) -> Message:
        m = self.members[member]
        return translator.task_info(task_id, f"{member} replica", agent.agent_id,
                                    allocator.take(Resources(cpus=m.cpus, mem=m.mem)), executor, b"{}", ports=[port])


def resources_of(messages: list[Message]) -> Resources:
    """Scalars and the number of ports of a launch's resource list."""
    total = Resources()
    for r in messages:
        if r["name"] == "ports":
            total += Resources(ports=sum(x["end"] - x["begin"] + 1 for x in r["ranges"]["range"]))
        else:
            total += Resources(**{r["name"]: r["scalar"]["value"]})
    return total


@dataclass
class SimTask:
    agent: str
    resources: Resources
    ports: list[int]
    running_at: float
    ended_at: float | None = None


@dataclass
class SimAgent:
    agent_id: str
    price: float
    total: Resources
    first_port: int
    executors: dict[str, Resources] = field(default_factory=dict)
    filters: list[tuple[Resources, float]] = field(default_factory=list)
    withheld_until: float = 0.0
    """Offered to nobody before then (held by another framework: a REVIVE does not change it)."""


class SimMesos:
    """The master and agents as the controller's driver sees them (a pymesos driver's calls)."""

    def __init__(self, fleet: "Fleet", agents: Mapping[str, float], cpus: float, start_s: float, kill_s: float,
                 ports: int = 1001) -> None:
        self.fleet = fleet
        self.agents = {a: SimAgent(a, price, Resources(cpus=cpus, mem=8192.0, ports=ports), 31000 + 2000 * i)
                       for i, (a, price) in enumerate(agents.items())}
        self.start_s, self.kill_s = start_s, kill_s
        self.tasks: dict[str, SimTask] = {}
        self.offers: dict[str, tuple[str, Resources]] = {}
        self.due: list[tuple[float, int, str, Any]] = []
        self._ids = itertools.count()
        self.kills: list[str] = []
        self.shutdowns: list[tuple[str, str]] = []
        """(agent id, executor id) of every SHUTDOWN call, in order."""
        self.shutdown_times: list[float] = []

    # --- the driver's calls ------------------------------------------------------------------
    def launchTasks(self, offer_ids: Any, tasks: list[Message], filters: Any = None) -> None:  # noqa: N802
        now = self.fleet.now
        offered = [self.offers.pop(o["value"]) for o in offer_ids]
        agent = self.agents[offered[0][0]]
        available = sum((r for _, r in offered), Resources())
        used = Resources()
        for task in tasks:
            executor = task["executor"]
            executor_id = executor["executor_id"]["value"]
            if executor_id not in agent.executors:
                agent.executors[executor_id] = resources_of(executor.get("resources") or [])
                used += agent.executors[executor_id]
            own = resources_of(task["resources"])
            used += own
            ports = [r["begin"] for x in task["resources"] if x["name"] == "ports" for r in x["ranges"]["range"]]
            task_id = task["task_id"]["value"]
            self.tasks[task_id] = SimTask(agent.agent_id, own, ports, now + self.start_s)
            self._at(now + 0.05, "update", (task_id, "TASK_STARTING"))
            self._at(now + self.start_s, "update", (task_id, "TASK_RUNNING"))
            self._at(now + self.start_s, "ready", task_id)
        assert used.fits_in(available), f"launch of {used} on {agent.agent_id} beyond the offer's {available}"
        self._filter(agent, (available - used).nonnegative(), filters)

    def declineOffer(self, offer_ids: Any, filters: Any = None) -> None:  # noqa: N802
        for o in offer_ids if isinstance(offer_ids, list) else [offer_ids]:
            agent_id, resources = self.offers.pop(o["value"])
            self._filter(self.agents[agent_id], resources, filters)

    def killTask(self, task_id: Any) -> None:  # noqa: N802
        self.kills.append(task_id["value"])
        task = self.tasks.get(task_id["value"])
        if task is not None and task.ended_at is None:
            self._at(self.fleet.now + self.kill_s, "update", (task_id["value"], "TASK_KILLED"))

    def shutdownExecutor(self, executor_id: Any, agent_id: Any) -> None:  # noqa: N802
        """The scheduler API's SHUTDOWN: the executor exits after ``kill_s``, its resources free
        (then the master sends FAILURE for it, as Mesos does when an executor terminates)."""
        self.shutdowns.append((agent_id["value"], executor_id["value"]))
        self.shutdown_times.append(self.fleet.now)
        self._at(self.fleet.now + self.kill_s, "executor_exit", (executor_id["value"], agent_id["value"]))

    def reviveOffers(self, roles: Any = ()) -> None:  # noqa: N802
        for agent in self.agents.values():
            agent.filters.clear()

    def suppressOffers(self, roles: Any = ()) -> None:  # noqa: N802
        pass

    def reconcileTasks(self, tasks: Any) -> None:  # noqa: N802
        pass

    def acknowledgeStatusUpdate(self, status: Any) -> None:  # noqa: N802
        pass

    # --- what a test does to the cluster -------------------------------------------------------
    def crash(self, task_id: str) -> None:
        """The task fails now (its process died): TASK_FAILED, its resources free."""
        self._at(self.fleet.now, "update", (task_id, "TASK_FAILED"))

    def withhold(self, agent_id: str, seconds: float) -> None:
        """The agent is offered to nobody for ``seconds`` (as if another framework held it)."""
        self.agents[agent_id].withheld_until = self.fleet.now + seconds

    # --- the master's side -------------------------------------------------------------------
    def _at(self, when: float, kind: str, value: Any) -> None:
        self.due.append((when, next(self._ids), kind, value))

    def _filter(self, agent: SimAgent, resources: Resources, filters: Any) -> None:
        seconds = float((filters or {}).get("refuse_seconds", 5.0))
        agent.filters.append((resources, self.fleet.now + seconds))

    def used(self, agent: SimAgent) -> Resources:
        held = sum((t.resources for t in self.tasks.values() if t.agent == agent.agent_id and t.ended_at is None),
                   Resources())
        return held + sum(agent.executors.values(), Resources()) + sum(
            (r for a, r in self.offers.values() if a == agent.agent_id), Resources())

    def events(self, now: float) -> list[tuple[str, Any, Any]]:
        """What the master sends by ``now``: status updates due, then offers (a Mesos master frees
        a task's resources when it ends and offers them after that)."""
        batch: list[tuple[str, Any, Any]] = []
        due = sorted(d for d in self.due if d[0] <= now)
        self.due = [d for d in self.due if d[0] > now]
        for _, _, kind, value in due:
            if kind == "ready":
                batch.append(("ready", None, value))
                continue
            if kind == "executor_exit":
                executor_id, agent_id = value
                if self.agents[agent_id].executors.pop(executor_id, None) is not None:
                    batch.append(("executor_lost", self, (executor_id, agent_id)))
                continue
            task_id, state = value
            task = self.tasks[task_id]
            if task.ended_at is not None:
                continue
            if state == "TASK_RUNNING" and task_id in self.kills:
                continue
            if state in ("TASK_KILLED", "TASK_FAILED"):
                task.ended_at = now
            status = make_status(task_id, state, task.agent)
            batch.append(("update", self, (translator.read_status(status), status)))
        views = []
        for agent in self.agents.values():
            agent.filters = [(r, until) for r, until in agent.filters if until > now]
            free = (agent.total - self.used(agent)).nonnegative()
            if free.cpus < 0.01 and free.mem < 32:
                continue
            if any(free.fits_in(refused) for refused, _ in agent.filters) or agent.withheld_until > now:
                continue
            taken = {p for t in self.tasks.values() if t.agent == agent.agent_id and t.ended_at is None
                     for p in t.ports}
            ranges = _ranges(sorted(set(range(agent.first_port, agent.first_port + int(agent.total.ports)))
                                    - taken))
            offer = make_offer(agent.agent_id, cpus=round(free.cpus, 6), mem=free.mem, disk=0.0,
                               attributes={"price": agent.price}, hostname=agent.agent_id)
            offer.resources.append({"name": "ports", "type": "RANGES", "role": "*",
                                    "ranges": {"range": [{"begin": b, "end": e} for b, e in ranges]}})
            self.offers[offer.id.value] = (agent.agent_id, free)
            views.append(translator.read_offer(offer, "*"))
        if views:
            batch.append(("offers", self, views))
        return batch


def _ranges(ports: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for p in ports:
        if out and p == out[-1][1] + 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def load_model(member: Member, rate: float, ready: int, target_ms: float) -> MemberLoad:
    """A member's window as the gateway would measure it: comfortable under 60 % of what its
    ready replicas carry, near the target up to 100 %, over it (and queueing) beyond."""
    use = rate / (ready * member.capacity_rps) if ready else math.inf
    if use <= 0.6:
        p99 = 0.2 * target_ms + 0.5 * target_ms * use
    elif use <= 1.0:
        p99 = 0.6 * target_ms + 0.35 * target_ms * use
    else:
        p99 = 3 * target_ms
    queue = 0 if use <= 1.0 else max(2, ready + 1) + int(rate)
    return MemberLoad(member.name, rate, queue, min(ready, 1), p99, ready)


class Fleet:
    """The controller on a simulated cluster (see the module docstring)."""

    def __init__(self, members: tuple[Member, ...] = BENCH_MEMBERS, agents: Mapping[str, float] | None = None,
                 agent_cpus: float = 1.0, start_s: float = 4.0, kill_s: float = 0.5, scale_down_delay_s: float = 30.0,
                 target_p99_ms: float = 100.0, rate: Callable[[float], float] = lambda now: 3.4,
                 measured: bool = False) -> None:
        self.now = 0.0
        self.measured = measured
        """The loads as the gateway measures them: the p99 the worst of its window (it still holds
        the slow requests of a load that has passed), a recent rate (``RECENT_S``), a short one
        (``SHORT_S``) and the replicas' busy time; else an instant p99 of the windowed rate and none
        of the others."""
        self._p99s: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self._busy: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.members = {m.name: m for m in members}
        self.rate = rate
        self.spec = ServeSpec(target_p99_ms=target_p99_ms, scale_down_delay_s=scale_down_delay_s,
                              models={m.name: ReplicaBounds(m.min_replicas, m.max_replicas, m.standby_replicas)
                                      for m in members})
        self.mesos = SimMesos(self, agents or BENCH_AGENTS, agent_cpus, start_s, kill_s)
        self.table = ReplicaTable()
        self.costs: list[tuple[float, float, float]] = []
        self.aimed: list[tuple[dict[str, int], dict[str, int]]] = []
        """Per autoscaler call: the counts it was given as current, and the controller's desired then."""
        autoscale = ServeRunner._autoscaler(self.spec)

        def scale(loads: Mapping[str, Any], current: Mapping[str, int], now: float) -> dict[str, int]:
            self.aimed.append((dict(current), dict(self.controller.desired)))
            return autoscale(loads, current, now)

        self.controller = ServingController(
            {m.name: ServedMember(m.name, "s" * 64, m.min_replicas, m.max_replicas, m.standby_replicas)
             for m in members},
            Catalog(self.members), self.table, PriceTable(), refuse_seconds=5.0, loopback=False,
            loads=self.loads, autoscale=scale, scale_interval=self.spec.scale_interval_s,
            clock=lambda: self.now, health_check=lambda replica: False,
            on_cost=lambda cost, bound: self.costs.append((self.now, cost, bound)),
            rising=ServeRunner._rising(lambda: self.spec))
        self.controller._driver = self.mesos
        self.controller._step([("subscribed", self.mesos, "F1")])

    def _rate_over(self, seconds: float) -> float:
        steps = int(seconds / controller_module.TICK_SECONDS)
        return sum(self.rate(self.now - i * controller_module.TICK_SECONDS) for i in range(steps)) / steps

    def loads(self) -> dict[str, MemberLoad]:
        """As the gateway measures them: the rate over its last window (``WINDOW_S``); when
        ``measured``, also as described there."""
        rate = self._rate_over(WINDOW_S)
        loads = {name: load_model(m, rate, len(self.table.ready(name)), self.spec.target_p99_ms)
                 for name, m in self.members.items()}
        if not self.measured:
            return loads
        now, recent = self.rate(self.now), self._rate_over(RECENT_S)
        for name, m in self.members.items():
            ready = loads[name].replicas_ready
            instant = load_model(m, now, ready, self.spec.target_p99_ms).p99_ms
            busy = m.busy(now, ready)
            for series, value in ((self._p99s[name], instant), (self._busy[name], busy)):
                if series and self.now - series[-1][0] < 1.0 - 1e-9:
                    continue  # the controller's check between decisions reads the loads too
                series.append((self.now, value))
                del series[:-int(WINDOW_S)]  # one a second: the window's
            loads[name] = dataclasses.replace(
                loads[name], p99_ms=max(p for _, p in self._p99s[name]), recent_rate_rps=recent,
                short_rate_rps=self._rate_over(SHORT_S),
                busy=sum(b for _, b in self._busy[name]) / len(self._busy[name]))
        return loads

    def run_until(self, end: float) -> None:
        tick = controller_module.TICK_SECONDS
        while self.now + tick <= end + 1e-9:
            self.now = round(self.now + tick, 6)
            batch = self.mesos.events(self.now)
            self.controller._inbox.clear()  # the health-check threads' verdicts: the fleet says when one is ready
            self.controller._step(batch)

    # --- what the tests read -----------------------------------------------------------------
    def placed(self) -> dict[str, list[str]]:
        """Per agent, the members of the replicas that hold resources there (draining ones too)."""
        out: dict[str, list[str]] = defaultdict(list)
        for r in self.controller.replicas.values():
            out[r.agent_id].append(r.member + ("(draining)" if r.state is ReplicaState.DRAINING else ""))
        return {a: sorted(ms) for a, ms in sorted(out.items())}

    def cost_now(self) -> float:
        return self.costs[-1][1]

    def bound_now(self) -> float:
        return self.costs[-1][2]

    def timeline(self, since: float = 0.0) -> list[tuple[float, float, float]]:
        """The (time, cost, bound) reports from ``since``, changes only."""
        out: list[tuple[float, float, float]] = []
        for t, c, b in self.costs:
            if t >= since and (not out or (out[-1][1], out[-1][2]) != (c, b)):
                out.append((t, c, b))
        return out
