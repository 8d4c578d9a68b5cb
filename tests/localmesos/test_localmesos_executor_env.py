"""Executors get a minimal environment, never the agent process' own (its secrets, tokens)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from localmesos_helpers import Scheduler, command_task, wait_for

SECRET = "MESOS_ENSEMBLE_SECRET_TEST"


def _task_environment(cluster: Any, command_env: dict[str, str]) -> dict[str, str]:
    """Run a command task that prints its environment; return it as read from the sandbox's stdout."""
    scheduler = Scheduler(cluster.master_address)
    try:
        scheduler.next("SUBSCRIBED")
        offer = scheduler.offers()[0]
        task = command_task("env-task", offer, "env -0")
        task["command"]["environment"] = {"variables": [{"name": k, "value": v} for k, v in command_env.items()]}
        scheduler.launch(offer, [task])
        while True:
            status = scheduler.update("env-task")
            if "uuid" in status:
                scheduler.ack(status)
            if status["state"] == "TASK_FINISHED":
                break
            assert status["state"] in ("TASK_STARTING", "TASK_RUNNING"), status
        [stdout] = wait_for(lambda: list(Path(cluster.work_dir).glob(
            "slaves/*/frameworks/*/executors/env-task/runs/latest/stdout")))
        text = wait_for(lambda: stdout.read_bytes())
        # The command executor prints its own lines around the task's output: keep NAME=VALUE records.
        records = [r for r in text.decode().split("\0") if "=" in r]
        return dict(record.rsplit("\n", 1)[-1].split("=", 1) for record in records)
    finally:
        scheduler.close()


def test_agent_secrets_do_not_reach_executors(make_cluster, monkeypatch):
    monkeypatch.setenv(SECRET, "x")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH") or os.getcwd())
    cluster = make_cluster()
    env = _task_environment(cluster, {"FROM_COMMAND_INFO": "yes"})
    assert SECRET not in env
    assert env["FROM_COMMAND_INFO"] == "yes"
    assert env["PATH"] == os.environ["PATH"]
    assert env["LC_ALL"] == "C.UTF-8"
    assert env["PYTHONPATH"] == os.environ["PYTHONPATH"]
    assert env["MESOS_SANDBOX"].endswith(env["MESOS_EXECUTOR_ID"] + "/runs/" + Path(env["MESOS_SANDBOX"]).name)
    unexpected = {k for k in env if not (k.startswith(("MESOS_", "LIBPROCESS_", "LC_"))
                                        or k in {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER",
                                                 "LOGNAME", "PYTHONPATH", "FROM_COMMAND_INFO",
                                                 "LOCALMESOS_COMMAND_KILL_GRACE", "PWD", "SHLVL", "_"})}
    assert not unexpected, unexpected


def test_executor_environment_variables_is_the_exact_base(make_cluster, monkeypatch):
    monkeypatch.setenv(SECRET, "x")
    cluster = make_cluster(executor_environment_variables={"PATH": os.environ["PATH"], "ONLY_THIS": "1"})
    env = _task_environment(cluster, {})
    assert env["ONLY_THIS"] == "1"
    assert SECRET not in env
    assert "HOME" not in env and "PYTHONPATH" not in env
    assert env["MESOS_FRAMEWORK_ID"]
