"""Fetcher: bring ``CommandInfo.uris`` into a sandbox (copy, download, extract, chmod)."""
from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Iterable

DOWNLOAD_TIMEOUT = 60.0
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class FetchError(Exception):
    """A URI could not be fetched; the container launch fails."""


def fetch_all(uris: Iterable[dict[str, Any]], sandbox: Path) -> None:
    """Fetch every URI sequentially into ``sandbox``."""
    for uri in uris:
        try:
            fetch(uri, sandbox)
        except FetchError:
            raise
        except (OSError, ValueError, tarfile.TarError, zipfile.BadZipFile, urllib.error.URLError) as exc:
            raise FetchError(f"Failed to fetch '{uri.get('value')}': {exc}") from exc


def _destination(uri: dict[str, Any], sandbox: Path) -> Path:
    value = uri["value"]
    name = uri.get("output_file") or os.path.basename(urllib.parse.urlparse(value).path.rstrip("/")) \
        or os.path.basename(value.rstrip("/"))
    if not name:
        raise FetchError(f"Failed to determine the output file name for '{value}'")
    dest = (sandbox / name).resolve()
    root = sandbox.resolve()
    if os.path.isabs(name) or (dest != root and root not in dest.parents):
        raise FetchError(f"Output file '{name}' would be outside the sandbox")
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def fetch(uri: dict[str, Any], sandbox: Path) -> Path:
    """Fetch one URI; returns the path of the fetched file."""
    value = uri.get("value", "")
    parsed = urllib.parse.urlparse(value)
    dest = _destination(uri, sandbox)
    if parsed.scheme in ("", "file"):
        source = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else value
        if not os.path.isabs(source):
            raise FetchError(f"Failed to fetch '{value}': A relative path was passed for the resource but the "
                             "Mesos framework home was not specified. Please either provide this config "
                             "option or avoid using a relative path")
        if not os.path.isfile(source):
            raise FetchError(f"Failed to fetch '{value}': Failed to copy '{source}': No such file")
        shutil.copyfile(source, dest)
    elif parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(value, timeout=DOWNLOAD_TIMEOUT) as response, open(dest, "wb") as out:
                shutil.copyfileobj(response, out)
        except urllib.error.HTTPError as exc:
            raise FetchError(f"Failed to fetch '{value}': Error downloading resource, received HTTP return "
                             f"code {exc.code}") from exc
    else:
        raise FetchError(f"Failed to fetch '{value}': unsupported URI scheme '{parsed.scheme}' "
                         "(no Hadoop client in localmesos)")
    if uri.get("executable", False):
        mode = os.stat(dest).st_mode
        os.chmod(dest, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    elif uri.get("extract", True):
        extract(dest, sandbox)
    return dest


def extract(path: Path, sandbox: Path) -> bool:
    """Extract a supported archive into the sandbox (the archive is kept)."""
    name = path.name.lower()
    if name.endswith(_TAR_SUFFIXES):
        with tarfile.open(path) as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(sandbox, filter="data")
            else:  # pragma: no cover - old Python
                _check_members((m.name for m in archive.getmembers()), sandbox)
                archive.extractall(sandbox)
        return True
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            _check_members(archive.namelist(), sandbox)
            archive.extractall(sandbox)
        return True
    if name.endswith(".gz"):
        with gzip.open(path, "rb") as source, open(path.with_suffix(""), "wb") as out:
            shutil.copyfileobj(source, out)
        return True
    return False


def _check_members(names: Iterable[str], sandbox: Path) -> None:
    root = sandbox.resolve()
    for member in names:
        target = (sandbox / member).resolve()
        if target != root and root not in target.parents:
            raise FetchError(f"Archive member '{member}' would be outside the sandbox")
