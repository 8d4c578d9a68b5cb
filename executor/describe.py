"""The inspection subprocess: load one model file and print what the framework needs to know
about it as one JSON document on stdout.

The framework (``framework.inspection``) runs this with ``python -I`` under a timeout and
resource limits, with an environment holding no secrets, so that a model file's code never
runs in the framework's own process.  Usage::

    python -I -c "...; from executor.describe import main; main()" MODEL FORMAT [TRUSTED_TYPE ...]

Whatever the model prints goes to stderr; stdout carries only the JSON document:
``{"ok": true, "metadata": {...}}``, or ``{"ok": false, "kind": ..., "error": ...}`` (``kind``
is ``untrusted`` with ``refused`` types, ``memory`` or ``load``).
"""

from __future__ import annotations

import json
import os
import sys
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
