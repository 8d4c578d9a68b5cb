"""What the framework knows about a model, learned without loading it in the framework's process.

A model file is code (a joblib file is a pickle).  The framework holds the job's secrets and the
artifact server's token, so it never loads a member itself: a short-lived subprocess does
(:mod:`executor.describe`), run as ``python -I`` with a timeout, address-space and CPU limits,
no core dumps, its own session and temporary directory, and an environment with nothing but
what Python needs.  It answers with JSON, parsed here into a :class:`ModelMetadata`.

:class:`ModelMetadata` stands in for the estimator wherever the framework only *inspects* one:
it has the fitted attributes scikit-learn's checks read (``n_features_in_``,
``feature_names_in_``, ``classes_``), scikit-learn's estimator tags (so ``is_classifier`` and
``is_regressor`` work) and, for each output method the model offers, an attribute that is not
None (calling it raises: the model runs on the executors, never here).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

import executor as executor_package
from executor.modelfile import FORMATS
from framework import atomic
from framework.errors import JobSpecError

OUTPUTS = ("predict", "predict_proba", "decision_function")

INSPECT_TIMEOUT_SECONDS = 120.0
"""Wall-clock limit of one inspection (importing scikit-learn and skops takes a few seconds)."""

INSPECT_MIN_MEMORY_MB = 2048
"""Address-space limit of the inspection process, at least (Python with numpy, scikit-learn and
skops imported maps about 400 MB); larger files get ``1024 + 10 x`` their size."""

_ZYGOTE = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
           "from executor.describe import serve; serve()")
"""The subprocess' program: ``-I`` ignores PYTHONPATH, so the ``executor`` package's parent is
passed as the first argument."""


class InspectionError(Exception):
    """The inspection of one model failed; the message says how (without the model's name)."""

    def __init__(self, message: str, refused: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.refused = dict(refused or {})


class _NotHere:
    """Stands in for a method of a model that is only inspected in this process."""

    def __init__(self, model: str, method: str) -> None:
        self.model, self.method = model, method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self.model}.{self.method}: the model is not loaded in the framework's process; "
                           "only its metadata is (it runs on the executors)")


@dataclass(frozen=True)
class ModelMetadata:
    """Everything the framework needs from one model file (see the module doc)."""

    path: Path
    format: str
    estimator_class: str
    """Fully qualified class name, e.g. ``sklearn.pipeline.Pipeline``."""
    estimator_type: str | None
    """``classifier``, ``regressor`` or None (scikit-learn's tags)."""
    n_features_in: int | None
    feature_names_in: tuple[str, ...] | None
    classes: np.ndarray | None = field(compare=False)
    methods: frozenset[str]
    """The output methods it offers, of predict, predict_proba and decision_function."""
    sklearn_version: str | None
    """The scikit-learn version it was saved with (see ``executor.modelfile.load_model``)."""
    loaded_bytes: int
    """Memory the loaded model holds: the resident set's growth on a second load, or the file's size."""
    untrusted_types: tuple[str, ...] = ()
    """skops files: the types skops does not trust by itself (all allowed, or it was not loaded)."""
    takes_text: bool = False
    """Its input is text (a text vectorizer, or a Pipeline starting with one): a text member."""

    # The estimator's inspectable surface, as scikit-learn's checks read it: a fitted attribute
    # the model lacks is missing here too (AttributeError), as on the estimator.
    def _fitted(self, name: str, value: Any) -> Any:
        if value is None:
            raise AttributeError(f"{self.estimator_name} in {self.path.name} has no {name}")
        return value

    @property
    def n_features_in_(self) -> int:
        return self._fitted("n_features_in_", self.n_features_in)

    @property
    def feature_names_in_(self) -> np.ndarray:
        names = self._fitted("feature_names_in_", self.feature_names_in)
        return np.asarray(names, dtype=object)

    @property
    def classes_(self) -> np.ndarray:
        return self._fitted("classes_", self.classes)

    @property
    def _sklearn_version(self) -> str:
        return self._fitted("_sklearn_version", self.sklearn_version)

    @property
    def estimator_name(self) -> str:
        """The class's own name, for messages (``type(metadata).__name__`` is this class)."""
        return self.estimator_class.rsplit(".", 1)[-1]

    def _method(self, name: str) -> Callable[..., Any] | None:
        return _NotHere(self.path.name, name) if name in self.methods else None

    @property
    def predict(self) -> Callable[..., Any] | None:
        return self._method("predict")

    @property
    def predict_proba(self) -> Callable[..., Any] | None:
        return self._method("predict_proba")

    @property
    def decision_function(self) -> Callable[..., Any] | None:
        return self._method("decision_function")

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import ClassifierTags, RegressorTags, Tags, TargetTags

        return Tags(estimator_type=self.estimator_type, target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags() if self.estimator_type == "classifier" else None,
                    regressor_tags=RegressorTags() if self.estimator_type == "regressor" else None)

    def to_json(self) -> dict[str, Any]:
        """Plain values, for ``mesos-ensemble inspect --json``."""
        return {
            "path": str(self.path), "format": self.format, "estimator_class": self.estimator_class,
            "estimator_type": self.estimator_type, "n_features_in": self.n_features_in,
            "feature_names_in": list(self.feature_names_in) if self.feature_names_in is not None else None,
            "classes": self.classes.tolist() if self.classes is not None else None,
            "methods": sorted(self.methods), "sklearn_version": self.sklearn_version,
            "loaded_bytes": self.loaded_bytes, "untrusted_types": list(self.untrusted_types),
            "takes_text": self.takes_text,
        }


@dataclass(frozen=True)
class InspectionLimits:
    """Limits of one inspection process."""

    timeout_seconds: float = INSPECT_TIMEOUT_SECONDS
    memory_mb: int | None = None
    """Address space; None: ``max(INSPECT_MIN_MEMORY_MB, 1024 + 10 x the file's MB)``."""

    def memory_for(self, path: Path) -> int:
        if self.memory_mb is not None:
            return self.memory_mb
        return max(INSPECT_MIN_MEMORY_MB, int(1024 + 10 * path.stat().st_size / 2**20))


def child_environment(work_dir: str) -> dict[str, str]:
    """Only what Python needs: no inherited variables (so no secrets, tokens or PYTHON* settings)."""
    return {"PATH": os.defpath, "LANG": "C.UTF-8", "HOME": work_dir, "TMPDIR": work_dir,
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _limit(memory_bytes: int | None, cpu_seconds: int | None) -> Callable[[], None]:
    """The child's ``preexec_fn``: set its resource limits before Python starts (only syscalls;
    None: that limit is left as it is, for the process to lower itself)."""

    def apply() -> None:
        limits = [(resource.RLIMIT_CORE, 0, 0)]
        if memory_bytes is not None:
            limits.append((resource.RLIMIT_AS, memory_bytes, memory_bytes))
        if cpu_seconds is not None:
            limits.append((resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 5))
        for what, soft, hard in limits:
            _, current_hard = resource.getrlimit(what)
            if current_hard != resource.RLIM_INFINITY:
                soft, hard = min(soft, current_hard), min(hard, current_hard)
            resource.setrlimit(what, (soft, hard))

    return apply


def _decode_classes(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("values"), list):
        raise ValueError("classes is not {dtype, values}")
    dtype = value.get("dtype")
    if dtype == "object":
        if not all(isinstance(v, (str, int, float, bool)) for v in value["values"]):
            raise ValueError("classes holds values that are not labels")
        array = np.empty(len(value["values"]), dtype=object)
        array[:] = value["values"]
        return array
    if not isinstance(dtype, str) or np.dtype(dtype).kind not in "biufU":
        raise ValueError(f"classes has dtype {dtype!r}")
    return np.asarray(value["values"], dtype=np.dtype(dtype))


def parse_metadata(path: Path, raw: Any) -> ModelMetadata:
    """A :class:`ModelMetadata` from the subprocess' JSON, every field type-checked (the
    subprocess ran the model's code, so its answer is untrusted data)."""

    def check(key: str, kinds: type | tuple[type, ...], optional: bool = True) -> Any:
        value = raw.get(key)
        if (value is None and not optional) or (value is not None and not isinstance(value, kinds)):
            raise ValueError(f"field {key} is {value!r}")
        return value

    if not isinstance(raw, dict):
        raise ValueError("metadata is not an object")
    names = check("feature_names_in", list)
    methods = check("methods", list, optional=False)
    untrusted = check("untrusted_types", list) or []
    n_in = check("n_features_in", int)
    if isinstance(n_in, bool) or (names is not None and not all(isinstance(n, str) for n in names)):
        raise ValueError("n_features_in or feature_names_in has the wrong type")
    if not all(m in OUTPUTS for m in methods) or not all(isinstance(t, str) for t in untrusted):
        raise ValueError("methods or untrusted_types has unexpected values")
    kind = check("estimator_type", str)
    return ModelMetadata(
        path=path, format=check("format", str, optional=False), estimator_class=check("estimator_class", str, False),
        estimator_type=kind if kind in ("classifier", "regressor") else None,
        n_features_in=n_in, feature_names_in=tuple(names) if names is not None else None,
        classes=_decode_classes(raw.get("classes")), methods=frozenset(methods),
        sklearn_version=check("sklearn_version", str), loaded_bytes=check("loaded_bytes", int, optional=False),
        untrusted_types=tuple(untrusted), takes_text=check("takes_text", bool) is True,
    )


@dataclass(frozen=True)
class _Request:
    """One model to inspect, as the zygote gets it."""

    path: Path
    model_format: str
    trusted_types: tuple[str, ...]
    memory_mb: int
    cpu_seconds: int

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "format": self.model_format,
                "trusted_types": list(self.trusted_types), "memory_bytes": self.memory_mb * 2**20,
                "cpu_seconds": self.cpu_seconds}


def _request(path: Path, model_format: str | None, trusted_types: Iterable[str],
             limits: InspectionLimits) -> _Request:
    from executor.modelfile import format_of

    model_format = format_of(path, model_format)
    if model_format not in FORMATS:
        raise InspectionError(f"unknown format {model_format!r}; expected one of {', '.join(FORMATS)}")
    return _Request(path, model_format, tuple(trusted_types), limits.memory_for(path),
                    max(1, int(limits.timeout_seconds)))


def inspect_model(path: Path, model_format: str | None = None, trusted_types: Iterable[str] = (),
                  limits: InspectionLimits = InspectionLimits(), sha256: str | None = None) -> ModelMetadata:
    """Load ``path`` in an inspection subprocess and return its metadata.

    With ``sha256`` (the file's checksum, as the job file pins it) a successful answer is kept in
    the inspection cache and a cached one is returned without starting a process.

    Raises :class:`InspectionError` (with the refused types for a skops file that holds types
    outside the allow-list) when the file cannot be loaded there, the process crashes, runs out
    of memory or time, or answers with anything but the expected JSON.
    """
    answer = _inspect_many([(path, model_format, trusted_types, sha256)], limits)[0]
    if isinstance(answer, InspectionError):
        raise answer
    return answer


def _inspect_many(models: list[tuple[Path, str | None, Iterable[str], str | None]], limits: InspectionLimits,
                  workers: int = 1, started: Callable[[subprocess.Popen[bytes]], None] | None = None,
                  zygote: Zygote | None = None) -> list[ModelMetadata | InspectionError]:
    """Each model's metadata (or why not), in order: cached answers as they are, the others from
    ONE zygote process (:func:`executor.describe.serve`) that imports scikit-learn once and loads
    each model in a forked child of its own, ``workers`` at a time (``zygote``: one started
    already, stopped here if every answer was cached)."""
    answers: list[ModelMetadata | InspectionError | None] = []
    requests: list[tuple[int, _Request, str | None]] = []
    for index, (path, model_format, trusted, sha256) in enumerate(models):
        try:
            request = _request(path, model_format, trusted, limits)
        except InspectionError as error:
            answers.append(error)
            continue
        cached = (_recall(path, sha256, request.model_format, request.trusted_types)
                  if sha256 is not None else None)
        answers.append(cached)
        if cached is None:
            requests.append((index, request, sha256))
    if requests:
        for (index, request, sha256), outcome in zip(requests, _run_zygote([r for _i, r, _s in requests],
                                                                           limits, workers, started, zygote)):
            answers[index] = _judge(request, outcome, sha256, limits)
    elif zygote is not None:
        zygote.stop()
    assert all(a is not None for a in answers)
    return answers  # type: ignore[return-value]


class Zygote:
    """An inspection process (:func:`executor.describe.serve`) started before its models are known:
    it starts Python and imports scikit-learn at once (most of an inspection's time), then waits
    for its work on stdin.  ``mesos-ensemble run`` starts one before it imports the framework and
    reads the job file (which import no scikit-learn): the two run side by side.  Its
    resource limits are lowered by the process itself once its work (and so each file's size) is
    known; until then it runs nothing but the import.  :meth:`stop` kills it and every model it
    is loading (safe to call more than once)."""

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(prefix="mesos-ensemble-inspect-")
        work_dir = self._directory.name
        package_parent = str(Path(executor_package.__file__).resolve().parent.parent)
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-c", _ZYGOTE, package_parent],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=work_dir,
            env=child_environment(work_dir), preexec_fn=_limit(None, None), start_new_session=True, close_fds=True,
        )
        self._stopped = False
        self._stopping = threading.Lock()

    def answer(self, work: dict[str, Any], timeout: float) -> tuple[bytes, bytes] | None:
        """Hand the zygote its work and wait for it to end: its stdout and stderr (nothing from a
        zygote stopped already), or None when it did not end within ``timeout`` seconds (then it
        was stopped)."""
        if self._stopped:
            return b"", b"the inspection process was stopped"
        try:
            return self.process.communicate(json.dumps(work).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.stop()

    def stop(self) -> None:
        """Kill it (SIGTERM, then its group: see :func:`stop_zygote`) if it still runs, reap it and
        remove its directory."""
        with self._stopping:
            self._stopped = True
            if self.process.poll() is None:
                stop_zygote(self.process)
            _kill_group(self.process)  # anything left in its group
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()
            self._directory.cleanup()


def _run_zygote(requests: list[_Request], limits: InspectionLimits, workers: int,
                started: Callable[[subprocess.Popen[bytes]], None] | None = None,
                zygote: Zygote | None = None) -> list[dict[str, Any]]:
    """Run a zygote (``zygote``, started already, or a new one) over ``requests``; each request's
    outcome (see :func:`executor.describe.serve`).  A zygote that fails as a whole (it is killed,
    or answers nothing sensible) makes every request's outcome that failure.  ``started`` is told
    the zygote's process as soon as it is this inspection's."""
    rounds = -(-len(requests) // max(1, workers))
    timeout = limits.timeout_seconds * (rounds + 1)  # the import, then the children's rounds
    memory = max(r.memory_mb for r in requests)
    work = {"workers": workers, "timeout": limits.timeout_seconds, "requests": [r.to_json() for r in requests],
            "memory_bytes": memory * 2**20, "cpu_seconds": max(1, int(timeout))}
    zygote = zygote if zygote is not None else Zygote()
    if started is not None:
        started(zygote.process)
    answered = zygote.answer(work, timeout + 5)
    if answered is None:
        return [{"timed_out": True, "returncode": -signal.SIGKILL, "stdout": "", "stderr": ""}] * len(requests)
    out, err = answered
    process = zygote.process
    try:
        outcomes = json.loads(out)
        if not isinstance(outcomes, list) or len(outcomes) != len(requests) or not all(
                isinstance(o, dict) and isinstance(o.get("returncode"), int) for o in outcomes):
            raise ValueError("not one outcome per model")
        return outcomes
    except (ValueError, TypeError) as error:
        code = process.returncode
        failure = f"status {code}" if code >= 0 else signal.Signals(-code).name
        return [{"timed_out": False, "returncode": code if code != 0 else 1, "stdout": "",
                 "stderr": f"{err.decode(errors='replace')}\ninspection zygote failed ({failure}): {error}"}
                ] * len(requests)


def _judge(request: _Request, outcome: dict[str, Any], sha256: str | None,
           limits: InspectionLimits) -> ModelMetadata | InspectionError:
    """One child's outcome as metadata (kept in the cache with ``sha256``), or the error to raise."""
    path, model_format, memory_mb, cpu_seconds = request.path, request.model_format, request.memory_mb, \
        request.cpu_seconds
    if outcome.get("timed_out"):
        return InspectionError(f"did not finish loading within {limits.timeout_seconds:g} s in the inspection "
                               "process (killed it; a model that hangs while loading?)")
    err = str(outcome.get("stderr", ""))
    stderr_tail = _last_line(err.encode())
    returncode = outcome["returncode"]
    if returncode != 0:
        if returncode < 0:
            number = -returncode
            what = {signal.SIGXCPU: f"used more than {cpu_seconds} s of CPU",
                    signal.SIGKILL: "was killed (out of memory?)"}.get(signal.Signals(number),
                                                                      f"crashed ({signal.Signals(number).name})")
            return InspectionError(f"the inspection process {what} while loading it"
                                   + (f": {stderr_tail}" if stderr_tail else ""))
        memory_hint = f" (memory limit {memory_mb} MB)" if "MemoryError" in err else ""
        return InspectionError(f"the inspection process exited with status {returncode}{memory_hint}"
                               + (f": {stderr_tail}" if stderr_tail else ""))
    try:
        answer = json.loads(str(outcome.get("stdout", "")))
        if not isinstance(answer, dict):
            raise ValueError("not an object")
        if not answer.get("ok"):
            kind, error = answer.get("kind"), str(answer.get("error", ""))[:500]
            if kind == "untrusted":
                refused = answer.get("refused")
                if not isinstance(refused, dict):
                    raise ValueError("refused is not an object")
                return InspectionError(_refusal(refused), {str(k): str(v) for k, v in refused.items()})
            if kind == "memory":
                return InspectionError(f"ran out of memory while loading in the inspection process "
                                       f"(limit {memory_mb} MB)")
            return InspectionError(f"could not be loaded as a {model_format} file: {error}")
        raw = answer.get("metadata")
        metadata = parse_metadata(path, raw)
        return (metadata if sha256 is None
                else _remember(metadata, raw, sha256, model_format, request.trusted_types))
    except (ValueError, TypeError) as error:
        return InspectionError(f"the inspection process gave no valid answer ({error})"
                               + (f": {stderr_tail}" if stderr_tail else ""))


CACHE_ENV = "MESOS_ENSEMBLE_CACHE_DIR"
"""Overrides where the inspection cache lives (default ``$XDG_CACHE_HOME/mesos-ensemble``)."""


def cache_root() -> Path:
    """Where mesos-ensemble keeps what it can compute again (``$MESOS_ENSEMBLE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/mesos-ensemble``)."""
    return Path(os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                            os.path.expanduser("~/.cache"), "mesos-ensemble"))


def cache_dir() -> Path:
    """The inspection cache: one JSON answer per model file, format, allow-list and software."""
    return cache_root() / "inspections"


def _cache_key(sha256: str, model_format: str, trusted_types: tuple[str, ...]) -> str:
    """What an answer depends on: the file's bytes, how it is loaded (format, allowed types), the
    Python and library versions, and the inspecting code itself."""
    from importlib.metadata import version

    inspector = Path(executor_package.__file__).parent
    parts = [sha256, model_format, *sorted(trusted_types), sys.version,
             *(version(name) for name in ("scikit-learn", "numpy", "skops", "joblib")),
             *(hashlib.sha256((inspector / name).read_bytes()).hexdigest() for name in ("describe.py", "modelfile.py"))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _recall(path: Path, sha256: str, model_format: str, trusted_types: tuple[str, ...]) -> ModelMetadata | None:
    """A cached answer for this exact file and loading, type-checked like a fresh one; None if
    there is none (or it is unreadable: then the model is inspected again)."""
    entry = cache_dir() / f"{_cache_key(sha256, model_format, trusted_types)}.json"
    try:
        return parse_metadata(path, json.loads(entry.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def job_answers_cached(job_file: Path) -> bool:
    """Whether the inspection cache answers for every model a job file names, read with
    ``tomllib`` alone (before the job file is loaded and checked, which imports the framework):
    ``run`` then starts no :class:`Zygote` early.  Any doubt is False (the early zygote is then
    stopped unused if the cache answers after all)."""
    from executor.modelfile import format_of

    try:
        models = tomllib.loads(job_file.read_text(encoding="utf-8"))["models"]
        if not isinstance(models, list) or not models:
            return False
        for model in models:
            path = (job_file.parent / model["path"]).resolve()
            key = _cache_key(str(model["sha256"]).lower(), format_of(path, model.get("format")),
                             tuple(model.get("trusted_types", ())))
            if not (cache_dir() / f"{key}.json").is_file():
                return False
        return True
    except Exception:  # noqa: BLE001 - a job file load_job refuses, or an unreadable cache: inspect
        return False


def _remember(metadata: ModelMetadata, raw: Any, sha256: str, model_format: str,
              trusted_types: tuple[str, ...]) -> ModelMetadata:
    """Keep a successful answer (failures are never cached); a cache that cannot be written is
    skipped silently, it only saves time."""
    directory = cache_dir()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic.write_text(directory / f"{_cache_key(sha256, model_format, trusted_types)}.json", json.dumps(raw))
    except OSError:
        pass
    return metadata


def _refusal(refused: Mapping[str, Any]) -> str:
    listed = "; ".join(f"{name}{f' ({why})' if why else ''}" for name, why in sorted(refused.items()))
    return (f"holds types that are not trusted: {listed}. Trust them (the model's trusted_types, or "
            "--trusted-types) only if you trust where the file comes from")


ZYGOTE_STOP_GRACE_SECONDS = 2.0
"""How long a zygote told to stop (SIGTERM) has to kill its children before its group is killed."""


def stop_zygote(process: subprocess.Popen[bytes]) -> None:
    """Stop an inspection zygote and every model it is loading: SIGTERM (it kills each child's
    session, then exits), then SIGKILL for its own process group (its children also die with it)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=ZYGOTE_STOP_GRACE_SECONDS)
    except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
        pass
    _kill_group(process)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _last_line(data: bytes) -> str:
    lines = [line for line in data.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


def inspect_models(models: Iterable[Any], where: Callable[[int, Any], str],
                   limits: InspectionLimits = InspectionLimits(),
                   started: Callable[[subprocess.Popen[bytes]], None] | None = None,
                   zygote: Zygote | None = None) -> dict[str, ModelMetadata]:
    """Inspect every model (``ModelSpec``-like: name, path, format, trusted_types) at once: one
    process imports scikit-learn and loads each model in a child of its own, a few at a time; the
    first failure (in the models' order) is a :class:`JobSpecError` that starts with
    ``where(index, model)``.  ``started`` is told the inspection process, if one runs; ``zygote``:
    that process, started already (see :class:`Zygote`; stopped here if it is not needed)."""
    models = list(models)
    if not models:
        if zygote is not None:
            zygote.stop()
        return {}
    workers = max(1, min(len(models), os.cpu_count() or 1, 4))
    answers = _inspect_many([(m.path, m.format, m.trusted_types, getattr(m, "sha256", None)) for m in models],
                            limits, workers, started, zygote)
    found: dict[str, ModelMetadata] = {}
    for index, (model, answer) in enumerate(zip(models, answers)):
        if isinstance(answer, InspectionError):
            raise JobSpecError(f"{where(index, model)}: {model.path.name}: {answer}") from None
        found[model.name] = answer
    return found


def inspect_job_models(spec: Any, limits: InspectionLimits = InspectionLimits(),
                       started: Callable[[subprocess.Popen[bytes]], None] | None = None,
                       zygote: Zygote | None = None) -> dict[str, ModelMetadata]:
    """:func:`inspect_models` for a job's ``[[models]]``, errors naming the job file and model."""
    return inspect_models(spec.models, lambda i, m: f"{spec.source}: models[{i}] ({m.name})", limits, started,
                          zygote)


def _job_models_key(spec: Any) -> tuple[Any, ...]:
    """What a job's inspection depends on: each model's name, file, format, allow-list and checksum."""
    return (spec.source, tuple((m.name, str(m.path), m.format, tuple(m.trusted_types), getattr(m, "sha256", None))
                               for m in spec.models))


class InspectionAhead:
    """:func:`inspect_job_models` started at once on a thread of its own, so that the inspection
    process (a Python start, scikit-learn's import, each model's load: seconds) runs while the
    caller does what needs no model metadata: importing the rest of the framework, reading and
    cutting the data, starting the embedded cluster.  Nothing the caller does meanwhile may launch
    work (a model that fails inspection is bad input).  :meth:`result` waits for the answer (or
    raises the inspection's :class:`~framework.errors.JobSpecError`); :meth:`cancel` kills the
    inspection process if it still runs (an abandoned run leaves nothing behind).  ``zygote``: the
    inspection process, started before the job file was read (see :class:`Zygote`)."""

    def __init__(self, spec: Any, limits: InspectionLimits = InspectionLimits(), zygote: Zygote | None = None) -> None:
        self.key = _job_models_key(spec)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._zygote = zygote
        self._cancelled = False
        self._answer: dict[str, ModelMetadata] | None = None
        self._error: BaseException | None = None
        self.finished_at: float | None = None
        """When the answer came (``time.time()``), once it has."""
        self._thread = threading.Thread(target=self._inspect, args=(spec, limits), name="inspection", daemon=True)
        self._thread.start()

    def _inspect(self, spec: Any, limits: InspectionLimits) -> None:
        try:
            self._answer = inspect_job_models(spec, limits, self._started, self._zygote)
        except BaseException as error:  # handed to the caller by result()
            self._error = error
        finally:
            if self._zygote is not None:
                self._zygote.stop()  # (already, unless this failed before handing it its work)
            self.finished_at = time.time()

    def _started(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._process = process
            cancelled = self._cancelled
        if cancelled:
            stop_zygote(process)

    def matches(self, spec: Any) -> bool:
        """Whether this inspects ``spec``'s models (the same files, formats and allow-lists)."""
        return self.key == _job_models_key(spec)

    def result(self) -> dict[str, ModelMetadata]:
        """Each model's metadata by name, once the inspection is done (its error, raised here)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        return self._answer

    def cancel(self) -> None:
        """Kill the inspection process if it still runs, and wait for the thread (quick after a kill)."""
        with self._lock:
            self._cancelled = True
            process = self._process
        if process is not None and process.poll() is None:
            stop_zygote(process)
        elif process is None and self._zygote is not None:
            self._zygote.stop()  # started early, not yet handed its work
        self._thread.join()


def describe_metadata(metadata: ModelMetadata) -> str:
    """A few lines for people (``mesos-ensemble inspect``)."""
    size = metadata.path.stat().st_size if metadata.path.is_file() else 0
    names = metadata.feature_names_in
    classes = metadata.classes.tolist() if metadata.classes is not None else None
    lines = [
        f"{metadata.path}: {metadata.format} file, {_size(size)}"
        + (" (a pickle: loading it runs its code)" if metadata.format == "joblib" else ""),
        f"  estimator: {metadata.estimator_class} ({metadata.estimator_type or 'neither classifier nor regressor'})",
        "  input: text (one string column per row: give it text = \"column\" in a job)" if metadata.takes_text else
        f"  features: {metadata.n_features_in if metadata.n_features_in is not None else 'unknown'}"
        + (f" ({', '.join(names[:20])}{', ...' if len(names) > 20 else ''})" if names is not None else ""),
        f"  classes: {classes[:20]}{' ...' if len(classes) > 20 else ''}" if classes is not None else "  classes: -",
        f"  outputs: {', '.join(m for m in OUTPUTS if m in metadata.methods) or 'none'}",
        f"  scikit-learn version: {metadata.sklearn_version or 'not recorded'}",
        f"  loaded size: about {_size(metadata.loaded_bytes)}",
    ]
    if metadata.format == "skops":
        untrusted = ", ".join(metadata.untrusted_types) or "none"
        lines.append(f"  untrusted types (not trusted by skops itself; allowed here): {untrusted}")
    return "\n".join(lines)


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 1024:.1f} KiB"
