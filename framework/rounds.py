"""One offer round as a pure decision: ``decide(snapshot, offers, now) -> RoundDecision``.

The scheduler (``framework.scheduler``) takes a :class:`RoundSnapshot` of its state under its
lock, calls :func:`decide` without it, and applies the :class:`RoundDecision`: one ACCEPT per
agent with all of that agent's offers, DECLINEs whose filter length follows the reason,
SUPPRESS when nothing is left to launch.  What the round decides, in order:

1. the work: pending items in launch order (a probe of every unmeasured model first, then the
   longest measured tasks first, see ``framework.balancing``); when nothing is pending, backup
   copies of stragglers (only onto agents the job already uses);
2. the agents: the offers merged per agent, without the shared executor's reserve where no
   executor of ours runs yet (and a warning, once per agent, when the reserve does not fit);
3. the demands: a retry avoids the agents it failed on for ``AVOID_FAILED_AGENTS_SECONDS``
   after it was retried, if other agents are known and it is not the last attempt; a backup
   avoids its straggler's agent; measured durations fill in missing ones;
4. the bundles: several pending items of one measured model travel as ONE Mesos task, sized
   from the model's measured seconds per item so that a bundle computes for about a second, or
   less when the work left would not keep the job's cores busy (``balancing.bundle_sizes``); a
   probe, a retry that avoids an agent and a stacking fold go alone.  The packer sees a bundle
   as one task; each item keeps its own task id (its attempt), tracked, retried and journaled
   alone, and the bundle's Mesos task id is unique per round and run (``bundle_prefix``);
5. the plan (``framework.packing.pack``) on the first tasks in launch order that fit the offers;
6. the launches (task ids, bundles, executors to start), declines (``unneeded`` or
   ``never_fits``) and whether to suppress.

No Mesos, threads, locks or clock here: the time is the ``now`` argument.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from framework.balancing import Measurements, SpeculationPolicy, bundle_sizes, first_that_fit, stragglers, usage_key
from framework.offers import merge_by_agent
from framework.packing import (Agent, AvoidAgents, CostModel, DeclineReason, PackingOptions, Plan, PriceTable,
                               Resources, TaskDemand, Unplaced, pack)
from framework.tasks import ItemState, ItemView
from framework.offers import OfferView

AVOID_FAILED_AGENTS_SECONDS = 10.0
"""How long a retried task waits for an agent other than those it failed on."""


@dataclass(frozen=True)
class OfferPolicy:
    refuse_seconds: float = 5.0
    never_fits_refuse_seconds: float = 300.0
    role: str = "*"


@dataclass(frozen=True)
class RoundSnapshot:
    """Everything one offer round reads, as values (taken under the scheduler's lock)."""

    pending: tuple[ItemView, ...]
    """Items waiting for an offer, in the order they became pending."""
    active: tuple[ItemView, ...]
    """Launched or running items."""
    demands: Mapping[str, TaskDemand]
    """Per model, the plain demand of one of its tasks (its ``task_id`` is replaced per item)."""
    executor_keys: Mapping[str, str]
    """Per model, the executor that runs its tasks (one per model, or one shared)."""
    executor_models: Mapping[str, frozenset[str]]
    """Per executor key, the models it serves."""
    agent_reserve: Resources
    """Kept free on agents without an executor of ours yet (a shared executor's resources)."""
    executors: frozenset[tuple[str, str]]
    """Our running executors: (agent id, executor key)."""
    executor_generation: Mapping[tuple[str, str], int]
    """Per (agent id, executor key), the generation its next executor id carries."""
    measurements: Measurements
    """A copy of the measured usage (never changed by the round)."""
    started_at: Mapping[str, float]
    """Per running task id, when it was launched, then when it reported TASK_RUNNING."""
    known_agents: frozenset[str]
    retried_at: Mapping[str, float]
    """Per item key, when it was last put back to pending after a failure."""
    max_retries: int
    suppressed: bool
    reserve_warned: frozenset[str] = frozenset()
    """Agents already named as too small for the shared executor."""
    prices: PriceTable = field(default_factory=PriceTable)
    cost_model: CostModel = field(default_factory=CostModel)
    packing: PackingOptions = field(default_factory=PackingOptions)
    policy: OfferPolicy = field(default_factory=OfferPolicy)
    speculation: SpeculationPolicy = field(default_factory=SpeculationPolicy)
    avoided_agents: frozenset[str] = frozenset()
    """Agents the whole job avoids (blamed for failing item after item; see ``framework.tasks``)."""
    unfit_agents: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Per model with pending work, the agents already judged unable to run its task."""
    cores: float = 0.0
    """The job's cores as far as known (the largest cpus each agent offered); bundles are sized
    so that the work left keeps them busy (see ``framework.balancing.bundle_sizes``)."""
    bundle_prefix: str = "b"
    """Unique per round and run: the Mesos task ids of this round's bundles start with it."""


@dataclass(frozen=True)
class TaskLaunch:
    """One task of an ACCEPT: which item, under which Mesos task id, in which executor."""

    item_key: str
    task_id: str
    model: str
    executor_key: str
    backup: bool = False
    """A speculative copy of a straggler (the item is already running elsewhere)."""
    attempts_before: int = 0
    """The item's attempts when the round saw it (the launch is stale if that changed)."""
    carrier: str | None = None
    """The Mesos task id of the bundle this item travels in (None: a Mesos task of its own)."""
    bundle_size: int = 1


@dataclass(frozen=True)
class ExecutorStart:
    """An executor of ours to start on the agent with the ACCEPT (its id: ``<key>.g<generation>``)."""

    key: str
    generation: int


@dataclass(frozen=True)
class AgentLaunch:
    """One ACCEPT: all of an agent's offers, its tasks in plan order, the executors they need."""

    agent: Agent
    """The agent as packed (its capacity without the executor reserve where one is kept)."""
    offer_ids: tuple[str, ...]
    tasks: tuple[TaskLaunch, ...]
    executors: tuple[ExecutorStart, ...]


@dataclass(frozen=True)
class Decline:
    """One DECLINE of ``offer_ids`` (one agent's, or every offer of an idle round)."""

    offer_ids: tuple[str, ...]
    refuse_seconds: float
    reason: DeclineReason
    agent_id: str | None = None


@dataclass(frozen=True)
class LogLine:
    """Something to report in the log (``level`` as in ``logging``)."""

    level: int
    message: str


@dataclass(frozen=True)
class RoundDecision:
    """What one offer round decided."""

    launches: tuple[AgentLaunch, ...] = ()
    declines: tuple[Decline, ...] = ()
    suppress: bool = False
    """Nothing is left to launch: SUPPRESS (only when not suppressed already)."""
    agents_seen: Mapping[str, str] = field(default_factory=dict)
    """The offering agents: agent id -> hostname (they become known agents)."""
    warned_agents: frozenset[str] = frozenset()
    """Agents named in this round's log as too small for the shared executor."""
    log: tuple[LogLine, ...] = ()
    plan: Plan | None = None
    unfit: Mapping[str, Mapping[str, Unplaced]] = field(default_factory=dict)
    """Per model with pending work, the offering agents newly judged unable to run one of its
    tasks even with none of the job's own tasks there: agent id -> the packer's reasons."""
    fits: frozenset[str] = frozenset()
    """Models with pending work that one of this round's agents can run (launched or not)."""

    @property
    def tasks(self) -> list[tuple[str, TaskLaunch]]:
        """Every launch as (agent id, task), in order."""
        return [(launch.agent.agent_id, task) for launch in self.launches for task in launch.tasks]

    @property
    def backups(self) -> list[TaskLaunch]:
        """The speculative copies launched this round."""
        return [task for _agent, task in self.tasks if task.backup]

    @property
    def executors_started(self) -> int:
        return sum(len(launch.executors) for launch in self.launches)

    @property
    def mesos_tasks(self) -> int:
        """Mesos tasks launched (a bundle of several items is one)."""
        return len({task.carrier or task.task_id for _agent, task in self.tasks})


def decide(snapshot: RoundSnapshot, offers: Sequence[OfferView], now: float) -> RoundDecision:
    """Decide one offer round (see the module's docstring)."""
    policy = snapshot.policy
    agents_seen = {o.agent_id: o.hostname for o in offers}
    known = snapshot.known_agents | agents_seen.keys()
    active = snapshot.active
    # Retries in their backoff wait; blamed agents are avoided while any other agent is known.
    ready = [item for item in snapshot.pending if item.not_before <= now]
    backing_off = [item.not_before - now for item in snapshot.pending if item.not_before > now]
    avoided = snapshot.avoided_agents if known - snapshot.avoided_agents else frozenset()
    shunned = [o for o in offers if o.agent_id in avoided]
    offers = [o for o in offers if o.agent_id not in avoided]
    shunned_declines = ((Decline(tuple(o.offer_id for o in shunned), policy.refuse_seconds, "unneeded"),)
                        if shunned else ())
    pending = snapshot.measurements.launch_order(ready, {usage_key(i) for i in active})
    elapsed = {task_id: now - since for task_id, since in snapshot.started_at.items()}
    # Nothing pending: spare capacity runs backup copies of stragglers.
    work = pending or ([] if backing_off else stragglers(active, elapsed, snapshot.measurements,
                                                          snapshot.speculation))
    if not work:
        # Retries backing off: offers come back when the first of them may launch.
        refuse = max(0.5, min([policy.refuse_seconds, *backing_off]))
        return RoundDecision(
            declines=((Decline(tuple(o.offer_id for o in offers), refuse, "unneeded"),) if offers else ())
            + shunned_declines,
            suppress=not snapshot.suppressed and not backing_off, agents_seen=agents_seen,
            log=(LogLine(logging.DEBUG, f"offer round: {len(offers)} offers, nothing to launch"
                                        f"{f', {len(backing_off)} retries backing off' if backing_off else ''}"),))
    backups = not pending
    log: list[LogLine] = []
    agents, warned = _reserve_executors(snapshot, merge_by_agent(
        offers, snapshot.prices, _in_use(snapshot), _loaded_models(snapshot), _running_tasks(active)), log)
    units: list[tuple[ItemView, ...]] = [(item,) for item in work] if backups else _bundle(snapshot, work, agents)
    plan, judged_on_all = _plan(snapshot, units, agents, backups, known, now)
    unfit, fits = ({}, frozenset()) if backups else _judge_fit(snapshot, pending, agents, plan)
    by_key = {unit[0].key: unit for unit in units}
    launches: list[AgentLaunch] = []
    declines: list[Decline] = []
    for agent in agents:
        keys = plan.assignments.get(agent.agent_id, ())
        if not keys:
            reason: DeclineReason = plan.declined.get(agent.agent_id, "unneeded") if judged_on_all else "unneeded"
            refuse = policy.never_fits_refuse_seconds if reason == "never_fits" else policy.refuse_seconds
            declines.append(Decline(agent.offer_ids, refuse, reason, agent.agent_id))
            continue
        launches.append(_agent_launch(snapshot, agent, [by_key[k] for k in keys], backups))
    launched = sum(len(launch.tasks) for launch in launches)
    if backups and launched:
        log.append(LogLine(logging.WARNING, f"{launched} straggler(s) got a backup copy on another agent"))
    if plan.unplaced and pending:
        sample = next(iter(plan.unplaced.values()))
        log.append(LogLine(logging.INFO, f"{len(plan.unplaced)} task(s) wait for offers; e.g. {sample.task_id}: "
                                         f"{sample.describe()}"))
    log.append(LogLine(logging.DEBUG, f"offer round: {len(offers)} offers, {launched} launches, cost {plan.cost:.3f} "
                                      f"(lower bound {plan.lower_bound:.3f})"))
    nothing_left = (backups or launched == len(pending)) and not backing_off
    return RoundDecision(
        launches=tuple(launches), declines=tuple(declines) + shunned_declines,
        suppress=nothing_left and not snapshot.suppressed,
        agents_seen=agents_seen, warned_agents=frozenset(warned), log=tuple(log), plan=plan, unfit=unfit, fits=fits)


def _judge_fit(snapshot: RoundSnapshot, pending: list[ItemView], agents: list[Agent],
               plan: Plan) -> tuple[dict[str, dict[str, Unplaced]], frozenset[str]]:
    """For each model with pending work: the agents (not judged before) that could not run one
    of its tasks even if none of the job's own tasks ran there, with the packer's reasons; and
    the models some agent of this round can run.  Only models none of whose tasks was placed
    this round are judged."""
    placed = {key for keys in plan.assignments.values() for key in keys}
    fits = {item.model for item in pending if item.key in placed}
    unplaced_models = {item.model for item in pending} - fits
    unfit: dict[str, dict[str, Unplaced]] = {}
    if not unplaced_models:
        return unfit, frozenset(fits)
    ours = _running_tasks(snapshot.active)
    for model in sorted(unplaced_models):
        demand = dataclasses.replace(snapshot.demands[model], task_id=f"{model} task")
        judged = snapshot.unfit_agents.get(model, frozenset())
        for agent in agents:
            if agent.agent_id in judged:
                continue
            freed = Resources()
            for other, count in ours.get(agent.agent_id, {}).items():
                if other in snapshot.demands:
                    for _ in range(count):
                        freed = freed + snapshot.demands[other].resources
            capacity = agent.capacity + freed
            if _plainly_fits(demand, capacity):
                fits.add(model)
                break
            alone = dataclasses.replace(agent, capacity=capacity, running_tasks={})
            verdict = pack([demand], [alone], snapshot.cost_model, snapshot.packing)
            if demand.task_id in verdict.unplaced:
                unfit.setdefault(model, {})[agent.agent_id] = verdict.unplaced[demand.task_id]
            else:
                fits.add(model)
                break
    return unfit, frozenset(fits)


def _plainly_fits(demand: TaskDemand, capacity: Resources) -> bool:
    """One task the packer would surely place alone on an agent of ``capacity``: no constraints
    (declared or implied: no gpus), no ports, and its resources fit with its executor's on top
    (whether or not that executor already runs there).  Saves :func:`_judge_fit` a pack per
    model and round (1-2 ms each) on the common case; anything else is packed."""
    resources = demand.resources
    return (not demand.constraints and resources.gpus == 0 and resources.ports == 0 and demand.executor.ports == 0
            and (resources + demand.executor).fits_in(capacity))


def describe_unfit(reasons: Iterable[Unplaced]) -> str:
    """The packer's reasons over several agents, summed (e.g. "mem exhausted on 2 agents")."""
    exhausted: dict[str, int] = defaultdict(int)
    filtered: dict[str, int] = defaultdict(int)
    for reason in reasons:
        for name, n in reason.exhausted.items():
            exhausted[name] += n
        for name, n in reason.filtered.items():
            filtered[name] += n
    return Unplaced("", dict(exhausted), dict(filtered)).describe().removeprefix(": ")


def timed_out(active: Iterable[ItemView], computing_since: Mapping[str, float], timeouts: Mapping[str, float],
              now: float) -> list[tuple[str, float]]:
    """The running attempts (task id, timeout) that have computed longer than their model's
    ``timeout`` (``computing_since``: by task id, when its executor started computing)."""
    overdue = []
    for item in active:
        limit = timeouts.get(item.model)
        if limit is None:
            continue
        for task_id, allowed in ((item.task_id, limit * item.bundle_size), (item.backup_task_id, limit)):
            # A bundle of n items computes n times as long as one (a backup is never bundled).
            if task_id is not None and task_id in computing_since and now - computing_since[task_id] > allowed:
                overdue.append((task_id, allowed))
    return overdue


def wants_backup_offers(snapshot: RoundSnapshot, now: float) -> bool:
    """While suppressed with nothing pending: does a straggler deserve offers for a backup copy?"""
    if not snapshot.suppressed or snapshot.pending:
        return False
    elapsed = {task_id: now - since for task_id, since in snapshot.started_at.items()}
    return bool(stragglers(snapshot.active, elapsed, snapshot.measurements, snapshot.speculation))


def item_demand(snapshot: RoundSnapshot, item: ItemView, known_agents: Iterable[str], now: float) -> TaskDemand:
    """The item's demand; a retry avoids the agents it failed on, if others are known, for
    ``AVOID_FAILED_AGENTS_SECONDS`` (then any agent will do) and never on its last attempt."""
    demand = dataclasses.replace(snapshot.demands[item.model], task_id=item.key)
    if item.state is not ItemState.PENDING and item.agent_id:  # a backup: anywhere but where it runs
        avoid = AvoidAgents(frozenset({item.agent_id}))
        demand = dataclasses.replace(demand, constraints=demand.constraints + (avoid,))
    if demand.duration is None and (measured := snapshot.measurements.mean_seconds(usage_key(item))) is not None:
        demand = dataclasses.replace(demand, duration=measured)  # for the cost model's per-second prices
    failed = frozenset(item.failed_agents)
    since = snapshot.retried_at.get(item.key)
    if since is not None:
        since = max(since, item.not_before)  # the avoidance counts from when the retry may launch
    if (not failed or not (set(known_agents) - failed) or item.attempts >= snapshot.max_retries
            or since is None or now - since > AVOID_FAILED_AGENTS_SECONDS):
        return demand
    return dataclasses.replace(demand, constraints=demand.constraints + (AvoidAgents(failed),))


def _bundle(snapshot: RoundSnapshot, pending: list[ItemView], agents: list[Agent]) -> list[tuple[ItemView, ...]]:
    """The pending items (in launch order) grouped into what each Mesos task carries: several
    items of one measured model travel together (see ``framework.balancing.bundle_sizes``); a
    probe, a retry that avoids the agents it failed on, and a stacking fold go alone.  Each group
    takes the place of its first item in the order."""
    cores = max(snapshot.cores, sum(a.capacity.cpus for a in agents))
    sizes = bundle_sizes(pending, snapshot.measurements, cores)
    units: list[list[ItemView]] = []
    open_bundles: dict[str, list[ItemView]] = {}
    for item in pending:
        kind = usage_key(item)
        size = sizes.get(kind, 1)
        if size <= 1 or item.failed_agents:
            units.append([item])
            continue
        bundle = open_bundles.get(kind)
        if bundle is None:
            bundle = open_bundles[kind] = []
            units.append(bundle)
        bundle.append(item)
        if len(bundle) >= size:
            del open_bundles[kind]
    return [tuple(unit) for unit in units]


def unit_demand(snapshot: RoundSnapshot, unit: tuple[ItemView, ...], known_agents: Iterable[str],
                now: float) -> TaskDemand:
    """The demand of one Mesos task: its first item's (see :func:`item_demand`), for the
    duration of all the items it carries."""
    demand = item_demand(snapshot, unit[0], known_agents, now)
    if len(unit) > 1 and demand.duration is not None:
        demand = dataclasses.replace(demand, duration=demand.duration * len(unit))
    return demand


def _plan(snapshot: RoundSnapshot, work: list[tuple[ItemView, ...]], agents: list[Agent], backups: bool,
          known: frozenset[str], now: float) -> tuple[Plan, bool]:
    """Pack ``work`` (Mesos tasks of one or more items, in launch order) onto ``agents``; also say
    whether the plan's decline reasons were judged on all of the work (else every decline is
    ``unneeded``)."""
    # Backups only go where the job already runs (an agent of its own would cost more).
    eligible = [a for a in agents if a.in_use] if backups else agents
    # Scarce offers go to the first tasks in the launch order (the packer chooses freely
    # among equally good plans, so it is only given those); demands are built only as far
    # as the offers can take them, so a round costs the same with 10 or 10,000 tasks waiting.
    wanted, all_taken = first_that_fit((unit_demand(snapshot, unit, known, now) for unit in work),
                                       sum((a.capacity for a in eligible), Resources()))
    nothing_fits = not wanted
    if nothing_fits:
        # The packer says why, judged on each model's plain demand (a retry's is only stricter).
        first_of_model: dict[str, ItemView] = {}
        for unit in work:
            first_of_model.setdefault(unit[0].model, unit[0])
        wanted = [dataclasses.replace(snapshot.demands[i.model], task_id=i.key) for i in first_of_model.values()]
    plan = pack(wanted, eligible, snapshot.cost_model, snapshot.packing)
    return plan, (all_taken or nothing_fits) and not backups


def _agent_launch(snapshot: RoundSnapshot, agent: Agent, units: list[tuple[ItemView, ...]],
                  backups: bool) -> AgentLaunch:
    tasks, starts = [], []
    starting: set[str] = set()
    for unit in units:
        first = unit[0]
        key = snapshot.executor_keys[first.model]
        if (agent.agent_id, key) not in snapshot.executors and key not in starting:
            starting.add(key)
            starts.append(ExecutorStart(key, snapshot.executor_generation.get((agent.agent_id, key), 0)))
        carrier = f"{first.model}.bundle-{snapshot.bundle_prefix}-{first.key}" if len(unit) > 1 else None
        for item in unit:
            tasks.append(TaskLaunch(item.key, item.next_task_id(), item.model, key, backups, item.attempts,
                                    carrier, len(unit)))
    return AgentLaunch(agent, agent.offer_ids, tuple(tasks), tuple(starts))


def _reserve_executors(snapshot: RoundSnapshot, agents: list[Agent],
                       log: list[LogLine]) -> tuple[list[Agent], set[str]]:
    """Agents as the packer sees them: without the per-agent reserve where our shared executor is
    not running yet, so that the first ACCEPT there can start it; and the agents newly named as
    too small for it."""
    reserve = snapshot.agent_reserve
    warned: set[str] = set()
    if reserve.is_zero():
        return agents, warned
    for agent in agents:
        if not agent.loaded_models and not agent.in_use and not reserve.fits_in(agent.capacity) \
                and agent.agent_id not in snapshot.reserve_warned:
            warned.add(agent.agent_id)
            log.append(LogLine(logging.WARNING, (
                f"agent {agent.hostname} offers {agent.capacity.cpus:.2f} cpus, {agent.capacity.mem:.0f} MB but the "
                f"shared executor needs {reserve.cpus:.2f} cpus, {reserve.mem:.0f} MB (96 MB plus every model's "
                "executor_mem or estimate): no task can start there; set [framework] executors = \"per_model\" "
                "or smaller executor_mem")))
    return [
        agent if agent.loaded_models
        else dataclasses.replace(agent, capacity=(agent.capacity - reserve).nonnegative())
        for agent in agents
    ], warned


def _in_use(snapshot: RoundSnapshot) -> dict[str, bool]:
    """Agents the job already pays for: running our tasks or holding our executors."""
    in_use = {i.agent_id: True for i in snapshot.active if i.agent_id}
    in_use.update({agent_id: True for agent_id, _key in snapshot.executors})
    return in_use


def _loaded_models(snapshot: RoundSnapshot) -> dict[str, frozenset[str]]:
    loaded: dict[str, set[str]] = defaultdict(set)
    for agent_id, key in snapshot.executors:
        loaded[agent_id].update(snapshot.executor_models.get(key, frozenset()))
    return {a: frozenset(m) for a, m in loaded.items()}


def _running_tasks(active: Iterable[ItemView]) -> dict[str, dict[str, int]]:
    """Per agent and model, the Mesos tasks of ours running there (a bundle is one)."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    seen: set[str | None] = set()
    for item in active:
        if item.agent_id:
            carrier = item.carrier
            if carrier is not None:
                if carrier in seen:
                    continue
                seen.add(carrier)
            counts[item.agent_id][item.model] += 1
    return counts
