"""Serving benchmark (issue 15): ``mesos-ensemble serve`` side by side with an in-process baseline,
driven by one open-loop load generator.  Prints a table per rate and the ratios the targets need.

    .venv/bin/python bench/serve_bench.py [--quick] [--only both|project|baseline] [--target-p99-ms 100]

Members (why these): a random forest (100 trees), a histogram gradient boosting model and a
logistic regression, trained on a generated 20-feature classification problem, dumped with
joblib as users have them, integrated by ``soft_vote``.  Requests carry 1-10 rows (uniformly
drawn), as online callers send them.  At that size the per-call cost dominates: a forest's
``predict_proba`` costs ~15 ms for 1 row and only ~20 ms for 256 (one Python-level pass per
tree), the boosting model ~2 ms, the logistic regression ~0.3 ms, so how the work of concurrent
requests is scheduled (batched or not, balanced or not) is what decides the latency, which is
the point of a serving layer.

Both sides get the same cores:
- **project**: ``mesos-ensemble serve`` on the embedded cluster, whose agents (``--agents``,
  two by default, priced 1.0 and 2.0 per hour so that scale-down has an expensive agent to
  release) share this machine's cores between them (``os.cpu_count()`` cpus in all).  A
  replica asks for 0.5 cpus (forest), 0.25 (boosting) or 0.1 (logistic regression), each member
  1..cores replicas (the logistic regression 1..cores/2): at their most they declare 80 % of
  the cores, so the packer cannot place more replicas than the cores can run; each member keeps
  ``--standby`` standby replicas (0 by default, as ``serve``'s own default: the least-cost
  deployment; ``--standby 1``: each member keeps one ready replica out of the gateway's table,
  routed at once on a scale-up; they hold the second agent, so the cost at base load is 3.0 per
  hour, not 1.0);
- **baseline**: the same members behind a plain aiohttp server with ``os.cpu_count()`` worker
  processes sharing one listening socket (as gunicorn's pre-fork workers do), each loading every
  member with joblib and limited to one BLAS/OpenMP thread (no oversubscription).  Each request:
  parse the JSON rows, every member predicts, the job's combiner (``framework.ensemble``, the
  code the batch job uses) integrates, a JSON answer in the gateway's format.  Each connection
  is closed after its answer, as gunicorn's sync workers do, so that a new request is accepted
  by an idle worker instead of queueing behind a busy one on a kept-alive connection
  (``--baseline-keepalive`` keeps them open).  Same request format as the gateway's
  ``POST /v1/predict``, so one client drives both; the script checks that both give the same
  answers to the same requests before it measures.

The load generator is open loop (asyncio + a pooled keep-alive aiohttp client): Poisson arrivals
are drawn ahead and each request is sent at its scheduled time whether or not earlier ones have
answered; its latency runs from the *scheduled* time to the answer, so time queued anywhere
(client pool, server, replicas) counts and coordinated omission is avoided.  A failed or timed
out request counts as an infinite latency.  The generator runs on the same machine as the
servers (it takes a share of the cores from both sides alike).

Phases (after priming each side at the starting rate, 10 s; 3 s with ``--quick``):
1. **sweep**: rates rising geometrically; a rate meets the SLO when p99 <= ``target_p99_ms``,
   and errors <= 0.1 % (latency counts from the schedule, so a server that falls behind misses
   the p99); a side stops at its first miss, then the gap between its last pass and first miss
   is bisected.  Max rate at SLO per side.  Each rate is measured in its steady state: the
   project first runs at that rate, in 2 s slices, until it has stopped scaling (its ready
   replicas in ``/metrics`` unchanged for 6 s, 4 s with ``--quick``, and the last slice within
   the SLO or every member at its ``max_replicas``; at most 60 s, 20 s with ``--quick``), since
   a replica starting mid-measurement (model load, probe, warm-up on the same cores) is a
   transient, which phase 3 measures; then both sides get the warm-up seconds whose samples
   are dropped (5 s, 1 s with ``--quick``) and the measured seconds (10 s, 3 s).
   ``--no-settle`` measures without the settling.
2. **half**: both sides at half the baseline's max rate, longer; p99 ratio.  The project first
   settles at that rate as in the sweep (the sweep's last rates leave it scaled up: its scale-down
   would otherwise fall inside the measurement).
3. **step and fall** (project; the baseline too, for reference, except with ``--quick``): base
   load (a quarter of 75 % of the project's max rate) until the project's ready replicas are
   down to the members' ``min_replicas`` (or have not fallen for the scale-down delay + 10 s),
   then 4x the base: recovery = time from the step until the p99 of every request sent from then
   to the high phase's end (at least 5 s of it; by send time, stride 0.25 s) is within the
   target; the end of the last 1 s window over the target is printed beside it (the strictest
   reading, which at 3/4 of the machine's capacity also counts isolated noisy seconds); then back to the base rate while
   ``/metrics`` is polled every 0.5 s: cost per hour (``mesos_ensemble_cost_per_hour``) against
   the packer's lower bound (``mesos_ensemble_cost_lower_bound_per_hour``), and the time from the
   fall until the cost stays within 10 % of the bound (the gauge is the bound for the replicas
   the autoscaler wants now, so it is also compared with the cost at the settled base load
   before the step: back within 10 % of that, and when).  The job's ``scale_down_delay_s`` is the
   design's default, 30 s (10 s with ``--quick``).  Printed with it: the p99 of every 1 s window
   over the target (from 1 s before the step), and the deployment's events from 3 s before the
   step to 5 s after the recovery (``serve.sqlite3``: the scale decisions with the load they read,
   launches, standby replicas routed, each new replica's start step by step), so the recovery's
   time can be read as decision delay, offer, executor start, import and load, health check and
   the backlog draining.  ``--step-only`` runs this phase alone (at ``--step-base``, 30.1 rps by
   default: the quiet full run's), ``--step-high`` and ``--fall-seconds`` set its lengths.

``--profile-rate R`` (repeatable) replaces the phases: the project alone at R requests per second
(open loop, after settling as the sweep does) for ``--profile-seconds`` (25 by default), printing
p50/p99 and, per process, the CPU seconds per answered request (``/proc/<pid>/stat`` user + system
before and after: ``serve``, which holds the gateway, the controller and the embedded cluster; each
executor, found below ``serve`` whatever session the agent started it in; this load generator),
with each member's calls per request, rows per call and hedges (``/metrics``).  CPU per request is
the figure to compare on a shared machine, where walls are noisy.  An executor started during the
measurement (a scale-up) is counted from its start and marked.  ``--fixed-replicas N`` pins each
member at N replicas (at most its max), so that two versions are compared on one deployment.

``--quick`` (about a minute and a half of load on a quiet 2-core machine, plus training and
start-up) shortens every phase for checking the script; its figures are not the benchmark's.
The full run takes about 15 minutes.  ``--keep DIR`` keeps the job, the models (reused by the
next run with the same ``--keep``) and serve's log.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import joblib
import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import process_cpu  # noqa: E402
from framework import ensemble  # noqa: E402

INTEGRATION = "soft_vote"
OUTPUT = "predict_proba"
FEATURES = 20
# Per member: each replica's cpus, and its most replicas per core of the machine.  At their most
# the replicas declare 0.8 of the cores (1 x 0.5 + 1 x 0.25 + 0.5 x 0.1 per core), the rest being
# the executors' and the gateway's, so the autoscaler cannot start more replicas than the cores run.
REPLICA_CPUS = {"forest": 0.5, "boosting": 0.25, "logistic": 0.1}
MAX_PER_CORE = {"forest": 1.0, "boosting": 1.0, "logistic": 0.5}
MIN_REPLICAS = 1


def replica_bounds(cores: int, fixed: int | None = None) -> dict[str, tuple[float, int, int]]:
    """Per member: (cpus, min_replicas, max_replicas) for a machine of ``cores`` cores; ``fixed``:
    min and max both ``fixed`` (at most the member's max), a deployment that does not scale."""
    bounds = {name: (cpus, MIN_REPLICAS, max(MIN_REPLICAS, int(MAX_PER_CORE[name] * cores)))
              for name, cpus in REPLICA_CPUS.items()}
    if fixed is None:
        return bounds
    return {name: (cpus, min(fixed, high), min(fixed, high)) for name, (cpus, _low, high) in bounds.items()}
AGENT_PRICES = (1.0, 2.0)


# ---------------------------------------------------------------------------------------------
# Members, job file and requests


def make_members(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The ensemble; the forest trains on every core, then predicts on one (as served)."""
    forest = RandomForestClassifier(n_estimators=100, max_depth=12, random_state=0, n_jobs=-1).fit(x, y)
    forest.set_params(n_jobs=1)
    return {
        "forest": forest,
        "boosting": HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(x, y),
        "logistic": LogisticRegression(max_iter=2000).fit(x, y),
    }


def member_specs(members: dict[str, Any]) -> list[ensemble.MemberSpec]:
    return [ensemble.MemberSpec(name=name, kind="classifier", output="predict_proba",
                                classes=tuple(model.classes_.tolist())) for name, model in members.items()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_job(directory: Path, paths: dict[str, Path], data: Path, address: str, cores: int, agents: int,
              target_p99_ms: float, scale_down_delay_s: float, standby: int = 0, fixed: int | None = None) -> Path:
    """The job file as a user writes it, with its ``[serve]`` table; agents share ``cores`` cpus."""
    lines = ["[job]", 'name = "serve-bench"', f'integration = "{INTEGRATION}"', 'output = "out.csv"', "",
             "[data]", f'path = "{data.name}"', 'label = "target"', ""]
    for name, path in paths.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        cpus = REPLICA_CPUS[name]
        lines += ["[[models]]", f'name = "{name}"', f'path = "{path.name}"', f'sha256 = "{digest}"',
                  'kind = "classifier"', f'output = "{OUTPUT}"', f"cpus = {cpus}", "mem = 512", ""]
    lines += ["[serve]", f'address = "{address}"', f"target_p99_ms = {target_p99_ms:g}", "max_batch_rows = 256",
              "max_wait_ms = 2", "hedge = true", "scale_interval_s = 1", f"scale_down_delay_s = {scale_down_delay_s:g}",
              ""]
    for name, (_, low, high) in replica_bounds(cores, fixed).items():
        lines += [f"[serve.models.{name}]", f"min_replicas = {low}", f"max_replicas = {high}",
                  f"standby_replicas = {standby}", ""]
    hostnames = [f"serve-{chr(ord('a') + i)}" for i in range(agents)]
    share = round(cores / agents, 3)
    entries = ", ".join(f'{{ hostname = "{h}", cpus = {share}, mem = 8192 }}' for h in hostnames)
    prices = ", ".join(f'"{h}" = {AGENT_PRICES[i % len(AGENT_PRICES)]}' for i, h in enumerate(hostnames))
    lines += ["[local_cluster]", f"agents = [{entries}]", "", "[pricing]", f"by_hostname = {{ {prices} }}", ""]
    path = directory / "serve-bench.toml"
    path.write_text("\n".join(lines))
    return path


def request_bodies(x: np.ndarray, columns: Sequence[str], count: int, max_rows: int, seed: int) -> list[bytes]:
    """``count`` JSON bodies of 1..max_rows named-column rows, as ``POST /v1/predict`` takes them."""
    rng = np.random.default_rng(seed)
    bodies = []
    for _ in range(count):
        picked = x[rng.integers(0, len(x), size=int(rng.integers(1, max_rows + 1)))]
        rows = [dict(zip(columns, map(float, row))) for row in picked]
        bodies.append(json.dumps({"rows": rows}).encode())
    return bodies


# ---------------------------------------------------------------------------------------------
# Open-loop load generator


@dataclass(frozen=True)
class Sample:
    sent: float
    """Scheduled send time, seconds from the run's start."""
    latency: float
    """Seconds from the scheduled send time to the full answer; inf when it failed or timed out."""
    lag: float = 0.0
    """Seconds the generator itself sent it late (its loop was busy): part of ``latency``."""


@dataclass
class Trial:
    rate: float
    duration: float
    samples: list[Sample]
    finished: float
    """Seconds from the run's start until the last answer (or failure)."""

    @property
    def latencies(self) -> np.ndarray:
        return np.array([s.latency for s in self.samples])

    def percentile_ms(self, q: float) -> float:
        values = self.latencies
        return float(np.percentile(values, q, method="higher")) * 1000 if len(values) else math.inf

    @property
    def errors(self) -> int:
        return int(np.sum(~np.isfinite(self.latencies)))

    @property
    def achieved(self) -> float:
        ok = len(self.samples) - self.errors
        return ok / max(self.duration, self.finished)

    @property
    def lag_p99_ms(self) -> float:
        """How late the generator itself sent (p99): if near the target, the client is the limit."""
        return float(np.percentile([s.lag for s in self.samples], 99)) * 1000 if self.samples else 0.0

    def meets(self, target_ms: float) -> bool:
        n = len(self.samples)
        # p99 within the target implies the server kept up with the schedule (latency counts from it)
        return n > 0 and self.percentile_ms(99) <= target_ms and self.errors <= 0.001 * n


def poisson_arrivals(segments: Sequence[tuple[float, float]], rng: np.random.Generator) -> np.ndarray:
    """Send times of a Poisson process whose rate is ``rate`` for ``seconds``, segment after segment
    (memoryless, so a rate change at a segment's start is exact)."""
    times: list[np.ndarray] = []
    start = 0.0
    for rate, seconds in segments:
        expected = int(rate * seconds * 1.2 + 50)
        gaps = rng.exponential(1.0 / rate, size=expected)
        at = start + np.cumsum(gaps)
        while at[-1] < start + seconds:
            at = np.concatenate([at, at[-1] + np.cumsum(rng.exponential(1.0 / rate, size=expected))])
        times.append(at[at < start + seconds])
        start += seconds
    return np.concatenate(times) if times else np.empty(0)


async def run_load(session: Any, url: str, bodies: Sequence[bytes], arrivals: np.ndarray,
                   timeout: float) -> tuple[list[Sample], float]:
    """Send ``bodies`` (cycled) at ``arrivals``; return the samples and when the last one ended."""
    import aiohttp

    loop = asyncio.get_running_loop()
    samples: list[Sample] = []
    t0 = loop.time() + 0.05
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    last = [0.0]

    async def one(at: float, body: bytes) -> None:
        lag = loop.time() - t0 - at
        try:
            async with session.post(url, data=body, timeout=client_timeout,
                                    headers={"Content-Type": "application/json"}) as response:
                await response.read()
                ok = response.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            ok = False
        now = loop.time()
        last[0] = max(last[0], now - t0)
        samples.append(Sample(at, now - t0 - at if ok else math.inf, lag))

    tasks = []
    for i, at in enumerate(arrivals):
        delay = t0 + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(float(at), bodies[i % len(bodies)])))
    await asyncio.gather(*tasks)
    samples.sort(key=lambda s: s.sent)
    return samples, last[0]


async def trial(session: Any, url: str, bodies: Sequence[bytes], rate: float, seconds: float, warmup: float,
                timeout: float, seed: int) -> Trial:
    """One rate: ``warmup`` seconds whose samples are dropped, then ``seconds`` measured."""
    rng = np.random.default_rng(seed)
    arrivals = poisson_arrivals([(rate, warmup + seconds)], rng)
    samples, finished = await run_load(session, url, bodies, arrivals, timeout)
    kept = [Sample(s.sent - warmup, s.latency, s.lag) for s in samples if s.sent >= warmup]
    return Trial(rate, seconds, kept, finished - warmup)


def window_p99s(samples: Sequence[Sample], start: float, end: float, window: float,
                stride: float) -> list[tuple[float, float]]:
    """(window start, p99 seconds) of the requests sent in each [t, t + window) within [start, end)."""
    sent = np.array([s.sent for s in samples])
    latency = np.array([s.latency for s in samples])
    out = []
    t = start
    while t + window <= end + 1e-9:
        inside = latency[(sent >= t) & (sent < t + window)]
        if len(inside):
            out.append((t, float(np.percentile(inside, 99, method="higher"))))
        t += stride
    return out


RECOVERY_HOLD = 5.0
"""The step's recovery counts only once at least this many seconds of the high phase follow it."""


def recovery_seconds(samples: Sequence[Sample], step_at: float, end: float, target_s: float,
                     hold: float = RECOVERY_HOLD, stride: float = 0.25) -> float | None:
    """Seconds from ``step_at`` until p99 is back under the target for the rest of the high phase:
    the first ``t`` (stride 0.25 s) such that the p99 of every request sent in [t, end) is within
    ``target_s``, with at least ``hold`` seconds of the phase left; 0 when the whole phase is
    within it; None when not even its last ``hold`` seconds are (not recovered).  One noisy 1 s
    window late in a phase near the machine's capacity does not undo a recovery; a p99 that stays
    over the target for the rest of the phase does."""
    sent = np.array([s.sent for s in samples])
    latency = np.array([s.latency for s in samples])
    t = step_at
    while t <= end - hold + 1e-9:
        rest = latency[(sent >= t) & (sent < end)]
        if len(rest) and float(np.percentile(rest, 99, method="higher")) <= target_s:
            return t - step_at
        t += stride
    return None


def last_window_over(samples: Sequence[Sample], step_at: float, end: float, target_s: float,
                     window: float = 1.0) -> float | None:
    """Seconds from ``step_at`` to the end of the last 1 s window (within [step_at, end)) whose p99
    exceeds the target (the strictest reading of a recovery): 0 when none does; None when the last
    window still does."""
    windows = window_p99s(samples, step_at, end, window, window / 4)
    bad = [t for t, p99 in windows if p99 > target_s]
    if not bad:
        return 0.0
    if windows and windows[-1][1] > target_s:
        return None
    return bad[-1] + window - step_at


# ---------------------------------------------------------------------------------------------
# The baseline: one process per core, every member in each


def _baseline_worker(sock: socket.socket, paths: dict[str, str], specs: list[ensemble.MemberSpec],
                     columns: list[str], keepalive: bool, ready: Any) -> None:
    from aiohttp import web
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    models = {name: joblib.load(path) for name, path in paths.items()}
    threadpool_limits(1)  # after loading: the members' OpenMP/BLAS libraries are loaded by then
    combiner = ensemble.make_combiner(INTEGRATION, specs)
    classes = np.asarray(combiner.classes)
    proba_names = [f"proba_{c}" for c in classes.tolist()]

    async def predict(request: web.Request) -> web.Response:
        try:
            rows = (await request.json())["rows"]
            x = np.array([[row[c] for c in columns] for row in rows], dtype=np.float64)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"bad request body: {exc}"}, status=400)
        outputs = {name: getattr(model, OUTPUT)(x) for name, model in models.items()}
        result = combiner.combine(outputs)
        predictions = [{"label": label,
                        "proba": {str(c): float(record[n]) for c, n in zip(classes.tolist(), proba_names)}}
                       for label, record in zip(result["prediction"].tolist(), result)]
        response = web.json_response({"predictions": predictions, "answered_by": list(models), "missing": []})
        if not keepalive:
            response.force_close()
        return response

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/v1/predict", predict)
        app.router.add_get("/v1/health", health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        ready.set()
        await asyncio.Event().wait()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(serve())


class Baseline:
    """``workers`` spawned processes sharing one listening socket on loopback."""

    def __init__(self, workers: int, paths: dict[str, Path], specs: list[ensemble.MemberSpec],
                 columns: list[str], keepalive: bool) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        context = multiprocessing.get_context("spawn")  # no fork after OpenMP has run in this process
        self.ready = [context.Event() for _ in range(workers)]
        files = {n: str(p) for n, p in paths.items()}
        self.processes = [context.Process(target=_baseline_worker, daemon=True,
                                          args=(self.sock, files, specs, columns, keepalive, ready))
                          for ready in self.ready]

    def __enter__(self) -> Baseline:
        for process in self.processes:
            process.start()
        for ready, process in zip(self.ready, self.processes):
            while not ready.wait(0.5):
                if not process.is_alive():
                    raise RuntimeError(f"baseline worker exited with {process.exitcode}")
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join(10)
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# The project: `mesos-ensemble serve JOB.toml`


class Project:
    """``mesos-ensemble serve`` in its own process group; ready when the gateway's health says so."""

    def __init__(self, job: Path, address: str, state_dir: Path, log: Path, start_timeout: float) -> None:
        self.job, self.url, self.state_dir, self.log_path = job, f"http://{address}", state_dir, log
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.started_in = math.nan

    def __enter__(self) -> Project:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        self.log = self.log_path.open("wb")
        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "framework.cli", "serve", str(self.job), "--state-dir", str(self.state_dir)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        live = self.state_dir / "serve.json"  # written once every member has a ready replica
        while time.monotonic() - started < self.start_timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}; its output:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/v1/health", timeout=2) as answer:
                    if answer.status == 200 and live.exists():
                        self.started_in = time.monotonic() - started
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.__exit__()
        raise RuntimeError(f"serve's gateway did not answer /v1/health within {self.start_timeout:.0f} s:\n"
                           f"{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # serve drains, kills its replicas, tears down
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own session: serve and what it started
                self.process.wait()
        self.log.close()


# ---------------------------------------------------------------------------------------------
# /metrics


@dataclass
class MetricNames:
    """Which of the gateway's /metrics samples are the cost per hour, its lower bound and the
    ready replicas (the gateway's names; ``name{label=value}`` sums the samples with that label)."""

    cost: str = "mesos_ensemble_cost_per_hour"
    bound: str = "mesos_ensemble_cost_lower_bound_per_hour"
    replicas: str = "mesos_ensemble_replicas{state=ready}"

    def pick(self, samples: list[tuple[str, dict[str, str], float]]) -> dict[str, float | None]:
        return {"cost": select(samples, self.cost), "bound": select(samples, self.bound),
                "replicas": select(samples, self.replicas)}


def select(samples: list[tuple[str, dict[str, str], float]], selector: str) -> float | None:
    """The sum of the samples ``name`` or ``name{label=value,...}`` selects; None when none does."""
    match = re.fullmatch(r"([^{]+)(?:\{(.*)\})?", selector.strip())
    if match is None:
        return None
    name, wanted = match.group(1), dict(part.split("=", 1) for part in (match.group(2) or "").split(",") if part)
    values = [value for sample_name, labels, value in samples
              if sample_name == name and all(labels.get(k) == v.strip('"') for k, v in wanted.items())]
    return sum(values) if values else None


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus text page: (name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(text) for sample in family.samples]


@dataclass
class MetricsLog:
    points: list[tuple[float, dict[str, float | None]]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


async def poll_metrics(session: Any, url: str, names: MetricNames, log: MetricsLog, t0: float,
                       interval: float = 0.5) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            async with session.get(url + "/metrics") as answer:
                samples = parse_samples(await answer.text())
            log.names = sorted({name for name, _, _ in samples})
            log.points.append((loop.time() - t0, names.pick(samples)))
        except Exception:  # noqa: BLE001  (a missed poll is a gap in the curve, not a failure)
            pass
        await asyncio.sleep(interval)


async def read_metric(session: Any, url: str, names: MetricNames) -> dict[str, float | None]:
    async with session.get(url + "/metrics") as answer:
        return names.pick(parse_samples(await answer.text()))


# ---------------------------------------------------------------------------------------------
# Phases


@dataclass
class Settings:
    target_ms: float
    seconds: float
    warmup: float
    factor: float
    start_rate: float
    max_rate: float
    bisect: int
    half_seconds: float
    base_settle_max: float
    step_pre: float
    step_high: float
    fall_seconds: float
    timeout: float
    scale_down_delay: float
    prime_seconds: float
    stable: float = 6.0
    """Seconds a rate's ready replicas stay unchanged before the sweep measures it (``settle_at``)."""
    settle_max: float = 60.0
    """Most seconds the sweep lets the project settle at one rate (0: no settling)."""


def post_json(url: str, body: bytes, timeout: float) -> bytes:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return bytes(answer.read())


def quiet_until_idle(url: str, target_ms: float, limit: float = 30.0) -> None:
    """After an overloaded trial: wait until a lone request answers well inside the target again
    (the server may still be working off the backlog the timed-out requests left)."""

    body = json.dumps({"rows": [{f"f{i:02d}": 0.0 for i in range(FEATURES)}]}).encode()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            post_json(url + "/v1/predict", body, limit)
        except OSError:
            pass
        if (time.monotonic() - started) * 1000 < target_ms / 2:
            return
        time.sleep(0.5)


async def settle_at(session: Any, url: str, bodies: Sequence[bytes], rate: float, s: Settings, names: MetricNames,
                   most: float) -> tuple[float, float | None]:
    """Load at ``rate`` in 2 s slices until the deployment has stopped scaling at that rate: its
    ready replicas (``/metrics``) unchanged for the last ``s.stable`` seconds and the last slice
    within the SLO (or the replicas at their ``most``, where the autoscaler cannot add more);
    at most ``s.settle_max`` seconds.  Returns (seconds spent, ready replicas at the end)."""
    started = time.monotonic()
    steady_since, previous = started, None
    seed = int(rate * 10) + 7
    while True:
        result = await trial(session, url + "/v1/predict", bodies, rate, 2.0, 0.0, s.timeout, seed)
        seed += 1
        try:
            replicas = (await read_metric(session, url, names))["replicas"]
        except Exception:  # noqa: BLE001  (no gauge: nothing to wait for)
            replicas = None
        now = time.monotonic()
        if replicas is None:
            return now - started, None
        if previous is not None and replicas != previous:
            steady_since = now
        previous = replicas
        if now - steady_since >= s.stable and (result.meets(s.target_ms) or replicas >= most):
            return now - started, replicas
        if now - started >= s.settle_max:
            return now - started, replicas


async def sweep(session: Any, sides: dict[str, str], bodies: Sequence[bytes], s: Settings,
                names: MetricNames | None = None, most: float = math.inf) -> dict[str, dict[float, Trial]]:
    """Rising rates, side by side at each rate, until every side has missed; then bisection.

    Each rate is measured in its steady state: the project (which scales with its load) first
    runs at that rate until it has stopped scaling (:func:`settle_at`, when ``names`` is given;
    ``most``: its ready replicas at the members' ``max_replicas``); every side then gets
    ``s.warmup`` seconds of the rate whose samples are dropped, then ``s.seconds`` measured.
    How fast the deployment scales is the step phase's measure, not the sweep's."""
    results: dict[str, dict[float, Trial]] = {name: {} for name in sides}

    async def measure_rate(name: str, rate: float, note: str = "") -> bool:
        settled = ""
        if name == "project" and names is not None and s.settle_max > 0:
            spent, replicas = await settle_at(session, sides[name], bodies, rate, s, names, most)
            settled = f"  settled {spent:.0f} s at {fmt(replicas, 'g')} replicas"
        result = await trial(session, sides[name] + "/v1/predict", bodies, rate, s.seconds, s.warmup, s.timeout,
                             int(rate * 10))
        results[name][rate] = result
        print(f"  {name:<9} {rate:8.1f} rps: p50 {result.percentile_ms(50):8.1f} ms  p99 "
              f"{result.percentile_ms(99):8.1f} ms  achieved {result.achieved:7.1f} rps  errors {result.errors}  "
              f"client lag p99 {result.lag_p99_ms:.1f} ms{settled}{note}"
              f"{'' if result.meets(s.target_ms) else '  (misses the SLO)'}", flush=True)
        if not result.meets(s.target_ms):
            await asyncio.to_thread(quiet_until_idle, sides[name], s.target_ms)
            return False
        return True

    active = set(sides)
    rate = s.start_rate
    while active and rate <= s.max_rate:
        for name in [n for n in sides if n in active]:  # the same arrivals and bodies for both sides
            if not await measure_rate(name, rate):
                active.discard(name)
        rate = round(rate * s.factor, 1)
    for name in sides:
        for _ in range(s.bisect):
            passed = [r for r, t in results[name].items() if t.meets(s.target_ms)]
            if not passed:
                break
            low = max(passed)
            high = min((r for r, t in results[name].items() if r > low and not t.meets(s.target_ms)), default=None)
            if high is None or high / low < 1.05:
                break
            await measure_rate(name, round(math.sqrt(low * high), 1), " (bisection)")
    return results


def max_rate_at_slo(trials: dict[float, Trial], target_ms: float) -> float:
    """The highest rate met below the first rate missed (0 when the lowest already missed)."""
    best = 0.0
    for rate in sorted(trials):
        if not trials[rate].meets(target_ms):
            break
        best = rate
    return best


@dataclass
class StepResult:
    base: float
    recovery: float | None
    high_p99_ms: float
    last_window_over: float | None = None
    """The strictest reading: the end of the last 1 s window over the target (:func:`last_window_over`)."""
    replicas_at_step: float | None = None
    replicas_peak: float | None = None
    replicas_end: float | None = None
    fall_cost_ratio: float | None = None
    fall_within_10pct: float | None = None
    pre_step_cost: float | None = None
    fall_within_10pct_of_pre_step: float | None = None
    cost_points: list[tuple[float, float | None, float | None]] = field(default_factory=list)
    metric_names: list[str] = field(default_factory=list)
    step_wall: float = math.nan
    """The step's wall-clock time (``time.time()``), to place the deployment's events."""
    windows: list[tuple[float, float]] = field(default_factory=list)
    """(seconds from the step, p99 seconds) of each 1 s window (stride 0.5 s) from 1 s before the step."""


async def settle(session: Any, url: str, bodies: Sequence[bytes], base: float, names: MetricNames, floor: int,
                 quiet_for: float, limit: float, seed: int) -> float | None:
    """Base load in 5 s slices until the ready replicas are down to ``floor`` (the members'
    ``min_replicas``), or have not fallen for ``quiet_for`` seconds, or ``limit`` seconds passed."""
    started = last_change = time.monotonic()
    previous: float | None = None
    while time.monotonic() - started < limit:
        await trial(session, url + "/v1/predict", bodies, base, 5.0, 0.0, 30.0, seed)
        seed += 1
        try:
            replicas = (await read_metric(session, url, names))["replicas"]
        except Exception:  # noqa: BLE001  (no gauge: nothing to wait for)
            return None
        if replicas is None or replicas <= floor:
            return replicas
        if previous is None or replicas < previous:
            last_change = time.monotonic()
        elif time.monotonic() - last_change >= quiet_for:
            return replicas
        previous = replicas
    return previous


def within_after(points: Sequence[tuple[float, float, float]], since: float, slack: float = 0.10) -> float | None:
    """Seconds from ``since`` until the cost (second item) stayed within ``slack`` of the bound
    (third) to the end of ``points``: 0 when always, None when the last point is still outside."""
    inside = [cost <= (1 + slack) * bound + 1e-12 for _, cost, bound in points]
    if not inside or not inside[-1]:
        return None
    if all(inside):
        return 0.0
    last_out = max(i for i, ok in enumerate(inside) if not ok)
    return points[last_out + 1][0] - since


async def step_and_fall(session: Any, url: str, bodies: Sequence[bytes], base: float, s: Settings,
                        names: MetricNames, with_metrics: bool) -> StepResult:
    """Base load (settled), then 4x for ``step_high`` s, then the base again for ``fall_seconds`` s."""
    replicas = None
    if with_metrics:
        floor = MIN_REPLICAS * len(REPLICA_CPUS)
        replicas = await settle(session, url, bodies, base, names, floor, s.scale_down_delay + 10, s.base_settle_max,
                                1000)
    # Without cost gauges to watch (the baseline's cost is fixed) the fall is only long enough to end the step.
    segments = [(base, s.step_pre), (4 * base, s.step_high), (base, s.fall_seconds if with_metrics else 3.0)]
    arrivals = poisson_arrivals(segments, np.random.default_rng(2000))
    log = MetricsLog()
    poller = None
    step_wall = time.time() + 0.05 + s.step_pre  # run_load starts its clock 0.05 s from now
    if with_metrics:
        poller = asyncio.create_task(poll_metrics(session, url, names, log, asyncio.get_running_loop().time() + 0.05))
    samples, _ = await run_load(session, url + "/v1/predict", bodies, arrivals, s.timeout)
    if poller is not None:
        poller.cancel()
    step_at, fall_at = s.step_pre, s.step_pre + s.step_high
    high = [x.latency for x in samples if step_at <= x.sent < fall_at]
    result = StepResult(base, recovery_seconds(samples, step_at, fall_at, s.target_ms / 1000),
                        float(np.percentile(high, 99, method="higher")) * 1000 if high else math.inf,
                        last_window_over=last_window_over(samples, step_at, fall_at, s.target_ms / 1000),
                        replicas_at_step=replicas)
    counts = [p["replicas"] for _, p in log.points if p["replicas"] is not None]
    result.step_wall = step_wall
    result.windows = [(t - step_at, p99) for t, p99 in window_p99s(samples, step_at - 1.0, fall_at, 1.0, 0.5)]
    result.replicas_peak = max(counts) if counts else None
    result.replicas_end = counts[-1] if counts else None
    result.cost_points = [(t, p["cost"], p["bound"]) for t, p in log.points if t >= fall_at]
    before = [p["cost"] for t, p in log.points if t < step_at and p["cost"]]
    result.pre_step_cost = before[-1] if before else None
    result.metric_names = log.names
    known = [(t, c, b) for t, c, b in result.cost_points if c is not None and b is not None]
    if any(c > 0 or b > 0 for _, c, b in known):  # both 0 throughout: the gauges are not set
        cost, bound = known[-1][1], known[-1][2]
        result.fall_cost_ratio = cost / bound if bound > 0 else (1.0 if cost == 0 else math.inf)
        result.fall_within_10pct = within_after(known, fall_at)
        if result.pre_step_cost:
            pre = result.pre_step_cost
            result.fall_within_10pct_of_pre_step = within_after([(t, c, pre) for t, c, _ in known], fall_at)
    return result


def check_answers_agree(urls: dict[str, str], bodies: Sequence[bytes]) -> str:
    """Both sides' answers to the same requests: identical labels, probabilities within 1e-9."""

    if len(urls) < 2:
        return "n/a (one side)"
    answers: dict[str, list[Any]] = {}
    for name, url in urls.items():
        answers[name] = []
        for body in bodies:
            answers[name].append(json.loads(post_json(url + "/v1/predict", body, 30))["predictions"])
    first, second = answers.values()
    for a, b in zip(first, second):
        for x, y in zip(a, b):
            if str(x["label"]) != str(y["label"]):
                return f"NO: labels differ ({x} vs {y})"
            for key, p in x["proba"].items():
                if abs(p - y["proba"].get(str(key), math.nan)) > 1e-9:
                    return f"NO: probabilities differ ({x} vs {y})"
    return f"yes ({sum(len(a) for a in first)} rows)"


# ---------------------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".1f", none: str = "n/a") -> str:
    return none if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_table(results: dict[str, dict[float, Trial]], target_ms: float) -> None:
    sides = list(results)
    rates = sorted({r for trials in results.values() for r in trials})
    header = f"{'rate rps':>9}" + "".join(f"{f'{n} p50':>14}{f'{n} p99':>14}{f'{n} got':>13}" for n in sides)
    print(header)
    for rate in rates:
        cells = []
        for name in sides:
            t = results[name].get(rate)
            if t is None:
                cells.append(f"{'-':>14}{'-':>14}{'-':>13}")
            else:
                mark = " " if t.meets(target_ms) else "*"
                cells.append(f"{t.percentile_ms(50):>14.1f}{t.percentile_ms(99):>13.1f}{mark}{t.achieved:>13.1f}")
        print(f"{rate:>9.1f}" + "".join(cells))
    print(f"(ms; got = answers per second; * = misses the SLO: p99 > {target_ms:g} ms or errors > 0.1 %)")


# ---------------------------------------------------------------------------------------------
# Profiling: CPU seconds per request per process at a fixed rate


def descendants(root: int) -> dict[int, str]:
    """Process ``root`` and every process below it (``serve``, the embedded cluster's processes,
    our executors, whatever session they put themselves in), each named by its command line."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):
            continue
        commands[int(entry.name)] = " ".join(a for a in argv if a)[:120]
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier.extend(children)
    return {pid: commands.get(pid, "?") for pid in sorted(found) if pid in commands}


def process_label(pid: int, command: str, serve_pid: int) -> str:
    if pid == serve_pid:
        return "serve (framework: gateway, controller, embedded master)"
    if "executor" in command:
        return f"executor {pid}"
    return f"{Path(command.split(' ', 1)[0]).name} {pid}: {command[:60]}"


async def counter_samples(session: Any, url: str) -> list[tuple[str, dict[str, str], float]]:
    async with session.get(url + "/metrics") as answer:
        return parse_samples(await answer.text())


async def profile_rate(session: Any, url: str, bodies: Sequence[bytes], rate: float, seconds: float,
                       serve_pid: int, s: Settings) -> None:
    """``rate`` requests per second for ``seconds`` (open loop, after the settling the sweep does):
    p50/p99, and the CPU seconds per answered request of each process (``serve``, each executor,
    this load generator), with the gateway's calls, hedges and batch rows per request (``/metrics``)."""
    await trial(session, url + "/v1/predict", bodies, rate, 3.0, 0.0, s.timeout, 77)  # this rate's steady state
    processes = descendants(serve_pid)
    before = {pid: process_cpu(pid) for pid in processes}
    mine_before = process_cpu(os.getpid())
    samples_before = await counter_samples(session, url)
    load_before = os.getloadavg()[0]
    result = await trial(session, url + "/v1/predict", bodies, rate, seconds, 0.0, s.timeout, int(rate * 100) + 3)
    later = descendants(serve_pid)  # with any executor started meanwhile (counted from its start)
    after = {pid: process_cpu(pid) for pid in later}
    mine_after = process_cpu(os.getpid())
    samples_after = await counter_samples(session, url)
    answered = max(1, len(result.samples) - result.errors)
    print(f"\n== profile: {rate:g} rps for {seconds:g} s: p50 {result.percentile_ms(50):.1f} ms  p99 "
          f"{result.percentile_ms(99):.1f} ms  answered {answered}  errors {result.errors}  (load average "
          f"{load_before:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
    total = 0.0
    rows: list[tuple[str, float]] = []
    for pid, command in sorted(later.items()):
        start, end = before.get(pid, 0.0 if pid not in processes else None), after.get(pid)
        if start is None or end is None or end - start <= 0:
            continue
        total += end - start
        rows.append((process_label(pid, command, serve_pid) + ("" if pid in processes else " (started meanwhile)"),
                     end - start))
    if mine_before is not None and mine_after is not None:
        rows.append(("load generator (this script)", mine_after - mine_before))
    for label, used in rows:
        print(f"  {used / answered * 1000:7.2f} CPU ms/request  {used / seconds * 100:5.1f} % of a core  {label}")
    print(f"  {total / answered * 1000:7.2f} CPU ms/request in serve's processes in all")

    def delta(selector: str) -> float:
        return (select(samples_after, selector) or 0.0) - (select(samples_before, selector) or 0.0)
    for member in sorted({labels["member"] for name, labels, _ in samples_after
                          if name == "mesos_ensemble_replica_calls_total" and "member" in labels}):
        calls = delta(f"mesos_ensemble_replica_calls_total{{member={member}}}")
        cancelled = delta(f"mesos_ensemble_replica_calls_total{{member={member},outcome=cancelled}}")
        hedges = delta(f"mesos_ensemble_hedges_total{{member={member}}}")
        rows_sent = delta(f"mesos_ensemble_batch_rows_sum{{member={member}}}")
        ready = [fmt(select(samples, f"mesos_ensemble_replicas{{member={member},state=ready}}"), "g")
                 for samples in (samples_before, samples_after)]
        print(f"  {member:<9} calls/request {calls / answered:.2f}  rows/call {rows_sent / max(1.0, calls):.1f}  "
              f"hedges {hedges:g} ({hedges / max(1.0, calls) * 100:.1f} % of calls)  cancelled {cancelled:g}  "
              f"ready replicas {' -> '.join(ready) if ready[0] != ready[1] else ready[0]}")


def settings(args: argparse.Namespace) -> Settings:
    if args.quick:
        return Settings(args.target_p99_ms, seconds=3.0, warmup=1.0, factor=2.0, start_rate=args.start_rate or 5,
                        max_rate=args.max_rate, bisect=0, half_seconds=4.0, base_settle_max=15.0, step_pre=2.0,
                        step_high=5.0, fall_seconds=15.0, timeout=5.0,
                        scale_down_delay=args.scale_down_delay_s if args.scale_down_delay_s is not None else 10.0,
                        prime_seconds=3.0, stable=4.0, settle_max=20.0)
    return Settings(args.target_p99_ms, seconds=10.0, warmup=5.0, factor=1.4, start_rate=args.start_rate or 10,
                    max_rate=args.max_rate, bisect=2, half_seconds=30.0, base_settle_max=180.0, step_pre=5.0,
                    step_high=20.0, fall_seconds=90.0, timeout=10.0,
                    scale_down_delay=args.scale_down_delay_s if args.scale_down_delay_s is not None else 30.0,
                    prime_seconds=10.0)


def step_events(state_dir: Path | None, since: float, until: float) -> list[tuple[float, str]]:
    """The deployment's events (scale decisions, launches, ready replicas with their start's
    breakdown) between two wall-clock times, from ``serve.sqlite3``'s events table (read-only)."""
    import sqlite3

    path = state_dir / "serve.sqlite3" if state_dir is not None else None
    if path is None or not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute("SELECT t, text FROM events WHERE t >= ? AND t <= ? ORDER BY id",
                              (since, until)).fetchall()
    except sqlite3.Error:
        return []
    return [(float(t), str(text)) for t, text in rows]


def busy_between(state_dir: Path | None, since: float, until: float) -> dict[str, tuple[float, int]]:
    """Per member, from ``serve.sqlite3``'s raw history points between two wall-clock times: the
    replicas busy on average (replica-seconds of calls per second: the autoscaler's busy measure)
    and the ready replicas at the last point (read-only; empty without points)."""
    import sqlite3

    path = state_dir / "serve.sqlite3" if state_dir is not None else None
    if path is None or not path.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute("SELECT point FROM history WHERE tier = 0 AND t > ? AND t <= ? ORDER BY t",
                              (since, until)).fetchall()
    except sqlite3.Error:
        return {}
    points = [json.loads(point) for (point,) in rows]
    span = sum(p.get("span", 0.0) for p in points)
    names = sorted({m for p in points for m in p.get("members", {})})
    return {m: (sum(p["members"].get(m, {}).get("busy", 0.0) for p in points) / span if span > 0 else 0.0,
                int(points[-1]["members"].get(m, {}).get("ready", 0))) for m in names}


def print_busy(label: str, busy: Mapping[str, tuple[float, int]]) -> None:
    """One line: each member's busy replicas, ready ones, and the busy share of each ready one."""
    if busy:
        print(f"  {label}: " + "; ".join(
            f"{m} busy {b:.2f} on {ready} ready ({b / ready:.0%} each)" if ready else f"{m} busy {b:.2f}, none ready"
            for m, (b, ready) in busy.items()))


def print_step_breakdown(r: StepResult, s: Settings, state_dir: Path | None) -> None:
    """The step's p99 per 1 s window, and what the deployment did meanwhile (its events, in seconds
    from the step): where the recovery time went."""
    over = [f"{t:+.1f}:{p * 1000:.0f}" for t, p in r.windows if p * 1000 > s.target_ms]
    print(f"  1 s windows over {s.target_ms:g} ms (start from the step: p99 ms): {', '.join(over) or 'none'}")
    until = r.step_wall + (r.recovery if r.recovery is not None else s.step_high) + 5.0
    events = [(t - r.step_wall, text) for t, text in step_events(state_dir, r.step_wall - 3.0, until)]
    for t, text in events:
        print(f"    step {t:+6.2f} s  {text[:200]}")
    print(f"  step phases: {step_phases(events, r.recovery)}")


def step_phases(events: Sequence[tuple[float, str]], recovery: float | None) -> str:
    """One line from the step's events (seconds from the step): when the first scale-up after it
    was wanted, its replica launched and ready, and the recovery (the rest is the backlog's drain)."""
    wanted = next(((t, text.split(":")[0]) for t, text in events if t >= 0 and "replica(s) wanted (was" in text
                   and _count_rose(text)), None)
    back = f"{recovery:+.2f} s" if recovery is not None else "not within the phase"
    if wanted is None:
        return f"no scale-up after the step; back under target {back}"
    member = wanted[1].removeprefix("member ")
    launch = next(((t, text.split()[2]) for t, text in events if t >= wanted[0]
                   and text.startswith(f"launching replica {member}.")), None)
    ready = next((t for t, text in events if launch is not None and t >= launch[0]
                  and text.startswith(f"replica {launch[1]} ") and " ready at " in text), None)
    drain = recovery - ready if recovery is not None and ready is not None else None
    return (f"{member} wanted {wanted[0]:+.2f} s, launched {fmt(launch[0] if launch else None, '+.2f')} s, "
            f"ready {fmt(ready, '+.2f')} s, back under target {back} (after ready: {fmt(drain, '.2f')} s)")


def _count_rose(text: str) -> bool:
    """``member m: 2 replica(s) wanted (was 1)...``: the count rose."""
    try:
        now = int(text.split(": ", 1)[1].split()[0])
        was = int(text.split("(was ", 1)[1].split(")")[0])
    except (IndexError, ValueError):
        return False
    return now > was


async def measure(args: argparse.Namespace, urls: dict[str, str], bodies: Sequence[bytes], s: Settings,
                  state_dir: Path | None = None, serve_pid: int | None = None) -> None:
    import aiohttp

    names = MetricNames(args.cost_metric, args.bound_metric, args.replicas_metric)
    connector = aiohttp.TCPConnector(limit=512, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in urls.values():  # first calls (page faults, pools, first batches) are not the steady state
            await trial(session, url + "/v1/predict", bodies, s.start_rate, s.prime_seconds, 0.0, s.timeout, 1)
        if args.profile_rate:
            for rate in args.profile_rate:
                if not args.no_settle and s.settle_max > 0:
                    most = sum(high for _cpus, _low, high in replica_bounds(args.cores, args.fixed_replicas).values())
                    await settle_at(session, urls["project"], bodies, rate, s, names, most)
                assert serve_pid is not None
                await profile_rate(session, urls["project"], bodies, rate, args.profile_seconds, serve_pid, s)
            return
        print(f"\n== sweep, after {s.prime_seconds:g} s of priming at {s.start_rate:g} rps per side "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        most = sum(high for _cpus, _low, high in replica_bounds(args.cores, args.fixed_replicas).values())
        results: dict[str, dict[float, Trial]] = {}
        if not args.step_only:
            results = await sweep(session, urls, bodies, s, None if args.no_settle else names, most)
            print()
            print_table(results, s.target_ms)
        best = {name: max_rate_at_slo(trials, s.target_ms) for name, trials in results.items()}

        half: dict[str, Trial] = {}
        reference = best.get("baseline") or best.get("project") or 0.0
        if reference > 0 and not args.step_only:
            rate = round(reference / 2, 1)
            print(f"\n== half of the baseline's max rate: {rate} rps for {s.half_seconds:g} s each", flush=True)
            for name, url in urls.items():
                settled = ""
                if name == "project" and not args.no_settle and s.settle_max > 0:  # as the sweep does
                    spent, replicas = await settle_at(session, url, bodies, rate, s, names, most)
                    settled = f"  settled {spent:.0f} s at {fmt(replicas, 'g')} replicas"
                h = half[name] = await trial(session, url + "/v1/predict", bodies, rate, s.half_seconds, s.warmup,
                                             s.timeout, 500)
                print(f"  {name:<9} p50 {h.percentile_ms(50):8.1f} ms  p99 {h.percentile_ms(99):8.1f} ms"
                      f"  achieved {h.achieved:7.1f} rps{settled}", flush=True)

        steps: dict[str, StepResult] = {}
        step_reference = best.get("project") or best.get("baseline") or (
            4 * args.step_base / 0.75 if args.step_base else 0.0)
        if step_reference > 0 and not args.no_step:
            base = round(args.step_base or 0.75 * step_reference / 4, 1)
            for name, url in urls.items():
                if name == "baseline" and args.quick:
                    continue  # a reference only: not worth the quick run's time
                watch = f"watch {s.fall_seconds:g} s" if name == "project" else "then 3 s"
                print(f"\n== {name}: step {base} -> {4 * base} rps, back to {base} after {s.step_high:g} s, {watch} "
                      f"(load average {os.getloadavg()[0]:.1f})", flush=True)
                steps[name] = await step_and_fall(session, url, bodies, base, s, names, with_metrics=name == "project")
                r = steps[name]
                print(f"  p99 over the high phase {r.high_p99_ms:.1f} ms; back under target after "
                      f"{fmt(r.recovery, '.2f', 'not within the phase')} s (p99 from then to the phase's end); "
                      f"the last 1 s window over target ended +{fmt(r.last_window_over, '.2f', 'never')} s")
                if name == "project":
                    print(f"  ready replicas: {fmt(r.replicas_at_step, 'g')} at the step, {fmt(r.replicas_peak, 'g')} "
                          f"at most, {fmt(r.replicas_end, 'g')} at the end")
                    print_step_breakdown(r, s, state_dir)
                    if not any(c for _, c, _ in r.cost_points):
                        print("  cost gauges absent or 0 in /metrics; its cost and replica samples: "
                              + (", ".join(n for n in r.metric_names if "cost" in n or "replica" in n) or "none"))
                    print(f"  cost/h before the step {fmt(r.pre_step_cost, '.4f')}; after the fall (changes only):")
                    previous: tuple[float | None, float | None] | None = None
                    for i, (t, c, b) in enumerate(r.cost_points):
                        if (c, b) != previous or i == len(r.cost_points) - 1:
                            previous = (c, b)
                            print(f"    fall +{t - (s.step_pre + s.step_high):5.1f} s  cost/h {fmt(c, '.4f')}  "
                                  f"lower bound/h {fmt(b, '.4f')}")
                    # what the autoscaler read: the same base load on the replicas before the step and after the fall
                    fall_wall = r.step_wall + s.step_high
                    print_busy("busy at the base before the step (its last 10 s)",
                               busy_between(state_dir, r.step_wall - 10.0, r.step_wall))
                    print_busy("busy at the base after the fall (its last 30 s)",
                               busy_between(state_dir, fall_wall + s.fall_seconds - 30.0, fall_wall + s.fall_seconds))
                    for t, text in step_events(state_dir, fall_wall, fall_wall + s.fall_seconds + 5.0):
                        print(f"    fall {t - fall_wall:+6.2f} s  {text[:200]}")

    print(f"\n== figures (targets of issue 15; load average {os.getloadavg()[0]:.1f})")
    for name, rate in best.items():
        print(f"max rate at p99 <= {s.target_ms:g} ms: {name} {rate:.1f} rps")
    if not any(best.values()):
        print(f"no side met the SLO at the starting rate ({s.start_rate:g} rps): a busy machine? "
              "--start-rate lower or --target-p99-ms higher measures the rest")
    if "project" in best and "baseline" in best and best["baseline"] > 0:
        print(f"max rate at SLO, project / baseline = {best['project'] / best['baseline']:.2f} (target >= 1)")
    if "project" in half and "baseline" in half:
        ratio = half["project"].percentile_ms(99) / half["baseline"].percentile_ms(99)
        print(f"p99 at half the baseline's max rate, project / baseline = {ratio:.2f} (target <= 1.5)")
    if "project" in steps:
        r = steps["project"]
        print(f"4x step: p99 back under target after {fmt(r.recovery, '.2f', 'not within the phase')} s (target <= 5; "
              f"p99 from then to the high phase's end, at least {RECOVERY_HOLD:g} s of it); the last 1 s window over "
              f"target ended +{fmt(r.last_window_over, '.2f', 'never (the phase ended over it)')} s")
        floor = MIN_REPLICAS * len(REPLICA_CPUS)
        if r.replicas_at_step is not None and r.replicas_at_step > floor:
            print(f"  (the project had not scaled down to its {floor} minimum replicas before the step: it had "
                  f"{r.replicas_at_step:g}, so the step tested less than a scale-up from the minimum)")
        print(f"after the fall: cost/h / lower bound = {fmt(r.fall_cost_ratio, '.2f')}; within 10 % after "
              f"{fmt(r.fall_within_10pct, '.1f', 'not within the watch')} s (target <= 60); within 10 % of "
              f"the cost before the step after {fmt(r.fall_within_10pct_of_pre_step, '.1f', 'not within the watch')} s")
    if "baseline" in steps:
        print(f"baseline 4x step (reference): back under target after "
              f"{fmt(steps['baseline'].recovery, '.2f', 'not within the phase')} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short phases (about a minute), for checking the script")
    parser.add_argument("--only", choices=("both", "project", "baseline"), default="both")
    parser.add_argument("--target-p99-ms", type=float, default=100.0, help="the SLO (the job's target_p99_ms)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2,
                        help="baseline workers = the embedded cluster's cpus in all")
    parser.add_argument("--agents", type=int, default=2, help="embedded cluster agents sharing the cores")
    parser.add_argument("--baseline-keepalive", action="store_true",
                        help="the baseline keeps connections alive (default: closes them, as pre-fork servers do)")
    parser.add_argument("--max-rows", type=int, default=10, help="rows per request: 1..this")
    parser.add_argument("--start-rate", type=float, default=None)
    parser.add_argument("--max-rate", type=float, default=5000.0)
    parser.add_argument("--step-base", type=float, default=None,
                        help="base rate of the step (default: 3/16 of the project's max rate at the SLO)")
    parser.add_argument("--no-step", action="store_true", help="sweep and half-rate phases only")
    parser.add_argument("--standby", type=int, default=0,
                        help="each member's standby_replicas (ready, out of the gateway's table; default 0: "
                             "none, as serve's default)")
    parser.add_argument("--step-high", type=float, default=None,
                        help="seconds at 4x the base (default 20; 5 with --quick)")
    parser.add_argument("--fall-seconds", type=float, default=None,
                        help="seconds watched after the fall (default 90; 15 with --quick)")
    parser.add_argument("--step-only", action="store_true",
                        help="the step and fall phase only, at --step-base (the full run's 30.1 rps by default)")
    parser.add_argument("--no-settle", action="store_true",
                        help="measure each rate of the sweep without first letting the project stop scaling")
    parser.add_argument("--scale-down-delay-s", type=float, default=None,
                        help="the job's scale_down_delay_s (default 30; 10 with --quick)")
    defaults = MetricNames()
    parser.add_argument("--cost-metric", default=defaults.cost, help="/metrics sample of the cost per hour")
    parser.add_argument("--bound-metric", default=defaults.bound,
                        help="/metrics sample of the cost's lower bound per hour")
    parser.add_argument("--replicas-metric", default=defaults.replicas,
                        help="/metrics samples (summed) of the ready replicas")
    parser.add_argument("--keep", type=Path, help="keep the job, models and serve's log in this directory")
    parser.add_argument("--profile-rate", type=float, action="append", metavar="RPS",
                        help="instead of the phases: the project at this fixed rate (repeatable) for "
                             "--profile-seconds, after settling: p50/p99 and CPU ms per request of each process")
    parser.add_argument("--profile-seconds", type=float, default=25.0, help="seconds measured per --profile-rate")
    parser.add_argument("--fixed-replicas", type=int, default=None, metavar="N",
                        help="each member's min_replicas and max_replicas N (at most its usual max): a deployment "
                             "that does not scale, for comparing CPU per request between two versions")
    args = parser.parse_args()
    if args.profile_rate:
        args.only = "project"
    if args.step_only and args.step_base is None:
        args.step_base = 30.1  # the quiet full run's base (2026-12-02 08:23): 3/16 of its 160.5 rps
    s = settings(args)
    if args.step_high is not None:
        s.step_high = args.step_high
    if args.fall_seconds is not None:
        s.fall_seconds = args.fall_seconds

    started = time.perf_counter()
    train_rows = 5_000 if args.quick else 20_000
    x_all, y_all = make_classification(n_samples=train_rows + 5_000, n_features=FEATURES, n_informative=10,
                                       random_state=0)
    x_train, y_train, x_test, y_test = x_all[:train_rows], y_all[:train_rows], x_all[train_rows:], y_all[train_rows:]
    cache = args.keep / f"members-{train_rows}.joblib" if args.keep else None
    if cache is not None and cache.exists():
        members = joblib.load(cache)  # this script's own earlier output (--keep)
    else:
        members = make_members(x_train, y_train)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            joblib.dump(members, cache)
    columns = [f"f{i:02d}" for i in range(FEATURES)]
    bodies = request_bodies(x_test, columns, 2000, args.max_rows, seed=1)
    print(f"members {', '.join(members)} ({INTEGRATION}), trained on {train_rows:,} rows in "
          f"{time.perf_counter() - started:.1f} s; requests of 1-{args.max_rows} rows x {FEATURES} columns; "
          f"{args.cores} cores each side; SLO p99 <= {s.target_ms:g} ms; load average {os.getloadavg()[0]:.1f}")

    with ExitStack() as stack:
        directory = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="serve-bench-")))
        directory.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, model in members.items():
            paths[name] = directory / f"{name}.joblib"
            joblib.dump(model, paths[name])
        data = directory / "data.csv"
        header = ",".join(columns + ["target"])
        np.savetxt(data, np.column_stack([x_test[:500], y_test[:500]]), delimiter=",", header=header, comments="",
                   fmt=["%.17g"] * FEATURES + ["%d"])
        address = f"127.0.0.1:{free_port()}"
        job = write_job(directory, paths, data, address, args.cores, args.agents, s.target_ms, s.scale_down_delay,
                        args.standby, args.fixed_replicas)

        urls: dict[str, str] = {}
        if args.only in ("both", "project"):
            project = stack.enter_context(Project(job, address, directory / "state", directory / "serve.log", 180.0))
            urls["project"] = project.url
            print(f"project: mesos-ensemble serve {job.name} ({args.agents} agents, {args.cores} cpus in all, "
                  f"standby_replicas = {args.standby}), gateway {project.url} up in {project.started_in:.1f} s")
        if args.only in ("both", "baseline"):
            baseline = stack.enter_context(Baseline(args.cores, paths, member_specs(members), columns,
                                                    args.baseline_keepalive))
            urls["baseline"] = baseline.url
            print(f"baseline: {args.cores} aiohttp worker processes at {baseline.url}, connections "
                  f"{'kept alive' if args.baseline_keepalive else 'closed after each answer'}")
        print(f"answers agree: {check_answers_agree(urls, bodies[:20])}", flush=True)
        asyncio.run(measure(args, urls, bodies, s, directory / "state" if "project" in urls else None,
                            project.process.pid if "project" in urls and project.process is not None else None))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
