"""The executor package: a tar.gz of the ``executor`` sources, served to every agent and
extracted into the sandbox by the Mesos fetcher."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import executor as executor_package
from framework.dataset import write_atomic


def build_executor_package(directory: Path) -> Path:
    """A tar.gz of the ``executor`` package, fetched and extracted by the Mesos fetcher."""
    source = Path(executor_package.__file__).parent
    target = directory / "mesos-ensemble-executor.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(source.glob("*.py")):
            archive.add(path, arcname=f"executor/{path.name}")
    write_atomic(target, buffer.getvalue())
    return target
