"""Pre-launch checks as pure functions: placement against agents, the NaN/inf policy."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor

from framework.dataset import Dataset, load_dataset, non_finite_columns
from framework.demo import train_demo
from framework.errors import JobSpecError
from framework.catalog import WORKER_MEM_MB, JobDemands, shared_executor_resources
from framework.members import member_features
from framework.jobspec import JobSpec, LocalClusterSpec, ModelSpec, load_job
from framework.packing import Agent, AttributeEquals, Resources
from framework.preflight import check_data, check_job, idle_cores, local_agents, unplaceable


@pytest.fixture(scope="module")
def demo_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def spec(demo_job: Path) -> JobSpec:
    return load_job(demo_job)


def agent(name: str, cpus: float = 2, mem: float = 4096, gpus: float = 0, **attributes: str) -> Agent:
    return Agent(agent_id=name, hostname=name, offer_ids=(), capacity=Resources(cpus=cpus, mem=mem, disk=10000,
                                                                                gpus=gpus), attributes=attributes)


def test_the_default_local_cluster_is_two_agents_of_2_cpus_and_4096_mb() -> None:
    agents = local_agents(LocalClusterSpec())
    # and the ports a Mesos agent offers by default (issue 15: serving replicas listen on them)
    assert [a.capacity for a in agents] == [Resources(cpus=2, mem=4096, disk=10000, ports=1001)] * 2
    assert [a.port_ranges for a in agents] == [((31000, 32000),)] * 2
    custom = local_agents(LocalClusterSpec(agents=({"hostname": "g", "gpus": 1, "attributes": {"zone": "a"}},)))
    assert custom[0].hostname == "g" and custom[0].capacity.gpus == 1 and custom[0].attributes == {"zone": "a"}
    named = local_agents(LocalClusterSpec(agents=({"ports": "[31000-31002, 31010-31010]"}, {"ports": "[]"})))
    assert [(a.port_ranges, a.capacity.ports) for a in named] == [(((31000, 31002), (31010, 31010)), 4), ((), 0)]


def test_models_that_fit_give_no_reasons(spec: JobSpec) -> None:
    assert unplaceable(spec.models, local_agents(spec.local_cluster)) == []
    assert unplaceable(spec.models, local_agents(spec.local_cluster), executors="per_model") == []
    check_job(spec)


def test_the_shared_executor_counts_against_every_task(spec: JobSpec) -> None:
    reserve = shared_executor_resources(list(spec.models))
    # A task that fits an agent alone but not beside the shared executor is unplaceable.
    room = 4096 - reserve.mem - WORKER_MEM_MB  # a task's prediction worker counts with it
    big = dataclasses.replace(spec.models[0], mem=room + 1)
    reasons = unplaceable([big, spec.models[1]], [agent("a1")])
    assert len(reasons) == 1
    assert reasons[0].startswith(f"models[0] (linear).mem = {room + 1:.2f}".rstrip("0").rstrip("."))
    assert "but the largest agent offers 4096 MB" in reasons[0] and "after the shared executor" in reasons[0]
    just_fits = dataclasses.replace(spec.models[0], mem=room)
    assert unplaceable([just_fits, spec.models[1]], [agent("a1")]) == []


def test_per_model_executors_count_only_their_own(spec: JobSpec) -> None:
    heavy = dataclasses.replace(spec.models[1], executor_mem=3000.0)
    light = dataclasses.replace(spec.models[0], mem=2000.0)
    agents = [agent("a1")]
    assert unplaceable([light, heavy], agents, executors="per_model") == []
    # Shared, the heavy model's executor sits beside the light model's tasks too.
    reasons = unplaceable([light, heavy], agents, executors="shared")
    assert [r.split(".")[0] for r in reasons] == ["models[0] (linear)"]


def test_each_resource_is_named_against_the_largest_agent(spec: JobSpec) -> None:
    model = spec.models[0]
    agents = [agent("small", cpus=1, mem=1024), agent("big", cpus=4, mem=2048)]
    assert unplaceable([dataclasses.replace(model, cpus=8)], agents, "per_model") == [
        "models[0] (linear).cpus = 8 cpus per task, but the largest agent offers 4 cpus"]  # executor cpus carved out
    assert unplaceable([dataclasses.replace(model, gpus=1)], agents, "per_model") == [
        "models[0] (linear).gpus = 1 gpus per task, but the largest agent offers 0 gpus"]
    assert unplaceable([dataclasses.replace(model, gpus=1)], [*agents, agent("g", gpus=2)], "per_model") == []


def test_a_combination_no_single_agent_offers(spec: JobSpec) -> None:
    model = dataclasses.replace(spec.models[0], cpus=1.5, mem=3000, executor_mem=100)
    agents = [agent("cpu-rich", cpus=8, mem=1024), agent("mem-rich", cpus=1, mem=8192)]
    [reason] = unplaceable([model], agents, "per_model")
    assert reason.startswith("models[0] (linear) needs cpus 1.5, mem 3132 on one agent (task + its executor), which "
                             "no agent offers at once (agents: cpu-rich cpus 8, mem 1024")


def test_attribute_constraints(spec: JobSpec) -> None:
    model = dataclasses.replace(spec.models[0], constraints=(AttributeEquals("zone", "b"),))
    agents = [agent("a1", zone="a"), agent("a2")]
    [reason] = unplaceable([model], agents)
    assert reason == ("models[0] (linear).constraints.attribute.zone = 'b', but no agent has it "
                      "(agents: a1 {'zone': 'a'}; a2 {})")
    assert unplaceable([model], [*agents, agent("b1", zone="b")]) == []
    # The constraint narrows the agents the resources are compared with.
    hungry = dataclasses.replace(model, cpus=3)
    [reason] = unplaceable([hungry], [agent("b1", zone="b"), agent("a9", cpus=16, zone="a")])
    assert reason.startswith("models[0] (linear).cpus = 3 cpus per task, but the largest agent its constraints allow "
                             "offers 2 cpus")


def test_check_job_names_the_file_and_every_model(spec: JobSpec) -> None:
    big = tuple(dataclasses.replace(m, mem=1_000_000) for m in spec.models)
    with pytest.raises(JobSpecError) as error:
        check_job(dataclasses.replace(spec, models=big))
    message = str(error.value)
    assert message.startswith(f"{spec.source}: models[0] (linear).mem = 1000000 MB per task, but the largest agent "
                              "offers 4096 MB (")
    assert "(and 1 more: models[1] (logistic).mem = 1000000 MB" in message and "\n" not in message
    external = dataclasses.replace(spec, models=big, framework=dataclasses.replace(spec.framework, master="m:5050"))
    check_job(external)  # an external master's agents are known only from its offers


# Data ------------------------------------------------------------------------------------------
def dataset_with(values: dict[str, list[float]]) -> Dataset:
    return Dataset(np.array(list(values.values()), dtype=np.float64).T.copy(), tuple(values), None)


def test_non_finite_columns_are_found_with_their_first_rows() -> None:
    data = dataset_with({"a": [1, 2, 3, 4], "b": [1, np.nan, np.inf, np.nan], "c": [1e308, 1e308, 1e308, 0],
                         "d": [-np.inf, 0, 0, 0]})
    found = {p.column: (p.first_nan, p.first_inf, p.inf_value) for p in non_finite_columns(data)}
    assert found == {"b": (1, 2, np.inf), "d": (None, 0, -np.inf)}  # c's sum overflows, but c is finite


def test_nan_is_refused_unless_every_model_taking_the_column_allows_it(spec: JobSpec) -> None:
    names = tuple(f"f{i}" for i in range(30))
    features = np.ones((5, 30))
    features[3, 7] = np.nan
    data = Dataset(features, names, None)
    everything: dict[str, tuple[str, ...] | None] = {"linear": None, "logistic": None}
    with pytest.raises(JobSpecError, match=r"test\.csv: column 'f7', data row 4: missing value \(NaN\), and "
                                           r"models\[0\] \(linear\) takes this column without allow_nan = true"):
        check_data(spec, data, everything)
    one_allows = dataclasses.replace(spec, models=(dataclasses.replace(spec.models[0], allow_nan=True),
                                                   spec.models[1]))
    with pytest.raises(JobSpecError, match=r"models\[1\] \(logistic\) takes this column"):
        check_data(one_allows, data, everything)
    # The refusing model does not take f7: accepted.
    check_data(one_allows, data, {"linear": None, "logistic": ("f0", "f1")})
    both = dataclasses.replace(spec, models=tuple(dataclasses.replace(m, allow_nan=True) for m in spec.models))
    check_data(both, data, everything)


def test_inf_is_never_accepted(spec: JobSpec) -> None:
    features = np.ones((3, 2))
    features[2, 1] = -np.inf
    data = Dataset(features, ("f0", "f1"), None)
    both = dataclasses.replace(spec, models=tuple(dataclasses.replace(m, allow_nan=True) for m in spec.models))
    with pytest.raises(JobSpecError, match=r"column 'f1', data row 3: -inf is not a finite number \(models\[0\] "
                                           r"\(linear\) takes this column; inf is never accepted\)"):
        check_data(both, data, {"linear": None, "logistic": None})
    check_data(both, data, {"linear": ("f0",), "logistic": ("f0",)})  # nobody reads f1


def test_an_allow_nan_model_takes_empty_csv_fields(demo_job: Path, tmp_path: Path) -> None:
    """The whole pre-launch path on real files: a HistGradientBoosting member (which accepts NaN)
    declared allow_nan, the other member restricted to columns without gaps."""
    directory = demo_job.parent
    rows = (directory / "test.csv").read_text().splitlines()
    cells = rows[4].split(",")
    cells[2] = ""
    rows[4] = ",".join(cells)
    (tmp_path / "gaps.csv").write_text("\n".join(rows) + "\n")
    train = load_dataset(dataclasses.replace(load_job(demo_job).data, path=directory / "train.csv"))
    joblib.dump(HistGradientBoostingRegressor(max_iter=5).fit(train.features, train.labels), tmp_path / "hgb.joblib")
    digest = hashlib.sha256((tmp_path / "hgb.joblib").read_bytes()).hexdigest()
    job = (directory / "job.toml").read_text().replace('path = "test.csv"', f'path = "{tmp_path / "gaps.csv"}"')
    job = job.replace(f'path = "linear.joblib"\nsha256 = "{load_job(demo_job).models[0].sha256}"',
                      f'path = "{tmp_path / "hgb.joblib"}"\nsha256 = "{digest}"\nallow_nan = true')
    job = job.replace("proba_class = 1", 'proba_class = 1\nfeatures = ["f0", "f1", "f3"]')
    job = job.replace('path = "logistic.joblib"', f'path = "{directory / "logistic.joblib"}"')
    (tmp_path / "job.toml").write_text(job.replace('output = "predictions.csv"', f'output = "{tmp_path}/p.csv"')
                                       .replace('report = "report.json"', ""))
    spec = load_job(tmp_path / "job.toml")
    dataset = load_dataset(spec.data)
    assert np.isnan(dataset.features[3, 2]) and np.isfinite(np.delete(dataset.features, 2, axis=1)).all()
    estimators = {m.name: joblib.load(m.path) for m in spec.models}
    features = member_features(spec, estimators, dataset.feature_names)
    check_data(spec, dataset, features)
    assert np.isfinite(estimators["linear"].predict(dataset.features)).all()  # it really takes the gaps
    spec_all = dataclasses.replace(spec, models=(spec.models[0], dataclasses.replace(spec.models[1], features=None)))
    with pytest.raises(JobSpecError, match=r"column 'f2', data row 4: missing value \(NaN\), and models\[1\] "
                                           r"\(logistic\) takes this column"):
        check_data(spec_all, dataset, member_features(spec_all, estimators, dataset.feature_names))


def test_model_spec_allow_nan_defaults_to_false(spec: JobSpec) -> None:
    assert not any(m.allow_nan for m in spec.models)
    assert ModelSpec.__dataclass_fields__["allow_nan"].default is False


def test_models_whose_tasks_leave_cores_idle_are_warned_about(spec: JobSpec) -> None:
    """cpus = 0.7 on 2 cpus: 2 tasks reserve 1.4; cpus = 1 (or 0.5) fills the agent, the
    executor's 0.01 cpus being carved out of its tasks' share."""
    model = spec.models[0]
    agents = [agent("a1", cpus=2), agent("a2", cpus=2), agent("big", cpus=8)]
    assert idle_cores([dataclasses.replace(model, cpus=0.7)], agents) == [
        "models[0] (linear).cpus = 0.7 per task: 2 task(s) at once on a1 and 1 more (2 cpus) reserve 1.4 of its "
        "2 cpus; cpus = 1 or 0.666 would use them all",
        "models[0] (linear).cpus = 0.7 per task: 11 task(s) at once on big (8 cpus) reserve 7.7 of its 8 cpus; "
        "cpus = 0.727 or 0.666 would use them all"]
    for cpus in (1.0, 0.5, 2.0, 0.25):
        assert idle_cores([dataclasses.replace(model, cpus=cpus)], agents) == [], cpus
        assert idle_cores([dataclasses.replace(model, cpus=cpus)], agents, "per_model") == [], cpus
    # The suggestions do fill the agent: 3 tasks of 0.666 fit on 2 cpus beside the executor.
    demands = JobDemands(dataclasses.replace(spec, models=(dataclasses.replace(model, cpus=0.666),)))
    assert demands.agent_reserve.cpus + 3 * demands.task_resources["linear"].cpus <= 2
