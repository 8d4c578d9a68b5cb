"""Runs one ensemble job: prepare artifacts, drive the pymesos scheduler, integrate, report.

This is the wiring between the pure core (packer, combiners, tracker) and the edges (pymesos
driver, artifact server, optional embedded cluster).  The main thread owns integration; the
pymesos IO thread only reports through ``EnsembleScheduler.events``.
"""

from __future__ import annotations

import dataclasses
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

from framework import ensemble, kept_costs
from framework.artifacts import ArtifactServer
from framework.balancing import SpeculationPolicy
from framework.catalog import JobCatalog
from framework.dataset import (DataInfo, describe_data, non_finite_columns, open_data, scan_data, spill_shards,
                               text_kind)
from framework.errors import JobFailed, JobSpecError, MasterLost
from framework.executor_package import build_executor_package
from framework.inspection import InspectionAhead, inspect_job_models
from framework.jobspec import JobSpec, is_html_report, json_beside, parse_master
from framework.journal import Journal, job_fingerprint
from framework.live_status import StatusServer, remove_address, status_document, write_address
from framework.members import member_columns, member_features, member_specs
from framework.packing import PackingOptions, format_port_ranges
from framework.preflight import (LOCAL_AGENT_DEFAULTS, check_job, check_non_finite, job_warnings, local_agents,
                                 resolve_shard_rows)
from framework.progress import JobProgress, as_progress
from framework.readers import open_table
from framework.report_data import RoundRecorder, attempts_from_journal, classifier_curves, run_data
from framework.results import DecodedResult, decode_result_npy, write_parquet_output
from framework.scheduler import EnsembleScheduler, EventKind, OfferPolicy, SchedulerEvent, describe_driver_abort
from framework.sources import JoinedData, join_sources
from framework.stacking_run import fit_stacking
from framework.tasks import ItemState, Tracker, WorkItem, attempt_task_id
from framework.translator import framework_info, reconcile_tasks
from framework.watch import JobWatch

log = logging.getLogger(__name__)

LOCAL_PRINCIPAL = "mesos-ensemble"
"""The framework principal on the embedded cluster a job starts (its secret is random per run)."""

SUBSCRIBE_TIMEOUT_SECONDS = 30.0
"""How long to wait for the master to accept the framework's SUBSCRIBE."""

SPECULATION_CHECK_SECONDS = 0.5
"""How often the job looks for stragglers that deserve a backup copy."""

RESULT_BATCH = 256
"""At most this many queued events handled at once (their results journalled in one transaction)."""

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
    sources: dict[str, Any] | None = None
    """A job with ``[[sources]]``: the join (``JoinedData.describe``): rows, rows dropped per source."""
    mesos_tasks: int = 0
    """Mesos tasks launched: one per attempt, or one per bundle of several items' attempts."""
    status_url: str | None = None
    """Where the run served its live status page (gone now that it ended)."""
    cost: float = 0.0
    """The sum of the offer rounds' plan costs (see "Cost model"), and of their lower bounds."""
    lower_bound: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The summary as one JSON object (``run --json``)."""
        return {
            "output": str(self.output), "rows": self.rows, "members_used": list(self.members_used),
            "members_missing": dict(self.members_missing), "wall_seconds": round(self.wall_seconds, 3),
            "time_to_first_running": (None if self.time_to_first_running is None
                                      else round(self.time_to_first_running, 3)),
            "tasks": self.tasks, "task_attempts": self.task_attempts, "mesos_tasks": self.mesos_tasks,
            "agents_used": self.agents_used,
            "executors_launched": self.executors_launched, "backups_launched": self.backups_launched,
            "resumed_items": self.resumed_items, "adopted_tasks": self.adopted_tasks,
            "cost": round(self.cost, 6), "lower_bound": round(self.lower_bound, 6), "usage": self.usage,
            "report": self.report, "sources": self.sources,
        }


DriverFactory = Callable[[Any, dict[str, Any], str, "str | None", "str | None"], Any]


def pymesos_driver(scheduler: Any, info: dict[str, Any], master: str, principal: str | None, secret: str | None) -> Any:
    """The real driver: ``pymesos.MesosSchedulerDriver`` with addict callbacks."""
    from pymesos import MesosSchedulerDriver

    # Explicit acknowledgements: a finished task's update is acknowledged only once its result is
    # in the journal (Mesos resends it until then); every other update as soon as it is handled.
    return MesosSchedulerDriver(scheduler, info, master, use_addict=True, principal=principal, secret=secret,
                                implicit_acknowledgements=False)


def prepare(spec: JobSpec, scan: bool = False, inspection: InspectionAhead | None = None,
            info: DataInfo | None = None) -> tuple[DataInfo | JoinedData, list[ensemble.MemberSpec], dict[str, Any]]:
    """Read the data's schema and a sample and the models' metadata, and check, before anything
    launches, that they fit together (``scan``: check every row for NaN/inf, not just the sample;
    ``run`` checks every row anyway while it cuts the shards, before launching).  ``inspection``:
    the models' inspection, already under way (else it runs here); ``info``: the data's
    description, already read (``describe_data``).

    Returns what the data is, the members' specs and, by model name, each model's metadata (a
    ``ModelMetadata``, which stands in for the estimator: models are never loaded here)."""
    from importlib.metadata import version

    executors_sklearn = version("scikit-learn")  # the environment's, read without importing it here

    def inspected() -> dict[str, Any]:
        return inspection.result() if inspection is not None else inspect_job_models(spec)

    check_job(spec)
    if spec.sources:  # several sources joined by key: see framework.sources
        estimators = inspected()
        joined = join_sources(spec, estimators)
        _check_pass_through(spec)
        members = member_specs(spec, estimators, joined.member_features())
        ensemble.check_compatibility(estimators, members, (), spec.integration, executors_sklearn,
                                     recorded_versions={name: m.sklearn_version for name, m in estimators.items()})
        return joined, members, estimators
    info = info if info is not None else describe_data(spec.data)
    estimators = inspected()
    features = member_features(spec, estimators, tuple(info.feature_names))
    if scan and not info.complete:
        rows, problems = scan_data(spec.data, info.feature_names)
        info = dataclasses.replace(info, rows=rows, complete=True)
    else:
        problems = non_finite_columns(info.sample)
    check_non_finite(spec, problems, features)
    _check_pass_through(spec)
    members = member_specs(spec, estimators, features)
    ensemble.check_compatibility(estimators, members, info.feature_names, spec.integration, executors_sklearn,
                                 recorded_versions={name: m.sklearn_version for name, m in estimators.items()})
    return info, members, estimators


OUTPUT_COLUMN_PREFIXES = ("prediction", "proba_", "member_")
"""What the integrated output's own columns are named (``framework.ensemble``)."""


def _check_pass_through(spec: JobSpec) -> None:
    """``[job] pass_through`` names columns of the data that no output column shadows."""
    if not spec.pass_through:
        return
    primary = spec.source_spec(spec.data.primary) if spec.sources and spec.data.primary else None
    names = open_data(spec.data).schema.names if primary is None else open_table(primary.path).schema.names
    for column in spec.pass_through:
        if column not in names:
            raise JobSpecError(f"{spec.source}: job.pass_through names {column!r}, which is not a column of "
                               f"{spec.data.path.name} (it has {', '.join(names[:20])})")
        if column.startswith(OUTPUT_COLUMN_PREFIXES):
            raise JobSpecError(f"{spec.source}: job.pass_through names {column!r}, which would clash with the "
                               f"output's own columns ({', '.join(OUTPUT_COLUMN_PREFIXES)}...)")


def validate_job(spec: JobSpec, scan: bool = False, inspection: InspectionAhead | None = None) -> str:
    """Check everything ``run`` would check before launching, from the data's schema and a sample
    (``scan``: every row); return a short description.  ``inspection``: the models' inspection,
    already under way (else it runs here)."""
    auto = " (auto)" if spec.data.rows_per_shard == "auto" else ""
    spec = resolve_shard_rows(spec)
    info, members, _estimators = prepare(spec, scan=scan, inspection=inspection)
    if isinstance(info, JoinedData):
        if scan:
            info.write_shards(None)  # reads every value members take: NaN/inf refused here, as run does
        checked = ("every value checked for NaN/inf" if scan
                   else "values checked for NaN/inf when run cuts shards (--scan: now)")
        return "\n".join([f"{spec.source}: OK",
                          f"  data: {info.summary()}; {len(info.shard_bounds())} shards; {checked}"]
                         + [f"  model {m.name}: {m.kind}, {m.output}, weight {m.weight}; columns "
                            + ", ".join(f"{s}.{c}" for s, c in info.members[m.name]) for m in members])
    if info.rows is not None:
        rows = f"{info.rows} rows"
        per_shard = spec.data.resolved_rows_per_shard
        shards = f"{math.ceil(info.rows / per_shard)} shards of {per_shard} rows{auto}"
    else:
        rows = f"{info.sample.features.shape[0]}+ rows (a {info.format} file is counted when read)"
        shards = f"{spec.data.rows_per_shard} rows per shard{auto}"
    checked = ("every row checked for NaN/inf" if info.complete
               else f"first {info.sample.features.shape[0]} rows checked for NaN/inf (--scan: all)")
    lines = [f"{spec.source}: OK",
             f"  data: {info.format}, {rows} x {len(info.feature_names)} features"
             f"{', label ' + repr(spec.data.label) if spec.data.label else ''}; {shards}; {checked}",
             f"  integration: {spec.integration}; output: {spec.output}{' (explained)' if spec.explain else ''}",
             f"  executors: {spec.framework.executors}; speculation_factor {spec.framework.speculation_factor:g}; "
             f"master {spec.framework.master}"]
    lines += [f"  model {m.name}: {m.kind}, {m.output}, weight {m.weight}"
              + (f"; columns {', '.join(m.features)}" if m.features is not None else "") for m in members]
    lines += [f"  warning: {warning}" for warning in job_warnings(spec)]
    return "\n".join(lines)


class JobRunner:
    """Runs one :class:`JobSpec` against a Mesos master (or the embedded local cluster)."""

    def __init__(self, spec: JobSpec, work_dir: Path | None = None,
                 progress: JobProgress | Callable[[str], None] | None = None,
                 driver_factory: DriverFactory = pymesos_driver, start_local_cluster: bool = True,
                 state_dir: Path | None = None, fresh: bool = False, keep_running: bool = False,
                 inspection: InspectionAhead | None = None) -> None:
        """``driver_factory`` makes the scheduler driver (pymesos by default).  ``start_local_cluster``:
        when the job's master is ``local``, start the embedded cluster; False when the driver
        factory brings its own master (as the in-process mock of the tests does).

        ``state_dir``: keep the job's journal there (see ``framework.journal``) and resume from it;
        ``fresh`` starts the journal over.  ``keep_running`` (an external master): when the job is
        interrupted, stop the driver with failover, so that its tasks run on and a later run
        adopts them, instead of tearing the framework down.  ``inspection``: the job's models'
        inspection, started by the caller already (``mesos-ensemble run`` starts it before it
        imports the rest of the framework); else the run starts its own."""
        self.spec = spec
        self.work_dir = work_dir
        self.progress = as_progress(progress)
        """Where the run's events go: a display (``framework.progress``); a plain function given
        here gets each event as one message (``"done KEY"`` per finished task)."""
        self.watch: JobWatch | None = None
        self.status_url: str | None = None
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
        self.rounds = RoundRecorder()
        """What each offer round packed (cost, lower bound, backups), for the HTML report."""
        self.compute_seconds: dict[str, float] = {}
        """Per finished task id, the seconds its executor measured it computing (for the HTML report)."""
        self.measured_rows: dict[str, list[float]] = {}
        """Per model: [seconds, rows] of its predictions computed in this run (kept for later runs)."""
        self.inspection = inspection
        self._catalog: JobCatalog | None = None
        self.steps: dict[str, float] = {}
        """When each step of the run's start ended (``time.time()``, by step, in order): the
        start-up's budget, logged once the work is handed to the scheduler."""

    # The whole job -------------------------------------------------------------------------
    def run(self) -> JobOutcome:
        started = time.monotonic()
        self.steps = {"run": time.time()}
        spec = self.spec = resolve_shard_rows(self.spec)
        self.progress.hold()  # until the master accepts the framework (see JobWatch.tick)
        # The models' inspection (a process of its own: seconds when not cached) runs while the data
        # is read and cut and the cluster starts; nothing launches before its answer is checked.
        given = self.inspection
        inspection = given if given is not None and given.matches(spec) else InspectionAhead(spec)
        try:
            return self._run(spec, started, inspection)
        finally:
            inspection.cancel()  # still running only when the run failed before it needed the answer

    def _step(self, name: str, when: float | None = None) -> None:
        """Note when a step of the run's start ended (wall clock, as the executors log theirs)."""
        self.steps[name] = time.time() if when is None else when

    def describe_steps(self) -> str:
        """The start's steps so far, each with the seconds since the one before (the inspection,
        which runs beside the data and the cluster, with the seconds since the run's start)."""
        parts, previous = [], self.steps.get("run", 0.0)
        for name, when in sorted(self.steps.items(), key=lambda step: step[1]):
            if name == "run":
                continue
            # (an inspection started by the caller may have answered before the run began)
            since = max(0.0, when - self.steps["run"]) if name == "models inspected" else when - previous
            parts.append(f"{name} {since:.3f} s" + (" from the start" if name == "models inspected" else ""))
            previous = max(previous, when)
        return ", ".join(parts)

    def _run(self, spec: JobSpec, started: float, inspection: InspectionAhead) -> JobOutcome:
        check_job(spec)
        described = None if spec.sources else describe_data(spec.data)
        self._step("data described")
        if spec.data.label:  # the report scores the members with scikit-learn's metrics: imported
            import sklearn.metrics  # noqa: F401  (now, beside the inspection, not after the last result)
        with ExitStack() as stack:
            journal = self._open_journal(stack)
            self.progress.note(f"running {spec.name} ({len(spec.models)} models, integration {spec.integration})")
            work_dir = self.work_dir or Path(tempfile.mkdtemp(prefix=TEMPORARY_WORK_DIR_PREFIX))
            refused = False
            if self.work_dir is None:
                stack.callback(shutil.rmtree, work_dir, True)
                if journal is not None:  # removed by the next run if this one is killed
                    journal.set_note("temporary_work_dir", str(work_dir))
                    stack.callback(journal.set_note, "temporary_work_dir", None)
            elif not work_dir.exists():  # made by this run: a job refused before it launches leaves none
                stack.callback(lambda: shutil.rmtree(work_dir, True) if refused else None)
            # The data, streamed once into shard files before anything launches (every row is
            # checked for NaN/inf on the way: validate only checks a sample), and the cluster
            # started, while the models are inspected; nothing launches before both are checked.
            try:
                if described is None:  # several sources: the join needs the models' columns first
                    info, members, estimators = prepare(spec, inspection=inspection)
                    self._step("models inspected", inspection.finished_at)
                    assert isinstance(info, JoinedData)
                    self.progress.note(info.summary())
                    joined = info.write_shards(work_dir / "sources")
                    stack.callback(shutil.rmtree, work_dir / "sources", True)
                    shard_rows, labels = joined.shard_rows, info.labels
                    self._step("shards cut")
                else:
                    data = spill_shards(spec.data, described.feature_names, work_dir / "shards")
                    stack.callback(shutil.rmtree, work_dir / "shards", True)
                    self._step("shards cut")
                master, python = self._master(stack, work_dir)
                self._step("cluster started")
                advertise = spec.framework.artifact_host or self._advertise_host(master)
                server = ArtifactServer(work_dir / "results", bind=self._bind_host(master),
                                        port=spec.framework.artifact_port, advertise_host=advertise).start()
                stack.callback(server.stop)
                package = build_executor_package(work_dir)
                package_url = server.publish_public("mesos-ensemble-executor.tar.gz", package)
                self._step("artifacts served")
                if described is not None:
                    info, members, estimators = prepare(spec, inspection=inspection, info=described)
                    self._step("models inspected", inspection.finished_at)
                    check_non_finite(spec, data.non_finite, {m.name: m.features for m in members})
                    self._step("checked")
                    self.progress.note(f"data: {data.rows} rows in {len(data.shards)} shards")
                    shards = {"data": data.shards,
                              **{text_kind(i): data.text_shards[name] for i, name in enumerate(spec.data.text)}}
                    shard_rows, labels = [s.rows for s in data.shards], data.labels()
            except JobSpecError:
                refused = True
                raise
            if isinstance(info, JoinedData):
                catalog = JobCatalog(spec, server, {}, python, package_url, source_shards=joined)
            else:
                catalog = JobCatalog(spec, server, shards, python, package_url,
                                     member_columns(members, tuple(info.feature_names)))
            self._catalog = catalog
            tracker = Tracker([], spec.framework.max_retries)
            scheduler = self._scheduler(tracker, catalog)
            scheduler.journal = journal
            self._shard_rows = shard_rows
            stacked = spec.stacking is not None and spec.integration == "stacking"
            if not stacked:
                self._expect_costs(scheduler, spec, shard_rows)
            self._watch(scheduler, catalog, master, server, stack)
            self.run_started = time.monotonic()
            self.run_started_wall = time.time()
            driver = self._start_driver(scheduler, master, stack)
            self._step("driver started")
            self.progress.note(f"framework subscribed to {master}")

            if spec.stacking is not None and spec.integration == "stacking":
                members, combiner = fit_stacking(
                    spec, catalog, server, members, estimators, tuple(info.feature_names), work_dir,
                    run_tasks=lambda items, on_result: self._run_tasks(scheduler, driver, server, items, on_result),
                    progress=self.progress.note)
            else:
                combiner = ensemble.make_combiner(spec.integration, members)

            evaluation_dir = work_dir / "member-outputs"
            parquet = spec.output.suffix == ".parquet"
            integrated = work_dir / "ensemble-output.npy" if parquet else spec.output  # then written as Parquet
            integrator = ensemble.StreamingIntegrator(
                combiner, members, shard_rows, integrated,
                min_members=spec.min_members, keep_member_outputs_dir=evaluation_dir, explain=spec.explain,
            )
            stack.enter_context(integrator)
            if getattr(combiner, "inputs", None) and ensemble.FEATURES_KEY in combiner.inputs:
                assert not isinstance(info, JoinedData)  # stacking takes no [[sources]] (jobspec)
                for shard in shards["data"]:
                    integrator.add(ensemble.FEATURES_KEY, shard.index, shard.array())
            items = [WorkItem(f"{m.name}.s{index:05d}", m.name, index) for m in spec.models
                     for index in range(len(shard_rows))]
            self.progress.note(f"{len(items)} prediction tasks ({len(spec.models)} models x {len(shard_rows)} shards)")
            self._submit(scheduler, driver, items, lambda item, output: integrator.add(item.model, item.shard, output))
            self._step("work handed over")
            log.info("start-up: %s", self.describe_steps())
            self._drive(scheduler, driver, server,
                        on_result=lambda item, output: integrator.add(item.model, item.shard, output),
                        on_member_failed=integrator.member_failed)
            result = integrator.finish()
            if not stacked:
                self._keep_costs(spec)
            if parquet:
                kept = (None if not spec.pass_through
                        else info.pass_through(spec.pass_through) if isinstance(info, JoinedData)
                        else open_data(spec.data).iter_batches(list(spec.pass_through)))
                write_parquet_output(integrator.ensemble_output(), spec.output, kept)
                result = dataclasses.replace(result, output_path=spec.output)
            assert self.watch is not None
            self.watch.tick()
            self.progress.release()  # (a run whose every result was in the journal may end unsubscribed)
            self.watch.state = "finished"
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
                mesos_tasks=scheduler.mesos_tasks_launched,
                usage=scheduler.measurements.summary(),
                resumed_items=self.resumed_items, adopted_tasks=self.adopted_tasks,
                status_url=self.status_url, cost=self.watch.cost, lower_bound=self.watch.lower_bound,
                sources=info.describe() if isinstance(info, JoinedData) else None,
            )
            if labels is not None:
                outcome.report = integrator.evaluate(labels)
                outcome.report_text = ensemble.format_report(outcome.report)
                outcome.report["usage"] = outcome.usage
                if outcome.sources is not None:
                    outcome.report["sources"] = outcome.sources
            if spec.report is not None and is_html_report(spec.report):
                self._write_html_report(outcome, integrator, labels, scheduler, catalog)
            elif spec.report is not None and outcome.report is not None:
                ensemble.write_report_json(outcome.report, spec.report)
            return outcome

    def _write_html_report(self, outcome: JobOutcome, integrator: Any, labels: np.ndarray | None,
                           scheduler: EnsembleScheduler, catalog: JobCatalog) -> None:
        """Write the report's JSON (the evaluation, what the run did, the classifier curves)
        beside the report's HTML page (``report.html`` -> ``report.json``), then the page."""
        from framework.report_html import write_html_report  # matplotlib: only for an HTML report

        spec = self.spec
        assert spec.report is not None
        report: dict[str, Any] = dict(outcome.report or {"usage": outcome.usage})
        demands = {m.name: catalog.demand(WorkItem(f"{m.name}.s00000", m.name, 0)).resources for m in spec.models}
        note = None
        if self.journal is not None:
            attempts = attempts_from_journal(self.journal.items(), self.rounds.backups,
                                             {m: (r.cpus, r.mem) for m, r in demands.items()}, scheduler.hostnames,
                                             self.compute_seconds)
            earlier = [a for a in attempts if a["start"] < self.run_started_wall]
            attempts = [a for a in attempts if a["start"] >= self.run_started_wall]
            if earlier:
                note = f"{len(earlier)} task attempt(s) of earlier runs of this job (in its journal) are not shown"
        else:
            attempts, note = [], "no journal (the run had no state directory): task attempts were not recorded"
        report["run"] = run_data(attempts, self.rounds, self.run_started_wall, time.time(), note)
        if labels is not None and outcome.report is not None:
            kept = integrator.kept_outputs()
            report["curves"] = classifier_curves(outcome.report["task"], labels, kept.member_outputs,
                                                 kept.ensemble_output, kept.members, integrator.combiner.classes)
        ensemble.write_report_json(report, json_beside(spec.report))
        write_html_report(report, spec.report, title=f"{spec.name}: run report")

    def run_tasks(self, catalog: JobCatalog, master: str, server: ArtifactServer, items: list[WorkItem],
                  on_result: Callable[[WorkItem, np.ndarray], None]) -> None:
        """Run ``items`` to the end in a framework of their own on ``master`` (subscribed for them,
        torn down once they are in; no journal), every result to ``on_result`` (a failed member
        fails them all: ``JobFailed``).  ``serve`` runs a stacking job's fit phase so, beside its
        replicas' framework.  ``catalog`` builds the tasks; ``server`` serves their files and
        takes their results; ``credentials`` (the embedded cluster's) must be set when the job's
        own are not the master's."""
        with ExitStack() as stack:
            scheduler = self._scheduler(Tracker([], self.spec.framework.max_retries), catalog)
            self.run_started = time.monotonic()
            driver = self._start_driver(scheduler, master, stack)
            self._run_tasks(scheduler, driver, server, items, on_result)

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
            self.progress.note(f"resuming from {self.state_dir}: {progress.summary()}")
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
        per_model: dict[str, list[WorkItem]] = {}
        for item in items:
            per_model.setdefault(item.model, []).append(item)
        for model, its in per_model.items():
            self.progress.started(model, len(its), sum(self._rows(i) for i in its))
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
            self.progress.task_done(item.model, self._rows(item), item.key, resumed=True)
        if done:
            self.resumed_items += len(done)
            self.progress.note(f"{len(done)} finished task(s) taken from the journal, not computed again")
        if adopted:
            scheduler.adopt(adopted)
            self.adopted_tasks += len(adopted)
            self.progress.note(f"{len(adopted)} task(s) of the earlier run adopted")
            if scheduler.framework_id is not None:  # already re-subscribed: reconcile them now
                driver.reconcileTasks(reconcile_tasks(i.task_id or "" for i, _agent in adopted))
        scheduler.add_work(driver, todo)

    @staticmethod
    def _expect_costs(scheduler: EnsembleScheduler, spec: JobSpec, shard_rows: list[int]) -> None:
        """What earlier runs measured each model to cost (``framework.kept_costs``), per task of
        this run's mean shard: the first offer round orders and bundles the work by it instead of
        sending each model's first task alone."""
        rows = sum(shard_rows) / len(shard_rows) if shard_rows else 0.0
        for model in spec.models:
            per_row = kept_costs.recall(model.sha256, model.output)
            if per_row is not None and rows > 0:
                scheduler.measurements.expect(model.name, per_row * rows)

    def _keep_costs(self, spec: JobSpec) -> None:
        """Keep what this run's predictions cost per row, for later runs (see :meth:`_expect_costs`)."""
        for model in spec.models:
            seconds, rows = self.measured_rows.get(model.name, (0.0, 0))
            kept_costs.remember(model.sha256, model.output, seconds, int(rows))

    # Progress and live status -------------------------------------------------------------
    def _rows(self, item: WorkItem) -> int:
        """The data rows ``item`` predicts (0 for a cross-validation task)."""
        rows = getattr(self, "_shard_rows", [])
        return rows[item.shard] if item.operation == "predict" and 0 <= item.shard < len(rows) else 0

    def _watch(self, scheduler: EnsembleScheduler, catalog: JobCatalog, master: str, server: ArtifactServer,
               stack: ExitStack) -> None:
        """Follow the run (``self.watch``) and serve its live status (``self.status_url``, also
        recorded in the state directory while the run lasts, for ``mesos-ensemble status``)."""
        settings = self.spec.framework
        watch = self.watch = JobWatch(self.progress, self.spec.name, catalog.task_resources)
        watch.attach(scheduler, master)

        def document() -> dict[str, Any]:
            secret = self.credentials[1] if self.credentials else settings.secret
            return status_document(watch.view(), secrets=(secret, server.token))

        status = StatusServer(document, bind=self._bind_host(master), port=settings.status_port,
                              advertise_host=settings.artifact_host or self._advertise_host(master)).start()
        stack.callback(status.stop)
        self.status_url = status.url
        if self.state_dir is not None:
            write_address(self.state_dir, status.url, self.spec.name)
            stack.callback(remove_address, self.state_dir)
        self.progress.note(f"live status: {status.url}")

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
            AgentSpec(hostname=a.hostname, resources={**{k: getattr(a.capacity, k) for k in LOCAL_AGENT_DEFAULTS},
                                                      "ports": format_port_ranges(a.port_ranges)},
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
            decide=self.rounds,
        )

    def _start_driver(self, scheduler: EnsembleScheduler, master: str, stack: ExitStack) -> Any:
        settings = self.spec.framework
        self.master = master
        principal, secret = self.credentials or (settings.principal, settings.secret)
        info = framework_info(settings.name, settings.user, settings.role, settings.failover_timeout,
                              principal, framework_id=self._resuming_framework_id(),
                              gpus=any(m.gpus > 0 for m in self.spec.models), webui_url=self.status_url)
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
                if self.watch is not None:
                    self.watch.tick()
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
            events = [event]  # and whatever else is queued: their results are journalled together
            while len(events) < RESULT_BATCH:
                try:
                    events.append(scheduler.events.get_nowait())
                except queue.Empty:
                    break
            finished: list[SchedulerEvent] = []
            for event in events:
                if event.kind is EventKind.FINISHED:
                    finished.append(event)
                    continue
                self._handle_finished(finished, scheduler, driver, server, on_result)
                finished = []
                self._handle(event, scheduler, driver, server, on_result, on_member_failed)
            self._handle_finished(finished, scheduler, driver, server, on_result)

    def _handle_finished(self, events: list[SchedulerEvent], scheduler: EnsembleScheduler, driver: Any,
                         server: ArtifactServer, on_result: Callable[[WorkItem, np.ndarray], None]) -> None:
        """Finished items, in order: each result decoded and checked, all of them made durable in
        ONE journal transaction, then each acknowledged (only once durable) and integrated."""
        decoded: list[tuple[SchedulerEvent, WorkItem, DecodedResult]] = []
        for event in events:
            item = event.item
            assert item is not None
            try:
                result = decode_result_npy(server, item.task_id or "", event.data)
            except ValueError as error:
                scheduler.retry(driver, item, str(error))
                scheduler.acknowledge(driver, event.status)
                continue
            if result.usage is not None:
                scheduler.record_usage(item, result.usage.seconds, result.usage.cpu_seconds)
                self.compute_seconds[item.task_id or ""] = result.usage.seconds
                if item.operation == "predict":
                    measured = self.measured_rows.setdefault(item.model, [0.0, 0])
                    measured[0] += result.usage.seconds
                    measured[1] += self._rows(item)
                if result.usage.measured_mode is not None and self._catalog is not None:
                    self._catalog.measured_mode(item, result.usage.measured_mode)
            decoded.append((event, item, result))
        if self.journal is not None and decoded:
            self.journal.record_results([(item.key, item.task_id or "", result.npy, result.sha256)
                                         for _event, item, result in decoded])
        for event, item, result in decoded:
            scheduler.acknowledge(driver, event.status)  # only now: the result is durable
            on_result(item, result.output)
            self.progress.task_done(item.model, self._rows(item), item.key)

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
        if event.kind is EventKind.WAITING:  # the display says why from the round's decision (JobWatch)
            log.info("%s", event.detail)
            return
        item = event.item
        assert item is not None
        if event.kind is EventKind.FINISHED:
            self._handle_finished([event], scheduler, driver, server, on_result)
        elif event.kind is EventKind.GAVE_UP:
            failures = "; ".join(item.failures[-3:])
            scheduler.cancel_model(driver, item.model)
            self._journal_gave_up(scheduler, item, failures)
            self.progress.member_failed(item.model, failures)
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
