"""An embedded local Mesos cluster (master + agents) speaking the real Mesos v1 HTTP APIs.

Stdlib only and independent of the rest of the project; see README.md.
"""
from .cluster import AgentSpec, LocalCluster

__all__ = ["AgentSpec", "LocalCluster"]
