"""A deployment-sized instance (a few replicas on a few agents) is solved by HiGHS first: its
plan is proven optimal without the heuristic search, whose rounds cost ``serve`` a tenth of a
second of the gateway's process per cost bound (``packer.TINY_EXACT_SIZE``)."""

import math

import pytest

from framework.packing import Agent, PackingOptions, Resources, TaskDemand, pack
from framework.packing import packer

BOUND_LIKE = PackingOptions(time_budget_s=math.inf, max_iterations=300, exact_max_nodes=100)


def replicas(**counts: int) -> list[TaskDemand]:
    cpus = {"forest": 0.49, "boosting": 0.24, "logistic": 0.09}
    return [TaskDemand(f"{m}#{i}", m, Resources(cpus=cpus[m], mem=544.0), Resources())
            for m, n in counts.items() for i in range(n)]


def agents() -> list[Agent]:
    return [Agent(name, name, (f"o-{name}",), Resources(cpus=0.99, mem=8192.0), {}, price=price)
            for name, price in (("a", 1.0), ("b", 2.0))]


@pytest.fixture
def no_heuristic_search(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the heuristic search ran on a tiny instance")

    monkeypatch.setattr(packer, "improve", refuse)
    monkeypatch.setattr(packer, "select_then_pack", refuse)


@pytest.mark.usefixtures("no_heuristic_search")
@pytest.mark.parametrize(("counts", "cost"), [({"forest": 2, "boosting": 1, "logistic": 1}, 3.0),
                                              ({"forest": 1, "boosting": 1, "logistic": 1}, 1.0),
                                              ({"forest": 2, "boosting": 2, "logistic": 2}, 3.0)])
def test_a_tiny_instance_is_proven_optimal_by_highs_alone(counts: dict[str, int], cost: float) -> None:
    plan = pack(replicas(**counts), agents(), options=BOUND_LIKE)
    assert not plan.unplaced
    assert plan.proven_optimal and plan.cost == plan.lower_bound == cost


def test_a_larger_instance_still_gets_the_heuristic_search(monkeypatch: pytest.MonkeyPatch) -> None:
    searched = []
    improve = packer.improve
    monkeypatch.setattr(packer, "improve", lambda *args, **kwargs: searched.append(1) or improve(*args, **kwargs))
    many = [Agent(f"x{i}", f"x{i}", (f"o-x{i}",), Resources(cpus=0.99, mem=8192.0), {}, price=1.0 + i % 3)
            for i in range(40)]
    plan = pack(replicas(forest=6, boosting=4, logistic=2), many, options=BOUND_LIKE)
    assert not plan.unplaced and searched
