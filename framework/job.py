"""Runs one ensemble job: prepare artifacts, drive the pymesos scheduler, integrate, report.

This is the wiring between the pure core (packer, combiners, tracker) and the edges (pymesos
driver, artifact server, optional embedded cluster).  The main thread owns integration; the
pymesos IO thread only reports through ``EnsembleScheduler.events``.
"""

from __future__ import annotations

import logging
import math
import queue
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from framework import ensemble
from framework.artifacts import ArtifactServer
from framework.balancing import SpeculationPolicy
from framework.catalog import JobCatalog
from framework.dataset import Dataset, cut_shards, load_dataset
from framework.errors import JobFailed, MasterLost
from framework.executor_package import build_executor_package
from framework.inspection import inspect_job_models
from framework.jobspec import JobSpec, parse_master
from framework.members import member_columns, member_features, member_specs
from framework.packing import PackingOptions
from framework.preflight import check_data, check_job
from framework.results import decode_result
from framework.scheduler import EnsembleScheduler, EventKind, OfferPolicy, SchedulerEvent, describe_driver_abort
from framework.stacking_run import fit_stacking
from framework.tasks import Tracker, WorkItem
from framework.translator import framework_info

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_SECONDS = 30.0
"""How long to wait for the master to accept the framework's SUBSCRIBE."""

SPECULATION_CHECK_SECONDS = 0.5
"""How often the job looks for stragglers that deserve a backup copy."""


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

    check_job(spec)
    dataset = load_dataset(spec.data)
    estimators = inspect_job_models(spec)
    features = member_features(spec, estimators, tuple(dataset.feature_names))
    check_data(spec, dataset, features)
    members = member_specs(spec, estimators, features)
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
                 driver_factory: DriverFactory = pymesos_driver, start_local_cluster: bool = True) -> None:
        """``driver_factory`` makes the scheduler driver (pymesos by default).  ``start_local_cluster``:
        when the job's master is ``local``, start the embedded cluster; False when the driver
        factory brings its own master (as the in-process mock of the tests does)."""
        self.spec = spec
        self.work_dir = work_dir
        self.progress = progress or (lambda message: None)
        self.driver_factory = driver_factory
        self.start_local_cluster = start_local_cluster

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
                members, combiner = fit_stacking(
                    spec, catalog, server, members, estimators, tuple(dataset.feature_names), work_dir,
                    run_tasks=lambda items, on_result: self._run_tasks(scheduler, driver, server, items, on_result),
                    progress=self.progress)
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

    def _run_tasks(self, scheduler: EnsembleScheduler, driver: Any, server: ArtifactServer, items: list[WorkItem],
                   on_result: Callable[[WorkItem, np.ndarray], None]) -> None:
        """Run ``items`` to the end, every result to ``on_result`` (a failed member fails the job)."""
        scheduler.add_work(driver, items)
        self._drive(scheduler, driver, server, on_result=on_result, on_member_failed=None)

    # Pieces ------------------------------------------------------------------------------
    def _master(self, stack: ExitStack, work_dir: Path) -> tuple[str, str]:
        settings = self.spec.framework
        if settings.master != "local" or not self.start_local_cluster:
            # Agents on this machine (a loopback master) can run this very interpreter.
            default_python = sys.executable if self._advertise_host(settings.master) else "python3"
            return settings.master, settings.executor_python or default_python
        from framework.localmesos import AgentSpec, LocalCluster

        agents = [
            AgentSpec(hostname=a.get("hostname", f"agent-{i + 1}"),
                      resources={k: float(a.get(k, d))
                                 for k, d in (("cpus", 2), ("mem", 4096), ("disk", 10000), ("gpus", 0))},
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
        return "127.0.0.1" if parse_master(master).loopback else "0.0.0.0"

    @staticmethod
    def _advertise_host(master: str) -> str | None:
        return "127.0.0.1" if parse_master(master).loopback else None

    def _scheduler(self, tracker: Tracker, catalog: JobCatalog) -> EnsembleScheduler:
        settings = self.spec.framework
        return EnsembleScheduler(
            tracker, catalog,
            self.spec.pricing,
            self.spec.cost_model,
            PackingOptions(time_budget_s=settings.packing_budget_ms / 1000.0),
            OfferPolicy(settings.refuse_seconds, settings.never_fits_refuse_seconds, settings.role),
            SpeculationPolicy(factor=settings.speculation_factor),
            timeouts={m.name: m.timeout for m in self.spec.models if m.timeout is not None},
            placement_timeout=settings.placement_timeout,
        )

    def _start_driver(self, scheduler: EnsembleScheduler, master: str, stack: ExitStack) -> Any:
        settings = self.spec.framework
        self.master = master
        info = framework_info(settings.name, settings.user, settings.role, settings.failover_timeout,
                              settings.principal, gpus=any(m.gpus > 0 for m in self.spec.models))
        driver = self.driver_factory(scheduler, info, master, settings.principal, settings.secret)
        driver.start()
        # At the end the framework is torn down (stop(failover=False)): every executor goes away.
        stack.callback(driver.join)
        stack.callback(driver.stop)
        stack.callback(scheduler.close)  # after the round being decided, before the driver stops
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
                raise JobFailed(f"job timed out after {settings.timeout_seconds:.0f} s; "
                                f"task states: {tracker.counts()}")
            if scheduler.framework_id is None and now - self.run_started > SUBSCRIBE_TIMEOUT_SECONDS:
                raise JobFailed(f"could not subscribe to the Mesos master at {self.master} within "
                                f"{SUBSCRIBE_TIMEOUT_SECONDS:.0f} s (is it running and reachable?)")
            lost_for = scheduler.master_lost_for()
            if lost_for > settings.master_timeout:
                raise MasterLost(f"lost the Mesos master at {self.master} for {lost_for:.0f} s "
                                 f"([framework] master_timeout = {settings.master_timeout:g}); the job's journal "
                                 "is kept: run again to resume")
            if now - last_speculation_check >= SPECULATION_CHECK_SECONDS:
                last_speculation_check = now
                scheduler.speculate(driver)
                scheduler.check_timeouts(driver)
                scheduler.check_placement()
            try:
                event = scheduler.events.get(timeout=SPECULATION_CHECK_SECONDS)
            except queue.Empty:
                continue
            except RuntimeError as error:  # pymesos re-raises its IO thread's error here (via SIGINT)
                if not str(error).startswith("Failed with HTTP"):
                    raise
                raise JobFailed(describe_driver_abort(error)) from None
            self._handle(event, scheduler, driver, server, on_result, on_member_failed)

    def _handle(self, event: SchedulerEvent, scheduler: EnsembleScheduler, driver: Any, server: ArtifactServer,
                on_result: Callable[[WorkItem, np.ndarray], None],
                on_member_failed: Callable[[str, str], None] | None) -> None:
        if event.kind in (EventKind.FATAL, EventKind.UNPLACEABLE):
            raise JobFailed(event.detail)
        if event.kind is EventKind.WAITING:
            self.progress(event.detail)
            return
        item = event.item
        assert item is not None
        if event.kind is EventKind.FINISHED:
            try:
                output, usage = decode_result(server, item.task_id or "", event.data)
            except ValueError as error:
                scheduler.retry(driver, item, str(error))
                return
            if usage is not None:
                scheduler.record_usage(item, usage.seconds, usage.cpu_seconds)
            on_result(item, output)
            self.progress(f"done {item.key}")
        elif event.kind is EventKind.GAVE_UP:
            failures = "; ".join(item.failures[-3:])
            scheduler.cancel_model(driver, item.model)
            if on_member_failed is None or self.spec.min_members is None:
                raise JobFailed(f"model {item.model} failed on {item.key} after {item.attempts} attempts: {failures}")
            on_member_failed(item.model, failures)
            log.warning("member %s dropped: %s", item.model, failures)
