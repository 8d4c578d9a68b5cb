"""What a person watching a job sees on stderr: progress bars, or plain periodic lines, or nothing.

:class:`JobProgress` takes the job's events (a model's tasks started, a task done, a retry, a
backup copy, a waiting reason, a member dropped) and shows them:

* ``live`` (stderr is a terminal): one rich progress bar per model (shards done of total, rows/s,
  ETA) and one for the job; retries, backups, dropped members and new waiting reasons are
  printed above the bars as they happen, the current waiting reason stays beside the job's bar;
* ``plain`` (stderr is a file or a pipe): one line at most every ``interval`` seconds (the job's
  counts, rate and ETA, each model's counts, and what happened since the last line), and a last
  line on :meth:`JobProgress.close`;
* ``quiet``: nothing.

Results and the summary are not its business (they go to stdout). Every method is thread-safe
(the scheduler reports retries from pymesos' IO thread) and never raises into the caller for a
model it was not told about. The clock is injectable, so the plain lines are testable without
sleeping; ``Console(file=io.StringIO(), force_terminal=True)`` tests the bars without a terminal.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TextColumn,
                           TimeRemainingColumn)
from rich.text import Text

from framework.packing import RESOURCE_NAMES, Resources
from framework.rounds import RoundDecision

Mode = Literal["auto", "live", "plain", "quiet"]

PLAIN_INTERVAL_SECONDS = 5.0
"""At most one plain progress line this often."""

RECENT_EVENTS = 50
"""How many of the latest events a display keeps (for the live status page), in every mode."""


@dataclass
class Counts:
    """Tasks and rows of one model (or of the whole job)."""

    tasks: int = 0
    done: int = 0
    rows: int = 0
    rows_done: int = 0
    rows_before: int = 0
    """Rows done before this run (results taken from the journal): not counted in the rate."""
    tasks_before: int = 0
    started_at: float | None = None
    retries: int = 0
    backups: int = 0
    failed: str | None = None

    def rate(self, now: float) -> float | None:
        """Rows per second computed in this run since its first task started (None before any row
        is done)."""
        rows = self.rows_done - self.rows_before
        if self.started_at is None or rows <= 0 or now <= self.started_at:
            return None
        return rows / (now - self.started_at)

    def eta(self, now: float) -> float | None:
        """Seconds left at this run's rate so far, by rows (or by tasks when rows are unknown)."""
        if self.started_at is None or now <= self.started_at:
            return None
        rate = self.rate(now)
        if self.rows and rate:
            return (self.rows - self.rows_done) / rate
        done = self.done - self.tasks_before
        if done > 0:
            return (self.tasks - self.done) / (done / (now - self.started_at))
        return None

    def to_json(self, now: float) -> dict[str, Any]:
        """These counts as a JSON object (rate and ETA as of ``now``)."""
        rate, eta = self.rate(now), self.eta(now)
        return {"tasks": self.tasks, "done": self.done, "rows": self.rows, "rows_done": self.rows_done,
                "resumed": self.tasks_before, "retries": self.retries, "backups": self.backups,
                "failed": self.failed, "rows_per_second": None if rate is None else round(rate, 3),
                "eta_seconds": None if eta is None or self.done >= self.tasks else round(eta, 1)}


@dataclass
class _Pending:
    """What happened since the last plain line."""

    retries: list[str] = field(default_factory=list)
    backups: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _RowsPerSecond(ProgressColumn):
    """rows/s of a bar, from its ``rows_done`` field and its elapsed time."""

    def render(self, task: Task) -> Text:
        rows, elapsed = task.fields.get("rows_done", 0), task.elapsed
        if not rows or not elapsed:
            return Text("- rows/s", style="progress.data.speed")
        return Text(f"{rows / elapsed:,.0f} rows/s", style="progress.data.speed")


class JobProgress:
    """Shows a job's progress on ``console`` (default: stderr); see the module docstring."""

    def __init__(self, console: Console | None = None, *, mode: Mode = "auto",
                 interval: float = PLAIN_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic,
                 auto_refresh: bool = True) -> None:
        self.console = console or Console(file=sys.stderr)
        if mode == "auto":
            mode = "live" if self.console.is_terminal else "plain"
        self.mode = mode
        self.interval, self.clock = interval, clock
        self.models: dict[str, Counts] = {}
        self.job = Counts()
        self.waiting_reason: str | None = None
        self.recent: deque[tuple[float, str]] = deque(maxlen=RECENT_EVENTS)
        """The latest events, (wall-clock time, text), kept in every mode (the live status page reads them)."""
        self._lock = threading.RLock()
        self._pending = _Pending()
        self._last_line: float | None = None
        self._dirty = False
        self._closed = False
        self._held = False
        self._held_lines: list[tuple[str, str | None]] = []
        self._bars: dict[str, TaskID] = {}
        self._job_bar: TaskID | None = None
        self._progress: Progress | None = None
        if mode == "live":
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("shards"),
                _RowsPerSecond(), TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                console=self.console, auto_refresh=auto_refresh, refresh_per_second=4, transient=False)

    # --- events ---------------------------------------------------------------------------
    def started(self, model: str, total_tasks: int, rows: int) -> None:
        """``model`` has ``total_tasks`` tasks over ``rows`` rows (called again: more tasks of it,
        as stacking's folds then its predictions)."""
        with self._lock:
            now = self.clock()
            counts = self.models.setdefault(model, Counts())
            counts.tasks += total_tasks
            counts.rows += rows
            self.job.tasks += total_tasks
            self.job.rows += rows
            for c in (counts, self.job):
                if c.started_at is None:
                    c.started_at = now
            if self._progress is not None:
                if self._job_bar is None:
                    self._job_bar = self._progress.add_task("[bold]job[/bold]", total=0, rows_done=0, note="")
                if not self._progress.live.is_started and not self._held and not self._closed:
                    self._progress.start()
                if model in self._bars:
                    self._progress.update(self._bars[model], total=counts.tasks)
                else:
                    self._bars[model] = self._progress.add_task(escape(model), total=counts.tasks, rows_done=0,
                                                                note="")
                if self._job_bar is not None:
                    self._progress.update(self._job_bar, total=self.job.tasks)
            self._changed()

    def task_done(self, model: str, rows: int, task: str | None = None, resumed: bool = False) -> None:
        """One task (``task``) of ``model`` finished with ``rows`` rows; ``resumed``: its result came
        from the journal of an earlier run (counted as done, not in the rate)."""
        with self._lock:
            counts = self._counts(model)
            for c in (counts, self.job):
                c.done += 1
                c.rows_done += rows
                if resumed:
                    c.tasks_before += 1
                    c.rows_before += rows
            if self._progress is not None:
                for bar, c in ((self._bars.get(model), counts), (self._job_bar, self.job)):
                    if bar is not None:
                        self._progress.update(bar, completed=c.done, rows_done=c.rows_done - c.rows_before)
                        if c.done >= c.tasks:
                            self._progress.stop_task(bar)  # its clock (rows/s) stops with it
            self._changed()

    def retry(self, model: str, task: str, reason: str) -> None:
        """An attempt of ``task`` failed (``reason``) and will run again."""
        with self._lock:
            self._counts(model).retries += 1
            self.job.retries += 1
            self._event(f"retry {task}: {reason}", self._pending.retries, "yellow")

    def backup(self, model: str, task: str, agent: str | None = None) -> None:
        """A backup copy of straggling ``task`` started (on ``agent``)."""
        with self._lock:
            self._counts(model).backups += 1
            self.job.backups += 1
            where = f" on {agent}" if agent else ""
            self._event(f"backup copy of {task}{where} (it straggles)", self._pending.backups, "cyan")

    def member_failed(self, model: str, reason: str) -> None:
        """``model`` was given up (the job goes on without it, or fails)."""
        with self._lock:
            self._counts(model).failed = reason
            if self._progress is not None and model in self._bars:
                self._progress.update(self._bars[model], note="[red]failed[/red]")
            self._event(f"member {model} failed: {reason}", self._pending.failed, "red")

    def waiting(self, reason: str | None) -> None:
        """Why tasks wait now (None: nothing waits): kept beside the job's bar; a line is printed
        only when the reason itself changes, not when just the number of waiting tasks does."""
        with self._lock:
            if reason == self.waiting_reason:
                return
            new_kind = _without_count(reason) != _without_count(self.waiting_reason)
            self.waiting_reason = reason
            if self._progress is not None and self._job_bar is not None:
                self._progress.update(self._job_bar, note=f"[yellow]{escape(reason)}[/yellow]" if reason else "")
            if reason and new_kind:
                self._event(f"waiting: {reason}", self._pending.notes, "yellow")
            else:
                self._changed()

    def note(self, message: str) -> None:
        """Anything else worth a line (subscribed to a master, a phase begins)."""
        with self._lock:
            self._event(message, self._pending.notes, None)

    def tick(self) -> None:
        """Call now and then (the job's loop does, every half second): a plain line when one is due."""
        with self._lock:
            if self.mode == "plain" and self._dirty:
                self._maybe_line(force=False)

    def hold(self) -> None:
        """Show nothing until :meth:`release` (events are still counted and kept): a job holds its
        display until the master accepted the framework, so that a run refused before anything
        starts (a bad secret, say) writes only its error line."""
        with self._lock:
            self._held = True

    def release(self) -> None:
        """Show what was held back, and go on showing events as they happen."""
        with self._lock:
            if not self._held:
                return
            self._held = False
            if self._closed or self.mode == "quiet":
                return
            if self._progress is not None:
                for text, style in self._held_lines:
                    self._print_event(text, style)
                self._held_lines.clear()
                if self._bars and not self._progress.live.is_started:
                    self._progress.start()
            elif self._dirty:
                self._maybe_line(force=True)

    def close(self) -> None:
        """Stop the bars (leaving them on screen) or write the last plain line (nothing while held)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._held:
                return
            if self._progress is not None:
                if self._progress.live.is_started:
                    self._progress.stop()
            elif self.mode == "plain" and (self._dirty or self._last_line is None) and self.job.tasks:
                self._maybe_line(force=True)

    def to_json(self) -> dict[str, Any]:
        """The counts so far (the job's, each model's), the waiting reason and the recent events."""
        with self._lock:
            now = self.clock()
            return {"job": self.job.to_json(now), "models": {m: c.to_json(now) for m, c in self.models.items()},
                    "waiting": self.waiting_reason, "events": list(self.recent)}

    def log_handler(self) -> logging.Handler:
        """A logging handler that writes through this display's console (above the bars, which a
        plain ``StreamHandler`` on stderr would tear)."""
        from rich.logging import RichHandler

        return RichHandler(console=self.console, show_path=False, markup=False, rich_tracebacks=False)

    def __enter__(self) -> "JobProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ------------------------------------------------------------------------
    def _counts(self, model: str) -> Counts:
        return self.models.setdefault(model, Counts())

    def _event(self, text: str, bucket: list[str], style: str | None) -> None:
        self.recent.append((time.time(), text))
        if self.mode == "quiet" or self._closed:
            return
        if self._progress is not None:
            if self._held:
                self._held_lines.append((text, style))
            else:
                self._print_event(text, style)
            return
        bucket.append(text)
        self._changed()

    def _print_event(self, text: str, style: str | None) -> None:
        assert self._progress is not None
        line = escape(text)
        self._progress.console.print(f"[{style}]{line}[/{style}]" if style else line, highlight=False)

    def _changed(self) -> None:
        self._dirty = True
        if self.mode == "plain" and not self._closed:
            self._maybe_line(force=False)

    def _maybe_line(self, force: bool) -> None:
        if self._held:
            return
        now = self.clock()
        if not force and self._last_line is not None and now - self._last_line < self.interval:
            return
        self._last_line, self._dirty = now, False
        self.console.print(self.plain_line(now), markup=False, highlight=False, soft_wrap=True)
        self._pending = _Pending()

    def plain_line(self, now: float) -> str:
        """The job's state as one line (what plain mode prints)."""
        job = self.job
        if not job.tasks:  # nothing started yet: only what happened
            return " | ".join(self._pending.notes + self._pending.retries + self._pending.backups
                              + self._pending.failed) or "progress: no tasks yet"
        parts = [f"progress: {job.done}/{job.tasks} shards"
                 + (f" ({job.done / job.tasks:.0%})" if job.tasks else "")
                 + (f", {job.rows_done}/{job.rows} rows" if job.rows else "")]
        rate, eta = job.rate(now), job.eta(now)
        if rate is not None:
            parts.append(f"{rate:,.0f} rows/s")
        if eta is not None and job.done < job.tasks:
            parts.append(f"ETA {_duration(eta)}")
        line = ", ".join(parts)
        if self.models:
            line += " | " + ", ".join(f"{name} {c.done}/{c.tasks}" + (" failed" if c.failed else "")
                                      for name, c in self.models.items())
        pending = self._pending
        for label, items in (("retries", pending.retries), ("backups", pending.backups),
                             ("dropped", pending.failed)):
            if items:
                more = f" (+{len(items) - 1} more)" if len(items) > 1 else ""
                line += f" | {label}: {items[0]}{more}"
        for text in pending.notes:
            if not text.startswith("waiting: "):
                line += f" | {text}"
        if self.waiting_reason and job.done < job.tasks:
            line += f" | waiting: {self.waiting_reason}"
        return line


class CallbackProgress(JobProgress):
    """A display that shows nothing itself and hands every event to ``callback`` as one message
    (``"done KEY"`` for a finished task, as ``run`` printed before the display existed): for
    callers that pass ``progress=`` a plain function (tests that stop a job after N results,
    benchmarks that time-stamp its events)."""

    def __init__(self, callback: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(Console(file=io.StringIO()), mode="quiet", clock=clock)
        self.callback = callback

    def started(self, model: str, total_tasks: int, rows: int) -> None:
        super().started(model, total_tasks, rows)
        self.callback(f"{total_tasks} task(s) of {model} ({rows} rows)")

    def task_done(self, model: str, rows: int, task: str | None = None, resumed: bool = False) -> None:
        super().task_done(model, rows, task, resumed)
        if not resumed:
            self.callback(f"done {task or model}")

    def retry(self, model: str, task: str, reason: str) -> None:
        super().retry(model, task, reason)
        self.callback(f"retry {task}: {reason}")

    def backup(self, model: str, task: str, agent: str | None = None) -> None:
        super().backup(model, task, agent)
        self.callback(f"backup copy of {task}" + (f" on {agent}" if agent else ""))

    def member_failed(self, model: str, reason: str) -> None:
        super().member_failed(model, reason)
        self.callback(f"member {model} failed: {reason}")

    def waiting(self, reason: str | None) -> None:
        changed = reason != self.waiting_reason
        super().waiting(reason)
        if changed and reason:
            self.callback(f"waiting: {reason}")

    def note(self, message: str) -> None:
        super().note(message)
        self.callback(message)


def as_progress(progress: "JobProgress | Callable[[str], None] | None") -> JobProgress:
    """What a job reports to: a display as given, a plain function wrapped in
    :class:`CallbackProgress`, or (None) a display that shows nothing."""
    if isinstance(progress, JobProgress):
        return progress
    if progress is None:
        return JobProgress(Console(file=io.StringIO()), mode="quiet")
    return CallbackProgress(progress)


def _without_count(reason: str | None) -> str | None:
    """A waiting reason without its leading "N tasks wait" (which changes with every task)."""
    return None if reason is None else re.sub(r"^\d+ tasks? waits?:? ?", "", reason)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def for_stderr(quiet: bool = False) -> JobProgress:
    """The command line's display: bars when stderr is a terminal, plain lines otherwise, or
    nothing with ``--quiet``."""
    return JobProgress(Console(file=sys.stderr), mode="quiet" if quiet else "auto")


def exhausted_on(decision: RoundDecision, need: Resources, task_resources: Mapping[str, Resources]) -> Counter[str]:
    """Per resource, on how many of the round's agents what its launches leave is less than ``need``
    (an agent's capacity as packed, less its tasks' ``task_resources`` by model)."""
    short: Counter[str] = Counter()
    for launch in decision.launches:
        used = sum((task_resources.get(t.model, Resources()) for t in launch.tasks), Resources())
        left = launch.agent.capacity - used
        for name in RESOURCE_NAMES:
            if getattr(need, name) > getattr(left, name) + 1e-9:
                short[name] += 1
    return short


def _agents(n: int) -> str:
    return f"{n} agent{'s' if n != 1 else ''}"


def waiting_reason(decision: RoundDecision | None, pending: int,
                   task_resources: Mapping[str, Resources] | None = None) -> str | None:
    """Why ``pending`` tasks wait, from the last offer round's decision, e.g. "3 tasks wait: mem
    exhausted on 2 agents" (None when nothing waits). ``task_resources``: per model, one task's
    resources (``JobCatalog.task_resources``), to say which resource the launches used up."""
    if pending <= 0:
        return None
    tasks = f"{pending} task{'s' if pending != 1 else ''} wait{'s' if pending == 1 else ''}"
    if decision is None:
        return f"{tasks} for the first offers"
    plan = decision.plan
    exhausted: Counter[str] = Counter()
    filtered: Counter[str] = Counter()
    if plan is not None:
        for unplaced in plan.unplaced.values():
            for name, n in unplaced.exhausted.items():
                exhausted[name] = max(exhausted[name], n)
            for name, n in unplaced.filtered.items():
                filtered[name] = max(filtered[name], n)
    if not exhausted and not filtered and task_resources:
        # Scarce offers: the packer was given only the tasks that fit; say what the others lacked.
        smallest = Resources(**{name: min(getattr(r, name) for r in task_resources.values())
                                for name in RESOURCE_NAMES})
        exhausted = exhausted_on(decision, smallest, task_resources)
    reasons = [f"{name} exhausted on {_agents(n)}" for name, n in exhausted.most_common() if n]
    reasons += [f"{_agents(n)} excluded by {name}" for name, n in filtered.most_common() if n]
    if reasons:
        return f"{tasks}: {'; '.join(reasons[:2])}"
    never = [d for d in decision.declines if d.reason == "never_fits"]
    if never and not decision.launches:
        return f"{tasks}: {_agents(len(never))} offer too little for any of them"
    return f"{tasks} for offers ({_agents(len(decision.agents_seen))} in the last round)"
