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
rolls to it, new replicas first (a stacking job's: its final estimator fitted again first, the
new replicas started beside the old, then the gateway switched to both in one step, then the old
replicas drained); every other ``[serve]`` field applies live (replica bounds,
``target_p99_ms`` and ``scale_down_delay_s`` from the autoscaler's next decision,
``scale_interval_s``, the gateway's batching, hedging and shedding limits between two requests).
A reload that changes what cannot change while serving (the gateway's ``address``; a
``max_batch_rows`` above the rows the running replicas accept per call; the models' names, kinds,
outputs, weights or columns; the integration or ``min_members``; the stack method of a stacking
member whose model file is unchanged) or whose models fail the checks (or whose stacking refit fails)
is refused in one line naming the field, and the old configuration keeps serving: nothing of a
refused reload applies.  SIGINT/SIGTERM: the gateway stops accepting and finishes what
it has, every replica drains and is killed, the framework is torn down; exit 130/143.  A
``serve`` that dies without that (``kill -9``) leaves its replicas running on an external
master; run again with the same state directory, it re-subscribes under its framework id and
re-adopts them.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
from framework import atomic, ensemble, translator
from framework.artifacts import ArtifactServer
from framework.catalog import SHARED_EXECUTOR, JobCatalog
from framework.dataset import DataInfo
from framework.errors import FrameworkError, JobFailed, JobSpecError
from framework.executor_package import build_executor_package
from framework.jobspec import JobSpec, ModelSpec, load_job, parse_master
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
SWITCH_TIMEOUT_SECONDS = 60.0
"""How long a stacking update's switch waits for the requests admitted before it to finish."""
REPLICA_MIN_ROWS = 4096
"""Replicas accept calls of at least this many rows (``ReplicaPayload.max_batch_rows``; more when
``[serve] max_batch_rows`` is larger), so that a reload may raise ``max_batch_rows`` up to it."""


class ServeCatalog(JobCatalog):
    """The controller's :class:`~framework.serving.controller.ReplicaCatalog`: a job catalog
    (model files served, executors' resources and ExecutorInfos as ``run`` builds them) that
    also builds replica TaskInfos (``executor.protocol.ReplicaPayload`` with a port)."""

    def __init__(self, spec: JobSpec, server: ArtifactServer, python: str, executor_package_url: str,
                 bind_host: str, models_dir: Path) -> None:
        super().__init__(spec, server, {}, python, executor_package_url)
        self.bind_host = bind_host
        self.models_dir = models_dir
        """Where the model files replicas start from are kept, each under its sha256 (:meth:`keep`)."""
        self.serve = spec.serve or ServeSpec()
        self.replica_rows = max(self.serve.max_batch_rows, REPLICA_MIN_ROWS)
        """Most rows per call every replica of this serve accepts (the highest ``max_batch_rows`` a
        reload may set)."""
        self._pruned_for: set[str] | None = None
        """The files :meth:`prune` last kept (it looks again only when they or the copies change)."""
        self.held: dict[str, tuple[ModelSpec, str, str]] = {}
        """During a stacking update, per member: the model file its old replicas run, its URL and
        their stack method (:meth:`hold`)."""

    def publish_models(self, spec: JobSpec) -> None:
        """Serve a reloaded job's model files, each its copy :meth:`keep` made (a changed one under a
        new name: old replicas keep theirs)."""
        self.keep(spec)
        for model in spec.models:
            self.model_urls[model.name] = self.server.publish(f"{model.name}-{model.sha256[:16]}.{model.format}",
                                                              self._kept(model))
        self.spec = spec

    def keep(self, spec: JobSpec) -> None:
        """Copy each model file of ``spec`` not kept yet into ``models_dir`` under its sha256,
        hashing the bytes copied (JobSpecError, one line, when they are not the job file's
        sha256: the file changed since it was read).  Replicas start from these copies, so a
        model file rewritten in place for a reload leaves the replicas of the file it replaced
        theirs (a held replica's replacement during a stacking update, a roll-back)."""
        for model in spec.models:
            kept = self._kept(model)
            if kept.exists():
                continue
            self.models_dir.mkdir(parents=True, exist_ok=True)
            self._pruned_for = None
            digest = hashlib.sha256()
            with atomic.replacing(kept) as temporary, model.path.open("rb") as source, temporary.open("wb") as copy:
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
                    copy.write(block)
                if digest.hexdigest() != model.sha256:
                    raise JobSpecError(f"{spec.source}: models ({model.name}).sha256 does not match {model.path.name} "
                                       f"(it changed while serve read it: the file has {digest.hexdigest()} now)")

    def _kept(self, model: ModelSpec) -> Path:
        return self.models_dir / f"{model.sha256}.{model.format}"

    def prune(self, in_use: set[str]) -> list[Path]:
        """Delete the kept copies (and stop serving them) of the model files no replica runs or may
        still be launched with: not in ``in_use`` (the controller's
        :meth:`~framework.serving.controller.ServingController.model_files_in_use`), not the current
        job's, not held.  A long-lived ``serve`` that rolls to new models keeps only what it runs.
        Call from the thread that reloads (``spec`` and :meth:`hold` change there)."""
        keep = in_use | {m.sha256 for m in self.spec.models} | {m.sha256 for m, _url, _method in self.held.values()}
        if keep == self._pruned_for or not self.models_dir.is_dir():
            return []
        self._pruned_for = keep
        pruned = []
        for kept in self.models_dir.iterdir():
            sha256 = kept.name.split(".", 1)[0]
            if sha256 in keep or kept.name.startswith("."):  # a copy being written is atomic.replacing's
                continue
            self.server.withdraw(kept)
            kept.unlink(missing_ok=True)
            pruned.append(kept)
        return pruned

    def hold(self) -> None:
        """A stacking update begins (call before :meth:`publish_models` and ``methods`` move on to
        it): until :meth:`release`, a replica of a model file served now can still be launched
        (``replica_info``'s ``sha256``), with its stack method: the gateway answers with those
        replicas until it switches, so one that ends is replaced with its own file."""
        self.held = {m.name: (m, self.model_urls[m.name], self.methods.get(m.name, m.output)) for m in self.spec.models}

    def release(self) -> None:
        """The stacking update is done (switched, or rolled back): only the current files are launched."""
        self.held = {}

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
                     port: int, predict_mode: str | None = None, sha256: str | None = None) -> Message:
        model, url = self.spec.model(member), self.model_urls[member]
        output = self.methods.get(member, model.output)  # stacking: its stack method
        if sha256 is not None and sha256 != model.sha256:
            if member not in self.held or self.held[member][0].sha256 != sha256:
                raise ValueError(f"the model file {sha256[:12]} of {member} is no longer served")
            model, url, output = self.held[member]
        payload = ReplicaPayload(model=member, model_url=url, sha256=model.sha256, port=port,
                                 output=output, format=model.format, trusted_types=list(model.trusted_types),
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


@dataclass(frozen=True)
class _FitContext:
    """Where a stacking deployment's fit phase runs (its start's, and its reloads')."""

    master: str
    server: ArtifactServer
    python: str
    package_url: str
    bind: str
    feature_names: tuple[str, ...]
    work_dir: Path
    credentials: tuple[str, str] | None


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
        self._fit_context: _FitContext | None = None
        """What a stacking deployment's reload needs to fit its final estimator again."""
        self._refits = 0

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
            catalog = ServeCatalog(spec, server, python, package_url, bind, work_dir / "models")
            catalog.publish_models(spec)
            stacking: ensemble.FittedStacking | None = None
            if spec.integration == "stacking":
                self._fit_context = _FitContext(master, server, python, package_url, bind, feature_names, work_dir,
                                                runner.credentials)
                members, stacking = self._fit_stacking(spec, catalog, members, estimators, work_dir / "stacking")

            from framework.serving.routing import ReplicaTable

            table = ReplicaTable()
            self.gateway = gateway = self._gateway(spec, serve, members, feature_names, table, stacking)
            if stacking is not None:  # its final estimator takes these members' predictions, no others
                gateway.pinned = {m.name: m.sha256 for m in spec.models}
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

    def _fit_stacking(self, spec: JobSpec, catalog: ServeCatalog, members: list[ensemble.MemberSpec],
                      estimators: dict[str, Any], work_dir: Path
                      ) -> tuple[list[ensemble.MemberSpec], ensemble.FittedStacking]:
        """Stacking, before its members are deployed (at the start, or a reload's): the final
        estimator fitted here from numbers (nothing unpickled): those ``run`` recorded beside
        ``stacking.save_to`` when they were made for these members, train data and ``[stacking]``;
        else ``run``'s fit phase, as ``run`` runs it (each member's cross-validation folds as Mesos
        tasks of a framework of their own, torn down once they are in:
        :meth:`framework.job.JobRunner.run_tasks`).  The members come back as stacked (``output``:
        their stack method, which their replicas then serve); ``catalog`` keeps the stack methods."""
        from framework.job import JobRunner
        from framework.members import member_columns
        from framework.stacking_run import fit_stacking_model

        context = self._fit_context
        assert context is not None
        catalog.columns = member_columns(members, context.feature_names)
        runner = JobRunner(spec)
        runner.credentials = context.credentials
        started = time.monotonic()
        stacked, fitted = fit_stacking_model(
            spec, catalog, context.server, members, estimators, context.feature_names, work_dir,
            lambda items, on_result: runner.run_tasks(catalog, context.master, context.server, items, on_result),
            progress=self.note, save=False, reuse=True)
        self.note(f"stacking: final estimator {type(fitted.final_estimator).__name__} fitted on the members' "
                  f"out-of-fold {', '.join(sorted(set(fitted.stack_methods)))} in {time.monotonic() - started:.1f} s")
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
            for path in catalog.prune(controller.model_files_in_use()):
                log.info("model file %s: no replica runs it any more; its kept copy removed", path.name)
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
            _info, members, estimators = prepare(spec)
            catalog.keep(spec)  # the model files as checked, whatever becomes of them
            restack = spec.integration == "stacking" and _restacks(self.spec, spec)
            if restack:
                _check_stack_methods(self.spec, spec, estimators, catalog.methods)
        except FrameworkError as error:
            return self._refuse(str(error))
        if restack:
            return self._reload_stacking(controller, catalog, spec, serve, changes, members, estimators)
        return self._apply_reload(controller, catalog, spec, serve, changes)

    def _refuse(self, why: str) -> list[str]:
        log.error("reload refused: %s", why)
        self.note(f"reload refused: {why}; serving on with the previous configuration")
        return []

    def _apply_reload(self, controller: ServingController, catalog: ServeCatalog, spec: JobSpec, serve: ServeSpec,
                      changes: list[str], restacked: str = "") -> list[str]:
        """Apply a checked reload whole (none of these refuses what passed the checks)."""
        if self.gateway is not None:
            self.gateway.reconfigure(serve)
        self.serve_spec = catalog.serve = serve
        controller.scale_interval = serve.scale_interval_s
        catalog.publish_models(spec)
        self.spec = spec
        changed = controller.retarget(self._targets(spec, serve))
        self.note(f"reloaded {self.job_file}: " + (restacked or (
            f"rolling {', '.join(changed)} to the new model(s)" if changed else "no model changed"))
                  + (f"; [serve] {', '.join(changes)}" if changes else ""))
        return changed

    def _reload_stacking(self, controller: ServingController, catalog: ServeCatalog, spec: JobSpec,
                         serve: ServeSpec, changes: list[str], members: list[ensemble.MemberSpec],
                         estimators: dict[str, Any]) -> list[str]:
        """A stacking deployment's rolling update: the final estimator fitted again for the new
        members or ``[stacking]`` (as at the start: from ``run``'s record when it is for them,
        else the fit phase as Mesos tasks), the changed members' new replicas started beside the
        old ones (which keep answering) until they are ready and routed, then the gateway
        switched to the new replicas and final estimator in one step, and only then the old
        replicas drained.  A refit that fails, or new replicas not ready in time, leaves the old
        deployment serving (one line says why)."""
        context = self._fit_context
        assert context is not None and self.gateway is not None
        started = time.monotonic()
        self._refits += 1
        fit_catalog = ServeCatalog(spec, context.server, context.python, context.package_url, context.bind,
                                   context.work_dir / "models")
        fit_catalog.publish_models(spec)
        try:
            stacked, fitted = self._fit_stacking(spec, fit_catalog, members, estimators,
                                                 context.work_dir / f"stacking-reload-{self._refits}")
        except (FrameworkError, ValueError) as error:
            return self._refuse(f"the stacking refit failed: {_one_line(error)}")
        fitted_at = time.monotonic()
        old_spec, old_methods = self.spec, dict(catalog.methods)
        catalog.hold()  # a held replica that ends is replaced with its own model file
        catalog.publish_models(spec)
        catalog.methods = dict(fit_catalog.methods)
        rolling = controller.retarget(self._targets(spec, self.serve_spec), hold=True)
        if rolling:
            self.note(f"stacking update: starting {', '.join(rolling)} on the new model(s) beside the old replicas")

        def roll_back(why: str) -> list[str]:
            controller.retarget(self._targets(old_spec, self.serve_spec))  # the new replicas drain
            catalog.publish_models(old_spec)
            catalog.methods = old_methods
            catalog.release()
            return [] if self.stop_requested.is_set() else self._refuse(f"{why}; the new replicas were stopped")

        if not self._wait_staged(controller):
            return roll_back(f"the new replicas were not ready within {READY_TIMEOUT_SECONDS:.0f} s "
                             f"({_describe_counts(controller.counts())})")
        from framework.serving.combine import combiner_factory

        staged_at = time.monotonic()
        try:
            self.gateway.switch(stacked, combiner_factory("stacking", model=fitted),
                                {m.name: m.sha256 for m in spec.models}, timeout=SWITCH_TIMEOUT_SECONDS)
        except (TimeoutError, ValueError) as error:
            return roll_back(f"the gateway did not switch: {_one_line(error)}")
        switched_at = time.monotonic()
        controller.release_held()
        catalog.release()
        self._apply_reload(
            controller, catalog, spec, serve, changes,
            f"stacking refitted ({type(fitted.final_estimator).__name__}) in {fitted_at - started:.1f} s, the new "
            f"replicas ready {staged_at - fitted_at:.1f} s later; "
            + (f"switched to the new replicas of {', '.join(rolling)} and the new final estimator in one step "
               f"({(switched_at - staged_at) * 1000:.0f} ms), draining the old ones" if rolling
               else f"switched to the new final estimator ({(switched_at - staged_at) * 1000:.0f} ms)"))
        return rolling

    def _wait_staged(self, controller: ServingController) -> bool:
        """Wait until every member's new replicas are ready and routed (False: not in time, or stopping)."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not controller.all_ready():
            if self.stop_requested.is_set() or time.monotonic() > deadline:
                return False
            controller.wait_until(controller.all_ready, 0.5)
        return True

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
    tables = [("[data]", ("data",)), ("[[sources]]", ("sources",)), ("[pricing]", ("pricing", "cost_model")),
              ("[local_cluster]", ("local_cluster",))]
    if before.integration != "stacking":  # a stacking deployment fits its final estimator again
        tables.append(("[stacking]", ("stacking",)))
    for table, names in tables:
        if any(getattr(before, name) != getattr(after, name) for name in names):
            raise JobSpecError(f"{after.source}: {table} changed; a reload changes model files and [serve] "
                               "fields only (restart serve)")


def _restacks(before: JobSpec, after: JobSpec) -> bool:
    """A stacking deployment's reload needs its final estimator fitted again: a member's model
    file or ``[stacking]`` changed."""
    return before.stacking != after.stacking or any(old.sha256 != new.sha256
                                                    for old, new in zip(before.models, after.models))


def _check_stack_methods(before: JobSpec, after: JobSpec, estimators: Mapping[str, Any],
                         running: Mapping[str, str]) -> None:
    """JobSpecError (one line) when a member whose model file is unchanged would be stacked with
    another method than its running replicas serve (a new ``[stacking] stack_method``): they
    cannot switch with the final estimator (restart serve)."""
    assert after.stacking is not None
    kind: ensemble.Kind = "classifier" if all(m.kind == "classifier" for m in after.models) else "regressor"
    for old, new in zip(before.models, after.models):
        try:
            method = ensemble.resolve_stack_method(new.name, estimators[new.name], after.stacking.stack_method, kind)
        except ValueError as error:
            raise JobSpecError(f"{after.source}: stacking.stack_method: {error}") from None
        if old.sha256 == new.sha256 and running.get(new.name, method) != method:
            raise JobSpecError(f"{after.source}: stacking.stack_method: models ({new.name}) would be stacked with "
                               f"{method}, its running replicas serve {running[new.name]} of the same model file; "
                               "a reload changes the stack method of a changed model file only (restart serve)")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


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
