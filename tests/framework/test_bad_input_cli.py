"""Bad input through the real command line: one line on stderr naming the file and the field or
value and what was expected, exit status 2, nothing launched and no earlier output touched."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from harness import run_cli
from framework.demo import train_demo

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo-template")
    train_demo(directory)
    return directory


@pytest.fixture()
def demo(demo_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the founding example, with earlier outputs that must survive a refusal."""
    directory = tmp_path / "demo"
    shutil.copytree(demo_template, directory)
    (directory / "predictions.csv").write_text("prediction\n0.5\n")
    (directory / "report.json").write_text("{}\n")
    for name in ("predictions.csv", "report.json"):
        os.utime(directory / name, ns=(1_000_000_000, 1_000_000_000))
    return directory


def edit(path: Path, old: str, new: str) -> None:
    """Replace the first ``old`` in a text file (which must contain it)."""
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def edit_job(old: str, new: str) -> Callable[[Path], None]:
    return lambda directory: edit(directory / "job.toml", old, new)


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, columns=None, timeout=240)


def assert_refused(directory: Path, command: str, message: str, *extra: str) -> str:
    """Run ``command`` on the job: exit 2, one stderr line matching ``message``, nothing launched
    (no work directory made, no subscription), earlier outputs untouched. Returns the line."""
    before = {name: ((directory / name).read_bytes(), (directory / name).stat().st_mtime_ns)
              for name in ("predictions.csv", "report.json")}
    work = directory.parent / "work"
    args = [command, directory / "job.toml", *extra] + (["--work-dir", work] if command == "run" else [])
    result = cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mesos-ensemble: error: "), lines[0]
    assert re.search(message, lines[0]), (message, lines[0])
    assert "subscribed" not in result.stdout and not work.exists()
    after = {name: ((directory / name).read_bytes(), (directory / name).stat().st_mtime_ns) for name in before}
    assert after == before
    return lines[0]


BOTH = ("validate", "run")


# Unplaceable work -----------------------------------------------------------------------------
@pytest.mark.parametrize("command", BOTH)
def test_task_bigger_than_every_agent_is_refused(demo: Path, command: str) -> None:
    edit(demo / "job.toml", "mem = 128", "mem = 1000000")  # the first model: linear
    line = assert_refused(demo, command, r"job\.toml: models\[0\] \(linear\)\.mem = 1000000 MB per task, but the "
                                         r"largest agent offers 4096 MB \(\d+(\.\d+)? MB after the shared executor "
                                         r"and a prediction worker\)$")
    assert "logistic" not in line


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (edit_job("proba_class = 1\ncpus = 0.5", "proba_class = 1\ncpus = 64"),
         r"models\[1\] \(logistic\)\.cpus = 64 cpus per task, but the "
         r"largest agent offers 2 cpus$"),  # the executor's cpus are carved out of the task's
        (edit_job("mem = 128", "mem = 128\ngpus = 1"),
         r"models\[0\] \(linear\)\.gpus = 1 gpus per task, but the largest agent offers 0 gpus$"),
        (edit_job('name = "mesos-ensemble-demo"', 'name = "mesos-ensemble-demo"\nexecutors = "per_model"\n'
                  "[local_cluster]\nagents = [{ cpus = 2, mem = 4096 }]\n"),
         None),  # fits: the control for the next case
        (edit_job("mem = 128", "mem = 128\nexecutor_mem = 5000"),
         r"models\[0\] \(linear\)\.mem = 128 MB per task, but the largest agent offers 4096 MB \(none left after the "
         r"shared executor and a prediction worker: \d+(\.\d+)? MB\)"),
        (edit_job("mem = 128", 'mem = 128\nconstraints = { attribute = { zone = "b" } }'),
         r"models\[0\] \(linear\)\.constraints\.attribute\.zone = 'b', but no agent has it \(agents: agent-1 \{\}; "
         r"agent-2 \{\}\)"),
    ],
    ids=["cpus", "gpus", "per-model-fits", "executor-mem", "zone"],
)
def test_unplaceable_models_are_named(demo: Path, change: Callable[[Path], None], message: str | None) -> None:
    change(demo)
    if message is None:
        result = cli("validate", demo / "job.toml")
        assert result.returncode == 0, result.stderr
    else:
        assert_refused(demo, "validate", message)


def test_constraint_no_local_agent_satisfies(demo: Path) -> None:
    edit(demo / "job.toml", "mem = 128", 'mem = 128\nconstraints = { attribute = { zone = "b" } }')
    (demo / "job.toml").write_text((demo / "job.toml").read_text() + '\n[local_cluster]\nagents = [\n'
                                   '  { hostname = "a1", attributes = { zone = "a" } },\n'
                                   '  { hostname = "a2", cpus = 8, attributes = { zone = "c" } },\n]\n')
    assert_refused(demo, "run", r"models\[0\] \(linear\)\.constraints\.attribute\.zone = 'b', but no agent has it "
                                r"\(agents: a1 \{'zone': 'a'\}; a2 \{'zone': 'c'\}\)")


def test_an_external_master_skips_the_local_agents(demo: Path) -> None:
    """Against an external master the agents are known only from offers: validate cannot refuse."""
    edit(demo / "job.toml", "mem = 128", "mem = 1000000")
    result = cli("validate", demo / "job.toml", "--master", "127.0.0.1:5050")
    assert result.returncode == 0, result.stderr
    assert "master 127.0.0.1:5050" in result.stdout


# Data -----------------------------------------------------------------------------------------
def break_csv(directory: Path, line: int, transform: Callable[[bytes], bytes]) -> None:
    path = directory / "test.csv"
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = transform(lines[line - 1])
    path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize("command", BOTH)
def test_csv_that_is_not_utf8(demo: Path, command: str) -> None:
    break_csv(demo, 5, lambda row: row.replace(b",", b",\xe9", 1))
    offset = sum(len(row) + 1 for row in (demo / "test.csv").read_bytes().split(b"\n")[:4]) + \
        (demo / "test.csv").read_bytes().split(b"\n")[4].index(b"\xe9")
    assert_refused(demo, command, rf"test\.csv: not UTF-8 text: byte 0xe9 at offset {offset} \(line 5\)")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: break_csv(d, 4, lambda row: row.rsplit(b",", 2)[0]), r"test\.csv: line 4 has 29 fields, the header "
                                                                        r"has 31$"),
        (lambda d: (d / "test.csv").write_bytes(b""), r"test\.csv: empty CSV, expected a header line"),
        (lambda d: (d / "test.csv").write_bytes((d / "test.csv").read_bytes().split(b"\n")[0] + b"\n"),
         r"test\.csv: no data rows after the header"),
        (edit_job('label = "target"', 'label = "outcome"'),
         r"test\.csv: label column 'outcome' is not in the header \['f0', 'f1'"),
        (lambda d: break_csv(d, 3, lambda row: b"abc" + row[row.index(b","):]),
         r"test\.csv: column 'f0', data row 2: 'abc' is not a number"),
    ],
    ids=["ragged", "empty", "header-only", "no-label", "not-a-number"],
)
def test_bad_csv_is_named(demo: Path, change: Callable[[Path], None], message: str) -> None:
    change(demo)
    assert_refused(demo, "validate", message)


def test_empty_npy(demo: Path) -> None:
    (demo / "test.npy").write_bytes(b"")
    edit(demo / "job.toml", 'path = "test.csv"', 'path = "test.npy"')
    edit(demo / "job.toml", 'label = "target"', "")
    assert_refused(demo, "run", r"test\.npy: empty file, expected a \.npy array")


@pytest.mark.parametrize("command", BOTH)
def test_nan_in_the_data(demo: Path, command: str) -> None:
    break_csv(demo, 7, lambda row: b",".join([*row.split(b",")[:3], b"nan", *row.split(b",")[4:]]))
    assert_refused(demo, command, r"test\.csv: column 'f3', data row 6: missing value \(NaN\), and models\[0\] "
                                  r"\(linear\) takes this column without allow_nan = true")


def test_inf_in_the_data_even_with_allow_nan(demo: Path) -> None:
    break_csv(demo, 2, lambda row: b"-inf" + row[row.index(b","):])
    for old in ("mem = 128\n\n", "mem = 128\n\n[framework]"):
        edit(demo / "job.toml", old, old.replace("mem = 128", "mem = 128\nallow_nan = true"))
    assert_refused(demo, "validate", r"test\.csv: column 'f0', data row 1: -inf is not a finite number "
                                     r"\(models\[0\] \(linear\) takes this column; inf is never accepted\)")


# Outputs --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('output = "predictions.csv"', 'output = "missing/predictions.csv"',
         r"job\.toml: job\.output is in \S+/demo/missing, which does not exist"),
        ('output = "predictions.csv"', 'output = "test.csv/predictions.csv"',
         r"job\.output is in \S+/demo/test\.csv, which is not a directory"),
        ('report = "report.json"', 'report = "gone/report.json"',
         r"job\.report is in \S+/demo/gone, which does not exist"),
        ('output = "predictions.csv"', 'output = "test.csv"',
         r"job\.output names 'test\.csv', the job's input data\.path, which it would overwrite"),
    ],
    ids=["missing-dir", "dir-is-a-file", "report-dir", "output-is-input"],
)
def test_unwritable_outputs(demo: Path, old: str, new: str, message: str) -> None:
    edit(demo / "job.toml", old, new)
    assert_refused(demo, "validate", message)


def test_run_checks_outputs_before_subscribing(demo: Path) -> None:
    edit(demo / "job.toml", 'report = "report.json"', 'report = "test.csv/report.json"')
    assert_refused(demo, "run", r"job\.report is in \S+/demo/test\.csv, which is not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits, so no directory is read-only "
                                               "to it; the missing-dir and dir-is-a-file cases and "
                                               "test_jobspec's os.access case cover the check")
def test_read_only_output_directory(demo: Path) -> None:
    (demo / "out").mkdir()
    (demo / "out").chmod(0o500)
    edit(demo / "job.toml", 'output = "predictions.csv"', 'output = "out/predictions.csv"')
    try:
        assert_refused(demo, "run", r"job\.output is in \S+/out, which is not writable by ")
    finally:
        (demo / "out").chmod(0o700)


# Weights --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ((0, 0), r"job\.toml: models\[\*\]\.weight are all 0 \(linear, logistic\); weighted_mean needs a positive "
                 r"weight on at least one model"),
        ((1, -1), r"models\[1\] \(logistic\)\.weight must be a non-negative number, got -1"),
        (("nan", 1), r"models\[0\] \(linear\)\.weight must be a non-negative number, got nan"),
        ((1, "inf"), r"models\[1\] \(logistic\)\.weight must be a non-negative number, got inf"),
    ],
    ids=["all-zero", "negative", "nan", "inf"],
)
def test_weighted_mean_weights(demo: Path, weights: tuple[object, object], message: str) -> None:
    edit(demo / "job.toml", 'integration = "mean"', 'integration = "weighted_mean"')
    for model_name, weight in zip(("linear", "logistic"), weights):
        edit(demo / "job.toml", f'name = "{model_name}"', f'name = "{model_name}"\nweight = {weight}')
    assert_refused(demo, "run", message)


# Masters --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("command", "master", "message"),
    [
        ("run", "http://m:5050", r"^mesos-ensemble: error: --master must be host:port, zk://host:2181/mesos or "
                                 r"\"local\", got 'http://m:5050'$"),
        ("validate", "zk://h:2181", r"--master must be .*; a ZooKeeper master needs servers and a path, got "
                                    r"'zk://h:2181'"),
        ("validate", "m:99999", r"--master must be .*: must have a port from 1 to 65535 after 'm', got '99999'"),
    ],
)
def test_master_flag_is_validated(demo: Path, command: str, master: str, message: str) -> None:
    assert_refused(demo, command, message, "--master", master)


def test_zookeeper_master_flag_validates(demo: Path) -> None:
    result = cli("validate", demo / "job.toml", "--master", "zk://zk1:2181,zk2:2181/mesos")
    assert result.returncode == 0, result.stderr
    assert "master zk://zk1:2181,zk2:2181/mesos" in result.stdout
