"""The pure placement decision: launches by the cost packer (agents already running our
executor first), drains from the most expensive agents, rolling updates and re-packs that never
take a member below its desired ready count; hand-built snapshots and a small simulated
controller (no Mesos, no clock)."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framework.packing import Agent, CostModel, PackingOptions, Resources
from framework.serving.cost import CostReport, cost_per_hour, deployment_cost, lower_bound_per_hour, whole_agents
from framework.serving.placement import (MemberTarget, ReplicaView, ServeDecision, ServeSnapshot, decide,
                                         replica_demand)

DEMAND = replica_demand(cpus=1.0, mem=512.0)
OLD, NEW = "a" * 64, "b" * 64
OPTIONS = PackingOptions(time_budget_s=float("inf"), max_iterations=300)
FAST = PackingOptions(time_budget_s=0.005, exact=False)
"""For the many decisions of the property tests, whose invariants hold for any plan."""


def agent(agent_id: str, price: float, cpus: float = 4.0, mem: float = 4096.0, ports: int = 1001) -> Agent:
    return Agent(agent_id, f"{agent_id}.example", (f"o-{agent_id}",), Resources(cpus=cpus, mem=mem, ports=ports), {},
                 price=price, port_ranges=((31000, 31000 + ports - 1),) if ports else ())


def times(resources: Resources, n: int) -> Resources:
    return Resources(*(n * v for v in resources.as_tuple()))


def replica(replica_id: str, agent_id: str, member: str = "m", state: str = "running", sha: str = OLD,
            replaces: str | None = None) -> ReplicaView:
    return ReplicaView(replica_id, member, agent_id, sha, state, replaces)  # type: ignore[arg-type]


def snapshot(replicas: tuple[ReplicaView, ...], desired: dict[str, int], prices: dict[str, float],
             sha: str = OLD, **changes: object) -> ServeSnapshot:
    executors = {r.agent_id: frozenset(desired) for r in replicas}
    base = ServeSnapshot(targets={m: MemberTarget(m, n, sha, DEMAND) for m, n in desired.items()},
                         replicas=replicas, agent_prices=prices, executors=executors, packing=OPTIONS)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def ready_by_member(replicas: list[ReplicaView] | tuple[ReplicaView, ...]) -> Counter[str]:
    return Counter(r.member for r in replicas if r.ready)


# --- launches ---------------------------------------------------------------------------------

def test_new_replicas_go_where_our_executor_runs_before_a_cheaper_new_agent() -> None:
    snap = snapshot((replica("r1", "busy"),), {"m": 3}, {"busy": 5.0})
    decision = decide(snap, [agent("busy", 5.0), agent("cheap", 1.0)], now=0.0)
    assert [(launch.agent_id, launch.reason, launch.new_executor) for launch in decision.launches] == \
        [("busy", "scale_up", False)] * 2
    assert decision.unused_agents == {"cheap": "unneeded"} and not decision.drains


def test_a_new_agent_starts_the_executor_and_keeps_its_reserve() -> None:
    reserve = Resources(cpus=0.5, mem=256.0)
    snap = snapshot((), {"m": 2}, {}, agent_reserve=reserve)
    decision = decide(snap, [agent("x", 1.0, cpus=1.4, mem=2048.0), agent("y", 2.0, cpus=4.0)], now=0.0)
    # x holds one replica (1 cpu) but not one and the executor's reserve (1.5 cpus)
    assert [(launch.agent_id, launch.new_executor) for launch in decision.launches] == [("y", True)] * 2
    assert decision.unused_agents["x"] == "never_fits"


def test_replicas_that_fit_no_offer_are_counted_with_reasons() -> None:
    snap = snapshot((), {"m": 3}, {})
    decision = decide(snap, [agent("x", 1.0, cpus=2.0)], now=0.0)
    assert len(decision.launches) == 2 and decision.unplaced == {"m": 1}
    assert len(decision.reasons) == 1 and "cpus exhausted" in decision.reasons[0]
    assert decide(snap, [], now=0.0).unplaced == {"m": 3}


def test_each_replica_takes_a_port() -> None:
    assert DEMAND.ports == 1.0
    decision = decide(snapshot((), {"m": 3}, {}), [agent("x", 1.0, cpus=8.0, ports=2)], now=0.0)
    assert len(decision.launches) == 2 and decision.unplaced == {"m": 1}
    assert "ports exhausted" in decision.reasons[0]


def test_a_lost_replica_is_replaced() -> None:
    snap = snapshot((replica("r1", "x"),), {"m": 2}, {"x": 1.0})
    decision = decide(snap, [agent("x", 1.0)], now=0.0)
    assert [(launch.member, launch.agent_id, launch.sha256) for launch in decision.launches] == [("m", "x", OLD)]


# --- scale down -------------------------------------------------------------------------------

def test_scale_down_drains_the_most_expensive_agent_whole() -> None:
    replicas = (replica("a1", "cheap"), replica("a2", "cheap"), replica("b1", "dear", "n"), replica("b2", "dear"),
                replica("c1", "mid", "n"))
    snap = snapshot(replicas, {"m": 2, "n": 1}, {"cheap": 1.0, "dear": 9.0, "mid": 3.0})
    decision = decide(snap, [], now=0.0)
    assert sorted(d.replica_id for d in decision.drains) == ["b1", "b2"]
    assert {d.reason for d in decision.drains} == {"scale_down"}
    assert decision.released_agents == ("dear",)


def test_scale_down_keeps_the_desired_count_ready() -> None:
    # the ready replicas are on the dearer agent, the starting ones on the cheaper: the starting
    # ones go, since draining a ready one would leave fewer than 2 ready
    replicas = (replica("r1", "dear"), replica("r2", "dear"), replica("s1", "cheap", state="starting"),
                replica("s2", "cheap", state="starting"))
    decision = decide(snapshot(replicas, {"m": 2}, {"dear": 5.0, "cheap": 1.0}), [], now=0.0)
    assert sorted(d.replica_id for d in decision.drains) == ["s1", "s2"]


def test_members_no_longer_in_the_job_are_drained() -> None:
    replicas = (replica("r1", "x"), replica("g1", "x", member="gone"))
    decision = decide(snapshot(replicas, {"m": 1}, {"x": 1.0}), [], now=0.0)
    assert [(d.replica_id, d.reason) for d in decision.drains] == [("g1", "removed")]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(prices=st.lists(st.integers(1, 50), min_size=1, max_size=6, unique=True),
       placement=st.lists(st.integers(0, 5), min_size=1, max_size=12), data=st.data())
def test_scale_down_releases_the_most_expensive_agents_first(prices: list[int], placement: list[int],
                                                             data: st.DataObject) -> None:
    agents = {f"a{i}": float(p) for i, p in enumerate(prices)}
    replicas = tuple(replica(f"r{k}", f"a{i % len(prices)}") for k, i in enumerate(placement))
    desired = data.draw(st.integers(1, len(replicas)))
    decision = decide(snapshot(replicas, {"m": desired}, agents), [], now=0.0)
    drained = {d.replica_id for d in decision.drains}
    assert len(drained) == len(replicas) - desired
    kept = [r for r in replicas if r.replica_id not in drained]
    if drained:
        cheapest_drained = min(agents[r.agent_id] for r in replicas if r.replica_id in drained)
        assert all(agents[k.agent_id] <= cheapest_drained for k in kept)
    # every agent left without a replica is released, and only those
    assert set(decision.released_agents) == {r.agent_id for r in replicas} - {k.agent_id for k in kept}


# --- rolling update ---------------------------------------------------------------------------

@dataclass
class Cluster:
    """A tiny controller around ``decide``: launches start, started replicas become ready when
    told, drained replicas disappear; agents offer their free capacity."""

    agents: dict[str, Agent]
    replicas: list[ReplicaView] = field(default_factory=list)
    ids: itertools.count = field(default_factory=itertools.count)
    repack_not_before: float = 0.0

    def offered(self) -> list[Agent]:
        used: Counter[str] = Counter(r.agent_id for r in self.replicas)
        return [dataclasses.replace(a, capacity=a.capacity - times(DEMAND, used[a.agent_id]))
                for a in self.agents.values()]

    def decide(self, desired: dict[str, int], sha: str, now: float, held: str | None = None) -> ServeDecision:
        prices = {a: self.agents[a].price for a in self.agents}
        snap = snapshot(tuple(self.replicas), desired, prices, sha=sha, repack_not_before=self.repack_not_before)
        snap = dataclasses.replace(snap, targets={m: dataclasses.replace(t, held_sha256=held)
                                                  for m, t in snap.targets.items()})
        decision = decide(snap, self.offered(), now)
        drained = {d.replica_id for d in decision.drains}
        self.replicas = [r for r in self.replicas if r.replica_id not in drained]
        for launch in decision.launches:
            self.replicas.append(ReplicaView(f"n{next(self.ids)}", launch.member, launch.agent_id, launch.sha256,
                                             "starting", launch.replaces))
        if decision.repack_checked:
            self.repack_not_before = now + 10.0
        return decision

    def start(self, count: int | None = None) -> None:
        """``count`` starting replicas (all when None) become ready."""
        started = 0
        for i, r in enumerate(self.replicas):
            if r.state == "starting" and (count is None or started < count):
                self.replicas[i] = dataclasses.replace(r, state="running")
                started += 1

    def cost(self) -> float:
        return cost_per_hour(self.replicas, {a: self.agents[a].price for a in self.agents})

    def report(self, desired: dict[str, int]) -> CostReport:
        """Cost and bound as the controller would compute them from its snapshot and the offers."""
        snap = snapshot(tuple(self.replicas), desired, {}, executors={})
        return deployment_cost(snap, self.offered(), options=OPTIONS)


def test_rolling_update_starts_new_replicas_before_draining_old_ones() -> None:
    cluster = Cluster({"x": agent("x", 1.0, cpus=8.0, mem=8192.0)})
    cluster.decide({"m": 3}, OLD, 0.0)
    cluster.start()
    first = cluster.decide({"m": 3}, NEW, 1.0)
    assert [launch.reason for launch in first.launches] == ["update"] * 3 and not first.drains
    history = []
    for step in range(2, 6):
        cluster.start(1)  # one new replica passes its health check per step
        decision = cluster.decide({"m": 3}, NEW, float(step))
        history.append(len(decision.drains))
        assert ready_by_member(cluster.replicas)["m"] >= 3
    assert history == [1, 1, 1, 0]
    assert {r.sha256 for r in cluster.replicas} == {NEW} and len(cluster.replicas) == 3


def test_a_held_update_keeps_every_old_ready_replica_until_released() -> None:
    """A stacking update: the new replicas start and become ready beside the old ones, which stay
    (none drained, none re-packed) until the hold ends; then they drain as a rolling update's."""
    cluster = Cluster({"x": agent("x", 1.0, cpus=8.0, mem=8192.0), "y": agent("y", 0.5, cpus=8.0, mem=8192.0)})
    cluster.decide({"m": 2}, OLD, 0.0)
    cluster.start()
    first = cluster.decide({"m": 2}, NEW, 1.0, held=OLD)
    assert [launch.reason for launch in first.launches] == ["update"] * 2 and not first.drains
    cluster.start()
    for step in range(2, 5):
        decision = cluster.decide({"m": 2}, NEW, float(step), held=OLD)
        assert not decision.drains and not decision.launches and not decision.repacked
    assert Counter(r.sha256 for r in cluster.replicas if r.ready) == {OLD: 2, NEW: 2}
    released = cluster.decide({"m": 2}, NEW, 5.0)
    assert sorted(d.reason for d in released.drains) == ["update"] * 2
    assert {r.sha256 for r in cluster.replicas} == {NEW}


def test_held_replicas_that_end_are_replaced_with_the_held_file_and_a_roll_back_keeps_them() -> None:
    """During a stacking update the held replicas are kept at the desired count: one that ends is
    replaced with the held model file (a new one with the new file), and its starting replacement
    is not drained; a roll-back (the held file current again) drains the new replicas only."""
    cluster = Cluster({"x": agent("x", 1.0, cpus=8.0, mem=8192.0)})
    cluster.decide({"m": 2}, OLD, 0.0)
    cluster.start()
    cluster.decide({"m": 2}, NEW, 1.0, held=OLD)
    for sha in (OLD, NEW):  # an old replica and a new one end
        cluster.replicas.remove(next(r for r in cluster.replicas if r.sha256 == sha))
    decision = cluster.decide({"m": 2}, NEW, 2.0, held=OLD)
    assert sorted((launch.sha256, launch.reason) for launch in decision.launches) == [(OLD, "held"), (NEW, "update")]
    assert not decision.drains
    settled = cluster.decide({"m": 2}, NEW, 3.0, held=OLD)
    assert not settled.drains and not settled.launches
    cluster.start()
    assert Counter(r.sha256 for r in cluster.replicas if r.ready) == {OLD: 2, NEW: 2}
    back = cluster.decide({"m": 2}, OLD, 4.0)
    assert [d.reason for d in back.drains] == ["update"] * 2 and not back.launches
    assert Counter(r.sha256 for r in cluster.replicas) == {OLD: 2}


# --- re-pack ----------------------------------------------------------------------------------

def test_repack_moves_to_cheaper_agents_then_releases_the_expensive_one() -> None:
    cluster = Cluster({"dear": agent("dear", 10.0), "cheap": agent("cheap", 2.0)})
    cluster.replicas = [replica("r1", "dear"), replica("r2", "dear"), replica("s1", "dear", member="n")]
    desired = {"m": 2, "n": 1}
    before = cluster.cost()
    assert cluster.report(desired) == CostReport(10.0, 2.0)  # all three fit on the cheap agent
    decision = cluster.decide(desired, OLD, 0.0)
    assert decision.repacked and not decision.drains
    assert sorted((launch.agent_id, launch.reason, launch.replaces) for launch in decision.launches) == \
        [("cheap", "repack", "r1"), ("cheap", "repack", "r2"), ("cheap", "repack", "s1")]
    # nothing drains until the replacements are ready; no second re-pack meanwhile
    assert not cluster.decide(desired, OLD, 1.0).drains
    cluster.start(1)
    partial = cluster.decide(desired, OLD, 2.0)
    assert len(partial.drains) == 1 and partial.drains[0].reason == "repack"
    cluster.start()
    final = cluster.decide(desired, OLD, 3.0)
    assert {d.reason for d in final.drains} == {"repack"} and final.released_agents == ("dear",)
    assert {r.agent_id for r in cluster.replicas} == {"cheap"} and ready_by_member(cluster.replicas) == Counter(desired)
    assert cluster.cost() == 2.0 < before == 10.0
    assert cluster.report(desired).ratio == 1.0


def test_no_repack_while_unsettled_too_soon_or_without_saving() -> None:
    offers = [agent("cheap", 2.0)]
    starting = snapshot((replica("r1", "dear"), replica("r2", "dear", state="starting")), {"m": 2}, {"dear": 10.0})
    unsettled = decide(starting, offers, 0.0)
    assert not unsettled.launches and not unsettled.repack_checked
    settled = snapshot((replica("r1", "dear"),), {"m": 1}, {"dear": 10.0})
    moved = decide(settled, offers, 0.0)
    assert moved.repacked and moved.repack_checked
    too_soon = decide(dataclasses.replace(settled, repack_not_before=5.0), offers, 1.0)
    assert not too_soon.launches and not too_soon.repack_checked
    for snap, agents in ((dataclasses.replace(settled, repack_min_saving=0.85), offers),
                         (settled, [agent("cheap", 10.0)]),  # no saving
                         (settled, [agent("cheap", 1.0, cpus=0.5)])):  # does not fit
        looked = decide(snap, agents, 1.0)
        assert not looked.launches and looked.repack_checked and not looked.repacked


def test_repack_consolidates_onto_an_agent_already_in_use() -> None:
    cluster = Cluster({"a": agent("a", 3.0), "b": agent("b", 4.0)})
    cluster.replicas = [replica("r1", "a"), replica("r2", "b")]
    decision = cluster.decide({"m": 2}, OLD, 0.0)
    assert [(launch.agent_id, launch.replaces) for launch in decision.launches] == [("a", "r2")]
    cluster.start()
    assert cluster.decide({"m": 2}, OLD, 1.0).released_agents == ("b",)
    assert cluster.cost() == 3.0


def test_repack_releases_two_agents_for_one_cheaper_than_both() -> None:
    """Neither agent alone is worth moving (the big one costs more than either), both together are."""
    cluster = Cluster({"a": agent("a", 5.0, cpus=1.0), "b": agent("b", 5.0, cpus=1.0), "big": agent("big", 6.0)})
    cluster.replicas = [replica("r1", "a"), replica("r2", "b")]
    decision = cluster.decide({"m": 2}, OLD, 0.0)
    assert sorted((launch.agent_id, launch.replaces) for launch in decision.launches) == [("big", "r1"), ("big", "r2")]
    cluster.start()
    assert cluster.decide({"m": 2}, OLD, 1.0).released_agents == ("a", "b")
    assert cluster.cost() == 6.0 and cluster.report({"m": 2}).ratio == 1.0


# --- whole runs -------------------------------------------------------------------------------

events = st.lists(st.one_of(
    st.tuples(st.just("desired"), st.sampled_from(["m", "n"]), st.integers(1, 5)),
    st.tuples(st.just("update"), st.sampled_from(["m", "n"]), st.just(0)),
    st.tuples(st.just("start"), st.just(""), st.integers(1, 4)),
    st.tuples(st.just("lose"), st.just(""), st.integers(0, 20)),
), min_size=1, max_size=25)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(prices=st.lists(st.integers(1, 20), min_size=3, max_size=4), start=st.lists(st.integers(0, 3), max_size=5),
       script=events)
def test_never_below_the_desired_ready_count(prices: list[int], start: list[int],
                                             script: list[tuple[str, str, int]]) -> None:
    """Random scaling, updates, starts and losses from a random placement: no decision drains a
    member below min(desired, ready before); once every replica starts, the deployment settles
    at each member's desired count of its current model file."""
    cluster = Cluster({f"a{i}": agent(f"a{i}", float(p), cpus=7.0, mem=7 * 1024.0) for i, p in enumerate(prices)})
    cluster.replicas = [replica(f"s{k}", f"a{i % len(prices)}", member="mn"[k % 2]) for k, i in enumerate(start)]
    desired, shas = {"m": 2, "n": 1}, {"m": OLD, "n": OLD}
    now = 0.0
    for kind, member, value in script:
        if kind == "desired":
            desired[member] = value
        elif kind == "update":
            shas[member] = NEW if shas[member] == OLD else OLD
        elif kind == "start":
            cluster.start(value)
        elif kind == "lose" and cluster.replicas:
            cluster.replicas.pop(value % len(cluster.replicas))
        now += 1.0
        before = ready_by_member(cluster.replicas)
        decision = decide_all(cluster, desired, shas, now)
        after = ready_by_member(cluster.replicas)
        for m, d in desired.items():
            assert after[m] >= min(d, before[m]), (m, d, before, after, decision)
    for _ in range(12):  # then every replica starts: the deployment settles (re-packs end: each saves)
        cluster.start()
        now += 1.0
        decision = decide_all(cluster, desired, shas, now)
        if not decision.launches and not decision.drains:
            break
    else:
        raise AssertionError(f"never settled: {cluster.replicas}")
    for m, d in desired.items():
        mine = [r for r in cluster.replicas if r.member == m]
        assert len(mine) == d and all(r.ready and r.sha256 == shas[m] for r in mine), cluster.replicas


def decide_all(cluster: Cluster, desired: dict[str, int], shas: dict[str, str], now: float) -> ServeDecision:
    """``Cluster.decide`` with a sha256 per member."""
    prices = {a: cluster.agents[a].price for a in cluster.agents}
    executors = {r.agent_id: frozenset(desired) for r in cluster.replicas}
    snap = ServeSnapshot(targets={m: MemberTarget(m, n, shas[m], DEMAND) for m, n in desired.items()},
                         replicas=tuple(cluster.replicas), agent_prices=prices, executors=executors,
                         packing=FAST, repack_not_before=cluster.repack_not_before)
    decision = decide(snap, cluster.offered(), now)
    drained = {d.replica_id for d in decision.drains}
    cluster.replicas = [r for r in cluster.replicas if r.replica_id not in drained]
    for launch in decision.launches:
        cluster.replicas.append(ReplicaView(f"n{next(cluster.ids)}", launch.member, launch.agent_id, launch.sha256,
                                            "starting", launch.replaces))
    if decision.repacked:
        cluster.repack_not_before = now + 3.0
    return decision


# --- cost -------------------------------------------------------------------------------------

def test_cost_counts_each_agent_once_and_the_bound_is_below_it() -> None:
    replicas = [replica("r1", "x"), replica("r2", "x"), replica("r3", "y")]
    assert cost_per_hour(replicas, {"x": 2.0, "y": 3.0, "z": 7.0}) == 5.0
    offered = [agent("x", 2.0, cpus=2.0), agent("y", 3.0, cpus=3.0), agent("z", 7.0, cpus=8.0)]
    agents = whole_agents(offered, replicas, {"m": DEMAND}, {"x": 2.0, "y": 3.0})
    assert [a.capacity.cpus for a in agents] == [4.0, 4.0, 8.0]
    bound = lower_bound_per_hour({"m": 3}, agents, {"m": DEMAND}, options=OPTIONS)
    assert bound == 2.0  # three 1-cpu replicas fit on x (4 cpus whole): the packer proves it optimal
    assert lower_bound_per_hour({"m": 0}, agents, {"m": DEMAND}, options=OPTIONS) == 0.0
    assert lower_bound_per_hour({"m": 6}, agents, {"m": DEMAND}, options=OPTIONS) == 5.0  # x and y
    # the fractional bound alone (no plan places them all: 17 cpus wanted, 16 offered)
    assert lower_bound_per_hour({"m": 17}, agents, {"m": DEMAND}, options=OPTIONS) == 12.0


def test_unit_prices_count_per_replica_hour() -> None:
    unit = CostModel(unit_prices=Resources(cpus=1e-4))  # per cpu-second
    assert cost_per_hour([replica("r1", "x"), replica("r2", "x")], {"x": 2.0}, {"m": DEMAND}, unit) == \
        pytest.approx(2.0 + 2 * 0.36)
    assert lower_bound_per_hour({"m": 2}, [agent("x", 2.0)], {"m": DEMAND}, unit, options=OPTIONS) == \
        pytest.approx(2.0 + 0.72)


def test_deployment_cost_of_a_shared_executor_deployment() -> None:
    """The shared executor's reserve counts on every agent: with it, two replicas no longer fit
    one 2.5-cpu agent; an agent with no known price costs the default."""
    reserve = Resources(cpus=1.0, mem=256.0)
    replicas = (replica("r1", "x"), replica("r2", "unknown", state="draining"))
    snap = snapshot(replicas, {"m": 2}, {"x": 3.0}, agent_reserve=reserve)
    offered = [agent("x", 3.0, cpus=0.5), agent("y", 4.0, cpus=2.5)]
    report = deployment_cost(snap, offered, default_price=1.5, options=OPTIONS)
    assert report.cost_per_hour == 4.5
    # whole agents less the reserve: x 1.5 cpus, y 1.5, the unknown one 1.0 (its replica and the
    # executor's reserve): one replica on each of the two cheapest
    assert report.lower_bound_per_hour == pytest.approx(4.5)
