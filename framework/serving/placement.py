"""Where replicas run: a pure decision ``decide(snapshot, agents, now) -> ServeDecision``.

The controller takes a :class:`ServeSnapshot` (the replicas it knows, each member's desired
count, model sha256 and demand, the agents its executors run on) and the offered agents
(``framework.packing.Agent`` values from ``framework.offers.merge_by_agent``: free capacity,
price), and applies the :class:`ServeDecision`.  What it decides, in order:

1. **drains** (none ever takes a member below ``min(desired, ready replicas)`` ready ones):
   a. a replica whose re-pack replacement (a replica naming it in ``replaces``) is ready;
   b. rolling update: replicas whose sha256 is not the member's: those still starting at once,
      ready ones only as new ones are ready (never fewer ready than the desired count); those
      of the member's ``held_sha256`` (a stacking update) not at all, but for starting ones
      beyond its desired count;
   c. scale down: the replicas above the desired count, those on the most expensive agents
      first (then on the agents with the fewest of our replicas, so whole agents are released;
      on one agent, starting ones before ready ones), ready ones only while the member keeps
      its desired count ready;
   d. replicas of members no longer in the job.
2. **launches**: each member's missing replicas (desired less its live replicas of the current
   sha256; while a stacking update holds the member, also desired less its live replicas of the
   ``held_sha256``, so that a held replica that ends is replaced with its own model file: the
   gateway answers with those until it switches) placed by ``framework.packing.pack`` on the
   offered agents, where the agents that keep live replicas of ours cost nothing more (the
   packer's ``in_use``); those running our
   executor hold it loaded (no executor resources, no cold start) but an executor alone does not
   make an agent free (it costs its price again once its last replica is gone); other agents lose
   the shared executor's reserve, as in a batch round.
3. **re-pack**, when the deployment is settled (nothing to launch, nothing starting or
   draining) and ``now`` has passed ``repack_not_before``: for a group of agents in use whose
   replicas the other offered agents can take for less than the group's price (agents keeping
   replicas count 0; an agent with only an idle executor of ours counts its price) -- the agents
   a fresh placement of every replica on the known agents (``agent_capacity``) would leave out,
   else the most expensive single agent that can be emptied so -- those replicas are started
   elsewhere first, each naming the one it replaces; step 1a drains the old ones once the new
   ones are ready, and the agents are released.  When that fresh placement is cheaper than the
   agents in use, replicas move only onto agents it uses (a move away from it would save now and
   cost a second move later, the cost going up while its replacements start).  Each re-pack
   lowers the cost of the agents in use, so re-packs end.

No Mesos, threads, locks or clock here: the time is the ``now`` argument.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

from framework.packing import (Agent, Constraint, CostModel, DeclineReason, PackingOptions,
                               Resources, TaskDemand, pack)

ReplicaState = Literal["starting", "running", "draining"]
LaunchReason = Literal["scale_up", "update", "repack", "held"]
DrainReason = Literal["scale_down", "update", "repack", "removed"]
EPS = 1e-9
REPACK_SINGLE_AGENTS = 3
"""A re-pack tries to empty at most this many agents alone (the most expensive), one packing each."""


def replica_demand(cpus: float, mem: float, disk: float = 0.0, gpus: float = 0.0) -> Resources:
    """One replica's resources: the model's cpus/mem (disk, gpus) and the one port it listens on."""
    return Resources(cpus=cpus, mem=mem, disk=disk, gpus=gpus, ports=1.0)


@dataclass(frozen=True)
class ReplicaView:
    """One replica as the controller knows it."""

    replica_id: str
    member: str
    agent_id: str
    sha256: str
    state: ReplicaState
    """``starting`` (launched, not healthy yet), ``running`` (ready: takes requests), ``draining``."""
    replaces: str | None = None
    """A re-pack replacement: the replica it takes over from (drained once this one is ready)."""

    @property
    def live(self) -> bool:
        return self.state != "draining"

    @property
    def ready(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class MemberTarget:
    """What one member should run: how many replicas, of which model file, needing what."""

    member: str
    desired: int
    sha256: str
    demand: Resources
    """One replica's resources (see :func:`replica_demand`)."""
    executor: Resources = Resources()
    """The member's own executor (``executors = "per_model"``); zero with the shared executor."""
    constraints: tuple[Constraint, ...] = ()
    standby: int = 0
    """Of ``desired``, how many are standby replicas: kept ready out of the gateway's table
    (:func:`route`), launched, placed, drained and priced as the others."""
    held_sha256: str | None = None
    """A stacking deployment's update under way: the model file the gateway still answers with
    (the new final estimator needs every member's new replicas at once), whose replicas are kept
    at ``desired`` (one that ends is replaced with this file) and not drained until the
    controller lets them go."""


@dataclass(frozen=True)
class ServeSnapshot:
    """Everything one placement decision reads, as values."""

    targets: Mapping[str, MemberTarget]
    replicas: tuple[ReplicaView, ...]
    agent_prices: Mapping[str, float] = field(default_factory=dict)
    """Price of every agent hosting a replica (offered agents carry their own)."""
    executors: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Per agent running an executor of ours, the members it serves (loaded: no cold start)."""
    agent_reserve: Resources = Resources()
    """Kept free on agents without an executor of ours yet (the shared executor's resources)."""
    cost_model: CostModel = field(default_factory=CostModel)
    packing: PackingOptions = field(default_factory=PackingOptions)
    repack_not_before: float = 0.0
    """No re-pack starts before this time (the controller spaces them: ``now`` + an interval)."""
    repack_min_saving: float = 0.0
    """A re-pack must save more than this share of the released agent's price."""
    agent_capacity: Mapping[str, Resources] = field(default_factory=dict)
    """Each known agent's capacity for us as last measured (``cost.measure_agents``: its last
    offer plus what our replicas and executors held there then): a re-pack sees the agents that
    are not offered at this moment as they are, not as only what our replicas hold there."""


@dataclass(frozen=True)
class ReplicaLaunch:
    """A replica to start on an agent (one of its offers' resources, one port)."""

    member: str
    agent_id: str
    sha256: str
    """The model file it runs: the member's, or its ``held_sha256`` (reason ``held``)."""
    reason: LaunchReason
    replaces: str | None = None
    new_executor: bool = False
    """No executor of ours serves the member on that agent yet (it starts with this launch)."""


@dataclass(frozen=True)
class ReplicaDrain:
    """A replica to drain (health 503, finish in-flight requests, then killed)."""

    replica_id: str
    member: str
    agent_id: str
    reason: DrainReason


@dataclass(frozen=True)
class ServeDecision:
    launches: tuple[ReplicaLaunch, ...] = ()
    drains: tuple[ReplicaDrain, ...] = ()
    released_agents: tuple[str, ...] = ()
    """Agents hosting an executor or replica of ours where no live replica remains and none is
    launched: once their drains finish, their executors can stop and the agents go back."""
    unused_agents: Mapping[str, DeclineReason] = field(default_factory=dict)
    """Offered agents that get no launch, and why (for the DECLINE's filter)."""
    unplaced: Mapping[str, int] = field(default_factory=dict)
    """Per member, the replicas wanted that no offered agent fits."""
    reasons: tuple[str, ...] = ()
    """The packer's account of each unplaced replica."""
    repacked: bool = False
    """A re-pack started (the controller moves ``repack_not_before`` forward)."""
    repack_checked: bool = False
    """A re-pack was looked for (started or not: it costs a few packings, so the controller
    should move ``repack_not_before`` forward after a check too, not only after a re-pack)."""


def standby_for(desired: int, standby: int, most: int) -> int:
    """The standby replicas to keep beside ``desired`` routed ones: ``standby``, but never above
    ``most`` (``max_replicas``) replicas in all (at its most a member cannot scale up further)."""
    return max(0, min(standby, most - desired))


def route(snapshot: ServeSnapshot, routed_now: frozenset[str] = frozenset()) -> frozenset[str]:
    """The ready replicas the gateway's table should hold: each member's ready ones less its standby
    replicas, which are the ready replicas of its current model beyond its routed count
    (``desired - standby``), at most ``standby`` of them.  Kept aside first: those not routed now
    (no flapping), then those on the most expensive agents (the first a scale-down drains), then by
    id.  So a scale-up or a lost replica routes a standby one in the same decision, a
    scale-down first sets one aside, and without standby every ready replica is routed."""
    prices = snapshot.agent_prices
    routed: set[str] = set()
    for member in sorted({r.member for r in snapshot.replicas}):
        ready = [r for r in snapshot.replicas if r.member == member and r.ready]
        target = snapshot.targets.get(member)
        aside: set[str] = set()
        if target is not None and target.standby > 0:
            current = [r for r in ready if r.sha256 == target.sha256]
            count = min(target.standby, max(0, len(current) - (target.desired - target.standby)))
            order = sorted(current, key=lambda r: (r.replica_id in routed_now, -prices.get(r.agent_id, 0.0),
                                                   r.replica_id))
            aside = {r.replica_id for r in order[:count]}
        routed.update(r.replica_id for r in ready if r.replica_id not in aside)
    return frozenset(routed)


def decide(snapshot: ServeSnapshot, agents: Sequence[Agent], now: float) -> ServeDecision:
    """The launches and drains for this moment; see the module docstring."""
    prices = _prices(snapshot, agents)
    drains = _drains(snapshot, prices)
    drained = {d.replica_id for d in drains}
    missing = _missing(snapshot, drained)
    prepared = _prepare(snapshot, agents, drained)
    wanted = {f"{member}#{i}" if sha == snapshot.targets[member].sha256 else f"{member}@held#{i}": (member, sha)
              for (member, sha), count in sorted(missing.items()) for i in range(count)}
    tasks = [_demand(snapshot, task_id, member) for task_id, (member, _sha) in wanted.items()]
    launches: list[ReplicaLaunch] = []
    unplaced: Counter[str] = Counter()
    reasons: list[str] = []
    declined: dict[str, DeclineReason] = {a.agent_id: "unneeded" for a in agents}
    if tasks and prepared:
        plan = pack(tasks, prepared, snapshot.cost_model, snapshot.packing)
        for agent_id, task_ids in plan.assignments.items():
            declined.pop(agent_id, None)
            launches += [_launch(snapshot, member, agent_id, _launch_reason(snapshot, member, sha), sha256=sha)
                         for member, sha in (wanted[t] for t in task_ids)]
        declined.update({a: r for a, r in plan.declined.items() if a in declined})
        unplaced.update(wanted[t][0] for t in plan.unplaced)
        reasons = [u.describe() for u in plan.unplaced.values()]
    else:
        unplaced.update(member for member, _sha in wanted.values())
    repacked = False
    checked = bool(not tasks and not drains and prepared and now >= snapshot.repack_not_before
                   and _settled(snapshot))
    if checked:
        moves = _repack(snapshot, prepared, prices)
        if moves:
            repacked = True
            for launch in moves:
                declined.pop(launch.agent_id, None)
            launches += moves
    return ServeDecision(
        launches=tuple(launches), drains=tuple(drains),
        released_agents=_released(snapshot, drained, launches),
        unused_agents=declined, unplaced=dict(unplaced), reasons=tuple(reasons), repacked=repacked,
        repack_checked=checked)


def _prices(snapshot: ServeSnapshot, agents: Sequence[Agent]) -> dict[str, float]:
    prices = dict(snapshot.agent_prices)
    prices.update({a.agent_id: a.price for a in agents})
    return prices


def _launch_reason(snapshot: ServeSnapshot, member: str, sha256: str) -> LaunchReason:
    """``held`` for a replica of the member's held model file; ``update`` while the member has live
    replicas of another model file (a rolling update is under way); else ``scale_up``."""
    target = snapshot.targets[member]
    if sha256 != target.sha256:
        return "held"
    updating = any(r.live and r.member == member and r.sha256 != target.sha256 for r in snapshot.replicas)
    return "update" if updating else "scale_up"


def _launch(snapshot: ServeSnapshot, member: str, agent_id: str, reason: LaunchReason,
            replaces: str | None = None, sha256: str | None = None) -> ReplicaLaunch:
    new = member not in snapshot.executors.get(agent_id, frozenset())
    return ReplicaLaunch(member, agent_id, sha256 or snapshot.targets[member].sha256, reason, replaces, new)


def _pending_replacements(live: Sequence[ReplicaView], gone: set[str]) -> set[str]:
    """Ids of live replicas that replace a replica still live (and not drained in ``gone``)."""
    live_ids = {r.replica_id for r in live if r.replica_id not in gone}
    return {r.replica_id for r in live if r.replaces is not None and r.replaces in live_ids}


def _agent_order(snapshot: ServeSnapshot, prices: Mapping[str, float]) -> dict[str, tuple[float, int, str]]:
    """Drain order of agents: most expensive first, then those with the fewest live replicas."""
    on_agent = Counter(r.agent_id for r in snapshot.replicas if r.live)
    return {a: (-prices.get(a, 0.0), n, a) for a, n in on_agent.items()}


def _drains(snapshot: ServeSnapshot, prices: Mapping[str, float]) -> list[ReplicaDrain]:
    live = [r for r in snapshot.replicas if r.live]
    order = _agent_order(snapshot, prices)
    drains: list[ReplicaDrain] = []
    gone: set[str] = set()

    def drain(replica: ReplicaView, reason: DrainReason) -> None:
        drains.append(ReplicaDrain(replica.replica_id, replica.member, replica.agent_id, reason))
        gone.add(replica.replica_id)

    def key(replica: ReplicaView) -> tuple[tuple[float, int, str], bool, str]:
        return order[replica.agent_id], replica.ready, replica.replica_id

    # d. members no longer in the job
    for replica in live:
        if replica.member not in snapshot.targets:
            drain(replica, "removed")
    ready_left = Counter(r.member for r in live if r.ready and r.replica_id not in gone)
    # a. re-packed replicas whose replacement is ready (while the member keeps its desired count
    #    ready: a member short of replicas keeps the old one until the missing one is ready)
    by_id = {r.replica_id: r for r in live}
    for replica in sorted(live, key=lambda r: r.replica_id):
        old = by_id.get(replica.replaces or "")
        if not replica.ready or old is None or old.replica_id in gone or old.member != replica.member \
                or old.member not in snapshot.targets:
            continue
        if old.ready and ready_left[old.member] - 1 < snapshot.targets[old.member].desired:
            continue
        ready_left[old.member] -= old.ready
        drain(old, "repack")
    for member, target in sorted(snapshot.targets.items()):
        mine = [r for r in live if r.member == member and r.replica_id not in gone]
        # b. rolling update: old starting ones at once; old ready ones as new ones are ready
        #    (held ones, a stacking update's, not before the gateway has switched: its starting
        #    ones replace held ones that ended, up to the desired count)
        held_kept = sum(1 for r in mine if r.sha256 == target.held_sha256 and r.ready)
        for replica in sorted((r for r in mine if r.sha256 != target.sha256), key=key):
            if replica.sha256 == target.held_sha256 and replica.ready:
                continue
            if replica.sha256 == target.held_sha256 and held_kept < target.desired:
                held_kept += 1  # a held replica's replacement, starting
                continue
            if not replica.ready:
                drain(replica, "update")
            elif ready_left[member] - 1 >= target.desired:
                drain(replica, "update")
                ready_left[member] -= 1
        # c. scale down: most expensive agents first, keeping the desired count ready
        pending = _pending_replacements(mine, gone)
        counted = [r for r in mine if r.sha256 == target.sha256 and r.replica_id not in gone | pending]
        excess = len(counted) - target.desired
        for replica in sorted(counted, key=key):
            if excess <= 0:
                break
            if replica.ready:
                if ready_left[member] - 1 < target.desired:
                    continue
                ready_left[member] -= 1
            drain(replica, "scale_down")
            excess -= 1
    return drains


def _missing(snapshot: ServeSnapshot, drained: set[str]) -> dict[tuple[str, str], int]:
    """Per (member, sha256), the replicas to launch: of the member's current model file to reach
    its desired count, and of its held one (a stacking update) to keep that many of those too."""
    missing = {}
    for member, target in snapshot.targets.items():
        mine = [r for r in snapshot.replicas if r.live and r.member == member and r.replica_id not in drained]
        pending = _pending_replacements(mine, drained)
        for sha in dict.fromkeys(s for s in (target.sha256, target.held_sha256) if s is not None):
            have = sum(1 for r in mine if r.sha256 == sha and r.replica_id not in pending)
            if have < target.desired:
                missing[(member, sha)] = target.desired - have
    return missing


def _prepare(snapshot: ServeSnapshot, agents: Sequence[Agent], drained: set[str]) -> list[Agent]:
    """Offered agents as the packer sees them: those keeping live replicas of ours (not drained
    now) are in use (cost nothing more); those running an executor of ours have its members
    loaded (no executor resources, no cold start) but, with no replica left, cost their price
    again: an idle executor does not make an agent free (else a re-pack "saves" by moving
    replicas onto a dearer agent that merely kept its executor, and back).  Agents without an
    executor of ours keep the shared executor's reserve free."""
    hosting = {r.agent_id for r in snapshot.replicas if r.live and r.replica_id not in drained}
    prepared = []
    for agent in agents:
        has_executor = agent.agent_id in snapshot.executors
        prepared.append(dataclasses.replace(
            agent,
            in_use=agent.in_use or agent.agent_id in hosting,
            loaded_models=frozenset(snapshot.executors.get(agent.agent_id, agent.loaded_models)),
            capacity=agent.capacity if has_executor else (agent.capacity - snapshot.agent_reserve).nonnegative(),
        ))
    return prepared


def _settled(snapshot: ServeSnapshot) -> bool:
    """Every replica is ready and of its member's current model file (none starting or draining)."""
    return all(r.state == "running" and r.member in snapshot.targets
               and r.sha256 == snapshot.targets[r.member].sha256 for r in snapshot.replicas)


def _repack(snapshot: ServeSnapshot, prepared: Sequence[Agent], prices: Mapping[str, float]) -> list[ReplicaLaunch]:
    """Replacements for every replica of a group of agents in use that the other offered agents
    take for less than the group's price (empty: no such group).  Groups tried: the agents in use
    that a fresh placement of every replica on all the known agents (made whole) leaves out, then
    each agent in use alone, the most expensive first (at most REPACK_SINGLE_AGENTS of them).

    When that fresh placement costs less than the agents in use now, the replicas move only onto
    agents it uses: with one agent's offer at hand, moving the cheap agent's replicas onto the
    dear one "saves" the cheap one's price, but the fresh placement puts everything on the cheap
    one, and getting there takes a second re-pack whose replacements start on the cheap agent
    beside the dear one's replicas (the cost up again, for the second time).  Other agents are
    targets only when every agent of the fresh placement with room for a replica is offered now
    (so a move towards it was possible and none fits)."""
    on_agent: dict[str, list[ReplicaView]] = defaultdict(list)
    for replica in snapshot.replicas:
        on_agent[replica.agent_id].append(replica)
    current = sum(prices.get(a, 0.0) for a in on_agent)
    fresh = _fresh_placement(snapshot, prepared, prices, on_agent)
    offered = {a.agent_id for a in prepared}
    attempts: list[set[str] | None] = [None]
    groups: list[tuple[str, ...]] = []
    if fresh is not None and fresh[1] < current - EPS:
        keep = fresh[0]
        attempts = [keep]
        if all(a in offered or not _has_room(snapshot, a, on_agent) for a in keep):
            attempts.append(None)
        groups.append(tuple(sorted(set(on_agent) - keep)))
    groups += [(a,) for a in sorted(on_agent, key=lambda a: (-prices.get(a, 0.0), a))[:REPACK_SINGLE_AGENTS]]
    for allowed in attempts:
        for group in groups:
            price = sum(prices.get(a, 0.0) for a in group)
            others = [a for a in prepared if a.agent_id not in group and (allowed is None or a.agent_id in allowed)]
            if price <= EPS or not others:
                continue
            moving = sorted((r for a in group for r in on_agent[a]), key=lambda r: r.replica_id)
            plan = pack([_demand(snapshot, r.replica_id, r.member) for r in moving], others, CostModel(),
                        snapshot.packing)
            if plan.unplaced or plan.cost >= price * (1.0 - snapshot.repack_min_saving) - EPS:
                continue
            where = {task_id: a for a, task_ids in plan.assignments.items() for task_id in task_ids}
            return [_launch(snapshot, r.member, where[r.replica_id], "repack", replaces=r.replica_id) for r in moving]
    return []


def _demand(snapshot: ServeSnapshot, task_id: str, member: str) -> TaskDemand:
    target = snapshot.targets[member]
    return TaskDemand(task_id, member, target.demand, target.executor, target.constraints)


def _executor_held(snapshot: ServeSnapshot, agent_id: str) -> Resources:
    """What our executors on the agent hold (none: nothing)."""
    members = snapshot.executors.get(agent_id)
    if members is None:
        return Resources()
    return sum((snapshot.targets[m].executor for m in members if m in snapshot.targets), snapshot.agent_reserve)


def _held(snapshot: ServeSnapshot, replicas: Sequence[ReplicaView]) -> Resources:
    return sum((snapshot.targets[r.member].demand for r in replicas if r.member in snapshot.targets), Resources())


def _has_room(snapshot: ServeSnapshot, agent_id: str, on_agent: Mapping[str, list[ReplicaView]]) -> bool:
    """Whether the agent, as last measured, has room for one more replica of some member (an
    agent never measured: as far as we know)."""
    capacity = snapshot.agent_capacity.get(agent_id)
    if capacity is None:
        return True
    free = capacity - _executor_held(snapshot, agent_id) - _held(snapshot, on_agent.get(agent_id, []))
    return any(t.demand.fits_in(free) for t in snapshot.targets.values())


def _fresh_placement(snapshot: ServeSnapshot, prepared: Sequence[Agent], prices: Mapping[str, float],
                     on_agent: Mapping[str, list[ReplicaView]]) -> tuple[set[str], float] | None:
    """The agents a fresh placement of all the replicas uses, and its cost (None: it places
    them not all).  Every agent at its price, with what it holds for us whole: an offered one its
    free capacity plus what our replicas hold there; one not offered now its capacity as last
    measured (``agent_capacity``) less what our executor holds, or, never measured, what our
    replicas hold there."""
    whole = [dataclasses.replace(a, in_use=False, capacity=a.capacity + _held(snapshot, on_agent.get(a.agent_id, [])))
             for a in prepared]
    offered = {a.agent_id for a in prepared}
    for agent_id in sorted((set(on_agent) | set(snapshot.agent_capacity)) - offered):
        measured = snapshot.agent_capacity.get(agent_id)
        if measured is not None:
            executor = _executor_held(snapshot, agent_id) if agent_id in snapshot.executors else snapshot.agent_reserve
            capacity = (measured - executor).nonnegative()
        else:
            capacity = _held(snapshot, on_agent.get(agent_id, []))
        whole.append(Agent(agent_id, agent_id, (), capacity, {}, price=prices.get(agent_id, 0.0),
                           loaded_models=snapshot.executors.get(agent_id, frozenset())))
    tasks = [_demand(snapshot, r.replica_id, r.member) for a in sorted(on_agent) for r in on_agent[a]]
    plan = pack(tasks, whole, CostModel(), snapshot.packing)
    if plan.unplaced:
        return None
    return set(plan.assignments), plan.cost


def _released(snapshot: ServeSnapshot, drained: set[str], launches: Sequence[ReplicaLaunch]) -> tuple[str, ...]:
    ours = {r.agent_id for r in snapshot.replicas} | set(snapshot.executors)
    keeping = {r.agent_id for r in snapshot.replicas if r.live and r.replica_id not in drained}
    keeping |= {launch.agent_id for launch in launches}
    return tuple(sorted(ours - keeping))
