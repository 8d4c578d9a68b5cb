"""The artifact server over real HTTP: only declared files, only with the token, checked uploads."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from framework.artifacts import ArtifactServer


@pytest.fixture()
def server(tmp_path: Path):
    (tmp_path / "model.joblib").write_bytes(b"model bytes")
    (tmp_path / "secret.txt").write_bytes(b"not declared")
    server = ArtifactServer(tmp_path / "results", bind="127.0.0.1").start()
    yield server
    server.stop()


def status_of(request: urllib.request.Request | str) -> int:
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_serves_declared_files_only(server: ArtifactServer, tmp_path: Path) -> None:
    url = server.publish("model.joblib", tmp_path / "model.joblib")
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.read() == b"model bytes"
    assert status_of(url.replace("model.joblib", "secret.txt")) == 404
    assert status_of(url.replace(server.token, "wrong-token")) == 404
    assert status_of(url.replace("/files/", "/files/../")) == 404


def put(url: str, body: bytes, sha: str) -> int:
    return status_of(urllib.request.Request(url, data=body, method="PUT", headers={"X-Sha256": sha}))


def test_upload_checked_and_atomic(server: ArtifactServer) -> None:
    url = server.expect_result("task-1")
    body = b"x" * 100_000
    assert put(url, body, "0" * 64) == 400
    assert not server.result_path("task-1").exists()
    assert put(url, body, hashlib.sha256(body).hexdigest()) == 201
    assert server.result_path("task-1").read_bytes() == body
    assert put(url.replace("task-1", "task-2"), body, hashlib.sha256(body).hexdigest()) == 404
    assert [p.name for p in server.results_dir.iterdir()] == ["task-1.npy"]


def test_token_is_redacted_in_the_access_log(server: ArtifactServer, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="framework.artifacts")
    url = server.publish("model.joblib", tmp_path / "model.joblib")
    with urllib.request.urlopen(url, timeout=5) as response:
        response.read()
    assert status_of(url.replace("model.joblib", "missing")) == 404
    assert put(server.expect_result("t-9"), b"x", "0" * 64) == 400
    lines = [r.getMessage() for r in caplog.records if r.name == "framework.artifacts"]
    assert len(lines) >= 3 and all("/<token>/" in line for line in lines), lines
    assert server.token not in caplog.text


def test_public_files_need_no_token_and_are_kept_apart(server: ArtifactServer, tmp_path: Path) -> None:
    (tmp_path / "package.tar.gz").write_bytes(b"our own code")
    url = server.publish_public("package.tar.gz", tmp_path / "package.tar.gz")
    assert server.token not in url and url.endswith("/public/package.tar.gz")
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.read() == b"our own code"
    server.publish("model.joblib", tmp_path / "model.joblib")
    assert status_of(url.replace("package.tar.gz", "model.joblib")) == 404  # declared files need the token
    assert status_of(f"{server.base_url}/files/package.tar.gz") == 404
