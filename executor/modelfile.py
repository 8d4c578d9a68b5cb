"""Loading a model file, the same way wherever it is loaded: in the executors and in the
framework's inspection subprocess (never in the framework's own process).

Two formats:

* ``joblib``: a pickle.  Loading it runs whatever code the file asks for; it is loaded as a
  whole or not at all, so only load joblib files you trust.
* ``skops``: ``skops.io`` refuses any type it is not told to trust.  The allow-list is always
  the same two parts: the default (:func:`trusted_by_default`: scikit-learn's and numpy's own
  classes, except those skops marks as unsafe to trust blindly) and the job's
  ``trusted_types``.  It never comes from the file: the file's types are only checked against it.

This module imports only the standard library at import time (scikit-learn, joblib and skops
when a file is loaded), so the executor package stays small.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

FORMATS = ("joblib", "skops")
DEFAULT_TRUSTED_PACKAGES = ("sklearn", "numpy")
"""Classes defined under these packages are trusted in skops files by default."""


class UntrustedTypes(Exception):
    """A skops file holds types outside the allow-list; nothing was loaded."""

    def __init__(self, refused: dict[str, str]) -> None:
        self.refused = refused
        super().__init__("untrusted types: " + "; ".join(f"{name}{f' ({why})' if why else ''}"
                                                         for name, why in sorted(refused.items())))


def format_of(path: str | os.PathLike[str], declared: str | None = None) -> str:
    """The file's format: the declared one, else ``skops`` for a ``.skops`` file, else ``joblib``."""
    if declared is not None:
        return declared
    return "skops" if Path(path).suffix == ".skops" else "joblib"


def _resolve(name: str) -> Any:
    """The object a dotted name refers to, importing the longest module prefix that exists."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return target
    raise ImportError(name)


def _unsafe_reasons() -> dict[str, str]:
    """Types skops knows to be unsafe to trust without reviewing the file (raw node indices
    that scikit-learn reads without bounds checks), with skops' first sentence of why."""
    try:
        from skops.io.exceptions import UNTRUSTED_TYPE_REASONS
    except ImportError:  # an older skops: no known-unsafe list
        return {}
    return {name: "skops: its node indices are not bounds-checked; a crafted file can crash the process"
            for name in UNTRUSTED_TYPE_REASONS}


def trusted_by_default(type_name: str) -> bool:
    """A class of scikit-learn or numpy (not a function, not another package's type), and not
    one that skops lists as unsafe to trust blindly."""
    if type_name.split(".")[0] not in DEFAULT_TRUSTED_PACKAGES or type_name in _unsafe_reasons():
        return False
    try:
        return isinstance(_resolve(type_name), type)
    except (ImportError, AttributeError):
        return False


def refused_types(untrusted: Iterable[str], trusted_types: Iterable[str]) -> dict[str, str]:
    """Of the types skops does not trust on its own, those the allow-list does not allow either,
    each with a short reason."""
    extra = set(trusted_types)
    unsafe = _unsafe_reasons()
    refused = {}
    for name in untrusted:
        if name in extra or trusted_by_default(name):
            continue
        if name in unsafe:
            refused[name] = unsafe[name]
        elif name.split(".")[0] in DEFAULT_TRUSTED_PACKAGES:
            refused[name] = "not a class"
        else:
            refused[name] = ""
    return refused


def skops_untrusted_types(path: str | os.PathLike[str]) -> list[str]:
    """The types in a skops file that skops does not trust by default (read without loading)."""
    from skops.io import get_untrusted_types

    return list(get_untrusted_types(file=Path(path)))


def load_model(path: str | os.PathLike[str], model_format: str = "joblib",
               trusted_types: Iterable[str] = ()) -> tuple[Any, str | None]:
    """Load a model file; return ``(estimator, scikit-learn version recorded in it)``.

    A skops file is first checked against the allow-list (:class:`UntrustedTypes` if it holds
    anything else), then loaded with exactly the allowed types trusted, so skops checks again.

    scikit-learn pops ``_sklearn_version`` while unpickling and warns
    (``InconsistentVersionWarning``) only when it differs from the running version, so the
    version is the warning's ``original_sklearn_version`` (the outermost estimator's, the last
    warning), else ``_sklearn_version`` left in the state of a non-sklearn subclass, else the
    running version for a scikit-learn estimator, else None.
    """
    import sklearn
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import InconsistentVersionWarning

    if model_format not in FORMATS:
        raise ValueError(f"unknown model format {model_format!r}; expected one of {', '.join(FORMATS)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InconsistentVersionWarning)
        if model_format == "skops":
            import skops.io

            untrusted = skops_untrusted_types(path)
            refused = refused_types(untrusted, trusted_types)
            if refused:
                raise UntrustedTypes(refused)
            estimator = skops.io.load(Path(path), trusted=untrusted)
        else:
            import joblib

            estimator = joblib.load(path)
    versions = [w.message.original_sklearn_version for w in caught
                if isinstance(w.message, InconsistentVersionWarning)]
    for w in caught:
        if not isinstance(w.message, InconsistentVersionWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    version: str | None
    if versions:
        version = versions[-1]
    elif isinstance(getattr(estimator, "_sklearn_version", None), str):
        version = estimator._sklearn_version
    elif isinstance(estimator, BaseEstimator):
        version = sklearn.__version__
    else:
        version = None
    return estimator, version
