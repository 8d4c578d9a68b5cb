"""The embedded clusters started by the running test, and the processes they started that still
live (from each cluster's own records: other processes on the machine are not looked at).
Filled by the autouse fixture in ``tests/conftest.py``."""

from __future__ import annotations

from framework.localmesos import LocalCluster

started: list[LocalCluster] = []


def live_cluster_processes() -> list[int]:
    """Pids still alive among the processes the running test's embedded clusters started."""
    return [pid for cluster in started for pid in cluster.live_processes()]
