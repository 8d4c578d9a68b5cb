"""Runs one ensemble job: prepare artifacts, drive the pymesos scheduler, integrate, report.

This is the wiring between the pure core (packer, combiners, tracker) and the edges (pymesos
driver, artifact server, optional embedded cluster).  The main thread owns integration; the
pymesos IO thread only reports through ``EnsembleScheduler.events``.
"""

from __future__ import annotations

import logging
import math
import queue
import secrets
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
from framework.journal import Journal, job_fingerprint
from framework.members import member_columns, member_features, member_specs
from framework.packing import PackingOptions
from framework.preflight import LOCAL_AGENT_DEFAULTS, check_data, check_job, job_warnings, local_agents
from framework.results import decode_result
from framework.scheduler import EnsembleScheduler, EventKind, OfferPolicy, SchedulerEvent, describe_driver_abort
from framework.stacking_run import fit_stacking
from framework.tasks import ItemState, Tracker, WorkItem, attempt_task_id
from framework.translator import framework_info, reconcile_tasks

log = logging.getLogger(__name__)

LOCAL_PRINCIPAL = "mesos-ensemble"
"""The framework principal on the embedded cluster a job starts (its secret is random per run)."""

SUBSCRIBE_TIMEOUT_SECONDS = 30.0
"""How long to wait for the master to accept the framework's SUBSCRIBE."""

SPECULATION_CHECK_SECONDS = 0.5
"""How often the job looks for stragglers that deserve a backup copy."""

TEMPORARY_WORK_DIR_PREFIX = "mesos-ensemble-"


class JobAlreadyFinished(Exception):
    """``run`` of a job whose journal says it finished: nothing is rewritten (``--fresh`` runs it again)."""


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
    resumed_items: int = 0
    """Items whose results came from the journal of an earlier run (not computed again)."""
    adopted_tasks: int = 0
    """Tasks of an earlier run still running on the master, taken over rather than relaunched."""


DriverFactory = Callable[[Any, dict[str, Any], str, "str | None", "str | None"], Any]


def pymesos_driver(scheduler: Any, info: dict[str, Any], master: str, principal: str | None, secret: str | None) -> Any:
    """The real driver: ``pymesos.MesosSchedulerDriver`` with addict callbacks."""
    from pymesos import MesosSchedulerDriver

    # Explicit acknowledgements: a finished task's update is acknowledged only once its result is
    # in the journal (Mesos resends it until then); every other update as soon as it is handled.
    return MesosSchedulerDriver(scheduler, info, master, use_addict=True, principal=principal, secret=secret,
                                implicit_acknowledgements=False)


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
    lines += [f"  warning: {warning}" for warning in job_warnings(spec)]
    return "\n".join(lines)


class JobRunner:
    """Runs one :class:`JobSpec` against a Mesos master (or the embedded local cluster)."""

    def __init__(self, spec: JobSpec, work_dir: Path | None = None, progress: Any = None,
                 driver_factory: DriverFactory = pymesos_driver, start_local_cluster: bool = True,
                 state_dir: Path | None = None, fresh: bool = False, keep_running: bool = False) -> None:
        """``driver_factory`` makes the scheduler driver (pymesos by default).  ``start_local_cluster``:
        when the job's master is ``local``, start the embedded cluster; False when the driver
        factory brings its own master (as the in-process mock of the tests does).

        ``state_dir``: keep the job's journal there (see ``framework.journal``) and resume from it;
        ``fresh`` starts the journal over.  ``keep_running`` (an external master): when the job is
        interrupted, stop the driver with failover, so that its tasks run on and a later run
        adopts them, instead of tearing the framework down."""
        self.spec = spec
        self.work_dir = work_dir
        self.progress = progress or (lambda message: None)
        self.driver_factory = driver_factory
        self.start_local_cluster = start_local_cluster
        self.state_dir, self.fresh, self.keep_running = state_dir, fresh, keep_running
        self.journal: Journal | None = None
        self.failover_on_stop = False
        """Set when interrupted with ``keep_running``: the driver stops with failover."""
        self.resumed_items = 0
        self.adopted_tasks = 0
        self.credentials: tuple[str, str] | None = None
        """The embedded cluster's framework principal and secret (None: the job file's)."""

    # The whole job -------------------------------------------------------------------------
    def run(self) -> JobOutcome:
        started = time.monotonic()
        spec = self.spec
        dataset, members, estimators = prepare(spec)
        with ExitStack() as stack:
            journal = self._open_journal(stack)
            work_dir = self.work_dir or Path(tempfile.mkdtemp(prefix=TEMPORARY_WORK_DIR_PREFIX))
            if self.work_dir is None:
                stack.callback(shutil.rmtree, work_dir, True)
                if journal is not None:  # removed by the next run if this one is killed
                    journal.set_note("temporary_work_dir", str(work_dir))
                    stack.callback(journal.set_note, "temporary_work_dir", None)
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
            scheduler.journal = journal
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
            self._submit(scheduler, driver, items, lambda item, output: integrator.add(item.model, item.shard, output))
            self._drive(scheduler, driver, server,
                        on_result=lambda item, output: integrator.add(item.model, item.shard, output),
                        on_member_failed=integrator.member_failed)
            result = integrator.finish()
            if journal is not None:
                journal.mark_completed(f"wrote {result.rows} integrated predictions to {result.output_path}")
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
                resumed_items=self.resumed_items, adopted_tasks=self.adopted_tasks,
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
        self._submit(scheduler, driver, items, on_result)
        self._drive(scheduler, driver, server, on_result=on_result, on_member_failed=None)

    # The journal ---------------------------------------------------------------------------
    def _open_journal(self, stack: ExitStack) -> Journal | None:
        """Open the job's journal (None without a state directory), refusing a changed job
        (``JournalMismatch``, naming each change) and a finished one (:class:`JobAlreadyFinished`),
        and remove the temporary work directory a killed earlier run left behind."""
        if self.state_dir is None:
            return None
        journal = Journal.open(self.state_dir, job_fingerprint(self.spec), fresh=self.fresh)
        stack.callback(journal.close)
        if journal.completed is not None:
            raise JobAlreadyFinished(f"{self.spec.name} already finished ({journal.completed}); its journal "
                                     f"is in {self.state_dir}; --fresh runs it again")
        self.journal = journal
        left = journal.note("temporary_work_dir")
        if left and Path(left).name.startswith(TEMPORARY_WORK_DIR_PREFIX) and Path(left).is_dir():
            log.info("removing %s, the work directory of an interrupted run", left)
            shutil.rmtree(left, ignore_errors=True)
        progress = journal.progress()
        if progress.total:
            self.progress(f"resuming from {self.state_dir}: {progress.summary()}")
        return journal

    def _resuming_framework_id(self) -> str | None:
        """The framework id to re-subscribe with: the journal's, against an external master (the
        embedded cluster is new in every run and knows none)."""
        if self.journal is None or self._local():
            return None
        return self.journal.framework_id or None

    def _local(self) -> bool:
        """The job's master is new in every run (the embedded cluster, or a test's own mock)."""
        return self.spec.framework.master == "local"

    def _submit(self, scheduler: EnsembleScheduler, driver: Any, items: list[WorkItem],
                on_result: Callable[[WorkItem, np.ndarray], None]) -> None:
        """Hand ``items`` to the scheduler.  With a journal: each is journaled; a finished one's
        result is loaded and given to ``on_result`` at once (never computed again); against an
        external master, one whose latest attempt may still run is adopted (reconciled, its result
        received); the rest are launched, their attempts numbered on from the journal's."""
        journal = self.journal
        if journal is None:
            scheduler.add_work(driver, items)
            return
        journal.add_items(items)
        finished = journal.finished()
        latest_active = {a.item_key: a for a in journal.active_attempts()} if not self._local() else {}
        if not self._local():
            earlier_agents = {a.agent_id for i in journal.items().values() for a in i.attempts if a.agent_id}
            scheduler.avoid_earlier_executors(earlier_agents, {i.model for i in items}, int(time.time()))
        done: list[WorkItem] = []
        adopted: list[tuple[WorkItem, str | None]] = []
        todo: list[WorkItem] = []
        for item in items:
            attempts = journal.attempt_count(item.key)
            active = latest_active.get(item.key)
            if item.key in finished:
                item.attempts, item.state, item.task_id = attempts, ItemState.FINISHED, finished[item.key].task_id
                done.append(item)
            elif active is not None and active.task_id == attempt_task_id(item.key, attempts):
                item.attempts = attempts - 1
                adopted.append((item, active.agent_id))
            else:
                item.attempts = attempts
                todo.append(item)
        with scheduler.lock:
            scheduler.tracker.add(done)
        for item in done:
            on_result(item, journal.load_result(item.key))
        if done:
            self.resumed_items += len(done)
            self.progress(f"{len(done)} finished task(s) taken from the journal, not computed again")
        if adopted:
            scheduler.adopt(adopted)
            self.adopted_tasks += len(adopted)
            self.progress(f"{len(adopted)} task(s) of the earlier run adopted")
            if scheduler.framework_id is not None:  # already re-subscribed: reconcile them now
                driver.reconcileTasks(reconcile_tasks(i.task_id or "" for i, _agent in adopted))
        scheduler.add_work(driver, todo)

    # Pieces ------------------------------------------------------------------------------
    def _master(self, stack: ExitStack, work_dir: Path) -> tuple[str, str]:
        settings = self.spec.framework
        if settings.master != "local" or not self.start_local_cluster:
            # Agents on this machine (a loopback master) can run this very interpreter.
            default_python = sys.executable if self._advertise_host(settings.master) else "python3"
            return settings.master, settings.executor_python or default_python
        from framework.localmesos import AgentSpec, LocalCluster

        # The very agents ``validate`` judged the job against (preflight.local_agents: one place
        # holds the defaults).
        agents = [
            AgentSpec(hostname=a.hostname, resources={k: getattr(a.capacity, k) for k in LOCAL_AGENT_DEFAULTS},
                      attributes=dict(a.attributes))
            for a in local_agents(self.spec.local_cluster)
        ]
        # Locked down like a real cluster: framework authentication, with a random per-run secret
        # unless the job names its own credentials (no other local process can subscribe as us).
        principal, secret = ((settings.principal, settings.secret) if settings.principal and settings.secret
                             else (LOCAL_PRINCIPAL, secrets.token_urlsafe(32)))
        self.credentials = (principal, secret)
        cluster = LocalCluster(agents=agents, work_dir=work_dir / "cluster", credentials={principal: secret},
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
        principal, secret = self.credentials or (settings.principal, settings.secret)
        info = framework_info(settings.name, settings.user, settings.role, settings.failover_timeout,
                              principal, framework_id=self._resuming_framework_id(),
                              gpus=any(m.gpus > 0 for m in self.spec.models))
        driver = self.driver_factory(scheduler, info, master, principal, secret)
        driver.start()
        # At the end the framework is torn down (stop(failover=False)): every executor goes away;
        # unless interrupted with keep_running, when its tasks outlive us for a later run to adopt.
        stack.callback(driver.join)
        stack.callback(lambda: driver.stop(failover=True) if self.failover_on_stop else driver.stop())
        stack.push(self._interrupted_keeps_running)
        stack.callback(scheduler.close)  # after the round being decided, before the driver stops
        stack.callback(setattr, scheduler, "stopping", True)
        return driver

    def _interrupted_keeps_running(self, kind: type[BaseException] | None, *_: object) -> None:
        """With ``keep_running``, an interrupt (SIGINT/SIGTERM: not an ``Exception``) stops the driver
        with failover: the framework and its tasks stay for ``failover_timeout``."""
        if self.keep_running and kind is not None and not issubclass(kind, Exception):
            self.failover_on_stop = True

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
        if event.kind is EventKind.FATAL:
            resumed = self._resuming_framework_id()
            if resumed and scheduler.framework_id is None and "removed" in event.detail and self.journal:
                self.journal.save_framework_id("")  # the next run subscribes as a new framework
                self.failover_on_stop = True  # nothing to tear down
                raise JobFailed(f"the master no longer knows framework {resumed} (torn down, or its "
                                f"failover_timeout passed), so its tasks are gone; run again to go on as a new "
                                f"framework (finished results are kept)")
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
                scheduler.acknowledge(driver, event.status)
                return
            if usage is not None:
                scheduler.record_usage(item, usage.seconds, usage.cpu_seconds)
            if self.journal is not None:
                self.journal.record_result(item.key, item.task_id or "", output)
            scheduler.acknowledge(driver, event.status)  # only now: the result is durable
            on_result(item, output)
            self.progress(f"done {item.key}")
        elif event.kind is EventKind.GAVE_UP:
            failures = "; ".join(item.failures[-3:])
            scheduler.cancel_model(driver, item.model)
            self._journal_gave_up(scheduler, item, failures)
            if on_member_failed is None or self.spec.min_members is None:
                raise JobFailed(f"model {item.model} failed on {item.key} after {item.attempts} attempts: {failures}")
            on_member_failed(item.model, failures)
            log.warning("member %s dropped: %s", item.model, failures)

    def _journal_gave_up(self, scheduler: EnsembleScheduler, item: WorkItem, failures: str) -> None:
        """Keep in the journal that ``item`` failed and its model's other items were cancelled."""
        if self.journal is None:
            return
        self.journal.mark_item(item.key, ItemState.FAILED, failures)
        with scheduler.lock:
            cancelled = [i.key for i in scheduler.tracker.items.values()
                         if i.model == item.model and i.state is ItemState.CANCELLED]
        for key in cancelled:
            self.journal.mark_item(key, ItemState.CANCELLED, f"model {item.model} failed")
