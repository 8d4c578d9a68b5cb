"""The framework's one atomic-write helper: whole files or nothing, new-file permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import pytest

from framework import atomic


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_replaced_file_gets_the_mode_of_a_new_file_under_the_umask(tmp_path: Path, umask_022: None) -> None:
    fresh = tmp_path / "fresh.txt"
    fresh.write_text("reference")  # what open() gives a new file under this umask
    target = tmp_path / "out.txt"
    target.write_text("old")
    os.chmod(target, 0o600)
    atomic.write_text(target, "new")
    assert target.read_text() == "new"
    assert mode(target) == mode(fresh) == 0o644
    atomic.write_bytes(tmp_path / "created.bin", b"\x00\x01")
    assert mode(tmp_path / "created.bin") == 0o644


def test_umask_is_respected_not_hard_coded(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        atomic.write_bytes(tmp_path / "a.bin", b"x")
        with atomic.replacing(tmp_path / "b.npy") as temporary:
            temporary.write_bytes(b"y")
    finally:
        os.umask(previous)
    assert mode(tmp_path / "a.bin") == 0o640 and mode(tmp_path / "b.npy") == 0o640


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.atomic_open(target, "w") as handle:
            handle.write("half a rep")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    with pytest.raises(RuntimeError):
        with atomic.replacing(tmp_path / "never.npy") as temporary:
            temporary.write_bytes(b"partial")
            raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_temporary_is_a_hidden_sibling_until_commit(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    with atomic.atomic_open(target, "w", newline="") as handle:
        handle.write("a,b\r\n")
        handle.flush()
        siblings = [p for p in tmp_path.iterdir()]
        assert len(siblings) == 1 and siblings[0].parent == tmp_path and siblings[0].name.startswith(".out.csv.")
        assert not target.exists()
    assert target.read_bytes() == b"a,b\r\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_binary_and_text_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be"):
        with atomic.atomic_open(tmp_path / "x", "a"):  # type: ignore[arg-type]
            pass
    assert not any(tmp_path.iterdir())
