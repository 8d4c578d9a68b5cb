"""``local-cluster`` CLI: options, attributes syntax, credentials (on by default, never from argv),
clean shutdown on SIGTERM."""
from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from framework.localmesos.cli import SECRET_ENV, UsageError, add_cli_arguments, build_cluster, \
    cluster_credentials, load_credentials
from framework.localmesos.resources import parse_attributes
from localmesos_helpers import basic, post

ROOT = Path(__file__).resolve().parents[2]
CLI = ("import argparse, sys; from framework.localmesos.cli import add_cli_arguments, run_cli; "
       "p = argparse.ArgumentParser(); add_cli_arguments(p); sys.exit(run_cli(p.parse_args(sys.argv[1:])))")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    return parser.parse_args(list(argv))


def test_arguments_build_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    creds = tmp_path / "creds"
    creds.write_text(json.dumps({"credentials": [{"principal": "p", "secret": "s"}]}))
    monkeypatch.setenv(SECRET_ENV, "t")
    args = parse("--agents", "3", "--cpus", "4", "--mem", "1024", "--gpus", "1",
                 "--attributes", "zone:a;price:1.5", "--port", "0", "--work-dir", str(tmp_path),
                 "--credentials-file", str(creds), "--principal", "q")
    cluster = build_cluster(args)
    assert len(cluster.agent_specs) == 3 and cluster.agent_specs[0].resources["cpus"] == 4
    assert cluster.agent_specs[2].attributes == {"zone": "a", "price": "1.5"}
    assert cluster.credentials == {"p": "s", "q": "t"}
    assert parse_attributes("os:ubuntu; rack:r1") == {"os": "ubuntu", "rack": "r1"}
    text = tmp_path / "text"
    text.write_text("alice secret1\nbob secret2\n")
    assert load_credentials(text) == {"alice": "secret1", "bob": "secret2"}


def test_authentication_is_on_by_default_and_never_from_argv(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    generated, was_generated = cluster_credentials(parse())
    assert was_generated and generated and len(next(iter(generated.values()))) >= 32
    assert cluster_credentials(parse("--no-auth")) == (None, False)
    with pytest.raises(UsageError, match="process list"):
        cluster_credentials(parse("--principal", "p", "--secret", "s"))
    with pytest.raises(UsageError, match=SECRET_ENV):
        cluster_credentials(parse("--principal", "p"))


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None


def start_cli(tmp_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLI, "--agents", "2", "--port", "0", "--attributes", "zone:b",
                             "--work-dir", str(tmp_path / "wd"), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def stop_cli(proc: subprocess.Popen) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return out, err


def test_cli_requires_generated_credentials_and_runs_until_sigterm(tmp_path: Path):
    proc = start_cli(tmp_path)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        address = proc.stdout.readline().strip()
        assert address.startswith("127.0.0.1:")  # loopback unless --host says otherwise
        lines = [proc.stderr.readline() for _ in range(4)]
        announced = [line for line in lines if "authentication required" in line]
        assert announced, lines
        path = tmp_path / "wd" / "credentials.json"
        secret_file = tmp_path / "wd" / "secret"
        assert f"principal mesos-ensemble, secret in {secret_file} (Mesos credentials file {path})" in announced[0]
        assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        [(principal, secret)] = load_credentials(path).items()
        assert principal == "mesos-ensemble" and secret_file.read_text().strip() == secret
        assert (f'master = "{address}", principal = "mesos-ensemble", secret_file = "{secret_file}"'
                in lines[3]), lines
        assert secret not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
        assert get(f"http://{address}/master/state")[0] == 401  # framework ids are not for anybody
        subscribe = {"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "x", "name": "intruder"}}}
        assert post(address, subscribe)[0] == 401
        code, state = get(f"http://{address}/master/state", basic(principal, secret))
        assert code == 200
        assert len(state["slaves"]) == 2 and state["slaves"][1]["attributes"] == {"zone": "b"}
        out, err = stop_cli(proc)
        assert secret not in out + err + "".join(lines)
        assert not path.exists() and not secret_file.exists()  # the secret does not outlive the cluster
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_without_auth_serves_anybody(tmp_path: Path):
    proc = start_cli(tmp_path, "--no-auth")
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        code, state = get(f"http://{address}/master/state")
        assert code == 200 and state["flags"]["authenticate_frameworks"] == "false"
        _out, err = stop_cli(proc)
        assert "no authentication" in err
        assert not (tmp_path / "wd" / "credentials.json").exists() and not (tmp_path / "wd" / "secret").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
