"""Runs one ensemble job: prepare artifacts, drive the pymesos scheduler, integrate, report.

This is the wiring between the pure core (packer, combiners, tracker) and the edges (pymesos
driver, artifact server, optional embedded cluster).  The main thread owns integration; the
pymesos IO thread only reports through ``EnsembleScheduler.events``.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import math
import queue
import shutil
import sys
import tarfile
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import executor as executor_package
from executor.protocol import (RemoteFile, ResultEnvelope, TaskPayload, TaskUsage, array_to_npy, npy_to_array,
                               sha256_hex)
from framework import ensemble
from framework.artifacts import ArtifactServer
from framework.dataset import Dataset, Shard, cut_shards, load_dataset, write_atomic
from framework.errors import JobFailed, JobSpecError
from framework.inspection import inspect_job_models
from framework.jobspec import JobSpec, ModelSpec
from framework.messages import ExecutorLaunch, executor_info, framework_info, task_info
from framework.offers import PoolAllocator
from framework.packing import (
    Agent,
    PackingOptions,
    Resources,
    TaskDemand,
)
from framework.balancing import SpeculationPolicy
from framework.scheduler import EnsembleScheduler, OfferPolicy, SchedulerEvent
from framework.tasks import Tracker, WorkItem

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_SECONDS = 30.0
"""How long to wait for the master to accept the framework's SUBSCRIBE."""

MAX_EXECUTOR_THREADS = 64
"""Threads of one executor: as many as its smallest tasks fit in the agent's offer, at most this
(a shared executor on a large agent runs every model's tasks at once)."""

SPECULATION_CHECK_SECONDS = 0.5
"""How often the job looks for stragglers that deserve a backup copy."""

EXECUTOR_BASE_MEM_MB = 96.0
"""Memory of an idle executor process with numpy, scikit-learn and pymesos imported."""


@dataclass
class JobOutcome:
    """What a finished job produced, for the command line's summary."""

    output: Path
    rows: int
    members_used: tuple[str, ...]
    members_missing: dict[str, str]
    wall_seconds: float
    time_to_first_running: float | None
    tasks: int
    task_attempts: int
    agents_used: int
    executors_launched: int = 0
    backups_launched: int = 0
    """Speculative copies of stragglers (see ``framework.balancing``)."""
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per member, what its tasks cost as the executors measured them (``Measurements.summary``)."""
    report: dict[str, Any] | None = None
    report_text: str | None = None


SHARED_EXECUTOR = "ensemble"
"""Executor key (and executor id prefix) of the one executor per agent that serves every model."""


def executor_memory(model: ModelSpec) -> float:
    """The executor's memory: the configured value, or an estimate from the model file's size."""
    if model.executor_mem > 0:
        return model.executor_mem
    return EXECUTOR_BASE_MEM_MB + 3.0 * model.path.stat().st_size / 2**20


def shared_executor_resources(models: list[ModelSpec]) -> Resources:
    """One executor holding every model: one base process plus each model's loaded size."""
    extra = sum(max(0.0, executor_memory(m) - EXECUTOR_BASE_MEM_MB) for m in models)
    return Resources(cpus=max(m.executor_cpus for m in models), mem=EXECUTOR_BASE_MEM_MB + extra)


def build_executor_package(directory: Path) -> Path:
    """A tar.gz of the ``executor`` package, fetched and extracted by the Mesos fetcher."""
    source = Path(executor_package.__file__).parent
    target = directory / "mesos-ensemble-executor.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(source.glob("*.py")):
            archive.add(path, arcname=f"executor/{path.name}")
    write_atomic(target, buffer.getvalue())
    return target


class JobCatalog:
    """Implements the scheduler's ``WorkCatalog`` for one job: demands, TaskInfos, ExecutorInfos."""

    def __init__(self, spec: JobSpec, server: ArtifactServer, shards: dict[str, list[Shard]],
                 python: str, executor_package_url: str, columns: dict[str, list[int]] | None = None) -> None:
        self.spec, self.server, self.shards = spec, server, shards
        self.columns = columns or {}
        self.python, self.executor_package_url = python, executor_package_url
        self.labels: RemoteFile | None = None
        self.folds: list[tuple[list[int], list[int]]] = []
        self.methods: dict[str, str] = {}
        self.model_urls = {m.name: server.publish(f"{m.name}.{m.format}", m.path) for m in spec.models}
        self.shard_urls = {
            (kind, s.index): server.publish_buffer(f"{kind}-{s.index:05d}.npy", s.npy_parts)
            for kind, shard_list in shards.items() for s in shard_list
        }
        # Per model, computed once (demands are built for every pending task in every offer round).
        self.task_resources = {m.name: Resources(cpus=m.cpus, mem=m.mem, disk=m.disk, gpus=m.gpus) for m in spec.models}
        self.shared = spec.framework.executors == "shared"
        self.isolated: set[str] = set()
        """Models taken out of the shared executor (after it died running them)."""
        # The packer sees no per-model executor for shared models; the scheduler keeps this much
        # free on every agent that has no executor of ours yet (``agent_reserve``).
        self.agent_reserve = shared_executor_resources(list(spec.models)) if self.shared else Resources()
        self.executor_resources = {m.name: Resources(cpus=m.executor_cpus, mem=executor_memory(m)) for m in spec.models}
        if self.shared:
            self.executor_resources[SHARED_EXECUTOR] = self.agent_reserve

    def executor_key(self, model: str) -> str:
        """Which executor runs this model's tasks on an agent: the shared one or the model's own."""
        return SHARED_EXECUTOR if self.shared and model not in self.isolated else model

    def executor_models(self, key: str) -> frozenset[str]:
        """The models an executor serves (loads on demand)."""
        if key == SHARED_EXECUTOR and self.shared:
            return frozenset(m.name for m in self.spec.models if m.name not in self.isolated)
        return frozenset({key})

    def isolate(self, model: str) -> None:
        """From now on, run ``model`` in executors of its own: a shared executor died while running
        it, and whichever member caused that must not take the others down again."""
        if self.shared and model not in self.isolated:
            self.isolated.add(model)
            log.warning("model %s now runs in executors of its own (a shared executor died running it)", model)

    def add_training(self, shards: list[Shard], labels: RemoteFile, folds: list[tuple[list[int], list[int]]],
                     methods: dict[str, str]) -> None:
        """Stacking: serve the labelled training rows and remember the folds and stack methods."""
        self.shards["train"] = shards
        self.shard_urls.update({("train", s.index): self.server.publish_buffer(f"train-{s.index:05d}.npy", s.npy_parts)
                                for s in shards})
        self.labels, self.folds, self.methods = labels, folds, methods

    def demand(self, item: WorkItem) -> TaskDemand:
        return TaskDemand(
            task_id=item.key,
            model=item.model,
            resources=self.task_resources[item.model],
            executor=(Resources() if self.executor_key(item.model) == SHARED_EXECUTOR
                      else self.executor_resources[item.model]),
            constraints=self.spec.model(item.model).constraints,
            duration=self.spec.model(item.model).duration,
        )

    def executor_info(self, key: str, agent: Agent, allocator: PoolAllocator, generation: int) -> dict[str, Any]:
        """The ExecutorInfo of executor ``key`` on ``agent``, its resources taken from the offer."""
        served = sorted(self.executor_models(key))
        smallest_task = min(self.spec.model(name).cpus for name in served)
        resources = self.executor_resources[key]
        workers = max(1, int((agent.capacity.cpus + self.agent_reserve.cpus) // max(smallest_task, 1e-9)))
        launch = ExecutorLaunch(
            executor_id=f"{key}.g{generation}",
            serves="all models" if key == SHARED_EXECUTOR and self.shared else key,
            python=self.python,
            executor_package_url=self.executor_package_url,
            workers=min(workers, MAX_EXECUTOR_THREADS),
            resources=tuple(allocator.take(resources)),
        )
        return executor_info(launch)

    def task_info(self, item: WorkItem, task_id: str, agent: Agent, allocator: PoolAllocator,
                  executor: dict[str, Any]) -> dict[str, Any]:
        model = self.spec.model(item.model)
        kind = "train" if item.operation == "cv_fit_predict" else "data"
        shard = self.shards[kind][item.shard]
        train_rows, test_rows = self.folds[item.fold] if item.fold is not None else ([], [])
        payload = TaskPayload(
            task_id=task_id,
            operation=item.operation,  # type: ignore[arg-type]
            model_name=model.name,
            model=RemoteFile(self.model_urls[model.name], model.sha256),
            model_file=f"{model.name}.{model.format}",
            model_format=model.format,
            trusted_types=list(model.trusted_types),
            method=self.methods.get(model.name, model.output),
            shard=RemoteFile(self.shard_urls[(kind, shard.index)], shard.sha256),
            shard_index=shard.index,
            columns=self.columns.get(model.name, []),
            result_upload_url=self.server.expect_result(task_id),
            labels=self.labels if item.operation == "cv_fit_predict" else None,
            train_rows=list(train_rows),
            test_rows=list(test_rows),
        )
        name = f"{model.name} fold {item.fold}" if item.fold is not None else f"{model.name} shard {shard.index}"
        resources = allocator.take(self.task_resources[model.name])
        return task_info(task_id, name, agent.agent_id, resources, executor, payload.to_json())


def decode_result(server: ArtifactServer, task_id: str, data_b64: str | None) -> tuple[np.ndarray, TaskUsage | None]:
    """Turn a terminal update's data into the task's output array (checking its sha256) and
    what the task cost, as its executor measured it."""
    if not data_b64:
        raise ValueError("TASK_FINISHED carried no result data")
    envelope = ResultEnvelope.from_json(base64.b64decode(data_b64))
    if envelope.kind == "inline":
        npy = base64.b64decode(envelope.npy_b64 or "")
    else:
        path = server.result_path(task_id)
        if not path.is_file():
            raise ValueError(f"uploaded result for {task_id} is missing")
        npy = path.read_bytes()
        path.unlink()
    if sha256_hex(npy) != envelope.sha256 or len(npy) != envelope.nbytes:
        raise ValueError(f"result of {task_id} failed its sha256/size check")
    return npy_to_array(npy), envelope.usage


def final_estimator_for(name: str, kind: str) -> Any:
    """The stacking final estimator named in the job file (``auto``: scikit-learn's default)."""
    from sklearn.linear_model import LinearRegression, LogisticRegression, RidgeCV

    choices = {"logistic_regression": LogisticRegression, "ridge": RidgeCV, "linear_regression": LinearRegression}
    return None if name == "auto" else choices[name]()


def member_features(spec: JobSpec, estimators: dict[str, Any],
                    data_features: tuple[str, ...]) -> dict[str, tuple[str, ...] | None]:
    """The data columns each member takes (None: all of them, in the data's order).

    A model's ``features`` if given (each must be a feature column of the data); else the
    columns it was fitted on (``feature_names_in_``, as a DataFrame fit records them) when the
    data has them all; else every feature column.
    """
    chosen: dict[str, tuple[str, ...] | None] = {}
    for index, model in enumerate(spec.models):
        if model.features is not None:
            unknown = [f for f in model.features if f not in data_features]
            if unknown:
                raise JobSpecError(f"{spec.source}: models[{index}] ({model.name}).features names columns that are not "
                                   f"feature columns of {spec.data.path.name}: {unknown[:10]} (it has "
                                   f"{', '.join(data_features[:20])}{', ...' if len(data_features) > 20 else ''})")
            chosen[model.name] = model.features
            continue
        fitted = getattr(estimators[model.name], "feature_names_in_", None)
        names = tuple(str(f) for f in fitted) if fitted is not None else None
        usable = names is not None and names != data_features and set(names) <= set(data_features)
        chosen[model.name] = names if usable else None
    return chosen


def member_specs(spec: JobSpec, estimators: dict[str, Any],
                 features: dict[str, tuple[str, ...] | None] | None = None) -> list[ensemble.MemberSpec]:
    return [
        ensemble.MemberSpec(
            name=m.name, kind=m.kind, output=m.output, weight=m.weight, proba_class=m.proba_class,  # type: ignore[arg-type]
            classes=tuple(getattr(estimators[m.name], "classes_", ())) or None,
            features=(features or {}).get(m.name),
        )
        for m in spec.models
    ]


def member_columns(members: list[ensemble.MemberSpec], data_features: tuple[str, ...]) -> dict[str, list[int]]:
    """Per member, the indexes of its columns in the shards (empty: all columns)."""
    return {m.name: [data_features.index(f) for f in m.features] if m.features is not None else [] for m in members}


DriverFactory = Callable[[Any, dict[str, Any], str, "str | None", "str | None"], Any]


def pymesos_driver(scheduler: Any, info: dict[str, Any], master: str, principal: str | None, secret: str | None) -> Any:
    """The real driver: ``pymesos.MesosSchedulerDriver`` with addict callbacks."""
    from pymesos import MesosSchedulerDriver

    return MesosSchedulerDriver(scheduler, info, master, use_addict=True, principal=principal, secret=secret)


def prepare(spec: JobSpec) -> tuple[Dataset, list[ensemble.MemberSpec], dict[str, Any]]:
    """Load the data and the models and check, before anything launches, that they fit together.

    Returns the data, the members' specs and, by model name, each model's metadata (a
    ``ModelMetadata``, which stands in for the estimator: models are never loaded here)."""
    import sklearn

    dataset = load_dataset(spec.data)
    estimators = inspect_job_models(spec)
    members = member_specs(spec, estimators, member_features(spec, estimators, tuple(dataset.feature_names)))
    ensemble.check_compatibility(estimators, members, dataset.feature_names, spec.integration, sklearn.__version__,
                                 recorded_versions={name: m.sklearn_version for name, m in estimators.items()})
    return dataset, members, estimators


def validate_job(spec: JobSpec) -> str:
    """Check everything ``run`` would check before launching; return a short description."""
    dataset, members, _estimators = prepare(spec)
    shards = math.ceil(dataset.features.shape[0] / spec.data.rows_per_shard)
    lines = [f"{spec.source}: OK",
             f"  data: {dataset.features.shape[0]} rows x {dataset.features.shape[1]} features"
             f"{', label ' + repr(spec.data.label) if spec.data.label else ''}; {shards} shards",
             f"  integration: {spec.integration}; output: {spec.output}{' (explained)' if spec.explain else ''}",
             f"  executors: {spec.framework.executors}; speculation_factor {spec.framework.speculation_factor:g}; "
             f"master {spec.framework.master}"]
    lines += [f"  model {m.name}: {m.kind}, {m.output}, weight {m.weight}"
              + (f"; columns {', '.join(m.features)}" if m.features is not None else "") for m in members]
    return "\n".join(lines)


class JobRunner:
    """Runs one :class:`JobSpec` against a Mesos master (or the embedded local cluster)."""

    def __init__(self, spec: JobSpec, work_dir: Path | None = None, progress: Any = None,
                 driver_factory: DriverFactory | None = None) -> None:
        self.spec = spec
        self.work_dir = work_dir
        self.progress = progress or (lambda message: None)
        self.driver_factory = driver_factory or pymesos_driver

    # The whole job -------------------------------------------------------------------------
    def run(self) -> JobOutcome:
        started = time.monotonic()
        spec = self.spec
        dataset, members, estimators = prepare(spec)
        with ExitStack() as stack:
            work_dir = self.work_dir or Path(tempfile.mkdtemp(prefix="mesos-ensemble-"))
            if self.work_dir is None:
                stack.callback(shutil.rmtree, work_dir, True)
            master, python = self._master(stack, work_dir)
            server = ArtifactServer(work_dir / "results", bind=self._bind_host(master),
                                    port=spec.framework.artifact_port,
                                    advertise_host=spec.framework.artifact_host or self._advertise_host(master)).start()
            stack.callback(server.stop)
            shards = {"data": cut_shards(dataset.features, spec.data.rows_per_shard)}
            package_url = server.publish_public("mesos-ensemble-executor.tar.gz", build_executor_package(work_dir))
            catalog = JobCatalog(spec, server, shards, python, package_url,
                                 member_columns(members, tuple(dataset.feature_names)))
            tracker = Tracker([], spec.framework.max_retries)
            scheduler = self._scheduler(tracker, catalog)
            self.run_started = time.monotonic()
            driver = self._start_driver(scheduler, master, stack)
            self.progress(f"framework subscribed to {master}")

            if spec.stacking is not None and spec.integration == "stacking":
                members, combiner = self._fit_stacking(scheduler, driver, server, catalog, members, estimators,
                                                       tuple(dataset.feature_names),
                                                       work_dir)
            else:
                combiner = ensemble.make_combiner(spec.integration, members)

            evaluation_dir = work_dir / "member-outputs"
            integrator = ensemble.StreamingIntegrator(
                combiner, members, [s.rows for s in shards["data"]], spec.output,
                min_members=spec.min_members, keep_member_outputs_dir=evaluation_dir, explain=spec.explain,
            )
            stack.enter_context(integrator)
            if getattr(combiner, "inputs", None) and ensemble.FEATURES_KEY in combiner.inputs:
                for shard in shards["data"]:
                    integrator.add(ensemble.FEATURES_KEY, shard.index, dataset.features[shard.start:shard.stop])
            items = [WorkItem(f"{m.name}.s{s.index:05d}", m.name, s.index) for m in spec.models for s in shards["data"]]
            self.progress(f"{len(items)} prediction tasks ({len(spec.models)} models x {len(shards['data'])} shards)")
            scheduler.add_work(driver, items)
            self._drive(scheduler, driver, server,
                        on_result=lambda item, output: integrator.add(item.model, item.shard, output),
                        on_member_failed=integrator.member_failed)
            result = integrator.finish()
            all_items = list(tracker.items.values())
            outcome = JobOutcome(
                output=result.output_path, rows=result.rows, members_used=tuple(result.members_used),
                members_missing=dict(result.members_missing), wall_seconds=time.monotonic() - started,
                time_to_first_running=(scheduler.first_running_at - started) if scheduler.first_running_at else None,
                tasks=len(all_items), task_attempts=sum(i.attempts for i in all_items),
                agents_used=len({i.agent_id for i in all_items if i.agent_id}),
                executors_launched=scheduler.executors_launched,
                backups_launched=scheduler.backups_launched,
                usage=scheduler.measurements.summary(),
            )
            if dataset.labels is not None:
                outcome.report = integrator.evaluate(dataset.labels)
                outcome.report_text = ensemble.format_report(outcome.report)
                outcome.report["usage"] = outcome.usage
                if spec.report is not None:
                    ensemble.write_report_json(outcome.report, spec.report)
            return outcome

    def _fit_stacking(self, scheduler: EnsembleScheduler, driver: Any, server: ArtifactServer, catalog: JobCatalog,
                      members: list[ensemble.MemberSpec], estimators: dict[str, Any], data_features: tuple[str, ...],
                      work_dir: Path) -> tuple[list[ensemble.MemberSpec], Any]:
        """Stacking, phase 1: the members' cross-validation fits run as Mesos tasks; then the final
        estimator is fitted here on their out-of-fold predictions (as ``Stacking*.fit`` does)."""
        stacking = self.spec.stacking
        assert stacking is not None
        train = load_dataset(stacking.train)
        if tuple(train.feature_names) != data_features:
            # Members' column indexes and passthrough both assume the data's columns.
            raise JobSpecError(f"{self.spec.source}: stacking.train: {stacking.train.path.name} has feature columns "
                               f"{list(train.feature_names)[:20]}, the data has {list(data_features)[:20]}; "
                               "they must be the same, in the same order")
        kind = "classifier" if all(m.kind == "classifier" for m in members) else "regressor"
        plan = ensemble.plan_folds(train.features, train.labels, kind, stacking.cv)
        methods = {name: ensemble.resolve_stack_method(name, est, stacking.stack_method, kind)
                   for name, est in estimators.items()}
        train_shards = cut_shards(train.features, train.features.shape[0])
        labels_path = work_dir / "train" / "labels.npy"
        labels_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(labels_path, array_to_npy(np.asarray(plan.y_fit)))
        catalog.add_training(train_shards, RemoteFile(server.publish("labels.npy", labels_path),
                                                      sha256_hex(labels_path.read_bytes())),
                             [(tr.tolist(), te.tolist()) for tr, te in plan.folds], methods)
        items = [WorkItem(f"{m.name}.fold{k}", m.name, 0, operation="cv_fit_predict", fold=k)
                 for m in self.spec.models for k in range(len(plan.folds))]
        fold_outputs: dict[tuple[str, int], np.ndarray] = {}
        self.progress(f"stacking: {len(items)} cross-validation tasks ({len(members)} models x {len(plan.folds)} folds)")
        scheduler.add_work(driver, items)
        self._drive(scheduler, driver, server,
                    on_result=lambda item, output: fold_outputs.__setitem__((item.model, item.fold or 0), output),
                    on_member_failed=None)
        names = [m.name for m in self.spec.models]
        out_of_fold = [ensemble.assemble_out_of_fold([fold_outputs[(n, k)] for k in range(len(plan.folds))],
                                                     plan, methods[n]) for n in names]
        n_classes = None if plan.classes is None else len(plan.classes)
        meta = ensemble.stack_features(out_of_fold, [methods[n] for n in names], n_classes,
                                       train.features if stacking.passthrough else None)
        final = ensemble.fit_final_estimator(meta, plan, kind, final_estimator_for(stacking.final_estimator, kind))
        fitted = ensemble.FittedStacking(kind=kind, members=tuple(names), stack_methods=tuple(methods[n] for n in names),
                                         classes=plan.classes, passthrough=stacking.passthrough, final_estimator=final)
        if stacking.save_to is not None:
            ensemble.save_stacking(fitted, stacking.save_to)
        stacked_members = [dataclasses.replace(m, output=methods[m.name]) for m in members]
        return stacked_members, ensemble.make_combiner("stacking", stacked_members, model=fitted)

    # Pieces ------------------------------------------------------------------------------
    def _master(self, stack: ExitStack, work_dir: Path) -> tuple[str, str]:
        settings = self.spec.framework
        if settings.master != "local" or self.driver_factory is not pymesos_driver:
            # Agents on this machine (a loopback master) can run this very interpreter.
            default_python = sys.executable if self._advertise_host(settings.master) else "python3"
            return settings.master, settings.executor_python or default_python
        from framework.localmesos import AgentSpec, LocalCluster

        agents = [
            AgentSpec(hostname=a.get("hostname", f"agent-{i + 1}"),
                      resources={k: float(a.get(k, d)) for k, d in (("cpus", 2), ("mem", 4096), ("disk", 10000), ("gpus", 0))},
                      attributes=dict(a.get("attributes", {})))
            for i, a in enumerate(self.spec.local_cluster.agents or [{}, {}])
        ]
        credentials = {settings.principal: settings.secret} if settings.principal and settings.secret else None
        cluster = LocalCluster(agents=agents, work_dir=work_dir / "cluster", credentials=credentials,
                               keep_sandboxes=self.spec.local_cluster.keep_sandboxes)
        cluster.start()
        stack.callback(cluster.stop)
        return cluster.master_address, settings.executor_python or sys.executable

    @staticmethod
    def _bind_host(master: str) -> str:
        host = master.split(":")[0]
        return "127.0.0.1" if host in ("127.0.0.1", "localhost") else "0.0.0.0"

    @staticmethod
    def _advertise_host(master: str) -> str | None:
        host = master.split(":")[0]
        return "127.0.0.1" if host in ("127.0.0.1", "localhost") else None

    def _scheduler(self, tracker: Tracker, catalog: JobCatalog) -> EnsembleScheduler:
        settings = self.spec.framework
        return EnsembleScheduler(
            tracker, catalog,
            self.spec.pricing,
            self.spec.cost_model,
            PackingOptions(time_budget_s=settings.packing_budget_ms / 1000.0),
            OfferPolicy(settings.refuse_seconds, settings.never_fits_refuse_seconds, settings.role),
            SpeculationPolicy(factor=settings.speculation_factor),
        )

    def _start_driver(self, scheduler: EnsembleScheduler, master: str, stack: ExitStack) -> Any:
        settings = self.spec.framework
        self.master = master
        info = framework_info(settings.name, settings.user, settings.role, settings.failover_timeout, settings.principal,
                              gpus=any(m.gpus > 0 for m in self.spec.models))
        driver = self.driver_factory(scheduler, info, master, settings.principal, settings.secret)
        driver.start()
        # At the end the framework is torn down (stop(failover=False)): every executor goes away.
        stack.callback(driver.join)
        stack.callback(driver.stop)
        stack.callback(setattr, scheduler, "stopping", True)
        return driver

    def _drive(self, scheduler: EnsembleScheduler, driver: Any, server: ArtifactServer,
               on_result: Callable[[WorkItem, np.ndarray], None],
               on_member_failed: Callable[[str, str], None] | None) -> None:
        """Wait until every work item is settled, handing each result to ``on_result`` as it arrives."""
        settings = self.spec.framework
        deadline = self.run_started + settings.timeout_seconds
        tracker = scheduler.tracker
        last_speculation_check = time.monotonic()
        while True:
            with scheduler.lock:
                if tracker.all_settled() and scheduler.events.empty():
                    return
            now = time.monotonic()
            if now > deadline:
                raise JobFailed(f"job timed out after {settings.timeout_seconds:.0f} s; task states: {tracker.counts()}")
            if scheduler.framework_id is None and now - self.run_started > SUBSCRIBE_TIMEOUT_SECONDS:
                raise JobFailed(f"could not subscribe to the Mesos master at {self.master} within "
                                f"{SUBSCRIBE_TIMEOUT_SECONDS:.0f} s (is it running and reachable?)")
            if now - last_speculation_check >= SPECULATION_CHECK_SECONDS:
                last_speculation_check = now
                scheduler.speculate(driver)
            try:
                event = scheduler.events.get(timeout=SPECULATION_CHECK_SECONDS)
            except queue.Empty:
                continue
            self._handle(event, scheduler, driver, server, on_result, on_member_failed)

    def _handle(self, event: SchedulerEvent, scheduler: EnsembleScheduler, driver: Any, server: ArtifactServer,
                on_result: Callable[[WorkItem, np.ndarray], None],
                on_member_failed: Callable[[str, str], None] | None) -> None:
        if event.kind == "fatal":
            raise JobFailed(event.detail)
        item = event.item
        assert item is not None
        if event.kind == "finished":
            try:
                output, usage = decode_result(server, item.task_id or "", event.data)
            except ValueError as error:
                scheduler.retry(driver, item, str(error))
                return
            if usage is not None:
                scheduler.record_usage(item, usage.seconds, usage.cpu_seconds)
            on_result(item, output)
            self.progress(f"done {item.key}")
        elif event.kind == "gave_up":
            failures = "; ".join(item.failures[-3:])
            scheduler.cancel_model(driver, item.model)
            if on_member_failed is None or self.spec.min_members is None:
                raise JobFailed(f"model {item.model} failed on {item.key} after {item.attempts} attempts: {failures}")
            on_member_failed(item.model, failures)
            log.warning("member %s dropped: %s", item.model, failures)
