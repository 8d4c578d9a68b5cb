"""Fetcher: copy, download over HTTP, extract, executable, output_file, failures."""
from __future__ import annotations

import functools
import http.server
import io
import os
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from framework.localmesos.fetcher import FetchError, fetch, fetch_all


@pytest.fixture
def files(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "script.sh").write_text("#!/bin/sh\necho hi\n")
    with tarfile.open(src / "bundle.tgz", "w:gz") as archive:
        data = b"model-bytes"
        info = tarfile.TarInfo("pkg/model.bin")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(src / "bundle.zip", "w") as archive:
        archive.writestr("zipped/readme.txt", "zip content")
    with tarfile.open(src / "evil.tar", "w") as archive:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    return src


@pytest.fixture
def http_root(files: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(files))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_copy_plain_path_and_file_uri(files: Path, tmp_path: Path):
    sandbox = tmp_path / "box"
    sandbox.mkdir()
    fetch({"value": str(files / "script.sh"), "executable": True}, sandbox)
    assert os.access(sandbox / "script.sh", os.X_OK)
    fetch({"value": f"file://{files / 'script.sh'}", "output_file": "sub/renamed.sh"}, sandbox)
    assert (sandbox / "sub" / "renamed.sh").read_text().startswith("#!/bin/sh")


def test_extract_tgz_and_zip_keep_archive(files: Path, tmp_path: Path):
    sandbox = tmp_path / "box"
    sandbox.mkdir()
    fetch_all([{"value": str(files / "bundle.tgz")}, {"value": str(files / "bundle.zip"), "cache": True}], sandbox)
    assert (sandbox / "pkg" / "model.bin").read_bytes() == b"model-bytes"
    assert (sandbox / "zipped" / "readme.txt").read_text() == "zip content"
    assert (sandbox / "bundle.tgz").exists() and (sandbox / "bundle.zip").exists()
    fetch({"value": str(files / "bundle.tgz"), "extract": False, "output_file": "raw.tgz"}, sandbox)
    assert (sandbox / "raw.tgz").exists()


def test_http_download_and_extract(http_root: str, tmp_path: Path):
    sandbox = tmp_path / "box"
    sandbox.mkdir()
    fetch({"value": f"{http_root}/bundle.tgz"}, sandbox)
    assert (sandbox / "pkg" / "model.bin").read_bytes() == b"model-bytes"
    with pytest.raises(FetchError, match="received HTTP return code 404"):
        fetch_all([{"value": f"{http_root}/missing.tgz"}], sandbox)


def test_failures(files: Path, tmp_path: Path):
    sandbox = tmp_path / "box"
    sandbox.mkdir()
    with pytest.raises(FetchError, match="relative path"):
        fetch_all([{"value": "relative/file.txt"}], sandbox)
    with pytest.raises(FetchError, match="No such file"):
        fetch_all([{"value": str(files / "nope.txt")}], sandbox)
    with pytest.raises(FetchError):
        fetch_all([{"value": "hdfs://namenode/file"}], sandbox)
    with pytest.raises(FetchError):
        fetch_all([{"value": str(files / "script.sh"), "output_file": "../outside.sh"}], sandbox)
    with pytest.raises(FetchError):
        fetch_all([{"value": str(files / "evil.tar")}], sandbox)
    assert not (tmp_path / "escape.txt").exists()
