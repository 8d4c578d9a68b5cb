"""The ``mesos-ensemble`` command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from executor.modelfile import FORMATS as MODEL_FORMATS
from executor.modelfile import format_of
from framework.errors import FrameworkError, JobFailed

if TYPE_CHECKING:
    from framework.inspection import InspectionAhead
    from framework.job import JobOutcome
    from framework.jobspec import JobSpec
    from framework.progress import JobProgress

DESCRIPTION = """\
Deploy several scikit-learn models (joblib or skops files) together on Apache Mesos, pack their tasks
onto offers at the lowest cost, and integrate their predictions into one ensemble answer.

subcommands:
  run JOB.toml          run an ensemble job; master = "local" (the default) starts an embedded
                        Mesos cluster in-process, "host:port" or "zk://..." uses a real one
  status JOB.toml       while the job runs, its live status (progress per model, agents, cost,
                        events); else what its journal knows: items by state, attempts, framework id;
                        for a deployment (serve): members, replicas, cost per hour against its lower
                        bound, latency, events (--report OUT.html: its history as a page)
  validate JOB.toml     check a job file, its models, data and compatibility without running it
  inspect MODEL         print what a model file holds (estimator, features, classes, outputs,
                        scikit-learn version; for skops files, the types it would need trusted),
                        learned in a subprocess with limits: the model never loads in this one
  train-demo OUTDIR     write the founding example (breast-cancer LinearRegression and
                        LogisticRegression, a held-out test CSV and job.toml) into OUTDIR
  local-cluster         start the embedded Mesos cluster on its own and print its master address
  plan JOB.toml         show where a run's first offer round would put each task, its cost and
                        lower bound, and why any task waits, without launching anything
  serve JOB.toml        deploy the job's members as long-lived replicas behind an HTTP gateway
                        (POST /v1/predict) that batches, balances and integrates their answers;
                        scales each member with its load; SIGHUP or serve --reload rolls changed models
"""

JSON_COMMANDS = ("run", "status", "plan", "inspect", "serve")
"""The subcommands that can print their result as one JSON document (--json)."""

MASTER_HELP = ('the Mesos master: "local" (an embedded cluster), host:port, or zk://host:2181[,host:2181]/mesos '
               "(default: $MESOS_MASTER if set, else the job file's [framework] master, else \"local\")")
EXIT_OK, EXIT_JOB_FAILED, EXIT_BAD_INPUT, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 130, 143
EPILOG = """\
options -v/--verbose, -q/--quiet and --json may come before or after the subcommand.

environment:
  MESOS_MASTER  the master when --master is not given: "local", host:port or zk://host:2181/mesos;
                it overrides the job file's [framework] master (command line > environment > file)

exit status:
  0    success
  1    the job ran but failed (a task gave up, a member was lost, integration failed, timeout)
  2    bad input: a job file, model, data, offers or option that cannot be used; nothing launched
  130  interrupted (SIGINT, Ctrl-C)
  143  terminated (SIGTERM)
"""


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless it has none (None, a flag's False, "") or its help names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or action.default in ("", argparse.SUPPRESS) \
                or "default" in text:
            return text
        return super()._get_help_string(action)


def package_version() -> str:
    """The installed distribution's version (package metadata), or say it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mesos-ensemble")
    except PackageNotFoundError:
        return "(not installed)"


def job_failures() -> tuple[type[Exception], ...]:
    """Errors of a job that ran and failed (exit 1), rather than input refused before anything
    launched (exit 2)."""
    from framework.ensemble.specs import IntegrationError  # imported only when needed: it brings numpy

    return (JobFailed, IntegrationError)


def add_common_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """-v/-q, on the top parser and on every subcommand (there without defaults, so that an option
    given before the subcommand is not reset by the subcommand's parser; they replace a
    subcommand's own ``--quiet`` where that subcommand's parser resolves conflicts)."""
    default: dict[str, object] = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages", **default)  # type: ignore[arg-type]
    parser.add_argument("-q", "--quiet", action="store_true", help="print only results and errors: no progress, "
                        "no warnings", **default)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesos-ensemble", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    add_common_options(parser, top=True)
    parser.add_argument("--json", action="store_true",
                        help=f"print the result as one JSON document ({', '.join(JSON_COMMANDS)})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run an ensemble job described by a TOML job file",
                              conflict_handler="resolve")  # its --quiet gives way to the common -q/--quiet
    run.add_argument("job", type=Path, help="the job file (see README, 'Job file')")
    run.add_argument("--master", help=MASTER_HELP)
    run.add_argument("--work-dir", type=Path, help="keep shards, results and sandboxes here (default: a temporary dir)")
    run.add_argument("--quiet", action="store_true", help="print only the summary")
    run.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                     help="print the job's summary as one JSON document on stdout (and nothing else there)")
    run.add_argument("--state-dir", type=Path,
                     help="keep the job's journal here, to resume it (default: beside the job file, JOB.state/)")
    run.add_argument("--fresh", action="store_true",
                     help="start over: forget the journal's finished results (needed to run a changed job)")
    run.add_argument("--keep-running", action="store_true",
                     help="external master: when interrupted, leave the tasks running for the next run to adopt")

    status = commands.add_parser("status", help="show a running job's live status, else what its journal records; "
                                 "for a deployment (serve), its replicas, cost and history")
    status.add_argument("job", type=Path, help="the job file")
    status.add_argument("--state-dir", type=Path, help="the journal's directory (default: JOB.state/ beside the job, "
                        "or JOB.serve-state/ for a deployment)")
    status.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the live status (or the journal's) as one JSON document")
    status.add_argument("--report", type=Path, metavar="OUT.html",
                        help="a deployment: also write its history as a static HTML page with its figures "
                             "(default: none written)")

    validate = commands.add_parser("validate", help="check a job file without running it")
    validate.add_argument("job", type=Path, help="the job file")
    validate.add_argument("--master", help="check the job as run would run it on this master; " + MASTER_HELP)
    validate.add_argument("--scan", action="store_true",
                          help="read every row of the data to check for NaN/inf (default: the schema and a sample)")

    inspect = commands.add_parser("inspect", help="print a model file's metadata (loaded in a limited subprocess)")
    inspect.add_argument("model", type=Path, metavar="MODEL", help="a .joblib or .skops file")
    inspect.add_argument("--format", choices=MODEL_FORMATS, default=None,
                         help="the file's format (default: skops for a .skops file, else joblib)")
    inspect.add_argument("--trusted-types", nargs="+", default=[], metavar="TYPE",
                         help="skops: types to trust on top of scikit-learn's and numpy's own classes "
                              "(default: none)")
    inspect.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help="print the metadata as one JSON document")

    demo = commands.add_parser("train-demo", help="write the founding example's models, data and job file")
    demo.add_argument("out_dir", type=Path, metavar="OUTDIR", help="the directory to write (created if missing)")
    demo.add_argument("--seed", type=int, default=0, help="train/test split seed (default 0)")
    demo.add_argument("--format", choices=MODEL_FORMATS, default="joblib",
                      help="save the models with joblib (a pickle) or skops (default joblib)")

    local = commands.add_parser("local-cluster", help="run the embedded Mesos cluster until interrupted")
    from framework.localmesos.cli import add_cli_arguments

    add_cli_arguments(local)

    plan = commands.add_parser("plan", help="show where a run's first offer round would place each task")
    plan.add_argument("job", type=Path, help="the job file")
    agents = plan.add_mutually_exclusive_group()
    agents.add_argument("--offers", type=Path, metavar="OFFERS.json",
                        help="plan on these Mesos v1 offers (a list of offers, or an OFFERS event) "
                             "(default: the agents of --master)")
    agents.add_argument("--master", metavar="HOST:PORT",
                        help="plan on a running master's agents (/master/state: resources minus used); "
                             "default: $MESOS_MASTER if set, else the job's [framework] master if not "
                             "\"local\", else the job's [local_cluster] agents")
    plan.add_argument("--principal", help="--master: authenticate as this principal (default: the job's)")
    plan.add_argument("--secret-file", type=Path, help="--master: the principal's secret (default: the job's)")
    plan.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                      help="print the plan as one JSON document")
    serve = commands.add_parser("serve", help="deploy the job's members behind an HTTP gateway until interrupted",
                                conflict_handler="resolve")
    serve.add_argument("job", type=Path, help="the job file; its [serve] table (see README, 'Serving')")
    serve.add_argument("--master", help=MASTER_HELP)
    serve.add_argument("--state-dir", type=Path,
                       help="the deployment's journal (framework id, replicas), to re-adopt its replicas after a "
                            "crash (default: beside the job file, JOB.serve-state/)")
    serve.add_argument("--work-dir", type=Path, help="keep the cluster's sandboxes here (default: a temporary dir)")
    serve.add_argument("--reload", action="store_true",
                       help="do not deploy: tell the serve running from --state-dir to reload the job file "
                            "(rolls changed models, applies changed [serve] fields live; as SIGHUP)")
    serve.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="once serving, print the gateway's address and replicas as one JSON document")
    for sub in commands.choices.values():
        sub.formatter_class = DefaultsFormatter
        sub.epilog = sub.epilog or "exit status: 0 ok, 1 job failed, 2 bad input, 130/143 interrupted"
        add_common_options(sub, top=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.json and args.command not in JSON_COMMANDS:
            raise FrameworkError(f"--json applies to {', '.join(JSON_COMMANDS)}, not {args.command}")
        return COMMANDS[args.command](args)
    except job_failures() as error:  # evaluated only when an exception arrives here
        print(f"mesos-ensemble: job failed: {error}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except FrameworkError as error:
        print(f"mesos-ensemble: error: {error}", file=sys.stderr)
        return 2
    except Interrupted as interrupt:
        print(f"mesos-ensemble: interrupted by {interrupt.name}{interrupt.kept}", file=sys.stderr)
        return 128 + interrupt.signum
    except KeyboardInterrupt:
        print("mesos-ensemble: interrupted", file=sys.stderr)
        return 130


class Interrupted(BaseException):
    """SIGINT or SIGTERM during ``run``: raised in the main thread, so that everything the job
    started is undone on the way out (tasks killed, framework torn down, partial files removed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.kept = ""
        """What the journal keeps, as the end of the one line printed (filled in by ``run``)."""


def install_signal_handlers(after_pymesos: bool = True) -> None:
    """SIGINT and SIGTERM: the first raises :class:`Interrupted` in the main thread (a clean stop);
    a second one while that clean-up runs exits at once.  Installed after pymesos is imported (it
    installs its own SIGINT handler at import); ``after_pymesos=False``: before, while no driver
    exists yet (``run`` installs them so before it starts the models' inspection, then again)."""
    aborted = None
    if after_pymesos:
        from framework.scheduler import DRIVER_ABORTED

        aborted = DRIVER_ABORTED

    def handle(signum: int, _frame: object) -> None:
        if signum == signal.SIGINT and aborted is not None and aborted.is_set():
            return  # pymesos' interrupt_main() after its IO thread died: the job reports why
        if handle.interrupted:  # type: ignore[attr-defined]
            os._exit(128 + signum)
        handle.interrupted = True  # type: ignore[attr-defined]
        raise Interrupted(signum)

    handle.interrupted = False  # type: ignore[attr-defined]
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handle)


def load_checked(args: argparse.Namespace) -> JobSpec:
    """The job file with its master from ``--master`` or ``$MESOS_MASTER`` (validated like the
    file's own), and the checks that need nothing loaded (every model placeable on the embedded
    cluster's agents)."""
    from framework.jobspec import load_job, with_master_override
    from framework.preflight import check_job

    spec = with_master_override(load_job(args.job), args.master, os.environ)
    check_job(spec)
    return spec


def load_and_inspect(args: argparse.Namespace, check: Callable[[JobSpec], None] = lambda spec: None
                     ) -> tuple[JobSpec, InspectionAhead]:
    """The job file, loaded and checked (:func:`load_checked`, then ``check``), and its models'
    inspection under way.  The inspection's process is started before the job file is read,
    unless the inspection cache answers for every model it names: its Python start and
    scikit-learn import run while this process imports the framework and reads the job file
    (this process imports scikit-learn only to fit a stacking or score against labels); for
    ``run``, its model loads then run while this process reads and cuts the data and starts the
    cluster (nothing launches before its answer).  The caller cancels the inspection when done."""
    from framework.inspection import InspectionAhead, Zygote, job_answers_cached

    zygote = None if job_answers_cached(Path(args.job)) else Zygote()
    try:
        spec = load_checked(args)
        check(spec)
    except BaseException:
        if zygote is not None:
            zygote.stop()
        raise
    return spec, InspectionAhead(spec, zygote=zygote)


def cmd_run(args: argparse.Namespace) -> int:
    def runnable(spec: JobSpec) -> None:
        if args.keep_running and spec.framework.master == "local":
            raise FrameworkError("--keep-running needs an external master (--master host:port): the embedded "
                                 "cluster ends with the run")

    install_signal_handlers(after_pymesos=False)  # a signal from now on cancels the inspection below
    spec, inspection = load_and_inspect(args, runnable)
    try:
        return _run_job(args, spec, inspection)
    finally:
        inspection.cancel()


def _run_job(args: argparse.Namespace, spec: "JobSpec", inspection: "InspectionAhead") -> int:
    import json

    from framework.job import JobAlreadyFinished, JobRunner  # imports pymesos (its SIGINT handler) first
    from framework.journal import default_state_dir
    from framework.progress import for_stderr

    install_signal_handlers()
    state_dir = args.state_dir or default_state_dir(args.job)
    progress = for_stderr(quiet=args.quiet)
    runner = JobRunner(spec, work_dir=args.work_dir, progress=progress, state_dir=state_dir, fresh=args.fresh,
                       keep_running=args.keep_running, inspection=inspection)
    try:
        with progress, _logging_through(progress):
            outcome = runner.run()
    except JobAlreadyFinished as finished:
        if args.json:
            print(json.dumps({"already_finished": str(finished)}))
        else:
            print(f"mesos-ensemble: {finished}")
        return 0
    except Interrupted as interrupt:
        interrupt.kept = _kept_line(state_dir, runner.keep_running and spec.framework.master != "local")
        raise
    if args.json:
        print(json.dumps(outcome.to_json(), indent=2))
    else:
        print_summary(outcome, state_dir)
    return 0


@contextlib.contextmanager
def _logging_through(progress: "JobProgress") -> Iterator[None]:
    """While bars are drawn, log records are written through the display (above the bars)."""
    if progress.mode != "live":
        yield
        return
    root = logging.getLogger()
    handler = progress.log_handler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    saved = root.handlers[:]
    root.handlers[:] = [handler]
    try:
        yield
    finally:
        root.handlers[:] = saved


def print_summary(outcome: "JobOutcome", state_dir: Path) -> None:
    """The job's summary on stdout, as text."""
    from framework.balancing import format_usage

    print(f"wrote {outcome.rows} integrated predictions to {outcome.output}")
    if outcome.sources is not None:
        print(outcome.sources["summary"])
    if outcome.resumed_items or outcome.adopted_tasks:
        print(f"resumed from {state_dir}: {outcome.resumed_items} finished task(s) not computed again, "
              f"{outcome.adopted_tasks} running task(s) adopted")
    missing = ", ".join(f"{k} ({v})" for k, v in outcome.members_missing.items())
    print(f"members used: {', '.join(outcome.members_used)}" + (f"; missing: {missing}" if missing else ""))
    first = f"{outcome.time_to_first_running:.2f} s" if outcome.time_to_first_running is not None else "n/a"
    print(f"{outcome.tasks} tasks ({outcome.task_attempts} attempts) on {outcome.agents_used} agent(s), "
          f"{outcome.executors_launched} executor(s); "
          f"wall {outcome.wall_seconds:.2f} s; first TASK_RUNNING after {first}")
    if outcome.usage:
        print(format_usage(outcome.usage))
    if outcome.report_text:
        print(outcome.report_text)


def _kept_line(state_dir: Path, kept_running: bool) -> str:
    """The end of the interrupted line: what the journal keeps and how to go on."""
    from framework.journal import Journal, JournalError

    try:
        journal = Journal.read(state_dir)
    except JournalError:
        return " before any task was journaled"
    try:
        progress = journal.progress()
    finally:
        journal.close()
    running = "; its tasks keep running for the next run to adopt" if kept_running else ""
    return (f"; {progress.counts.get('finished', 0)} of {progress.total} tasks finished are kept in {state_dir}"
            f"{running}; run again to resume")


def cmd_status(args: argparse.Namespace) -> int:
    import datetime
    import json

    from framework.journal import Journal, default_state_dir
    from framework.live_status import describe, read_live

    deployment = _deployment_dir(args)
    if deployment is not None:
        return _deployment_status(args, deployment)
    if args.report is not None:
        from framework.serving.state import default_serve_state_dir

        raise FrameworkError(f"{args.state_dir or default_serve_state_dir(args.job)}: no deployment journal here "
                             "(status --report is for a deployment: run serve first)")
    state_dir = args.state_dir or default_state_dir(args.job)
    live = read_live(state_dir) if Journal.exists(state_dir) else None
    if live is not None:  # the job runs now: what its framework serves
        url, document = live
        if args.json:
            print(json.dumps({"source": "live", "url": url, **document}, indent=2))
        else:
            print(describe(url, document))
        return 0
    if not Journal.exists(state_dir):
        raise FrameworkError(f"{state_dir}: no journal here (the job has not run, or --state-dir names another "
                             "directory)")
    journal = Journal.read(state_dir)
    try:
        progress = journal.progress()
    finally:
        journal.close()

    def when(seconds: float | None) -> str:
        return "-" if not seconds else datetime.datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="seconds")

    if args.json:
        print(json.dumps({"source": "journal", "state_dir": str(state_dir), "job": progress.job_name,
                          "items_by_state": dict(progress.counts), "total": progress.total,
                          "completed": progress.completed, "framework_id": progress.framework_id or None,
                          "failures": dict(progress.failures)}, indent=2))
        return 0
    print(f"{progress.job_name or args.job.name}: {progress.summary()} (from the journal: no run of it answers now)")
    print(f"  state: {'finished: ' + progress.completed if progress.completed else 'unfinished (run again to resume)'}")
    print(f"  journal: {state_dir}; created {when(progress.created_at)}, last update {when(progress.updated_at)}")
    print(f"  framework id: {progress.framework_id or '-'}"
          + (f" (saved {when(progress.framework_id_saved_at)})" if progress.framework_id else ""))
    for key, detail in sorted(progress.failures.items()):
        print(f"  failed {key}: {detail}")
    return 0


def _deployment_dir(args: argparse.Namespace) -> Path | None:
    """The deployment journal ``status`` shows: ``--state-dir`` when it holds one; else
    ``JOB.serve-state/`` when it holds one and its serve runs, or no run of the job runs and its
    own journal (``JOB.state/``) is missing or older."""
    from framework.journal import DATABASE_NAME as RUN_DATABASE
    from framework.journal import default_state_dir
    from framework.live_status import ADDRESS_FILE
    from framework.serving.state import DATABASE_NAME, default_serve_state_dir
    from framework.serving.state import read_live as serve_live

    if args.state_dir is not None:
        return args.state_dir if (args.state_dir / DATABASE_NAME).is_file() else None
    serving, running = default_serve_state_dir(args.job), default_state_dir(args.job)
    if not (serving / DATABASE_NAME).is_file():
        return None
    if serve_live(serving) is not None:
        return serving
    if (running / ADDRESS_FILE).is_file():  # a run of the job records its live status
        return None
    if not (running / RUN_DATABASE).is_file():
        return serving
    return serving if (serving / DATABASE_NAME).stat().st_mtime >= (running / RUN_DATABASE).stat().st_mtime else None


def _deployment_status(args: argparse.Namespace, state_dir: Path) -> int:
    """``status`` of a deployment: its summary from its journal (serve running or not); ``--report``
    writes its history as a static page too."""
    import json

    from framework.serving.history import describe
    from framework.serving.monitor import read_document
    from framework.serving.state import ServeStateError

    try:
        document = read_document(state_dir)
    except ServeStateError as error:
        raise FrameworkError(str(error)) from None
    if args.report is not None:
        from framework.report_html import write_deployment_report  # matplotlib: only for a report

        write_deployment_report(document, args.report)
    if args.json:
        print(json.dumps({"source": "deployment", "state_dir": str(state_dir), **document}, indent=2))
    else:
        print(describe(document))
        if args.report is not None:
            print(f"  report: {args.report}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    spec, inspection = load_and_inspect(args)
    try:
        from framework.job import validate_job

        print(validate_job(spec, scan=args.scan, inspection=inspection))
    finally:
        inspection.cancel()
    return 0


def cmd_train_demo(args: argparse.Namespace) -> int:
    from framework.demo import train_demo

    job = train_demo(args.out_dir, seed=args.seed, model_format=args.format)
    print(f"wrote the founding example to {args.out_dir}; run it with: mesos-ensemble run {job}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from framework.inspection import InspectionError, describe_metadata, inspect_model

    if not args.model.is_file():
        raise FrameworkError(f"{args.model}: not a file")
    if args.trusted_types and (args.format or format_of(args.model)) != "skops":
        raise FrameworkError(f"{args.model}: --trusted-types applies only to skops files")
    try:
        metadata = inspect_model(args.model, args.format, args.trusted_types)
    except InspectionError as error:
        if args.json and error.refused:
            print(json.dumps({"path": str(args.model), "refused_types": error.refused}, indent=2))
        raise FrameworkError(f"{args.model}: {error}") from None
    print(json.dumps(metadata.to_json(), indent=2) if args.json else describe_metadata(metadata))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from framework.jobspec import load_job, with_master_override
    from framework.plan import agents_for, plan_job, read_secret, render

    spec = with_master_override(load_job(args.job), None, os.environ)  # plan's --master: see agents_for
    secret = read_secret(args.secret_file) if args.secret_file else None
    offers, source = agents_for(spec, args.offers, args.master, args.principal, secret)
    plan = plan_job(spec, offers, source)
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
    else:
        render(plan, Console(soft_wrap=False))
    return EXIT_OK


def cmd_local_cluster(args: argparse.Namespace) -> int:
    from framework.localmesos.cli import run_cli

    if getattr(args, "secret", None):
        raise FrameworkError("local-cluster: --secret would show the secret in the process list (ps); "
                             "put 'principal secret' in a file and pass --credentials-file instead")
    return run_cli(args)


COMMANDS = {"run": cmd_run, "status": cmd_status, "validate": cmd_validate, "inspect": cmd_inspect,
            "train-demo": cmd_train_demo, "local-cluster": cmd_local_cluster}

def cmd_serve(args: argparse.Namespace) -> int:
    import json

    from framework.serving.state import default_serve_state_dir, read_live

    state_dir = args.state_dir or default_serve_state_dir(args.job)
    if args.reload:
        live = read_live(state_dir)
        if live is None:
            raise FrameworkError(f"{state_dir}: no serve runs from this state directory (nothing to reload)")
        os.kill(int(live["pid"]), signal.SIGHUP)
        if not args.quiet:
            print(f"asked serve (pid {live['pid']}, {live['url']}) to reload {args.job}")
        return EXIT_OK

    spec = load_checked(args)  # bad input: one line, before the heavier imports below
    from framework.serving.service import ServeOutcome, ServeRunner, install_reload_handler  # imports pymesos

    install_signal_handlers()

    def note(line: str) -> None:
        if not args.quiet:
            print(f"serve: {line}", file=sys.stderr, flush=True)

    def ready(outcome: ServeOutcome) -> None:
        if args.json:
            print(json.dumps({"url": outcome.url, "predict": f"{outcome.url}/v1/predict", "pid": os.getpid(),
                              "state_dir": str(state_dir), "replicas": outcome.members,
                              "status_page": runner.status_url}), flush=True)
        else:
            replicas = ", ".join(f"{m}: {c.get('ready', 0)}" for m, c in outcome.members.items())
            print(f"serving {spec.name} at {outcome.url}/v1/predict (replicas ready: {replicas}); "
                  f"Ctrl-C stops, SIGHUP or serve --reload reloads", flush=True)

    runner = ServeRunner(args.job, spec, state_dir, work_dir=args.work_dir, note=note, on_ready=ready)
    install_reload_handler(runner)
    runner.run()
    return EXIT_OK


COMMANDS["plan"] = cmd_plan
COMMANDS["serve"] = cmd_serve

if __name__ == "__main__":
    sys.exit(main())
