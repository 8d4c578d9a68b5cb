"""Measured task costs steer the launch order: probe unmeasured models, then longest first."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from framework.balancing import Measurements, format_usage
from framework.tasks import WorkItem


def items(counts: dict[str, int]) -> list[WorkItem]:
    return [WorkItem(f"{m}.s{i}", m, i) for m, n in counts.items() for i in range(n)]


def test_one_probe_per_unmeasured_model_goes_first() -> None:
    order = Measurements().launch_order(items({"a": 3, "b": 2, "c": 1}))
    assert [i.key for i in order[:3]] == ["a.s0", "b.s0", "c.s0"]
    assert [i.key for i in order[3:]] == ["a.s1", "a.s2", "b.s1"]


def test_measured_models_longest_first_and_models_being_probed_wait() -> None:
    measured = Measurements()
    measured.record("short", "a1", 0.1, 0.1)
    measured.record("long", "a1", 2.0, 1.9)
    measured.record("long", "a2", 1.0, 0.9)  # mean 1.5 s
    order = measured.launch_order(items({"short": 2, "probing": 2, "long": 2, "new": 2}), probing={"probing"})
    assert [i.key for i in order] == ["new.s0", "long.s0", "long.s1", "short.s0", "short.s1",
                                      "probing.s0", "probing.s1", "new.s1"]


@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 5), min_size=1),
       st.dictionaries(st.sampled_from("abcdef"), st.floats(0.001, 100.0)))
def test_launch_order_is_a_permutation_with_measured_models_by_decreasing_mean(counts, means) -> None:  # noqa: ANN001
    measured = Measurements()
    for model, mean in means.items():
        measured.record(model, "a1", mean, mean)
    pending = items(counts)
    order = measured.launch_order(pending)
    assert sorted(i.key for i in order) == sorted(i.key for i in pending)
    measured_means = [means[i.model] for i in order if i.model in means]
    assert measured_means == sorted(measured_means, reverse=True)


def test_summary_and_table() -> None:
    measured = Measurements()
    measured.record("forest", "a1", 0.5, 0.4)
    measured.record("forest", "a2", 0.7, 0.6)
    summary = measured.summary()
    assert summary["forest"] == {"tasks": 2, "mean_seconds": 0.6, "max_seconds": 0.7, "total_seconds": 1.2,
                                 "cpu_seconds": 1.0, "agents": {"a1": 1, "a2": 1}}
    assert "forest" in format_usage(summary) and "a1 x1, a2 x1" in format_usage(summary)
    assert measured.mean_seconds("forest") == 0.6 and measured.mean_seconds("other") is None


def test_first_that_fit_keeps_the_order_and_skips_what_does_not_fit() -> None:
    from framework.balancing import first_that_fit
    from framework.packing import Resources, TaskDemand

    def demand(name: str, cpus: float, mem: float) -> TaskDemand:
        return TaskDemand(name, name, Resources(cpus=cpus, mem=mem), Resources())

    demands = [demand("a", 1.0, 100), demand("big", 2.0, 100), demand("b", 0.5, 100), demand("c", 0.5, 900)]
    chosen, all_taken = first_that_fit(demands, Resources(cpus=2.0, mem=1000))
    assert [d.task_id for d in chosen] == ["a", "b"] and not all_taken  # "big" skipped; "c" exceeds the memory left
    assert first_that_fit(demands, Resources(cpus=0.1, mem=10)) == ([], False)
    assert first_that_fit(demands[:1], Resources(cpus=2.0, mem=1000))[1]


def test_first_that_fit_stops_looking_after_enough_misses() -> None:
    from framework.balancing import first_that_fit
    from framework.packing import Resources, TaskDemand

    looked: list[int] = []

    def demands():  # noqa: ANN202
        for n in range(10_000):
            looked.append(n)
            yield TaskDemand(f"t{n}", "m", Resources(cpus=1.0), Resources())

    chosen, all_taken = first_that_fit(demands(), Resources(cpus=3.0), patience=5)
    assert len(chosen) == 3 and not all_taken and len(looked) == 3 + 5


def test_stragglers_are_tasks_well_past_their_models_mean() -> None:
    from framework.balancing import SpeculationPolicy, stragglers

    measured = Measurements()
    measured.record("m", "a1", 1.0, 1.0)
    running = items({"m": 3, "unmeasured": 1})
    for item in running:
        item.task_id = f"{item.key}.a1"
    running[2].backup_task_id = "m.s2.a2"  # already has a backup
    elapsed = {running[0].task_id: 3.5, running[1].task_id: 2.9, running[2].task_id: 9.0, running[3].task_id: 99.0}
    policy = SpeculationPolicy(factor=2.0, margin_seconds=1.0)  # straggler past 2 x 1.0 + 1.0 = 3 s
    assert stragglers(running, elapsed, measured, policy) == [running[0]]
    assert stragglers(running, elapsed, measured, SpeculationPolicy(factor=0)) == []


def test_stacking_folds_are_measured_apart_from_predictions() -> None:
    from framework.balancing import usage_key

    fold = WorkItem("m.fold0", "m", 0, operation="cv_fit_predict", fold=0)
    measured = Measurements()
    measured.record(usage_key(fold), "a1", 5.0, 5.0)
    assert usage_key(fold) == "m (cv_fit_predict)" and measured.mean_seconds("m") is None
    # The fold's measurement says nothing of m's predictions: one of them still goes first, as a probe.
    assert [i.key for i in measured.launch_order([fold, WorkItem("m.s0", "m", 0)])] == ["m.s0", "m.fold0"]


def test_costs_an_earlier_run_measured_order_and_bundle_the_first_round_but_find_no_stragglers() -> None:
    """Issue 13: with each model's cost kept from an earlier run, the first round is longest
    first and bundled (no model's first task goes alone as a probe); this run's own measure
    replaces the figure, and only this run's measures find stragglers."""
    from framework.balancing import SpeculationPolicy, bundle_sizes, stragglers

    measured = Measurements()
    for model, seconds in (("logistic", 0.003), ("forest", 0.2), ("neighbours", 1.2)):
        measured.expect(model, seconds)
    pending = items({"logistic": 8, "forest": 8, "neighbours": 8})
    order = measured.launch_order(pending)
    assert [i.model for i in order] == ["neighbours"] * 8 + ["forest"] * 8 + ["logistic"] * 8
    sizes = bundle_sizes(pending, measured, cores=2)
    assert sizes["logistic"] == 8 and sizes["forest"] > 1  # bundled at once, not probed alone
    assert Measurements().launch_order(pending)[0].key == "logistic.s0"  # without: a probe per model first
    measured.record("forest", "a1", 0.1, 0.1)  # this run is twice as fast as the earlier one
    assert measured.mean_seconds("forest") == 0.1 and measured.mean_seconds("neighbours") == 0.6
    measured.record("forest", "a1", 0.7, 0.7)  # mean 0.4: twice as slow; its order follows
    assert measured.mean_seconds("neighbours") == pytest.approx(2.4)
    assert [i.model for i in measured.launch_order(pending)][:8] == ["neighbours"] * 8
    fresh = Measurements()
    fresh.expect("boosting", 0.5)  # from a busy run
    fresh.expect("neighbours", 0.8)
    fresh.record("neighbours", "a1", 0.3, 0.3)  # measured here, on a quiet machine
    assert fresh.launch_order(items({"boosting": 1, "neighbours": 1}))[0].model == "neighbours"
    running = items({"neighbours": 1})
    running[0].task_id = "neighbours.s0.a1"
    assert stragglers(running, {"neighbours.s0.a1": 60.0}, measured, SpeculationPolicy()) == []
