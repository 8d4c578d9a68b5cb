"""Shared pytest set-up: make ``tests/harness.py`` and ``tests/factories.py`` importable, and check
that no test leaves an executor process of an embedded cluster behind."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import cluster_records  # noqa: E402
from framework.localmesos import LocalCluster  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """One inspection cache for the run (models trained alike are inspected once), never the
    user's own: subprocesses started by tests inherit it."""
    from framework.inspection import CACHE_ENV
    from framework.jobspec import MASTER_ENV

    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="mesos-ensemble-test-cache-")
    os.environ.pop(MASTER_ENV, None)  # a developer's MESOS_MASTER must not send the tests' jobs to a cluster


def pytest_unconfigure(config: pytest.Config) -> None:
    from framework.inspection import CACHE_ENV

    directory = os.environ.pop(CACHE_ENV, None)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_kept_costs() -> None:
    """Each test starts as a first run of its models (the run-wide cache's kept task costs would
    otherwise order and bundle a later test's first round by what an earlier test's jobs of the
    same demo models measured); a test that runs a job twice still sees its first run's."""
    from framework import kept_costs

    shutil.rmtree(kept_costs.cache_dir(), ignore_errors=True)


LEAK_GRACE_SECONDS = 10.0
"""How long a stopped cluster's executor processes may take to disappear."""


@pytest.fixture(autouse=True)
def no_leaked_executors(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every ``LocalCluster`` started during the test (directly or by a job) is remembered; after
    the test, every process those clusters started (their own records: each executor session's
    launcher and executor) must be gone. Other processes on the machine are not looked at."""
    cluster_records.started.clear()
    original = LocalCluster.start

    def recording_start(self: LocalCluster) -> LocalCluster:
        cluster_records.started.append(self)
        return original(self)

    monkeypatch.setattr(LocalCluster, "start", recording_start)
    yield
    leftovers = _wait_gone(list(cluster_records.started))
    cluster_records.started.clear()
    assert not leftovers, f"executor processes outlived the test: {leftovers}"


def _wait_gone(clusters: list[Any]) -> list[int]:
    deadline = time.monotonic() + LEAK_GRACE_SECONDS
    while True:
        leftovers = [pid for cluster in clusters for pid in cluster.live_processes()]
        if not leftovers or time.monotonic() >= deadline:
            return leftovers
        time.sleep(0.05)
