"""Deployments for the gateway's tests: fitted models behind real replica servers, and a gateway
routing to them (built as the controller builds it: a ReplicaTable and the job's combiner)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

sys.path.insert(0, str(Path(__file__).parent))

from serving_helpers import ModelReplica  # noqa: E402

from framework.ensemble import MemberSpec  # noqa: E402
from framework.serving.combine import CombinerFactory, combiner_factory  # noqa: E402
from framework.serving.gateway import Gateway, GatewayOptions  # noqa: E402
from framework.serving.routing import Replica, ReplicaTable  # noqa: E402


@dataclass(frozen=True)
class Cancer:
    X: np.ndarray
    y: np.ndarray  # class names (strings): labels travel through JSON as strings
    columns: tuple[str, ...]


@pytest.fixture(scope="session")
def cancer() -> Cancer:
    data = load_breast_cancer()
    return Cancer(data.data, np.asarray(data.target_names)[data.target], tuple(str(c) for c in data.feature_names))


def classifiers() -> dict[str, Any]:
    """Unfitted classifiers; those of the batching tests give each row the same bits whatever
    the batch (trees, naive Bayes)."""
    return {
        "tree": DecisionTreeClassifier(max_depth=4, random_state=0),
        "forest": RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0),
        "nb": GaussianNB(),
        "logit": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
    }


@pytest.fixture(scope="session")
def fitted(cancer: Cancer) -> dict[str, Any]:
    return {name: clone(est).fit(cancer.X, cancer.y) for name, est in classifiers().items()}


def spec_for(name: str, est: Any, output: str, weight: float = 1.0, features: Sequence[str] | None = None
             ) -> MemberSpec:
    """A MemberSpec as the framework builds it from a model's metadata."""
    classes = tuple(est.classes_) if hasattr(est, "classes_") else None
    return MemberSpec(name=name, kind="classifier" if classes else "regressor", output=output,  # type: ignore[arg-type]
                      weight=weight, classes=classes, features=tuple(features) if features is not None else None)


@dataclass
class Deployment:
    gateway: Gateway
    table: ReplicaTable
    replicas: dict[str, list[ModelReplica]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.gateway.url

    def replica(self, member: str, index: int = 0) -> ModelReplica:
        return self.replicas[member][index]


class Deployer:
    """Starts replicas and gateways; stops them all at the end of the test."""

    def __init__(self) -> None:
        self.started: list[Any] = []

    def __call__(self, members: Sequence[tuple[MemberSpec, Any, int]], integration: str | CombinerFactory,
                 columns: Sequence[str], min_members: int | None = None, **options: Any) -> Deployment:
        """``members``: (spec, fitted model, number of replicas); ``integration``: a method's name,
        or the combiner factory (a method with parameters: stacking's fitted model)."""
        table = ReplicaTable()
        replicas: dict[str, list[ModelReplica]] = {}
        for spec, model, count in members:
            for i in range(count):
                replica = ModelReplica(model, spec.output, name=spec.name).start()
                self.started.append(replica)
                replicas.setdefault(spec.name, []).append(replica)
                table.add(Replica(f"{spec.name}-{i}", spec.name, replica.url, f"agent-{i}", f"sha-{spec.name}"))
        gateway = Gateway(GatewayOptions(**options), [s for s, _m, _c in members], table,
                          combiner_factory(integration) if isinstance(integration, str) else integration,
                          columns=columns, min_members=min_members)
        gateway.start("127.0.0.1", 0)
        self.started.append(gateway)
        return Deployment(gateway, table, replicas)

    def stop(self) -> None:
        for thing in reversed(self.started):
            if isinstance(thing, ModelReplica):
                thing.release()
        for thing in reversed(self.started):
            thing.stop()


@pytest.fixture(scope="module")
def batch_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[list[float]], list[float]]:
    """The founding example run as a batch job (``run``): its rows and its integrated predictions."""
    from deploy_helpers import held_out_rows, serve_job
    from framework.job import JobRunner
    from framework.jobspec import load_job

    job = serve_job(tmp_path_factory.mktemp("batch"))
    outcome = JobRunner(load_job(job)).run()
    columns, rows = held_out_rows(job)
    with outcome.output.open() as handle:
        next(handle)
        expected = [float(line.strip()) for line in handle]
    return columns, rows, expected


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Any]:
    """An embedded cluster of two agents (2 cpus, ports) run apart from ``serve``: a separate
    master that a killed ``serve`` comes back to, or that fails over under it."""
    from framework.localmesos import AgentSpec, LocalCluster

    agents = [AgentSpec(hostname=f"agent-{i}", resources={"cpus": 2, "mem": 4096, "disk": 10000, "gpus": 0,
                                                          "ports": "[31000-32000]"}) for i in (1, 2)]
    cluster = LocalCluster(agents=agents, work_dir=tmp_path / "cluster", allocation_interval=0.1,
                           executor_shutdown_grace_period=1.0, command_kill_grace_period=1.0)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def deploy() -> Iterator[Deployer]:
    deployer = Deployer()
    try:
        yield deployer
    finally:
        deployer.stop()
