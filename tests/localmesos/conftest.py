"""Fixtures for the localmesos tests: fast clusters, stopped after the test (the no-orphan check is
``tests/conftest.py``'s, through each cluster's own process records)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from framework.localmesos import AgentSpec, LocalCluster

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
    """Factory for started clusters; every one is stopped afterwards."""
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


@pytest.fixture
def cluster(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return make_cluster()
