"""Malicious model files for the trust-boundary tests: each runs code when it is loaded.

A joblib trojan is a working model wrapped in a pickle whose ``__reduce__`` evaluates an
expression (builtins only, so any Python can load it) and then returns the real model, as a
real attack would.  The usual expression creates ``marker-<pid>`` in a directory, naming the
process that loaded the file.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import joblib


def marker_expression(directory: Path) -> str:
    """An expression that creates ``directory/marker-<pid of the process evaluating it>``."""
    return (f"open(__import__('os').path.join({str(directory)!r}, 'marker-%d' % __import__('os').getpid()), 'w')"
            ".close()")


class PickleTrojan:
    """Pickles as: evaluate ``expression``, then unpickle ``model``."""

    def __init__(self, model: Any, expression: str) -> None:
        self.model, self.expression = model, expression

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        inner = pickle.dumps(self.model, protocol=pickle.HIGHEST_PROTOCOL)
        return eval, (f"[{self.expression}, __import__('pickle').loads({inner!r})][1]",)


def write_joblib_trojan(path: Path, model: Any, expression: str) -> Path:
    joblib.dump(PickleTrojan(model, expression), path)
    return path


def markers(directory: Path) -> dict[int, Path]:
    """The markers in ``directory``, by the process id that created them."""
    return {int(p.name.split("-")[1]): p for p in directory.glob("marker-*")}


class SkopsTrojan:
    """An object that a skops file can hold: loading it (``__setstate__``) creates a marker.
    skops must refuse it unless it is trusted by name."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        open(os.path.join(state["directory"], f"marker-{os.getpid()}"), "w").close()
