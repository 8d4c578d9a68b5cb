"""Atomic file replacement: the one way the framework writes a file others may be reading.

A writer fills a temporary sibling of the target (same directory, so the rename cannot cross
file systems), flushes and fsyncs it, then ``os.replace``-s it over the target and fsyncs the
directory. Readers see the old file or the new one, never a part; on failure the temporary
file is removed and the target is untouched.

The temporary file is created with ``os.open(..., 0o666)``, so the kernel applies the process
umask (and any default ACL) exactly as for a new file: a replaced output gets the mode a new
file would get (``tempfile.mkstemp`` would leave it 0600).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator, Literal

NEW_FILE_MODE = 0o666
"""Requested mode of a new file; the umask takes its bits away."""


def create_sibling(path: str | os.PathLike[str], suffix: str = ".partial") -> Path:
    """Create an empty, uniquely named hidden file next to ``path`` (mode as a new file under the umask).

    The caller fills it and hands it to :func:`commit`, or removes it.
    """
    target = Path(path)
    for _ in range(100):
        candidate = target.with_name(f".{target.name}.{secrets.token_hex(4)}{suffix}")
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"could not create a temporary file next to {target}")


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(temporary: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """fsync the filled ``temporary``, rename it over ``path`` and fsync the directory; return ``path``."""
    target = Path(path)
    fd = os.open(temporary, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, target)
    fsync_directory(target.parent)
    return target


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], suffix: str = ".partial") -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``path`` to fill (by any means: a memory map, a library
    writing to a file name); on normal exit commit it over ``path``, on an exception remove it."""
    temporary = create_sibling(path, suffix)
    try:
        yield temporary
        commit(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: Literal["w", "wb"] = "wb", encoding: str | None = None,
                newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; replace ``path`` with it when the block ends
    without an exception (the file is flushed and fsynced first); otherwise remove it."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole new file: mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with replacing(path) as temporary:
        with open(temporary, mode, encoding=encoding, newline=newline) as handle:
            yield handle


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path`` atomically with ``data``."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Replace ``path`` atomically with ``text``."""
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)
