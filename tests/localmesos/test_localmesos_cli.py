"""``local-cluster`` CLI: options, attributes syntax, credentials, clean shutdown on SIGTERM."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from framework.localmesos.cli import add_cli_arguments, build_cluster, load_credentials
from framework.localmesos.resources import parse_attributes

ROOT = Path(__file__).resolve().parents[2]


def test_arguments_build_cluster(tmp_path: Path):
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    creds = tmp_path / "creds"
    creds.write_text(json.dumps({"credentials": [{"principal": "p", "secret": "s"}]}))
    args = parser.parse_args(["--agents", "3", "--cpus", "4", "--mem", "1024", "--gpus", "1",
                              "--attributes", "zone:a;price:1.5", "--port", "0", "--work-dir", str(tmp_path),
                              "--credentials-file", str(creds), "--principal", "q", "--secret", "t"])
    cluster = build_cluster(args)
    assert len(cluster.agent_specs) == 3 and cluster.agent_specs[0].resources["cpus"] == 4
    assert cluster.agent_specs[2].attributes == {"zone": "a", "price": "1.5"}
    assert cluster.credentials == {"p": "s", "q": "t"}
    assert parse_attributes("os:ubuntu; rack:r1") == {"os": "ubuntu", "rack": "r1"}
    text = tmp_path / "text"
    text.write_text("alice secret1\nbob secret2\n")
    assert load_credentials(text) == {"alice": "secret1", "bob": "secret2"}


def test_cli_runs_until_sigterm(tmp_path: Path):
    code = ("import argparse, sys; from framework.localmesos.cli import add_cli_arguments, run_cli; "
            "p = argparse.ArgumentParser(); add_cli_arguments(p); sys.exit(run_cli(p.parse_args(sys.argv[1:])))")
    proc = subprocess.Popen([sys.executable, "-c", code, "--agents", "2", "--port", "0",
                             "--attributes", "zone:b", "--work-dir", str(tmp_path / "wd")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        address = proc.stdout.readline().strip()
        state = json.loads(urllib.request.urlopen(f"http://{address}/master/state", timeout=5).read())
        assert len(state["slaves"]) == 2 and state["slaves"][1]["attributes"] == {"zone": "b"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
