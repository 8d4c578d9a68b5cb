"""Constraint plug-ins: a constraint defined and registered here, in the test module, is
honoured by the packer (static mask, failure reasons) and by the job file, with no other file
touched; the built-ins keep their job-file errors and their search-phase limits."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pytest

from framework.demo import train_demo
from framework.errors import JobSpecError
from framework.jobspec import load_job
from framework.packing import (Agent, AttributeEquals, AvoidAgents, Constraint, ConstraintValueError, MaxPerAgent,
                               ModelLimits, PackingOptions, Resources, SpreadAtLeast, TaskDemand,
                               first_fit_decreasing, pack)
from framework.packing.constraints import from_job, job_keys, register, unregister

from .packing_helpers import check_plan


@dataclass(frozen=True)
class HostnameIn(Constraint):
    """Only on agents whose hostname is listed (the example plug-in of this test)."""

    hostnames: frozenset[str]
    name = "hostname_in"
    job_key = "hostname_in"

    def label(self) -> str:
        return f"hostname_in({','.join(sorted(self.hostnames))})"

    def feasible(self, agents: Sequence[Agent]) -> np.ndarray:
        return np.array([a.hostname in self.hostnames for a in agents], dtype=bool)

    @classmethod
    def from_job(cls, value: object) -> tuple[Constraint, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(h, str) for h in value):
            raise ConstraintValueError("", f"must be a non-empty list of hostnames, got {value!r}")
        return (cls(frozenset(value)),)


@dataclass(frozen=True)
class OnePerAgent(Constraint):
    """A counting plug-in: the same interface as max_per_agent / spread_over, no job key."""

    name = "one_per_agent"

    def limits(self) -> ModelLimits:
        return ModelLimits(per_agent=1)


@pytest.fixture
def hostname_in() -> Iterator[type[HostnameIn]]:
    register(HostnameIn)
    yield HostnameIn
    unregister("hostname_in")


def agents(n: int, cpus: float = 4) -> list[Agent]:
    return [Agent(f"a{i}", f"h{i}", (f"o{i}",), Resources(cpus, 8, 10, 0), {"zone": "xy"[i % 2]})
            for i in range(n)]


def test_packer_honours_a_plugin_defined_in_the_test(hostname_in: type[HostnameIn]) -> None:
    cluster = agents(4)
    only = hostname_in(frozenset({"h1", "h3"}))
    tasks = [TaskDemand(f"t{i}", "m", Resources(1, 1), Resources(), (only,)) for i in range(10)]
    plan = pack(tasks, cluster, options=PackingOptions(time_budget_s=float("inf"), max_iterations=500))
    check_plan(plan, tasks, cluster)
    assert set(plan.assignments) == {"a1", "a3"} and plan.placed_count == 8
    assert plan.declined == {"a0": "never_fits", "a2": "never_fits"}
    for unplaced in plan.unplaced.values():
        assert dict(unplaced.filtered) == {"hostname_in(h1,h3)": 2}
        assert dict(unplaced.exhausted) == {"cpus": 2}
    ffd = first_fit_decreasing(tasks, cluster)
    assert set(ffd.assignments) <= {"a1", "a3"}


def test_a_counting_plugin_reaches_every_search_phase_through_limits() -> None:
    cluster = agents(3, cpus=8)
    tasks = [TaskDemand(f"t{i}", "m", Resources(1, 1), Resources(), (OnePerAgent(),)) for i in range(5)]
    for options in (PackingOptions(time_budget_s=float("inf"), max_iterations=500),
                    PackingOptions(time_budget_s=float("inf"), max_iterations=500, exact=False)):
        plan = pack(tasks, cluster, options=options)
        assert plan.placed_count == 3 and all(len(ts) == 1 for ts in plan.assignments.values())
        assert {dict(u.filtered)["one_per_agent"] for u in plan.unplaced.values()} == {3}


def test_a_per_agent_limit_counts_the_tasks_running_on_the_agent() -> None:
    """``max_per_agent = 1`` and one new task: the agent in use that already runs one of the model
    (the cheapest place) is no place for it.  The search once checked a limit only when the new
    tasks alone outnumbered it, so a lone task joined the one running there."""
    cluster = [dataclasses.replace(a, in_use=True, running_tasks={"m": 1}) if a.agent_id == "a0" else a
               for a in agents(2)]
    tasks = [TaskDemand("t0", "m", Resources(1, 1), Resources(), (MaxPerAgent(1),))]
    for options in (PackingOptions(time_budget_s=float("inf"), max_iterations=500),
                    PackingOptions(time_budget_s=float("inf"), max_iterations=500, exact=False)):
        plan = pack(tasks, cluster, options=options)
        check_plan(plan, tasks, cluster)
        assert plan.assignments == {"a1": ("t0",)}


def test_job_file_honours_a_registered_plugin(hostname_in: type[HostnameIn], tmp_path: Path) -> None:
    train_demo(tmp_path)
    text = (tmp_path / "job.toml").read_text()
    job = tmp_path / "job-hosts.toml"
    job.write_text(text.replace('cpus = 0.5\nmem = 128\n',
                                'cpus = 0.5\nmem = 128\nconstraints = { hostname_in = ["h2", "h1"], '
                                'max_per_agent = 3 }\n', 1))
    spec = load_job(job)
    assert spec.models[0].constraints == (hostname_in(frozenset({"h1", "h2"})), MaxPerAgent(3))
    bad = tmp_path / "job-bad.toml"
    bad.write_text(text.replace('cpus = 0.5\nmem = 128\n',
                                'cpus = 0.5\nmem = 128\nconstraints = { hostname_in = "h1" }\n', 1))
    with pytest.raises(JobSpecError, match=r"models\[0\] \(linear\)\.constraints\.hostname_in must be a non-empty "
                                           r"list of hostnames, got 'h1'$"):
        load_job(bad)


def test_unregistered_key_is_an_unknown_field(tmp_path: Path) -> None:
    train_demo(tmp_path)
    job = tmp_path / "job-hosts.toml"
    job.write_text((tmp_path / "job.toml").read_text().replace(
        'cpus = 0.5\nmem = 128\n', 'cpus = 0.5\nmem = 128\nconstraints = { hostname_in = ["h1"] }\n', 1))
    with pytest.raises(JobSpecError, match=r"constraints\.hostname_in is not a known field "
                                           r"\(known: attribute, max_per_agent, spread_over\)"):
        load_job(job)


def test_builtin_job_keys_and_values() -> None:
    assert job_keys() == ("attribute", "max_per_agent", "spread_over")
    assert from_job("attribute", {"zone": "a", "rack": 3}) == (AttributeEquals("rack", "3"),
                                                               AttributeEquals("zone", "a"))
    assert from_job("max_per_agent", 4) == (MaxPerAgent(4),)
    assert from_job("spread_over", 2) == (SpreadAtLeast(2),)


@pytest.mark.parametrize(("key", "value", "field", "problem"), [
    ("attribute", 3, "", "must be dict, got 3"),
    ("attribute", {"zone": ["a"]}, "zone", "must be a string or number, got ['a']"),
    ("max_per_agent", "3", "", "must be int, got '3'"),
    ("max_per_agent", True, "", "must be int, got True"),
    ("max_per_agent", 2.0, "", "must be int, got 2.0"),
    ("spread_over", 0, "", "must be at least 1, got 0"),
])
def test_builtin_job_errors_name_the_field(key: str, value: object, field: str, problem: str) -> None:
    with pytest.raises(ConstraintValueError) as error:
        from_job(key, value)
    assert (error.value.field, error.value.problem) == (field, problem)


def test_register_refuses_a_taken_key() -> None:
    @dataclass(frozen=True)
    class OtherSpread(Constraint):
        job_key = "spread_over"

    with pytest.raises(ValueError, match="already taken"):
        register(OtherSpread)
    with pytest.raises(ValueError, match="no job_key"):
        register(OnePerAgent)


def test_builtin_masks_limits_and_labels() -> None:
    cluster = agents(3) + [Agent("g", "hg", ("og",), Resources(4, 8, 10, 1), {"zone": 1.0})]
    assert AttributeEquals("zone", "x").feasible(cluster).tolist() == [True, False, True, False]
    assert AttributeEquals("zone", "1").feasible(cluster).tolist() == [False, False, False, True]
    assert AvoidAgents(frozenset({"a1", "g"})).feasible(cluster).tolist() == [True, False, True, False]
    assert AvoidAgents(frozenset({"a1"})).label() == "avoid_agents"
    assert MaxPerAgent(2).feasible(cluster) is None and MaxPerAgent(2).limits() == ModelLimits(per_agent=2)
    assert SpreadAtLeast(3).limits() == ModelLimits(min_agents=3) and SpreadAtLeast(3).label() == "spread_at_least(3)"
    assert AttributeEquals("zone", "x").limits() is None
