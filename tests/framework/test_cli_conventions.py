"""Command-line conventions through the real CLI subprocess: --version, -v/-q before or after the
subcommand, distinct exit codes (documented in --help), defaults shown in --help."""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness import run_cli
from framework.demo import train_demo

pytestmark = pytest.mark.timeout(240)


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cli-demo")
    return train_demo(directory)


def test_version_comes_from_the_installed_package() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"mesos-ensemble {importlib.metadata.version('mesos-ensemble')}"


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_before_or_after_the_subcommand(demo: Path, where: str) -> None:
    args = ["-v", "plan", demo] if where == "before" else ["plan", demo, "-v"]
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    # 4 tasks of 0.5 cpus on each 2-cpu agent (the executor's cpus carved out of theirs): all 8 launch
    assert "DEBUG framework.plan: offer round: 2 offers, 8 launches" in result.stderr


@pytest.mark.parametrize("args", [["-q", "plan", "{job}"], ["plan", "{job}", "--quiet"], ["plan", "-q", "{job}"]])
def test_quiet_before_or_after_the_subcommand(demo: Path, args: list[str]) -> None:
    result = cli(*[str(demo) if a == "{job}" else a for a in args])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_verbose_before_and_quiet_after_both_count(demo: Path) -> None:
    """An option given before the subcommand is not reset by the subcommand's parser."""
    from framework.cli import build_parser

    args = build_parser().parse_args(["-v", "validate", str(demo), "-q"])
    assert args.verbose and args.quiet
    args = build_parser().parse_args(["validate", str(demo)])
    assert not args.verbose and not args.quiet
    for argv in (["-q", "run", str(demo)], ["run", str(demo), "-q"], ["run", str(demo), "--quiet"]):
        assert build_parser().parse_args(argv).quiet, argv  # run's own --quiet is the common one
    assert not build_parser().parse_args(["run", str(demo)]).quiet


def test_help_documents_exit_codes_and_local_cluster_shows_defaults() -> None:
    top = cli("--help")
    assert top.returncode == 0
    for line in ("0    success", "1    the job ran but failed", "2    bad input", "130  interrupted",
                 "143  terminated"):
        assert line in top.stdout, top.stdout
    local = cli("local-cluster", "--help")
    assert local.returncode == 0
    flat = " ".join(local.stdout.split())
    for shown in ("cpus per agent (default: 2.0)", "memory (MB) per agent (default: 4096.0)",
                  "(default: 10000.0)", "(default: 5050)", "(default 127.0.0.1)"):
        assert shown in flat, local.stdout
    assert "exit status: 0 ok, 1 job failed, 2 bad input" in flat


def test_bad_input_exits_2_and_a_failed_job_exits_1(demo: Path, tmp_path: Path) -> None:
    missing = cli("validate", tmp_path / "nope.toml")
    assert missing.returncode == 2 and missing.stderr.startswith("mesos-ensemble: error: ")
    with socket.socket() as probe:  # a loopback port with nobody listening: the job cannot finish
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    job = demo.parent / "unreachable.toml"
    job.write_text(demo.read_text().replace('master = "local"', f'master = "127.0.0.1:{port}"\ntimeout_seconds = 2'))
    failed = cli("run", job, "--work-dir", tmp_path / "work", "-q")
    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    assert failed.stderr.strip().splitlines()[-1].startswith("mesos-ensemble: job failed: job timed out after 2 s")


def test_every_option_of_every_subcommand_shows_its_default() -> None:
    """Each option that takes a value says in --help what happens without it."""
    import argparse

    from framework.cli import build_parser

    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) >= {"run", "status", "validate", "inspect", "train-demo", "local-cluster", "plan"}
    for name, sub in commands.choices.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0 or action.help == argparse.SUPPRESS:
                continue  # positionals, flags (-h, -v, --fresh ...), hidden options
            shown = " ".join((action.help or "").split())
            assert shown and shown.split("(default")[0].strip() in text, (name, action.option_strings)
            rendered = text[text.index(shown.split("(default")[0].strip()):]
            assert "default" in rendered[:len(shown) + 40], f"{name} {action.option_strings[-1]}: no default in --help"


def test_mesos_master_is_the_default_master_below_the_command_line(demo: Path) -> None:
    """--master > $MESOS_MASTER > the job file's master; each is validated and named when bad."""
    env = {**os.environ, "MESOS_MASTER": "zk://zk1:2181,zk2:2181/mesos"}

    def validate(*extra: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "framework.cli", "validate", str(demo), *extra],
                              capture_output=True, text=True, timeout=200, env=environ)

    from_env = validate(environ=env)
    assert from_env.returncode == 0, from_env.stderr
    assert "master zk://zk1:2181,zk2:2181/mesos" in from_env.stdout
    flag = validate("--master", "m1:5050", environ=env)
    assert flag.returncode == 0, flag.stderr
    assert "master m1:5050" in flag.stdout and "zk1" not in flag.stdout
    unset = validate(environ={**env, "MESOS_MASTER": ""})
    assert unset.returncode == 0 and "master local" in unset.stdout, (unset.stdout, unset.stderr)
    bad = validate(environ={**env, "MESOS_MASTER": "http://m:5050"})
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == ("mesos-ensemble: error: MESOS_MASTER must be host:port, zk://host:2181/mesos or \"local\", "
                          "got 'http://m:5050'\n")
    empty_flag = validate("--master", "", environ=env)
    assert empty_flag.returncode == 2 and empty_flag.stderr.startswith("mesos-ensemble: error: --master must be ")


def test_with_master_override_precedence(demo: Path) -> None:
    from framework.errors import JobSpecError
    from framework.jobspec import load_job, with_master_override

    spec = load_job(demo)
    assert with_master_override(spec, None, {}).framework.master == "local"
    assert with_master_override(spec, None, {"MESOS_MASTER": " h:5050 "}).framework.master == "h:5050"
    assert with_master_override(spec, "zk://z/mesos", {"MESOS_MASTER": "h:5050"}).framework.master == "zk://z/mesos"
    with pytest.raises(JobSpecError, match=r"^MESOS_MASTER must be host:port.*after 'h', got '0'"):
        with_master_override(spec, None, {"MESOS_MASTER": "h:0"})
