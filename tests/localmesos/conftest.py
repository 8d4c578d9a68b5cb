"""Fixtures for the localmesos tests: fast clusters and a no-orphan-executor check."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from framework.localmesos import AgentSpec, LocalCluster
from framework.localmesos.agent import session_members

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

FAST = dict(allocation_interval=0.1, status_update_retry_interval=10.0, executor_shutdown_grace_period=1.0,
            command_kill_grace_period=1.0, heartbeat_interval=15.0)


def default_agents() -> list[AgentSpec]:
    return [AgentSpec(hostname="agent-1", resources={"cpus": 2, "mem": 4096, "disk": 10000, "gpus": 0,
                                                     "ports": "[31000-32000]"},
                      attributes={"zone": "a", "price": 1.5})]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Any:
    """Factory for started clusters; every one is stopped and checked for orphans afterwards."""
    clusters: list[LocalCluster] = []

    def factory(agents: Any = None, **options: Any) -> LocalCluster:
        kwargs: dict[str, Any] = dict(FAST)
        kwargs.update(options)
        kwargs.setdefault("work_dir", tmp_path / f"cluster{len(clusters)}")
        cluster = LocalCluster(agents=agents or default_agents(), **kwargs)
        cluster.start()
        clusters.append(cluster)
        return cluster

    yield factory
    for cluster in clusters:
        cluster.stop()
    for cluster in clusters:
        sessions = [run.proc.pid for agent in cluster.agents
                    for run in agent.completed_runs + agent.runs() if run.proc is not None]
        deadline = time.monotonic() + 3
        leftovers = [p for s in sessions for p in session_members(s)]
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.05)
            leftovers = [p for s in sessions for p in session_members(s)]
        assert not leftovers, f"executor processes outlived the test: {leftovers}"


@pytest.fixture
def cluster(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return make_cluster()
