"""Fault-injection fixtures: an external embedded cluster the test can hurt, the demo job made of
members whose tasks the test controls (``slowmodels.pause``), and the fault-free reference."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any, Callable, Iterator

import joblib
import numpy as np
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from framework.localmesos import AgentSpec, LocalCluster
import cloudpickle

from tests.faults import slowmodels
from tests.faults.slowmodels import pause


class ByValue:
    """Pickles as ``slowmodels.pause``: imported where the test package is importable (the
    framework's inspection subprocess, which pickles the model again to size it), else rebuilt
    by value with cloudpickle (the executor, whose path is only its sandbox)."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        cloudpickle.register_pickle_by_value(slowmodels)
        try:
            payload = cloudpickle.dumps(self.function)
        finally:
            cloudpickle.unregister_pickle_by_value(slowmodels)
        source = ("try:\n    from tests.faults.slowmodels import pause as result\n"
                  f"except ImportError:\n    import pickle\n    result = pickle.loads({payload!r})\n")
        return eval, (f"[exec({source!r}, g := {{}}), g['result']][1]",)


FAST = dict(allocation_interval=0.1, status_update_retry_interval=2.0, executor_shutdown_grace_period=1.0,
            command_kill_grace_period=1.0, heartbeat_interval=15.0)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Started clusters of ``agents`` 2-cpu agents, stopped after the test."""
    clusters: list[LocalCluster] = []

    def factory(agents: int = 2, **options: Any) -> LocalCluster:
        specs = [AgentSpec(hostname=f"agent-{i + 1}", resources={"cpus": 2, "mem": 4096, "disk": 10000, "gpus": 0})
                 for i in range(agents)]
        cluster = LocalCluster(agents=specs, work_dir=tmp_path / f"cluster{len(clusters)}", **{**FAST, **options})
        cluster.start()
        clusters.append(cluster)
        return cluster

    yield factory
    for cluster in clusters:
        cluster.stop()


def controlled_job(demo: Path, control: Path, seconds: float, extra_framework: str = "") -> Path:
    """The demo job whose members first pass each shard through ``pause`` (``seconds`` each)."""
    control.mkdir(parents=True, exist_ok=True)
    text = demo.read_text()
    for name in ("linear", "logistic"):
        inner = joblib.load(demo.parent / f"{name}.joblib")
        step = FunctionTransformer(ByValue(pause), kw_args={"directory": str(control), "seconds": seconds})
        step.fit(train_features(demo))  # stateless; fitted so that the pipeline knows its n_features_in_
        path = demo.parent / f"{name}-controlled.joblib"
        joblib.dump(Pipeline([("pause", step), ("model", inner)]), path)
        old = hashlib.sha256((demo.parent / f"{name}.joblib").read_bytes()).hexdigest()
        text = text.replace(f'"{name}.joblib"', f'"{name}-controlled.joblib"')
        text = text.replace(old, hashlib.sha256(path.read_bytes()).hexdigest())
    text = text.replace('name = "mesos-ensemble-demo"', f'name = "mesos-ensemble-demo"\n{extra_framework}')
    job = demo.parent / "controlled.toml"
    job.write_text(text)
    return job


def train_features(demo: Path) -> "np.ndarray":
    with (demo.parent / "train.csv").open() as handle:
        return np.array(list(csv.reader(handle))[1:], dtype=float)[:, :-1]


def shard_first_values(demo: Path, rows_per_shard: int) -> list[float]:
    """The first feature of each shard's first row (how ``pause`` recognises a shard)."""
    with (demo.parent / "test.csv").open() as handle:
        rows = list(csv.reader(handle))[1:]
    return [float(rows[i][0]) for i in range(0, len(rows), rows_per_shard)]


def started(control: Path) -> list[int]:
    """Executor pids that began computing a task, one entry per task."""
    return [int(p.name.split("-")[1]) for p in control.glob("started-*")]
