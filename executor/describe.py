"""The inspection subprocess: load one model file and print what the framework needs to know
about it as one JSON document on stdout.

The framework (``framework.inspection``) runs this with ``python -I`` under a timeout and
resource limits, with an environment holding no secrets, so that a model file's code never
runs in the framework's own process.  Usage::

    python -I -c "...; from executor.describe import main; main()" MODEL FORMAT [TRUSTED_TYPE ...]

Whatever the model prints goes to stderr; stdout carries only the JSON document:
``{"ok": true, "metadata": {...}}``, or ``{"ok": false, "kind": ..., "error": ...}`` (``kind``
is ``untrusted`` with ``refused`` types, ``memory`` or ``load``).

Several models are inspected by one process that imports scikit-learn once (:func:`serve`, a
"zygote") and forks a child per model: each child is its own session, under its own limits, in
its own directory, with its own stdout and stderr files, and loads exactly one model (no model's
code runs in the zygote or in another model's process).  Starting Python and importing
scikit-learn was most of each inspection's cost (about 1.7 s of CPU per model).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from typing import Any

from executor.modelfile import UntrustedTypes, load_model, skops_untrusted_types

OUTPUTS = ("predict", "predict_proba", "decision_function")


def estimator_type(estimator: Any) -> str | None:
    """``classifier``, ``regressor`` or None, as scikit-learn's tags say."""
    try:
        from sklearn.utils import get_tags

        return get_tags(estimator).estimator_type
    except Exception:  # not a scikit-learn estimator: fall back on the old attribute
        kind = getattr(estimator, "_estimator_type", None)
        return kind if isinstance(kind, str) else None


def encode_classes(classes: Any) -> dict[str, Any] | None:
    """``classes_`` as JSON: its dtype and values (numbers, bools or strings)."""
    import numpy as np

    if classes is None:
        return None
    array = np.asarray(classes)
    if array.ndim != 1:
        raise ValueError(f"classes_ has shape {array.shape}; expected one dimension")
    values = array.tolist()
    if array.dtype.kind == "O":
        if not all(isinstance(v, (str, int, float, bool)) for v in values):
            raise ValueError("classes_ holds labels that are not numbers, booleans or strings")
    elif array.dtype.kind not in "biufU":
        raise ValueError(f"classes_ has dtype {array.dtype}; expected numbers, booleans or strings")
    return {"dtype": array.dtype.str if array.dtype.kind != "O" else "object", "values": values}


def takes_text(estimator: Any) -> bool:
    """Whether the model's input is text: it is (or a Pipeline whose first step, however nested,
    is) a scikit-learn text vectorizer (``CountVectorizer``, ``TfidfVectorizer``,
    ``HashingVectorizer``: they build an analyzer) reading documents given as strings."""
    first = estimator
    while isinstance(getattr(first, "steps", None), list) and first.steps:
        first = first.steps[0][1]
    return callable(getattr(first, "build_analyzer", None)) and getattr(first, "input", "content") == "content"


def describe(estimator: Any, version: str | None, loaded_bytes: int) -> dict[str, Any]:
    """The model's metadata as plain JSON values."""
    kind = type(estimator)
    n_in = getattr(estimator, "n_features_in_", None)
    names = getattr(estimator, "feature_names_in_", None)
    return {
        "estimator_class": f"{kind.__module__}.{kind.__qualname__}",
        "estimator_type": estimator_type(estimator),
        "n_features_in": int(n_in) if n_in is not None else None,
        "feature_names_in": [str(f) for f in names] if names is not None else None,
        "classes": encode_classes(getattr(estimator, "classes_", None)),
        "methods": [m for m in OUTPUTS if getattr(estimator, m, None) is not None],
        "sklearn_version": version,
        "loaded_bytes": int(loaded_bytes),
        "takes_text": takes_text(estimator),
    }


def loaded_size(path: str, model_format: str, trusted_types: list[str], estimator: Any) -> int:
    """About how much memory the loaded model holds: how much the resident set grows when it is
    loaded a second time (the modules it needs are imported by then; native buffers, such as a
    forest's nodes, count), or the file's size if larger.  A plain second load: tracing every
    allocation, or pickling the model again, costs seconds on a large forest."""
    before = _resident_bytes()
    again = load_model(path, model_format, trusted_types)
    grown = _resident_bytes() - before
    del again
    return max(grown, os.path.getsize(path))


def _resident_bytes() -> int:
    """This process' resident set (Linux ``/proc/self/statm``; 0 where it does not exist)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def inspect_file(path: str, model_format: str, trusted_types: list[str]) -> dict[str, Any]:
    """Load the file and describe it (the JSON document's content)."""
    untrusted = skops_untrusted_types(path) if model_format == "skops" else []
    try:
        estimator, version = load_model(path, model_format, trusted_types)
        loaded_bytes = loaded_size(path, model_format, trusted_types, estimator)
    except UntrustedTypes as error:
        return {"ok": False, "kind": "untrusted", "error": str(error), "refused": error.refused,
                "untrusted_types": untrusted}
    except MemoryError:
        return {"ok": False, "kind": "memory", "error": "MemoryError while loading"}
    except Exception as error:  # a bad file raises many types
        return {"ok": False, "kind": "load", "error": f"{type(error).__name__}: {error}"}
    metadata = describe(estimator, version, loaded_bytes)
    metadata["format"] = model_format
    metadata["untrusted_types"] = untrusted
    return {"ok": True, "metadata": metadata}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the subprocess (see the module doc)."""
    args = sys.argv[1:] if argv is None else argv
    path, model_format, trusted = args[0], args[1], args[2:]
    # The model's own prints must not corrupt the JSON: fd 1 points at stderr while it loads.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        result = inspect_file(path, model_format, trusted)
    except MemoryError:
        result = {"ok": False, "kind": "memory", "error": "MemoryError"}
    except Exception as error:
        result = {"ok": False, "kind": "load", "error": f"{type(error).__name__}: {error}"}
    out.write(json.dumps(result))
    out.flush()
    os._exit(0)  # skip interpreter teardown: a model's finalizers run no further code


def _limit(memory_bytes: int | None, cpu_seconds: int) -> None:
    """Resource limits of this process (lowered within any hard limit it already has)."""
    limits = [(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 5), (resource.RLIMIT_CORE, 0, 0)]
    if memory_bytes is not None:
        limits.append((resource.RLIMIT_AS, memory_bytes, memory_bytes))
    for what, soft, hard in limits:
        _, current_hard = resource.getrlimit(what)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(what, (soft, hard))


def _die_with_zygote(zygote: int) -> None:
    """Linux: the kernel kills this child when the zygote dies (``PR_SET_PDEATHSIG``), so that a
    zygote killed by the framework (its run abandoned, or past its deadline) leaves no model loading."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != zygote:  # it died before prctl took effect
        os._exit(70)


def _child(request: dict[str, Any], directory: str, zygote: int, keep_out: int) -> None:
    """In a forked child: its own session, limits and directory, stdout and stderr to its own
    files, dying with the zygote; then :func:`main` on one model (which exits)."""
    try:
        os.close(keep_out)  # the zygote's answer pipe: the framework reads it to its end
        os.setsid()
        _die_with_zygote(zygote)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.makedirs(directory)
        os.chdir(directory)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            target = os.open(os.path.join(directory, os.pardir, f"{os.path.basename(directory)}.{name}"),
                             os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        _limit(request["memory_bytes"], request["cpu_seconds"])
        main([request["path"], request["format"], *request["trusted_types"]])
    finally:
        os._exit(70)  # main exits itself; anything else is a failure of this child


def _read_tail(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(0, stream.tell() - limit))
            return stream.read().decode(errors="replace")
    except OSError:
        return ""


def serve(argv: list[str] | None = None) -> None:
    """The zygote: its work is a JSON object ``{"workers": N, "timeout": seconds, "requests":
    [{"path", "format", "trusted_types", "memory_bytes", "cpu_seconds"}, ...], "memory_bytes":
    M, "cpu_seconds": C}``, given as ``argv[0]`` or else read from stdin to its end.  Imports
    scikit-learn first (so that a zygote started before its models are known imports it while
    the framework reads the job file; stdin closed with nothing on it: nothing to do), then
    lowers its own limits to ``memory_bytes`` and ``cpu_seconds``, imports what the requests
    name (and skops if one needs it) and runs each request in a forked child, at most
    ``workers`` at once, killing (with everything it started) a child still running after
    ``timeout`` seconds.  Prints one JSON list, per request in order: ``returncode`` (as
    ``subprocess`` gives it), ``timed_out``, the child's ``stdout`` and the tail of its ``stderr``."""
    given = sys.argv[1:] if argv is None else argv
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    running: dict[int, tuple[int, float]] = {}  # pid -> (request index, started)

    def stop(signum: int, _frame: Any) -> None:
        """SIGTERM (the framework gave up on this inspection): every child goes, with what it started."""
        for child in list(running):
            _kill_group(child)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    _import_scikit_learn()
    raw = given[0] if given else sys.stdin.read()
    if not raw.strip():
        os._exit(0)  # not needed after all (every answer was cached), or the framework is gone
    spec = json.loads(raw)
    requests, workers, timeout = spec["requests"], max(1, int(spec["workers"])), float(spec["timeout"])
    if "cpu_seconds" in spec:
        _limit(spec.get("memory_bytes"), int(spec["cpu_seconds"]))
    _preimport(requests)
    base = os.getcwd()
    results: list[dict[str, Any] | None] = [None] * len(requests)
    waiting = list(range(len(requests)))
    while waiting or running:
        while waiting and len(running) < workers:
            index = waiting.pop(0)
            directory = os.path.join(base, f"model-{index}")
            pid = os.fork()
            if pid == 0:
                _child(requests[index], directory, os.getppid(), out.fileno())
            running[pid] = (index, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for child, (index, started) in list(running.items()):
                if now - started > timeout and results[index] is None:
                    results[index] = {"timed_out": True}
                    _kill_group(child)
            time.sleep(0.01)
            continue
        if pid not in running:
            continue
        index, _started = running.pop(pid)
        _kill_group(pid)  # anything the model started in the background goes too
        name = os.path.join(base, f"model-{index}")
        outcome = {"timed_out": False, **(results[index] or {}),
                   "returncode": -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status),
                   "stdout": _read_tail(f"{name}.stdout", 1 << 20), "stderr": _read_tail(f"{name}.stderr", 1 << 16)}
        results[index] = outcome
    out.write(json.dumps(results))
    out.flush()
    os._exit(0)


SCANNED_BYTES = 1 << 20
"""How much of each joblib file :func:`_preimport` reads for the scikit-learn packages it names."""


def _preimport(requests: list[dict[str, Any]]) -> None:
    """Import what the models need before the children fork, so that each child does not import
    it again: scikit-learn (and skops if a model is a skops file), and the scikit-learn packages
    a joblib file names in its first bytes (``sklearn.ensemble`` for a forest's pickle).  Only
    packages of the installed scikit-learn are imported, by name; nothing of the file runs here.
    A failure is left for each child to report."""
    import importlib
    import importlib.util
    import re

    names: set[str] = set()
    for request in requests:
        if request["format"] != "joblib":
            continue
        try:
            with open(request["path"], "rb") as stream:
                head = stream.read(SCANNED_BYTES)
        except OSError:
            continue
        names.update(m.decode() for m in re.findall(rb"\bsklearn\.([a-z][a-z0-9_]{1,40})\b", head))
    if not _import_scikit_learn():
        return
    try:
        if any(r["format"] == "skops" for r in requests):
            import skops.io  # noqa: F401
    except Exception:  # noqa: S110
        return
    for name in sorted(names)[:20]:
        try:
            if importlib.util.find_spec(f"sklearn.{name}") is not None:
                importlib.import_module(f"sklearn.{name}")
        except Exception:  # noqa: S110 - not a package of scikit-learn, or it fails: the child says so
            pass


def _import_scikit_learn() -> bool:
    """Import what every model load imports first (most of an inspection's time); False if it fails
    (each child then reports its own failure)."""
    try:
        import joblib  # noqa: F401
        import sklearn.base  # noqa: F401
        import sklearn.utils  # noqa: F401
    except Exception:
        return False
    return True


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
