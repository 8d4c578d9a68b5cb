"""The executor package carries its bytecode (checked by the sources' hash), which an executor
started in a fresh sandbox imports instead of compiling; a second build is the cached package."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import executor
from framework.executor_package import build_executor_package
from framework.inspection import CACHE_ENV


def test_the_package_carries_bytecode_the_executor_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    package = build_executor_package(tmp_path)
    names = tarfile.open(package).getnames()
    sources = sorted(p.name for p in Path(executor.__file__).parent.glob("*.py"))
    assert sorted(n.split("/")[1] for n in names if n.endswith(".py")) == sources
    tag = sys.implementation.cache_tag
    assert {f"executor/__pycache__/{name[:-3]}.{tag}.pyc" for name in sources} <= set(names)
    sandbox = tmp_path / "sandbox"
    with tarfile.open(package) as archive:
        archive.extractall(sandbox, filter="data")
    shipped = {path: path.read_bytes() for path in (sandbox / "executor" / "__pycache__").iterdir()}
    found = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, '.'); import executor.main"],
                           cwd=sandbox, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    # Bytecode Python found stale would have been compiled again and rewritten in place.
    assert {path: path.read_bytes() for path in shipped} == shipped
    (tmp_path / "second").mkdir()
    again = build_executor_package(tmp_path / "second")
    assert again.read_bytes() == package.read_bytes()  # from the cache, not rebuilt


def test_an_edited_source_is_compiled_anew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python checks the shipped bytecode against its source's hash: it never runs stale code."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    sandbox = tmp_path / "sandbox"
    with tarfile.open(build_executor_package(tmp_path)) as archive:
        archive.extractall(sandbox, filter="data")
    (sandbox / "executor" / "folds.py").write_text("VALUE = 'edited'\n")
    program = "import sys; sys.path.insert(0, '.'); import executor.folds as f; print(getattr(f, 'VALUE', ''))"
    found = subprocess.run([sys.executable, "-I", "-B", "-c", program],
                           cwd=sandbox, capture_output=True, text=True, timeout=60)
    assert found.stdout.strip() == "edited", found.stderr
