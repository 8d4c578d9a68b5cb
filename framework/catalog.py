"""The job's catalog of work, as the scheduler sees it (its ``WorkCatalog``): each item's demand,
the executors' resources (configured or estimated from the model files), and the TaskInfo and
ExecutorInfo of a launch (built by ``framework.translator``)."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from executor.protocol import RemoteFile, ShardPart, TaskPayload
from framework import predict_modes
from framework.artifacts import ArtifactServer
from framework.dataset import Shard, text_kind
from framework.jobspec import JobSpec, ModelSpec
from framework.packing import Agent, Resources, TaskDemand
from framework.sources import SourceShards
from framework.tasks import WorkItem
from framework.translator import (ExecutorLaunch, Message, PoolAllocator, bundle_info, executor_id, executor_info,
                                  task_info)

log = logging.getLogger(__name__)

MAX_EXECUTOR_THREADS = 64
"""Threads of one executor: as many as its smallest tasks fit in the agent's offer, at most this
(a shared executor on a large agent runs every model's tasks at once)."""

EXECUTOR_BASE_MEM_MB = 96.0
"""Memory of an idle executor process with numpy, scikit-learn and pymesos imported."""

SHARED_EXECUTOR = "ensemble"
"""Executor key (and executor id prefix) of the one executor per agent that serves every model."""


def executor_memory(model: ModelSpec) -> float:
    """The executor's memory: the configured value, or an estimate from the model file's size."""
    if model.executor_mem > 0:
        return model.executor_mem
    return EXECUTOR_BASE_MEM_MB + 3.0 * model.path.stat().st_size / 2**20


def launched_cpus(task_cpus: float, executor_cpus: float) -> float:
    """The cpus a task asks of Mesos: its ``cpus`` less its executor's own share (at most half
    of it), so that an executor and its k tasks of ``cpus = c`` hold ``e + k(c - e) <= k c``:
    ``cpus = 1`` runs N tasks at once on an agent of N cpus, as a user expects.  Mesos counts an
    executor's resources and its tasks' together (one container), so nothing is over-committed."""
    return task_cpus - min(executor_cpus, task_cpus / 2)


WORKER_MEM_MB = 32.0
"""Private memory of one prediction worker process beyond its task's working memory (forked from
the executor after the models are loaded, it shares their pages copy-on-write; measured 12-22 MB
after a task, for the members of ``bench/cores_bench.py``).  A worker runs one task at a time,
so counting it once per task covers every worker an executor forks."""


def task_resources(model: ModelSpec, executor_cpus: float) -> Resources:
    """One task's demand as launched: its executor's cpus (``executor_cpus``) carved out, and the
    memory of the worker process it may run in added (the executor decides per model, after
    measuring, whether its predictions run on threads or in forked workers: see
    ``executor.workers``; the packer cannot know in advance, so it always counts the worker)."""
    return Resources(cpus=launched_cpus(model.cpus, executor_cpus), mem=model.mem + WORKER_MEM_MB,
                     disk=model.disk, gpus=model.gpus)


def shared_executor_resources(models: list[ModelSpec]) -> Resources:
    """One executor holding every model: one base process plus each model's loaded size."""
    extra = sum(max(0.0, executor_memory(m) - EXECUTOR_BASE_MEM_MB) for m in models)
    return Resources(cpus=max(m.executor_cpus for m in models), mem=EXECUTOR_BASE_MEM_MB + extra)


def _publish_shard(server: ArtifactServer, kind: str, shard: Shard) -> str:
    """Serve a shard: its file (as ``framework.dataset.spill_shards`` writes them) or its bytes in memory."""
    name = f"{kind}-{shard.index:05d}.npy"
    if shard.path is not None:
        return server.publish(name, shard.path)
    assert shard.npy_parts is not None
    return server.publish_buffer(name, shard.npy_parts)


class JobDemands:
    """What the packer and an offer round need of a job's work: each item's demand and the
    executors' resources and models (pure: ``mesos-ensemble plan`` uses it without a server)."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        # Per model, computed once (demands are built for every pending task in every offer round).
        self.shared = spec.framework.executors == "shared"
        self.isolated: set[str] = set()
        """Models taken out of the shared executor (after it died running them)."""
        # The packer sees no per-model executor for shared models; the scheduler keeps this much
        # free on every agent that has no executor of ours yet (``agent_reserve``).
        self.agent_reserve = shared_executor_resources(list(spec.models)) if self.shared else Resources()
        # A shared model's tasks give up the shared executor's cpus (the largest executor_cpus, so
        # at least as much as the model's own executor would take after ``isolate``).
        self.task_resources = {m.name: task_resources(m, self.agent_reserve.cpus if self.shared else m.executor_cpus)
                               for m in spec.models}
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


class JobCatalog(JobDemands):
    """Implements the scheduler's ``WorkCatalog`` for one job: demands, TaskInfos, ExecutorInfos."""

    def __init__(self, spec: JobSpec, server: ArtifactServer, shards: dict[str, list[Shard]],
                 python: str, executor_package_url: str, columns: dict[str, list[int]] | None = None,
                 source_shards: SourceShards | None = None) -> None:
        """``source_shards`` (a job with ``[[sources]]``): the column groups' shard files, each
        served on its own, so that a task names (and its executor downloads) only its model's."""
        super().__init__(spec)
        self.server, self.shards = server, shards
        self.columns = columns or {}
        self.python, self.executor_package_url = python, executor_package_url
        self.labels: RemoteFile | None = None
        self.folds: list[tuple[list[int], list[int]]] = []
        self.methods: Mapping[str, str] = {}
        self.model_urls = {m.name: server.publish(f"{m.name}.{m.format}", m.path) for m in spec.models}
        self.shard_urls = {(kind, s.index): _publish_shard(server, kind, s)
                           for kind, shard_list in shards.items() for s in shard_list}
        self.source_shards = source_shards
        self.part_files = {
            key: RemoteFile(server.publish(file.path.name, file.path), file.sha256)
            for key, file in (source_shards.files.items() if source_shards is not None else ())
        }
        self._predict_modes: dict[tuple[str, str], str | None] = {}
        """Per (model, method): ``thread`` when an earlier run's probe measured it so
        (``framework.predict_modes``), read once."""

    def add_training(self, shards: list[Shard], labels: RemoteFile, folds: list[tuple[list[int], list[int]]],
                     methods: Mapping[str, str], text_shards: Mapping[str, list[Shard]] | None = None) -> None:
        """Stacking: serve the labelled training rows (``text_shards``: the text columns' shards of
        them, by text kind) and remember the folds and stack methods."""
        kinds = {"train": shards, **{f"train-{text}": parts for text, parts in (text_shards or {}).items()}}
        for kind, parts in kinds.items():
            self.shards[kind] = parts
            self.shard_urls.update({(kind, s.index): _publish_shard(self.server, kind, s) for s in parts})
        self.labels, self.folds, self.methods = labels, folds, methods

    def executor_info(self, key: str, agent: Agent, allocator: PoolAllocator, generation: int) -> Message:
        """The ExecutorInfo of executor ``key`` on ``agent``, its resources taken from the offer."""
        served = sorted(self.executor_models(key))
        smallest_task = min(self.spec.model(name).cpus for name in served)
        resources = self.executor_resources[key]
        workers = max(1, int((agent.capacity.cpus + self.agent_reserve.cpus) // max(smallest_task, 1e-9)))
        launch = ExecutorLaunch(
            executor_id=executor_id(key, generation),
            serves="all models" if key == SHARED_EXECUTOR and self.shared else key,
            python=self.python,
            executor_package_url=self.executor_package_url,
            workers=min(workers, MAX_EXECUTOR_THREADS),
            resources=tuple(allocator.take(resources)),
        )
        return executor_info(launch)

    def task_info(self, item: WorkItem, task_id: str, agent: Agent, allocator: PoolAllocator,
                  executor: Message) -> Message:
        payload, name = self.payload(item, task_id)
        resources = allocator.take(self.task_resources[item.model])
        return task_info(task_id, name, agent.agent_id, resources, executor, payload.to_json())

    def bundle_info(self, items: list[tuple[WorkItem, str]], task_id: str, agent: Agent, allocator: PoolAllocator,
                    executor: Message) -> Message:
        """One Mesos task ``task_id`` carrying several items of one model (each under its own task
        id), with the resources of one of the model's tasks: its items run one after the other."""
        payloads = [self.payload(item, item_task_id)[0] for item, item_task_id in items]
        model = items[0][0].model
        shards = [item.shard for item, _task_id in items]
        name = f"{model} shards {min(shards)}..{max(shards)} ({len(items)} tasks)"
        resources = allocator.take(self.task_resources[model])
        return bundle_info(task_id, name, agent.agent_id, resources, executor, payloads)

    def predict_mode(self, model: ModelSpec, method: str) -> str | None:
        """Where an earlier run's probe put ``model``'s ``method`` (``thread``), or None."""
        key = (model.name, method)
        if key not in self._predict_modes:
            self._predict_modes[key] = predict_modes.recall(model.sha256, method)
        return self._predict_modes[key]

    def measured_mode(self, item: WorkItem, mode: str | None) -> None:
        """An executor's probe put ``item``'s model in ``mode``: kept for later runs if ``thread``."""
        if mode != "thread" or item.operation != "predict":
            return
        model = self.spec.model(item.model)
        method = self.methods.get(model.name, model.output)
        if self._predict_modes.get((model.name, method)) != "thread" and predict_modes.remember(
                model.sha256, method, mode):
            log.info("model %s: its executor measured its predictions parallel on threads; later runs skip "
                     "the probe", model.name)
        self._predict_modes[(model.name, method)] = "thread"

    def payload(self, item: WorkItem, task_id: str) -> tuple[TaskPayload, str]:
        """What the executor needs to run ``item`` as ``task_id``, and the task's name."""
        model = self.spec.model(item.model)
        kind = "train" if item.operation == "cv_fit_predict" else "data"
        inputs: dict[str, Any]
        if kind == "data" and self.source_shards is not None:
            # [[sources]]: the input is the model's column groups' files for the shard, nothing else.
            parts = [ShardPart(self.part_files[(group, item.shard)], columns)
                     for group, columns in self.source_shards.parts[model.name]]
            inputs = {"shard": parts[0].file, "shard_index": item.shard, "inputs": parts}
        else:
            # A fold's labels and rows; a text member's shard is its column's text shard (a 1-D
            # unicode .npy, the train set's for a fold), handed to it as it is.
            train_rows, test_rows = self.folds[item.fold] if item.fold is not None else ([], [])
            fold = {"labels": self.labels if item.operation == "cv_fit_predict" else None,
                    "train_rows": list(train_rows), "test_rows": list(test_rows)}
            if model.text is not None:
                text = text_kind(self.spec.data.text.index(model.text))
                source = text if kind == "data" else f"train-{text}"
                shape: dict[str, Any] = {"input_format": "text"}
            else:
                source, shape = kind, {"columns": self.columns.get(model.name, [])}
            shard = self.shards[source][item.shard]
            inputs = {"shard": RemoteFile(self.shard_urls[(source, shard.index)], shard.sha256),
                      "shard_index": shard.index, **shape, **fold}
        method = self.methods.get(model.name, model.output)
        payload = TaskPayload(
            task_id=task_id,
            operation=item.operation,
            model_name=model.name,
            model=RemoteFile(self.model_urls[model.name], model.sha256),
            model_file=f"{model.name}.{model.format}",
            model_format=model.format,
            trusted_types=list(model.trusted_types),
            method=method,
            result_upload_url=self.server.expect_result(task_id),
            predict_mode=self.predict_mode(model, method) if item.operation == "predict" else None,
            **inputs,
        )
        name = f"{model.name} fold {item.fold}" if item.fold is not None else f"{model.name} shard {item.shard}"
        return payload, name
