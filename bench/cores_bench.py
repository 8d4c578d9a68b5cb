"""Every core busy: a job written as a user writes it (``cpus = 1`` per task, the default
``executor_cpus``), on the embedded cluster with one agent of this machine's cores, side by side
with ``joblib.Parallel`` over the same members and shards, and the physical limit (the members'
summed single-thread compute divided by the cores).  Prints wall times and ratios.

    .venv/bin/python bench/cores_bench.py [--suite mixed|gil|text|both|all] [--rows N] [--shard-rows N] [--timeline]
        [--cache cold|warm] [--as-commands [--repeats N]]

Suites:
- ``mixed``: logistic regression, random forest, histogram gradient boosting and k-nearest
  neighbours asked for ``predict_proba`` (members that release the GIL, of unequal cost).
- ``gil``: four Pipelines whose first step is a Python-level ``FunctionTransformer``
  (``numpy.apply_along_axis`` of a ufunc: Python runs per row, holding the GIL), then a scaler
  and a logistic regression.
- ``text``: text members (``text = "text"``: a string column of a Parquet file, handed to each
  member as a 1-D array of ``str``): ``TfidfVectorizer`` + ``LogisticRegression`` on words, on
  words and word pairs, on character n-grams, and ``HashingVectorizer`` + ``LogisticRegression``;
  tokenising holds the GIL.  The documents are deterministic pseudo-text (20-60 words drawn from
  a Zipf-distributed vocabulary of syllable words, with label-dependent words mixed in: numpy
  only, nothing downloaded); joblib, the threads and the physical limit get each shard as the
  executors' members do: a 1-D object array of ``str`` (the text shards travel as UTF-8 and
  offsets, see ``executor.textshard``; before 2026-12-02 11:20 UTC both sides had ``<U{n}``
  arrays, whose compute was within a few percent of this).

Two joblib baselines run, each on fresh workers: joblib's defaults (a shard over ``max_nbytes``
= 1 MB reaches a worker as an ``np.memmap``, whose every slice runs Python code, so a member that
works row by row pays about 3x for it: the GIL suite's joblib is several times the physical limit
for that reason) and ``max_nbytes=None`` (each shard pickled to the worker as a plain array, the
stricter baseline for GIL-bound members).  A third run computes the same tasks on threads of the
bench's own process (members in memory, one BLAS/OpenMP thread each, longest first): no start-up
and no transfer, so its distance from the physical limit is what computations running side by side
cost on this machine (shared caches, memory bandwidth), which no scheduler removes (for the GIL
suite it shows the GIL instead).  ``cpu s`` is the CPU time each run used, its child
processes included (executors, prediction workers, joblib's workers): when other work shares the
cores, it says what a run cost better than its wall time.

Those runs share this process, which trained the members: joblib's run is timed from loading the
model files (scikit-learn imported already, only its workers import it), the job's from
``JobRunner.run`` (the framework imported already; its inspection process imports scikit-learn
before anything may launch).  ``--as-commands`` also times, over the same data and model files,
what a user types, each a fresh process: ``mesos-ensemble run job.toml`` (the console script, the
embedded cluster; the CLI starts the inspection before it reads the job file) against ``python
predict.py``, a plain joblib script the bench writes beside them (it loads the model files, reads
``data.npy`` or the Parquet file's ``text`` column, runs ``joblib.Parallel(n_jobs=cores)`` over the
same shards on fresh workers, soft-votes and saves the labels; ``predict_pickled.py`` is its
``max_nbytes=None`` twin).  ``--repeats`` rounds, the order reversed every other round; each
command's wall and CPU (its own and its reaped children's, ``RUSAGE_CHILDREN``), each round's
ratio and the medians; every run's labels must equal the in-process soft vote's.

``--cache`` says what the job remembers from earlier runs (inspections by checksum, probe
verdicts, kept task costs; ``MESOS_ENSEMBLE_CACHE_DIR``), for the in-process run and the commands
alike: ``cold`` (the default) gives every run of the job a fresh cache, a user's first run of these
model files; ``warm`` fills one cache with an untimed run first, so every timed run is a re-run
of the same files.  The executor package (about the project's code, not the models) is built
once for all.

``--timeline`` prints where the job's core-seconds went (see :class:`SlotTimeline`): every Mesos
task's launch, TASK_RUNNING and result per executor slot, and the cores' wall time split into
start-up, compute, in-task overhead, gaps between tasks and the tail.

The default sizes take about two minutes on 2 quiet cores; the job's output is checked against
the in-process soft vote (the ensemble's labels must be identical).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import functools
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from joblib.externals.loky import get_reusable_executor
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import dump_members, model_entry, predict_shard, soft_vote  # noqa: E402

from framework.executor_package import build_executor_package  # noqa: E402
from framework.inspection import CACHE_ENV  # noqa: E402
from framework.job import JobRunner  # noqa: E402
from framework.jobspec import load_job  # noqa: E402
from framework.scheduler import EnsembleScheduler  # noqa: E402
from executor.timeline import LINE as TIMELINE_LINE  # noqa: E402


def mixed_members(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    return {
        "logistic": LogisticRegression(max_iter=2000).fit(x, y),
        "forest": RandomForestClassifier(n_estimators=60, max_depth=12, random_state=0, n_jobs=1).fit(x, y),
        "boosting": HistGradientBoostingClassifier(max_iter=150, random_state=0).fit(x, y),
        "neighbours": KNeighborsClassifier(n_neighbors=15).fit(x[:2000], y[:2000]),
    }


def gil_members(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Pipelines whose first step runs Python per row (``numpy.apply_along_axis``: a Python loop
    calling a ufunc on each 20-value row, holding the GIL), picklable from numpy alone so that
    the executors load them without this module."""
    functions = {"tanh": np.tanh, "arctan": np.arctan, "sin": np.sin, "cbrt": np.cbrt}
    return {f"python_{name}": make_pipeline(FunctionTransformer(functools.partial(np.apply_along_axis, function, 1)),
                                            StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
            for name, function in functions.items()}


def text_members(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The issue's text model (``TfidfVectorizer`` + ``LogisticRegression``) and three variants of
    unequal cost; each tokenises in Python, holding the GIL."""
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer

    def fit(vectorizer: Any) -> Any:
        return make_pipeline(vectorizer, LogisticRegression(max_iter=1000)).fit(x, y)

    return {"tfidf_words": fit(TfidfVectorizer()),
            "tfidf_bigrams": fit(TfidfVectorizer(ngram_range=(1, 2), min_df=2)),
            "tfidf_chars": fit(TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 4), min_df=2)),
            "hashing": fit(HashingVectorizer(n_features=2**18))}


def pseudo_text(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` documents of 20-60 words (``<U{n}``) and their 0/1 labels, deterministic: words
    made of syllables, drawn Zipf-like from a 5,000-word vocabulary, plus a few words of a
    label's own 50 (so that the models learn something)."""
    rng = np.random.default_rng(seed)
    syllables = np.array(["ka", "to", "ri", "mu", "se", "na", "lo", "pe", "vi", "du", "xo", "be", "qua", "sti"])
    vocabulary = np.array(["".join(rng.choice(syllables, rng.integers(1, 5))) for _ in range(5000)])
    labels = rng.integers(0, 2, rows)
    lengths = rng.integers(20, 61, rows)
    words = vocabulary[(rng.zipf(1.3, int(lengths.sum())) - 1) % len(vocabulary)]
    cues = vocabulary[rng.integers(0, 50, rows * 3) + 50 * np.repeat(labels, 3)].reshape(rows, 3)
    ends = np.cumsum(lengths)
    docs = [" ".join([*words[end - length:end - 3], *cues[i]]) for i, (end, length) in enumerate(zip(ends, lengths))]
    return np.asarray(docs), labels


def as_documents(texts: np.ndarray) -> np.ndarray:
    """A 1-D object array of ``str``: what a text member gets in the executor."""
    documents = np.empty(len(texts), dtype=object)
    documents[:] = texts.tolist()
    return documents


SUITES: dict[str, tuple[Callable[[np.ndarray, np.ndarray], dict[str, Any]], int, int]] = {
    # suite: (members, default rows, default rows per shard)
    "mixed": (mixed_members, 200_000, 25_000),
    "gil": (gil_members, 200_000, 12_500),
    "text": (text_members, 40_000, 5_000),
}


def in_process_threads(members: dict[str, Any], shards: list[np.ndarray], per_member: dict[str, float],
                       cores: int) -> np.ndarray:
    """Every (member, shard) task on ``cores`` threads, longest member first, one BLAS/OpenMP
    thread each; soft-voted like the other runs."""
    order = sorted(((name, i) for name in members for i in range(len(shards))), key=lambda t: -per_member[t[0]])
    with threadpool_limits(1), ThreadPoolExecutor(max_workers=cores) as pool:
        results = dict(zip(order, pool.map(lambda task: predict_shard(members[task[0]], shards[task[1]]), order)))
    return soft_vote([np.concatenate([results[(name, i)] for i in range(len(shards))]) for name in members])


def cpu_seconds() -> float:
    """CPU seconds of this process (the job's scheduler and embedded cluster are threads of it) and of
    its children that have been reaped (executors, their prediction workers, joblib's workers): under
    other load, the work a run did is a steadier figure than its wall time."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_joblib(paths: list[Path], shards: list[np.ndarray], cores: int, max_nbytes: str | None) -> np.ndarray:
    """joblib.Parallel as a user writes it, on fresh workers (each run pays their start, as the job
    pays its executor's): the models loaded from their files, one call per model and shard, soft-voted.
    ``max_nbytes="1M"`` is joblib's default (a shard over 1 MB reaches the worker as an
    ``np.memmap``, whose every slice runs Python code: a member working row by row in Python pays
    ~3x for it); ``None`` pickles each shard to the worker as a plain array."""
    loaded = [joblib.load(p) for p in paths]
    parts = joblib.Parallel(n_jobs=cores, max_nbytes=max_nbytes)(
        joblib.delayed(predict_shard)(m, s) for m in loaded for s in shards)
    get_reusable_executor().shutdown(wait=True)  # its workers reaped: their CPU is counted
    return soft_vote([np.concatenate(parts[i * len(shards):(i + 1) * len(shards)]) for i in range(len(paths))])


USER_SCRIPT = """\
\"\"\"The ensemble's members' predictions on every core with joblib.Parallel, as a user writes it
(written by bench/cores_bench.py --as-commands).\"\"\"
import joblib
import numpy as np
{reader_import}
MODELS = {models!r}
DATA = {data!r}
ROWS_PER_SHARD = {rows_per_shard}
N_JOBS = {n_jobs}
MAX_NBYTES = {max_nbytes!r}
OUTPUT = {output!r}

if __name__ == "__main__":
    models = [joblib.load(path) for path in MODELS]
    x = {reader}
    shards = [x[i:i + ROWS_PER_SHARD] for i in range(0, len(x), ROWS_PER_SHARD)]
    parts = joblib.Parallel(n_jobs=N_JOBS, max_nbytes=MAX_NBYTES)(
        joblib.delayed(model.predict_proba)(shard) for model in models for shard in shards)
    proba = np.mean([np.concatenate(parts[i * len(shards):(i + 1) * len(shards)]) for i in range(len(models))],
                    axis=0)
    np.save(OUTPUT, models[0].classes_[proba.argmax(axis=1)])
"""


def user_script(directory: Path, models: list[Path], data: str, shard_rows: int, cores: int,
                max_nbytes: str | None, output: str) -> Path:
    """``directory/predict.py`` (``predict_pickled.py`` for ``max_nbytes=None``): a plain user's
    script that loads the model files, reads ``data`` (a ``.npy`` array, or a Parquet file's
    ``text`` column as a 1-D object array of ``str``), cuts it into shards of ``shard_rows``, runs
    every (model, shard) on ``joblib.Parallel(n_jobs=cores, max_nbytes=...)``, soft-votes and saves
    the labels to ``output``; every path relative to ``directory``, where it runs."""
    text = data.endswith(".parquet")
    reader = ('np.array(pq.read_table(DATA, columns=["text"]).column("text").to_pylist(), dtype=object)' if text
              else "np.load(DATA)")
    script = directory / ("predict.py" if max_nbytes else "predict_pickled.py")
    script.write_text(USER_SCRIPT.format(
        reader_import="import pyarrow.parquet as pq\n" if text else "", models=[str(p.relative_to(directory))
                                                                             for p in models],
        data=data, rows_per_shard=shard_rows, n_jobs=cores, max_nbytes=max_nbytes, output=output, reader=reader))
    return script


def timed_command(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one command run to its end: its own CPU and its reaped
    descendants' (``RUSAGE_CHILDREN``: the job's inspection, executors and prediction workers;
    joblib's workers); its output goes to ``log``, shown if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("wb") as out:
        code = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited {code}:\n{log.read_text(errors='replace')[-4000:]}")
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


class KeptAnswers:
    """Where each run of the job keeps what mesos-ensemble remembers between runs (its cache:
    inspections by checksum, probe verdicts, kept task costs; ``MESOS_ENSEMBLE_CACHE_DIR``).
    ``cold``: a fresh directory per run, so that every run is a user's first run of these model
    files (the inspection's scikit-learn import and model loads before anything launches, the
    executor's probes); ``warm``: one directory that the bench's first, untimed run of the
    command fills, so that every timed run is a re-run of the same files.  Both share the
    executor package (built once: it is about the project's code, not the models)."""

    def __init__(self, root: Path, mode: str) -> None:
        self.root, self.mode, self.runs = root, mode, 0
        with self.using(root / "package"):
            build_executor_package(Path(tempfile.mkdtemp(dir=root)))

    def next_dir(self) -> Path:
        """The cache directory for the next run."""
        self.runs += 1
        directory = self.root / ("warm" if self.mode == "warm" else f"cold-{self.runs}")
        if not directory.exists():
            directory.mkdir()
            (directory / "executor-packages").symlink_to(self.root / "package" / "executor-packages")
        return directory

    @staticmethod
    @contextlib.contextmanager
    def using(directory: Path) -> Any:
        """This process' runs keep their answers in ``directory`` meanwhile."""
        before = os.environ.get(CACHE_ENV)
        os.environ[CACHE_ENV] = str(directory)
        try:
            yield
        finally:
            if before is None:
                del os.environ[CACHE_ENV]
            else:
                os.environ[CACHE_ENV] = before


def mesos_command() -> list[str]:
    """The project's command as a user types it: the ``mesos-ensemble`` console script of this
    Python's environment."""
    beside = Path(sys.executable).with_name("mesos-ensemble")
    found = str(beside) if beside.is_file() else shutil.which("mesos-ensemble")
    if found is None:
        raise SystemExit("--as-commands needs the mesos-ensemble command (pip install -e .)")
    return [found]


def compile_project() -> None:
    """The framework's and executor's bytecode, as an installed package has it: where
    ``PYTHONDONTWRITEBYTECODE`` is set (as on this project's machine) and the tree was never
    compiled, every ``mesos-ensemble`` process would compile the framework's sources again (about
    0.15 s of CPU on its path to the first launch, measured 2026-12-02), which the in-process run,
    imported before its clock, never pays.  Writes ``__pycache__`` beside the sources (ignored by
    git); a no-op when it is up to date."""
    tree = Path(__file__).resolve().parents[1]
    for package in ("framework", "executor"):
        compileall.compile_dir(tree / package, quiet=1)


def command_environment() -> dict[str, str]:
    """The commands' environment: this one, with this tree first on ``PYTHONPATH`` (as the
    in-process run imports it)."""
    tree = str(Path(__file__).resolve().parents[1])
    return os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, (tree, os.environ.get("PYTHONPATH"))))}


def run_job_command(job: Path, cache: Path) -> tuple[tuple[float, float], np.ndarray]:
    """``mesos-ensemble run JOB`` in a fresh process (a first run: no journal, no output yet), its
    answers kept in ``cache``: its (wall s, cpu s) and the ensemble's labels."""
    output = job.with_name("out.npy")
    shutil.rmtree(job.with_name(job.stem + ".state"), ignore_errors=True)
    output.unlink(missing_ok=True)
    timing = timed_command([*mesos_command(), "run", job.name], job.parent,
                           command_environment() | {CACHE_ENV: str(cache)}, job.with_name("mesos.log"))
    return timing, np.load(output)["prediction"]


def run_commands(job: Path, scripts: dict[str, Path], kept: KeptAnswers, labels: np.ndarray,
                 repeats: int) -> list[dict[str, tuple[float, float]]]:
    """``repeats`` rounds of fresh processes: ``mesos-ensemble run JOB`` and each joblib script,
    the order reversed every other round; each run's (wall s, cpu s) by side.  Every run's labels
    must equal the in-process soft vote's."""
    sides = ["mesos", *scripts]
    rounds = []
    for number in range(repeats):
        order = sides if number % 2 == 0 else sides[::-1]
        timings = {}
        for side in order:
            if side == "mesos":
                timings[side], predicted = run_job_command(job, kept.next_dir())
            else:
                output = job.with_name(f"{side}.npy")
                output.unlink(missing_ok=True)
                timings[side] = timed_command([sys.executable, scripts[side].name], job.parent,
                                              command_environment(), job.with_name(f"{side}.log"))
                predicted = np.load(output)
            if not np.array_equal(predicted, labels):
                raise SystemExit(f"{side}'s labels differ from the in-process soft vote's")
        print(f"  round {number + 1} ({' then '.join(order)}; load average {os.getloadavg()[0]:.1f}): "
              + ", ".join(f"{side} {wall:.2f} s (cpu {cpu:.2f})" for side, (wall, cpu) in timings.items())
              + "; mesos / " + ", ".join(f"{side} {timings['mesos'][0] / timings[side][0]:.2f}x" for side in scripts))
        rounds.append(timings)
    return rounds


def job_file(directory: Path, members: dict[str, Path], shard_rows: int, cores: int, cpus: float,
             executor_cpus: float | None, executors: str, text: bool = False, agents: int = 1,
             keep_sandboxes: bool = False, file_name: str = "bench.toml") -> Path:
    """The job as a user writes it: ``cpus`` per task and, unless given, the default executor_cpus
    (``text``: the data is ``data.parquet``, whose ``text`` column every member takes); ``cores``
    cpus in all, on ``agents`` embedded agents of ``cores / agents`` cpus each (``keep_sandboxes``:
    for the executors' logs, read by ``--timeline``); written to ``directory/file_name``."""
    lines = ["[job]", 'name = "cores-bench"', 'integration = "soft_vote"', 'output = "out.npy"', "",
             "[data]", f'path = "{"data.parquet" if text else "data.npy"}"', f"rows_per_shard = {shard_rows}", ""]
    for name, path in members.items():
        lines += model_entry(name, path, cpus, 512, *(['text = "text"'] if text else []),
                             *([f"executor_cpus = {executor_cpus}"] if executor_cpus is not None else []))
    lines += ["[framework]", f'executors = "{executors}"', ""]
    hosts = [f'{{ hostname = "bench-agent{f"-{i}" if agents > 1 else ""}", cpus = {cores / agents:g}, mem = 16384 }}'
             for i in range(agents)]
    lines += ["[local_cluster]", f"agents = [{', '.join(hosts)}]"]
    if keep_sandboxes:
        lines.append("keep_sandboxes = true")
    path = directory / file_name
    path.write_text("\n".join(lines) + "\n")
    return path


class SlotTimeline:
    """Where a job's core-seconds went, from the scheduler's side: each Mesos task's launch (the
    offer round's decision), first TASK_RUNNING and terminal update, and its items' compute
    seconds as the executor measured them; tasks are laid onto ``cores`` slots (each starts on
    the slot that freed last before its launch), and ``cores x wall`` is split into start-up
    (before a slot's first launch), the first task's start on each slot (launch to TASK_RUNNING:
    the executor's start, scikit-learn's import, the model's download, load and probe, the shard's
    download), later tasks' start (a model not loaded yet, a shard not downloaded yet), compute,
    in-task overhead (the rest of
    TASK_RUNNING to the result: later shards, result encoding, the update's trip), gaps between a
    slot's tasks (result to the next launch: acknowledgement, offer round, launch) and the tail
    (a slot's last result to the job's end: the other slots finishing, the output written)."""

    def __init__(self, cores: int) -> None:
        self.cores = cores
        self.steps: dict[str, float] = {}  # the start's steps, wall clock (see start_report)
        self.start_text = ""
        self.launched: dict[str, tuple[float, str, int]] = {}  # carrier: (when, model, items)
        self.carrier: dict[str, str] = {}  # item task id: carrier
        self.running: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.compute: dict[str, float] = defaultdict(float)
        self._restore: list[Callable[[], None]] = []
        self.started = self.finished = 0.0
        self.compute_cpu = 0.0
        self.cpu: dict[str, float] = {}  # this process's, and its reaped children's, CPU seconds in the run

    def _wrap(self, name: str, before: Callable[..., None]) -> None:
        original = getattr(EnsembleScheduler, name)

        def wrapped(scheduler: Any, *args: Any) -> Any:
            before(*args)
            return original(scheduler, *args)

        setattr(EnsembleScheduler, name, wrapped)
        self._restore.append(lambda: setattr(EnsembleScheduler, name, original))

    def _on_apply(self, driver: Any, views: Any, decision: Any) -> None:
        now = time.perf_counter()
        if decision.tasks:
            self.steps.setdefault("first launch", time.time())
        for _agent, task in decision.tasks:
            carrier = task.carrier or task.task_id
            self.carrier[task.task_id] = carrier
            self.launched.setdefault(carrier, (now, task.model, task.bundle_size))

    def _on_status(self, driver: Any, status: Any) -> None:
        now, task_id, state = time.perf_counter(), status["task_id"]["value"], status["state"]
        if state == "TASK_RUNNING":
            self.running.setdefault(task_id, now)
        elif state in ("TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST", "TASK_ERROR"):
            self.ended.setdefault(task_id, now)

    def _on_step(self, name: str) -> Callable[..., None]:
        def note(*_args: Any) -> None:
            self.steps.setdefault(name, time.time())
        return note

    def _on_usage(self, item: Any, seconds: float, cpu_seconds: float) -> None:
        self.compute[self.carrier.get(item.task_id or "", "?")] += seconds
        self.compute_cpu += cpu_seconds

    def __enter__(self) -> "SlotTimeline":
        self._wrap("_apply", self._on_apply)
        self._wrap("statusUpdate", self._on_status)
        self._wrap("record_usage", self._on_usage)
        self._wrap("registered", self._on_step("subscribed"))
        self._wrap("resourceOffers", self._on_step("first offer"))
        self.cpu = self._cpu()
        self.started = time.perf_counter()
        self.started_wall = time.time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finished = time.perf_counter()
        self.cpu = {who: seconds - self.cpu[who] for who, seconds in self._cpu().items()}
        for restore in reversed(self._restore):
            restore()

    @staticmethod
    def _cpu() -> dict[str, float]:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"scheduler": own.ru_utime + own.ru_stime, "executors": children.ru_utime + children.ru_stime}

    def slots(self) -> list[list[str]]:
        """The Mesos tasks (carriers) per slot, in launch order."""
        slots: list[list[str]] = [[] for _ in range(self.cores)]
        free = [self.started] * self.cores
        for carrier in sorted(self.launched, key=lambda c: self.launched[c][0]):
            launched = self.launched[carrier][0]
            ready = [i for i in range(self.cores) if free[i] <= launched + 1e-3]
            slot = max(ready, key=lambda i: free[i]) if ready else min(range(self.cores), key=lambda i: free[i])
            slots[slot].append(carrier)
            free[slot] = self.ended.get(carrier, self.finished)
        return slots

    def start_report(self, runner: JobRunner, sandboxes: Path) -> None:
        """The job's start step by step, in seconds since the run began: the scheduler process'
        steps (``JobRunner.steps``: the inspection runs beside the data and the cluster), the
        framework's first subscription, offer and launch, then the executor's own steps as it logged
        them in its sandbox (``executor.timeline``), each model's, and each slot's first TASK_RUNNING
        and result (kept in ``start_text`` for the report: the sandboxes go with the bench's directory)."""
        zero = self.started_wall
        to_wall = self.started_wall - self.started  # perf_counter -> time.time

        def line(title: str, steps: dict[str, float]) -> str:
            return f"    {title}: " + ", ".join(f"{name} {when - zero:.2f}" for name, when in
                                               sorted(steps.items(), key=lambda step: step[1]))

        executor: dict[str, float] = {}
        kept: set[str] = set()  # models whose mode an earlier run's probe gave (not probed here)
        known: set[str] = set()  # models of a class known to release the GIL (not probed)
        for stderr in sandboxes.rglob("stderr"):
            text = stderr.read_text(errors="replace")
            for match in TIMELINE_LINE.finditer(text):
                step, when = match.group(1), float(match.group(2))
                executor[step] = min(when, executor.get(step, when))
            kept.update(re.findall(r"model (\S+): predictions run in .*, as an earlier run's probe measured", text))
            known.update(re.findall(r"model (\S+): a \S+, whose predictions release the GIL, not probed", text))
        framework = {name: when for name, when in runner.steps.items() if name != "run"} | self.steps
        lines = ["  the start, step by step (seconds since the run began):", line("scheduler process", framework),
                 line("executor", {name: when for name, when in executor.items() if ":" not in name})]
        models = sorted({name.split(":", 1)[1] for name in executor if ":" in name},
                        key=lambda model: executor.get(f"model_fetched:{model}", 0.0))
        for model in models:
            lines.append(line(f"  {model}", {step: executor[f"{step}:{model}"] for step in
                                       ("model_fetched", "model_load", "model_loaded", "probe", "probed", "compute")
                                       if f"{step}:{model}" in executor})
                         + (" (not probed: an earlier run's verdict, threads)" if model in kept else "")
                         + (" (not probed: its class releases the GIL, threads)" if model in known else ""))
        for number, carriers in enumerate(self.slots()):
            if carriers:
                first = carriers[0]
                running, ended = self.running.get(first), self.ended.get(first)
                lines.append(f"    slot {number}: first launch {self.launched[first][0] + to_wall - zero:.2f} "
                      f"({self.launched[first][1]}), TASK_RUNNING "
                      f"{'-' if running is None else f'{running + to_wall - zero:.2f}'}, result "
                      f"{'-' if ended is None else f'{ended + to_wall - zero:.2f}'}")
        self.start_text = "\n".join(lines)

    def report(self, single_thread: float, single_thread_cpu: float, width: int = 100) -> None:
        wall = self.finished - self.started
        parts: dict[str, float] = defaultdict(float)
        lines = []
        step = wall / width
        for number, carriers in enumerate(self.slots()):
            cells = ["."] * width
            previous = self.started
            for carrier in carriers:
                launched, model, _items = self.launched[carrier]
                running = self.running.get(carrier, launched)
                ended = self.ended.get(carrier, self.finished)
                compute = min(self.compute.get(carrier, 0.0), ended - running)
                parts["start-up" if previous == self.started else "gaps between tasks"] += max(0.0, launched - previous)
                parts["first task's start" if previous == self.started else "later tasks' start"] += max(
                    0.0, running - launched)
                parts["compute"] += compute
                parts["in-task overhead"] += max(0.0, ended - running - compute)
                first, last = int((launched - self.started) / step), int((ended - self.started) / step)
                for cell in range(first, min(width, last + 1)):  # what the cell's middle shows
                    middle = self.started + (cell + 0.5) * step
                    if launched <= middle < ended:
                        cells[cell] = model[0] if middle >= running else "s"
                previous = max(previous, ended)
            parts["tail"] += self.finished - previous
            lines.append(f"  slot {number}: {''.join(cells)}")
        print(f"timeline ({self.cores} slots x {wall:.2f} s; a cell is {step:.2f} s; s: task start, letter: a task "
              "of that model running, '.': idle)")
        print("\n".join(lines))
        total = self.cores * wall
        print(f"  core-seconds: {total:.2f} = " + ", ".join(f"{name} {seconds:.2f} ({seconds / total:.0%})"
                                                        for name, seconds in parts.items()))
        print(f"  compute in the job {parts['compute']:.2f} s vs single-thread compute {single_thread:.2f} s "
              f"({parts['compute'] / single_thread:.2f}x: contention for the cores/memory, or a slower machine)")
        # CPU seconds say what each side cost whatever else ran on the machine.
        executors, scheduler = self.cpu["executors"], self.cpu["scheduler"]
        print(f"  CPU seconds: tasks' compute {self.compute_cpu:.2f} (single-thread run {single_thread_cpu:.2f}); "
              f"executors' other work (start, imports, model loads, probes, shards, results) "
              f"{executors - self.compute_cpu:.2f}; scheduler process (framework, embedded cluster, artifact "
              f"server, integration) {scheduler:.2f}")


def run_suite(suite: str, args: argparse.Namespace) -> dict[str, float]:
    make, default_rows, default_shard_rows = SUITES[suite]
    rows, shard_rows = args.rows or default_rows, args.shard_rows or default_shard_rows
    text = suite == "text"
    if text:
        x_all, y_all = pseudo_text(rows + 20_000)
    else:
        x_all, y_all = make_classification(n_samples=rows + 20_000, n_features=args.features, n_informative=10,
                                           random_state=0)
    x_train, y_train, x = x_all[:20_000], y_all[:20_000], x_all[20_000:]
    members = make(x_train, y_train)
    shards = [as_documents(x[i:i + shard_rows]) if text else x[i:i + shard_rows] for i in range(0, len(x), shard_rows)]
    tasks = len(members) * len(shards)
    shape = (f"{rows:,} documents of 20-60 words (longest {x.dtype.itemsize // 4} characters; "
             f"{sum(len(d.encode()) for d in x.tolist()) / 1e6:.1f} MB of UTF-8, {x.nbytes / 1e6:.1f} MB as <U)" if text
             else f"{rows:,} rows x {args.features} features")
    print(f"\n== {suite}: {', '.join(members)}; {shape}, {len(shards)} shards "
          f"= {tasks} tasks; {args.cores} cores; load average {os.getloadavg()[0]:.1f}")

    with tempfile.TemporaryDirectory(prefix="cores-bench-") as tmp:
        directory = Path(tmp)
        paths = dump_members(members, directory)
        if text:
            pq.write_table(pa.table({"text": pa.array(x.tolist(), pa.string())}), directory / "data.parquet")
        else:
            np.save(directory / "data.npy", x)

        # The physical limit: every task's single-thread compute, summed, over the cores.
        per_member: dict[str, float] = {}
        outputs = []
        compute_cpu = time.process_time()
        with threadpool_limits(1):
            for name, model in members.items():
                started = time.perf_counter()
                outputs.append(np.concatenate([predict_shard(model, s) for s in shards]))
                per_member[name] = time.perf_counter() - started
        compute_cpu = time.process_time() - compute_cpu
        sequential = soft_vote(outputs)
        compute = sum(per_member.values())
        limit = compute / args.cores
        # The same tasks on ``cores`` threads of this process, longest first (members in memory,
        # no start-up, no transfer): what running computations side by side costs on this machine
        # (shared caches and memory bandwidth), which no scheduler removes.
        start, cpu = time.perf_counter(), time.process_time()
        threaded = in_process_threads(members, shards, per_member, args.cores)
        timings_threads = (time.perf_counter() - start, time.process_time() - cpu)
        assert np.array_equal(threaded, sequential), "threads and sequential disagree"

        get_reusable_executor().shutdown(wait=True)
        timings: dict[str, tuple[float, float]] = {"threads": timings_threads}  # run: (wall s, cpu s)
        for label, max_nbytes in (("joblib", "1M"), ("joblib_pickled", None)):
            if args.no_baselines:
                timings[label] = (float("nan"), float("nan"))
                continue
            start, cpu = time.perf_counter(), cpu_seconds()
            parallel = run_joblib(list(paths.values()), shards, args.cores, max_nbytes)
            timings[label] = (time.perf_counter() - start, cpu_seconds() - cpu)
            assert np.array_equal(parallel, sequential), f"{label} and sequential disagree"

        (directory / "cache").mkdir()
        kept = KeptAnswers(directory / "cache", args.cache)
        labels = np.asarray(members[next(iter(members))].classes_)[sequential]
        command_job = job_file(directory, paths, shard_rows, args.cores, args.cpus, args.executor_cpus,
                               args.executors, text, file_name="job.toml")
        if args.cache == "warm":  # one untimed run keeps its answers: every timed run is a re-run
            compile_project()
            run_job_command(command_job, kept.next_dir())
        spec = load_job(job_file(directory, paths, shard_rows, args.cores, args.cpus, args.executor_cpus,
                                 args.executors, text, keep_sandboxes=args.timeline))
        timeline = SlotTimeline(args.cores) if args.timeline else contextlib.nullcontext()
        runner = JobRunner(spec, work_dir=directory / "work", progress=lambda message: None,
                           state_dir=directory / "bench.state")
        start, cpu = time.perf_counter(), cpu_seconds()
        with timeline, kept.using(kept.next_dir()):
            outcome = runner.run()
        timings["mesos"] = (time.perf_counter() - start, cpu_seconds() - cpu)
        ensemble = np.load(outcome.output)
        if isinstance(timeline, SlotTimeline):  # the executors' logs go with the directory
            timeline.start_report(runner, directory / "work" / "cluster")
        rounds = []
        if args.as_commands:
            data = "data.parquet" if text else "data.npy"
            scripts = {label: user_script(directory, list(paths.values()), data, shard_rows, args.cores, max_nbytes,
                                          f"{label}.npy")
                       for label, max_nbytes in (("joblib", "1M"), ("joblib_pickled", None))}
            compile_project()
            print(f"as commands ({args.cache} cache: {CACHE_NOTE[args.cache]}), {args.repeats} rounds:")
            rounds = run_commands(command_job, scripts, kept, labels, args.repeats)

    identical = bool(np.array_equal(ensemble["prediction"], labels))
    t_joblib, t_pickled, t_mesos = timings["joblib"][0], timings["joblib_pickled"][0], timings["mesos"][0]
    print("single-thread compute per member: " + ", ".join(f"{n} {s:.2f} s" for n, s in per_member.items()))
    print(f"in this process ({args.cache} cache; joblib timed from loading the model files, with "
          "scikit-learn imported already; the job from JobRunner.run, its framework imported already):")
    print(f"{'run':<56}{'wall s':>8}{'/ joblib':>10}{'/ limit':>9}{'cpu s':>8}")
    print(f"{f'physical limit ({compute:.2f} s / {args.cores} cores)':<56}{limit:>8.2f}{limit / t_joblib:>10.2f}"
          f"{1:>9.2f}{compute_cpu:>8.2f}")
    for label, (seconds, cpu) in ((f"{args.cores} threads in-process, no start-up", timings["threads"]),
                                  (f"joblib.Parallel (n_jobs={args.cores})", timings["joblib"]),
                                  (f"joblib.Parallel (n_jobs={args.cores}, max_nbytes=None)",
                                   timings["joblib_pickled"]),
                                  (f"mesos-ensemble (cpus = {args.cpus}, executors = {args.executors})",
                                   timings["mesos"])):
        print(f"{label:<56}{seconds:>8.2f}{seconds / t_joblib:>10.2f}{seconds / limit:>9.2f}{cpu:>8.2f}")
    print(f"{suite}: mesos-ensemble = {t_mesos / t_joblib:.2f}x joblib ({t_mesos / t_pickled:.2f}x joblib with "
          f"max_nbytes=None), {t_mesos / limit:.2f}x the physical limit, {t_mesos / timings['threads'][0]:.2f}x "
          f"{args.cores} threads in-process; "
          f"{outcome.task_attempts} attempts, {outcome.executors_launched} executor(s); labels identical to the "
          f"in-process soft vote: {identical}; load average after {os.getloadavg()[0]:.1f}")
    if isinstance(timeline, SlotTimeline):
        timeline.report(compute, compute_cpu)
        print(timeline.start_text)
    figures = {"joblib": t_joblib, "joblib_pickled": t_pickled, "mesos": t_mesos, "limit": limit}
    if rounds:
        figures |= report_commands(suite, rounds, args, limit)
    return figures


CACHE_NOTE = {"cold": "a fresh cache per run of the job, a user's first run of these model files",
              "warm": "one cache, filled by an untimed run first: a re-run of the same files"}


def report_commands(suite: str, rounds: list[dict[str, tuple[float, float]]], args: argparse.Namespace,
                    limit: float) -> dict[str, float]:
    """The commands' median wall and CPU per side and the median of the rounds' ratios."""
    def median(side: str, index: int) -> float:
        return statistics.median(timings[side][index] for timings in rounds)

    labels = {"joblib": f"python predict.py (joblib.Parallel, n_jobs={args.cores})",
              "joblib_pickled": f"python predict_pickled.py (n_jobs={args.cores}, max_nbytes=None)",
              "mesos": f"mesos-ensemble run job.toml (cpus = {args.cpus}, executors = {args.executors})"}
    print(f"as commands ({args.cache} cache; fresh processes, each reading the data file; medians of "
          f"{len(rounds)} rounds):")
    print(f"{'command':<72}{'wall s':>8}{'/ joblib':>10}{'/ limit':>9}{'cpu s':>8}")
    ratios = {side: statistics.median(timings["mesos"][0] / timings[side][0] for timings in rounds)
              for side in ("joblib", "joblib_pickled")}
    for side in ("joblib", "joblib_pickled", "mesos"):
        wall = median(side, 0)
        print(f"{labels[side]:<72}{wall:>8.2f}{wall / median('joblib', 0):>10.2f}{wall / limit:>9.2f}"
              f"{median(side, 1):>8.2f}")
    print(f"{suite} as commands ({args.cache} cache): mesos-ensemble = {ratios['joblib']:.2f}x joblib "
          f"({ratios['joblib_pickled']:.2f}x joblib with max_nbytes=None; medians of the rounds' ratios, "
          f"{', '.join(format(t['mesos'][0] / t['joblib'][0], '.2f') for t in rounds)} against joblib's "
          "defaults), "
          f"{median('mesos', 0) / limit:.2f}x the physical limit; labels identical to the in-process soft "
          f"vote in every run; load average after {os.getloadavg()[0]:.1f}")
    return {f"command_{side}": median(side, 0) for side in ("joblib", "joblib_pickled", "mesos")} | {
        f"command_ratio_{side}": ratio for side, ratio in ratios.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("mixed", "gil", "text", "both", "all"), default="all",
                        help="both: mixed and gil; all: the three")
    parser.add_argument("--rows", type=int, default=0, help="rows to predict (default: per suite)")
    parser.add_argument("--shard-rows", type=int, default=0, help="rows per shard (default: per suite)")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)),
                        help="cpus of the one agent and joblib's n_jobs")
    parser.add_argument("--cpus", type=float, default=1.0, help="cpus per task, as the job file says")
    parser.add_argument("--executor-cpus", type=float, default=None, help="default: the job file's default")
    parser.add_argument("--executors", choices=("shared", "per_model"), default="shared")
    parser.add_argument("--no-baselines", action="store_true",
                        help="skip the joblib runs (to study the job's own timeline; the ratios print nan)")
    parser.add_argument("--as-commands", action="store_true",
                        help="also time fresh processes as a user types them: `mesos-ensemble run job.toml` "
                             "against `python predict.py`, a plain joblib script (and its max_nbytes=None twin)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="--as-commands: rounds of the commands, the order reversed every other round")
    parser.add_argument("--cache", choices=("cold", "warm"), default="cold",
                        help="the job's kept answers (inspections, probe verdicts, task costs): cold, a fresh "
                             "cache per run (a first run of these files); warm, filled by an untimed run first")
    parser.add_argument("--timeline", action="store_true",
                        help="print each Mesos task per executor slot and where the cores' time went")
    args = parser.parse_args()
    chosen = {"both": ("mixed", "gil"), "all": ("mixed", "gil", "text")}.get(args.suite, (args.suite,))
    for suite in chosen:
        run_suite(suite, args)


if __name__ == "__main__":
    main()
