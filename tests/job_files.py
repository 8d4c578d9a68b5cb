"""Job files of the tests: a fitted model written beside its job file, as its ``[[models]]`` table."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import joblib


def model_table(directory: Path, name: str, model: Any, **fields: Any) -> str:
    """Dump ``model`` as ``directory/<name>.joblib`` and return its ``[[models]]`` table: name,
    path and sha256, then ``fields`` in order (a None value left out)."""
    path = directory / f"{name}.joblib"
    joblib.dump(model, path)
    lines = [f"name = {toml_value(name)}", f"path = {toml_value(path.name)}",
             f"sha256 = {toml_value(hashlib.sha256(path.read_bytes()).hexdigest())}"]
    lines += [f"{key} = {toml_value(value)}" for key, value in fields.items() if value is not None]
    return "[[models]]\n" + "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """``value`` (a string, number, boolean, list or dict of them) as a TOML value."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(value)
