"""``mesos-ensemble serve``: the wiring of a deployment.

The job file is checked as ``run`` checks it before anything launches (its models inspected in
a subprocess, the members' columns and compatibility; bad input is one line, exit 2); then the
embedded cluster (``master = "local"``) or the external master, the artifact server that hands
the executor package and the model files to the agents, the controller (a pymesos scheduler for
replicas, :mod:`framework.serving.controller`) and the gateway (:mod:`framework.serving.gateway`).
Once every member has its ``min_replicas`` ready, the gateway's address is printed and recorded
in the state directory (``serve.json``: ``serve --reload`` signals that process).  A stacking
job's fit phase runs first, as ``run`` runs it (its cross-validation folds as Mesos tasks of a
framework torn down once they are in; the final estimator fitted here from their numbers); the
members' replicas then serve their stack methods.  A ``[[sources]]`` job's request carries the
columns its members take (:func:`request_columns`); a text member's replicas take its text column.

SIGHUP (or ``serve --reload``) reloads the job file: a member whose model changed (a new sha256)
rolls to it, new replicas first; every other ``[serve]`` field applies live (replica bounds,
``target_p99_ms`` and ``scale_down_delay_s`` from the autoscaler's next decision,
``scale_interval_s``, the gateway's batching, hedging and shedding limits between two requests).
A reload that changes what cannot change while serving (the gateway's ``address``; a
``max_batch_rows`` above the rows the running replicas accept per call; the models' names, kinds,
outputs, weights or columns; the integration or ``min_members``; a stacking member's model file
or ``[stacking]``) or whose models fail the checks
is refused in one line naming the field, and the old configuration keeps serving: nothing of a
refused reload applies.  SIGINT/SIGTERM: the gateway stops accepting and finishes what
it has, every replica drains and is killed, the framework is torn down; exit 130/143.  A
``serve`` that dies without that (``kill -9``) leaves its replicas running on an external
master; run again with the same state directory, it re-subscribes under its framework id and
re-adopts them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from executor.protocol import ReplicaPayload
from framework import ensemble, translator
from framework.artifacts import ArtifactServer
from framework.catalog import SHARED_EXECUTOR, JobCatalog
from framework.dataset import DataInfo
from framework.errors import FrameworkError, JobFailed, JobSpecError
from framework.executor_package import build_executor_package
from framework.jobspec import JobSpec, load_job, parse_master
from framework.packing import Agent, Resources
from framework.scheduler import EventKind
from framework.serving import placement
from framework.serving.controller import ServedMember, ServingController
from framework.serving.monitor import SAMPLE_SECONDS
from framework.serving.spec import ServeSpec, ServeSpecError, reload_changes
from framework.serving.state import ServeState, remove_live, write_live
from framework.translator import Message, PoolAllocator

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 120.0
"""How long ``serve`` waits for every member's ``min_replicas`` to be ready before it fails."""
STOP_TIMEOUT_SECONDS = 15.0
"""How long a stopping ``serve`` waits for its replicas to drain and end."""
REPLICA_MIN_ROWS = 4096
"""Replicas accept calls of at least this many rows (``ReplicaPayload.max_batch_rows``; more when
``[serve] max_batch_rows`` is larger), so that a reload may raise ``max_batch_rows`` up to it."""


class ServeCatalog(JobCatalog):
    """The controller's :class:`~framework.serving.controller.ReplicaCatalog`: a job catalog
    (model files served, executors' resources and ExecutorInfos as ``run`` builds them) that
    also builds replica TaskInfos (``executor.protocol.ReplicaPayload`` with a port)."""

    def __init__(self, spec: JobSpec, server: ArtifactServer, python: str, executor_package_url: str,
                 bind_host: str) -> None:
        super().__init__(spec, server, {}, python, executor_package_url)
        self.bind_host = bind_host
        self.serve = spec.serve or ServeSpec()
        self.replica_rows = max(self.serve.max_batch_rows, REPLICA_MIN_ROWS)
        """Most rows per call every replica of this serve accepts (the highest ``max_batch_rows`` a
        reload may set)."""

    def publish_models(self, spec: JobSpec) -> None:
        """Serve a reloaded job's model files (a changed one under a new name: old replicas keep theirs)."""
        for model in spec.models:
            self.model_urls[model.name] = self.server.publish(f"{model.name}-{model.sha256[:16]}.{model.format}",
                                                              model.path)
        self.spec = spec

    def replica_target(self, member: str, desired: int, sha256: str) -> placement.MemberTarget:
        """What placement needs of ``member``: one replica's resources as launched (its executor's
        cpus carved out, as for a batch task) and one port; its own executor's resources when
        executors are per model; its constraints."""
        model = self.spec.model(member)
        task = self.task_resources[member]
        shared = self.executor_key(member) == SHARED_EXECUTOR
        return placement.MemberTarget(
            member=member, desired=desired, sha256=sha256,
            demand=placement.replica_demand(task.cpus, task.mem, task.disk, task.gpus),
            executor=Resources() if shared else self.executor_resources[member],
            constraints=model.constraints)

    def replica_info(self, member: str, task_id: str, agent: Agent, allocator: PoolAllocator, executor: Message,
                     port: int, predict_mode: str | None = None) -> Message:
        model = self.spec.model(member)
        payload = ReplicaPayload(model=member, model_url=self.model_urls[member], sha256=model.sha256, port=port,
                                 output=self.methods.get(member, model.output),  # stacking: its stack method
                                 format=model.format, trusted_types=list(model.trusted_types),
                                 host=self.bind_host, max_batch_rows=self.replica_rows, predict_mode=predict_mode,
                                 input_format="text" if model.text is not None else "float64")
        resources = allocator.take(self.task_resources[member])
        return translator.task_info(task_id, f"{member} replica", agent.agent_id, resources, executor,
                                    payload.to_json(), ports=[port])


# --- the service ---------------------------------------------------------------------------------
@dataclass
class ServeOutcome:
    url: str
    members: dict[str, dict[str, int]]


class ServeRunner:
    """One deployment of a job (see the module docstring)."""

    def __init__(self, job_file: Path, spec: JobSpec, state_dir: Path, *, work_dir: Path | None = None,
                 note: Callable[[str], None] = lambda line: None,
                 on_ready: Callable[[ServeOutcome], None] | None = None,
                 load_job_file: Callable[[Path], JobSpec] | None = None) -> None:
        self.job_file, self.spec, self.state_dir, self.work_dir = job_file, spec, state_dir, work_dir
        self.note, self.on_ready = note, on_ready
        self.load_job_file = load_job_file or (lambda path: load_job(path))
        self.reload_requested = threading.Event()
        self.stop_requested = threading.Event()
        self.controller: ServingController | None = None
        self.gateway: Any = None
        self.url: str | None = None
        self.credentials: tuple[str, str] | None = None
        self.failover_on_stop = False
        self.resumed_framework_id: str | None = None
        self.status_url: str | None = None
        self.history_interval = SAMPLE_SECONDS
        """How often the deployment is sampled into its journal (``framework.serving.monitor``)."""
        self.serve_spec = spec.serve or ServeSpec()
        """The ``[serve]`` table in force (a reload replaces it; the autoscaler reads it)."""

    # ------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Deploy, serve until ``stop_requested`` (or an interrupt raised in the main thread), then
        drain and tear down."""
        from framework.job import JobRunner, pymesos_driver, prepare

        spec = self.spec
        serve = spec.serve or ServeSpec()
        info, members, estimators = prepare(spec)
        if isinstance(info, DataInfo):
            feature_names = tuple(info.feature_names)
        else:  # [[sources]]: a request carries the members' columns, whichever source they come from
            feature_names, members = request_columns(info.members, members)
        if spec.integration == "stacking" and spec.stacking is not None:  # refused now, not after the cluster starts
            from framework.dataset import describe_data
            from framework.stacking_run import check_train_columns

            check_train_columns(spec, tuple(describe_data(spec.stacking.train).feature_names), feature_names)
        with ExitStack() as stack:
            state = ServeState.open(self.state_dir)
            stack.callback(state.close)
            work_dir = self.work_dir or Path(tempfile.mkdtemp(prefix="mesos-ensemble-serve-"))
            if self.work_dir is None:
                stack.callback(shutil.rmtree, work_dir, True)
            runner = JobRunner(spec)
            master, python = runner._master(stack, work_dir)
            self.credentials = runner.credentials
            local = spec.framework.master == "local"
            loopback = parse_master(master).loopback
            bind = "127.0.0.1" if loopback else "0.0.0.0"  # noqa: S104
            server = ArtifactServer(work_dir / "results", bind=bind, port=spec.framework.artifact_port,
                                    advertise_host=spec.framework.artifact_host or (
                                        "127.0.0.1" if loopback else None)).start()
            stack.callback(server.stop)
            package_url = server.publish_public("mesos-ensemble-executor.tar.gz", build_executor_package(work_dir))
            catalog = ServeCatalog(spec, server, python, package_url, bind)
            catalog.publish_models(spec)
            stacking: ensemble.FittedStacking | None = None
            if spec.integration == "stacking":
                members, stacking = self._fit_stacking(runner, master, catalog, server, members, estimators,
                                                       feature_names, work_dir)

            from framework.serving.routing import ReplicaTable

            table = ReplicaTable()
            self.gateway = gateway = self._gateway(spec, serve, members, feature_names, table, stacking)
            host, port = gateway.start(serve.host, serve.port)
            self.url = f"http://{host}:{port}"
            stop_gateway = _once(gateway.stop)
            stack.callback(stop_gateway)

            controller = self.controller = ServingController(
                self._targets(spec, serve), catalog, table, spec.pricing, role=spec.framework.role,
                refuse_seconds=spec.framework.refuse_seconds, loopback=loopback, state=state,
                loads=gateway.load_samples, autoscale=self._autoscaler(serve, lambda: self.serve_spec),
                scale_interval=serve.scale_interval_s, on_cost=gateway.set_cost_per_hour,
                rising=self._rising(lambda: self.serve_spec))
            self.status_url = self._watch(stack, state, controller, gateway, bind, loopback, server.token)
            framework_id = None
            earlier = state.replicas()
            if local or not state.framework_id:
                state.forget_tasks()  # the embedded cluster died with the serve that started them
                state.save_framework_id("")
            else:
                framework_id = self.resumed_framework_id = state.framework_id
                executors = state.executors()
                adopted = controller.adopt(earlier, executors)
                controller.avoid_earlier_executors(int(time.time()))
                self.note(f"re-subscribing as framework {framework_id}; adopting {adopted} replica(s) of the "
                          f"earlier serve" + (f" and {len(executors)} executor(s)" if executors else ""))
            principal, secret = self.credentials or (spec.framework.principal, spec.framework.secret)
            framework = translator.framework_info(spec.framework.name, spec.framework.user, spec.framework.role,
                                                  spec.framework.failover_timeout, principal,
                                                  framework_id=framework_id, webui_url=self.url)
            driver = pymesos_driver(controller, framework, master, principal, secret)
            driver.start()
            stack.callback(self._stop_driver, driver, state)
            stack.callback(controller.close)
            stack.callback(self._drain, controller)
            stack.callback(stop_gateway)  # first: stop accepting, finish what is in flight; then drain
            controller.start(driver)
            self.note(f"deploying {spec.name} on {master}: "
                      + ", ".join(f"{m}: {t.min_replicas}..{t.max_replicas} replicas"
                                  for m, t in controller.targets.items()))
            self._wait_ready(controller)
            write_live(self.state_dir, os.getpid(), self.url, spec.name, self.status_url)
            stack.callback(remove_live, self.state_dir)
            if self.on_ready is not None:
                self.on_ready(ServeOutcome(self.url, controller.counts()))
            self._serve(controller, catalog)

    def _watch(self, stack: ExitStack, state: ServeState, controller: ServingController, gateway: Any, bind: str,
               loopback: bool, token: str | None) -> str:
        """Sample the deployment into its journal and serve its status page
        (:func:`framework.serving.monitor.watch`); returns the page's address."""
        from framework.serving.monitor import watch

        settings = self.spec.framework
        status_url, events = watch(
            stack, self.state_dir, state, controller, gateway.metrics.registry,
            {"job": self.spec.name, "url": self.url}, bind=bind, port=settings.status_port,
            advertise_host=settings.artifact_host or ("127.0.0.1" if loopback else None),
            secrets=(self.credentials[1] if self.credentials else settings.secret, token),
            interval=self.history_interval)
        note = self.note

        def noted(line: str) -> None:  # the service's notes (reloads) are events too
            events.add(line)
            note(line)
        self.note = noted
        self.note(f"status page: {status_url}")
        return status_url

    def _gateway(self, spec: JobSpec, serve: ServeSpec, members: list[ensemble.MemberSpec],
                 feature_names: tuple[str, ...], table: Any, stacking: ensemble.FittedStacking | None = None) -> Any:
        from framework.serving.combine import combiner_factory
        from framework.serving.gateway import Gateway

        params = {"model": stacking} if stacking is not None else {}
        return Gateway(serve, members, table, combiner_factory(spec.integration, **params), columns=feature_names,
                       min_members=spec.min_members, integration=spec.integration, text_columns=spec.data.text)

    def _fit_stacking(self, runner: Any, master: str, catalog: ServeCatalog, server: ArtifactServer,
                      members: list[ensemble.MemberSpec], estimators: dict[str, Any], feature_names: tuple[str, ...],
                      work_dir: Path) -> tuple[list[ensemble.MemberSpec], ensemble.FittedStacking]:
        """Stacking, before anything is deployed: the final estimator fitted here from numbers
        (nothing unpickled): those ``run`` recorded beside ``stacking.save_to`` when they were
        made for these members, train data and ``[stacking]``; else ``run``'s fit phase, as ``run``
        runs it (each member's cross-validation folds as Mesos tasks of a framework of their own,
        torn down once they are in).  The members come back as stacked (``output``: their stack
        method, which their replicas then serve); ``catalog`` keeps the stack methods."""
        from framework.members import member_columns
        from framework.stacking_run import fit_stacking_model
        from framework.tasks import Tracker

        spec = self.spec
        catalog.columns = member_columns(members, feature_names)
        started = time.monotonic()
        with ExitStack() as stack:
            def run_tasks(items: list[Any], on_result: Callable[[Any, Any], None]) -> None:
                scheduler = runner._scheduler(Tracker([], spec.framework.max_retries), catalog)
                runner.run_started = time.monotonic()
                driver = runner._start_driver(scheduler, master, stack)  # torn down when the block ends
                runner._run_tasks(scheduler, driver, server, items, on_result)

            stacked, fitted = fit_stacking_model(spec, catalog, server, members, estimators, feature_names,
                                                 work_dir / "stacking", run_tasks, progress=self.note, save=False,
                                                 reuse=True)
        self.note(f"stacking: final estimator {type(fitted.final_estimator).__name__} fitted on the members' "
                  f"out-of-fold {', '.join(sorted(set(fitted.stack_methods)))} in {time.monotonic() - started:.1f} s; "
                  "deploying the members")
        return stacked, fitted

    @staticmethod
    def _targets(spec: JobSpec, serve: ServeSpec) -> dict[str, ServedMember]:
        return {m.name: ServedMember(m.name, m.sha256, serve.bounds(m.name).min_replicas,
                                     serve.bounds(m.name).max_replicas, serve.bounds(m.name).standby_replicas)
                for m in spec.models}

    @staticmethod
    def _autoscaler(serve: ServeSpec, current: Callable[[], ServeSpec] | None = None
                    ) -> Callable[[Mapping[str, Any], Mapping[str, int], float], dict[str, int]]:
        """The controller's autoscaler over ``serve`` (or, each decision, the spec ``current()`` gives:
        a reload's ``target_p99_ms``, ``scale_down_delay_s`` and bounds apply from the next one)."""
        from framework.serving import autoscale

        memory = [autoscale.AutoscaleState()]

        def decide(loads: Mapping[str, Any], counts: Mapping[str, int], now: float) -> dict[str, int]:
            desired, memory[0] = autoscale.decide(current() if current else serve, loads, counts, memory[0], now)
            return desired
        return decide

    @staticmethod
    def _rising(current: Callable[[], ServeSpec]) -> Callable[[Mapping[str, Any], Mapping[str, int]], list[str]]:
        """The controller's check between decisions (``autoscale.rising``) over the spec in force."""
        from framework.serving import autoscale

        def rising(loads: Mapping[str, Any], counts: Mapping[str, int]) -> list[str]:
            return autoscale.rising(current(), loads, counts)
        return rising

    def _wait_ready(self, controller: ServingController) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not controller.all_ready():
            self._check_fatal(controller)
            if self.stop_requested.is_set():
                return
            if time.monotonic() > deadline:
                raise JobFailed(f"the replicas were not ready within {READY_TIMEOUT_SECONDS:.0f} s: "
                                f"{_describe_counts(controller.counts())}")
            controller.wait_until(controller.all_ready, 0.5)

    def _check_fatal(self, controller: ServingController) -> None:
        while not controller.events.empty():
            event = controller.events.get_nowait()
            if event.kind is not EventKind.FATAL:
                continue
            if self.resumed_framework_id and controller.framework_id is None and "removed" in event.detail \
                    and controller.state is not None:
                controller.state.save_framework_id("")  # the next serve subscribes as a new framework
                controller.state.forget_tasks()
                self.failover_on_stop = True  # nothing of ours to tear down
                raise JobFailed(f"the master no longer knows framework {self.resumed_framework_id} (torn down, or "
                                "its failover_timeout passed), so its replicas are gone; run serve again to deploy "
                                "anew")
            raise JobFailed(event.detail)

    def _serve(self, controller: ServingController, catalog: ServeCatalog) -> None:
        """Until stopped: watch for fatal events, reloads; the controller does the rest."""
        while not self.stop_requested.is_set():
            self._check_fatal(controller)
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload(controller, catalog)
            self.stop_requested.wait(0.2)

    def reload(self, controller: ServingController, catalog: ServeCatalog) -> list[str]:
        """Read the job file again and apply it whole, or refuse it whole (see the module docstring):
        members whose model changed roll to it (their names are returned), every other ``[serve]``
        field applies live.  A refusal is one line naming the field; serving goes on unchanged."""
        from framework.job import prepare
        from framework.serving.gateway import GatewayOptions

        try:
            spec = self.load_job_file(self.job_file)
            spec = dataclasses.replace(spec, framework=self.spec.framework)
            _check_reloadable(self.spec, spec)
            serve = spec.serve or ServeSpec()
            try:
                changes = reload_changes(self.serve_spec, serve)
            except ServeSpecError as error:
                raise JobSpecError(f"{spec.source}: {error}") from None
            if serve.max_batch_rows > catalog.replica_rows:
                raise JobSpecError(f"{spec.source}: serve.max_batch_rows {serve.max_batch_rows} is above the "
                                   f"{catalog.replica_rows} rows per call the running replicas accept (restart "
                                   "serve to raise it)")
            if self.gateway is not None:
                try:
                    GatewayOptions.from_spec(serve, base=self.gateway.options)
                except ValueError as error:
                    raise JobSpecError(f"{spec.source}: serve: {error}") from None
            prepare(spec)
        except FrameworkError as error:
            log.error("reload refused: %s", error)
            self.note(f"reload refused: {error}; serving on with the previous configuration")
            return []
        # Checked whole: now applied whole (none of these refuses what passed the checks above).
        if self.gateway is not None:
            self.gateway.reconfigure(serve)
        self.serve_spec = catalog.serve = serve
        controller.scale_interval = serve.scale_interval_s
        catalog.publish_models(spec)
        self.spec = spec
        changed = controller.retarget(self._targets(spec, serve))
        self.note(f"reloaded {self.job_file}: " + (f"rolling {', '.join(changed)} to the new model(s)"
                                                    if changed else "no model changed")
                  + (f"; [serve] {', '.join(changes)}" if changes else ""))
        return changed

    def _stop_driver(self, driver: Any, state: ServeState) -> None:
        """Stop the driver and wait for it: the framework torn down (its replicas and executors
        go with it), or left for a failover.  Torn down (pymesos sends TEARDOWN only while
        connected, and then forgets the framework id), the journal forgets the framework id and
        its tasks, so the next ``serve`` subscribes anew instead of failing on a framework the
        master has removed; not sent, the journal keeps them for the next ``serve`` to adopt."""
        driver.stop(failover=self.failover_on_stop)
        driver.join()
        if not self.failover_on_stop and not getattr(driver, "framework_id", None):
            state.save_framework_id("")
            state.forget_tasks()

    def _drain(self, controller: ServingController) -> None:
        """Stopping: every replica drains and is killed; wait (a while) for them to end."""
        controller.drain_all()
        if not controller.wait_until(lambda: not controller.replicas, STOP_TIMEOUT_SECONDS):
            log.warning("%d replica(s) did not end within %.0f s; tearing the framework down",
                        len(controller.replicas), STOP_TIMEOUT_SECONDS)


def request_columns(sources: Mapping[str, Sequence[tuple[str, str]]], members: list[ensemble.MemberSpec]
                    ) -> tuple[tuple[str, ...], list[ensemble.MemberSpec]]:
    """A ``[[sources]]`` job's request columns: every (source, column) some member takes, in the
    members' order, named as the column (``source.column`` where two sources' columns share a
    name); and the members with their ``features`` so named (the gateway hands each its columns
    in its order, as a batch task's parts assemble them)."""
    pairs = list(dict.fromkeys(pair for m in members for pair in sources[m.name]))
    times: dict[str, int] = {}
    for _source, column in pairs:
        times[column] = times.get(column, 0) + 1
    name = {pair: pair[1] if times[pair[1]] == 1 else f"{pair[0]}.{pair[1]}" for pair in pairs}
    return (tuple(name[pair] for pair in pairs),
            [dataclasses.replace(m, features=tuple(name[pair] for pair in sources[m.name])) for m in members])


def _check_reloadable(before: JobSpec, after: JobSpec) -> None:
    """A reload may change model files (path, sha256) and the ``[serve]`` table, nothing else of
    the models, the integration, the data's columns, the prices or the embedded cluster (refused
    rather than left unapplied; ``[framework]`` is the running one's, as the command line may
    have set its master)."""
    if [m.name for m in before.models] != [m.name for m in after.models]:
        raise JobSpecError(f"{after.source}: a reload cannot add, remove or rename models (restart serve)")
    for old, new in zip(before.models, after.models):
        for name in ("kind", "output", "weight", "proba_class", "features", "text", "inputs"):
            if getattr(old, name) != getattr(new, name):
                field = "source/columns" if name == "inputs" else name  # (as the job file names them)
                raise JobSpecError(f"{after.source}: models ({new.name}).{field} changed; a reload changes model "
                                   "files and [serve] fields only (restart serve)")
    for name in ("integration", "min_members"):
        if getattr(before, name) != getattr(after, name):
            raise JobSpecError(f"{after.source}: job.{name} changed; a reload changes model files and [serve] "
                               "fields only (restart serve)")
    if before.integration == "stacking":
        changed = [new.name for old, new in zip(before.models, after.models) if old.sha256 != new.sha256]
        if changed:
            raise JobSpecError(f"{after.source}: models ({changed[0]}).sha256 changed; a stacking deployment's final "
                               "estimator was fitted on its members' cross-validated predictions, so a changed "
                               "member needs that fit again (restart serve)")
    for table, names in (("[data]", ("data",)), ("[[sources]]", ("sources",)), ("[stacking]", ("stacking",)),
                         ("[pricing]", ("pricing", "cost_model")),
                         ("[local_cluster]", ("local_cluster",))):
        if any(getattr(before, name) != getattr(after, name) for name in names):
            raise JobSpecError(f"{after.source}: {table} changed; a reload changes model files and [serve] "
                               "fields only (restart serve)")


def _describe_counts(counts: Mapping[str, Mapping[str, int]]) -> str:
    return "; ".join(f"{member}: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
                     for member, states in counts.items())


def _once(function: Callable[[], Any]) -> Callable[[], None]:
    done: list[bool] = []

    def call() -> None:
        if not done:
            done.append(True)
            function()
    return call


def install_reload_handler(runner: ServeRunner) -> None:
    """SIGHUP: reload the job file (on the main loop, not in the handler)."""
    signal.signal(signal.SIGHUP, lambda _signum, _frame: runner.reload_requested.set())
