"""The executor package: a tar.gz of the ``executor`` sources, served to every agent and
extracted into the sandbox by the Mesos fetcher."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import py_compile
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import executor as executor_package
from framework import atomic
from framework.dataset import write_atomic
from framework.inspection import cache_root

PACKAGE_NAME = "mesos-ensemble-executor.tar.gz"


def build_executor_package(directory: Path) -> Path:
    """A tar.gz of the ``executor`` package, fetched and extracted by the Mesos fetcher.

    Beside each source goes its bytecode for this interpreter (``__pycache__``, checked against the
    source's hash, not its time, so a fetcher that does not keep file times still uses it): every
    executor starts in a fresh sandbox, and compiling the package there was about a third of its
    imports before its first task (0.1-0.2 s, measured 2026-12-02).  A Python of another version
    ignores it (the file names carry the interpreter's tag) and compiles the sources.  Compiling
    costs this process about as much, so the package is kept in the cache directory by the
    sources' and the interpreter's hash and copied from there when it is built again."""
    sources = sorted(Path(executor_package.__file__).parent.glob("*.py"))
    digest = hashlib.sha256(sys.version.encode())
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    target = directory / PACKAGE_NAME
    cached = cache_root() / "executor-packages" / f"{digest.hexdigest()}.tar.gz"
    if cached.is_file():
        try:
            shutil.copyfile(cached, target)
            return target
        except OSError:
            pass
    write_atomic(target, _package(sources, directory))
    try:
        cached.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic.write_bytes(cached, target.read_bytes())
    except OSError:  # a cache that cannot be written only costs time
        pass
    return target


def _package(sources: list[Path], directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive, \
            tempfile.TemporaryDirectory(prefix="executor-bytecode-", dir=directory) as compiled:
        for path in sources:
            archive.add(path, arcname=f"executor/{path.name}")
            if sys.implementation.cache_tag is None:
                continue
            bytecode = Path(compiled) / Path(importlib.util.cache_from_source(str(path))).name
            try:
                py_compile.compile(str(path), cfile=str(bytecode), doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
            except py_compile.PyCompileError:  # the executor compiles it itself, and says what is wrong
                continue
            archive.add(bytecode, arcname=f"executor/__pycache__/{bytecode.name}")
    return buffer.getvalue()
