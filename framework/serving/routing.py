"""The replicas the gateway may send work to: written by the controller, read by the gateway.

A replica is one member's model loaded in one Mesos task and served over HTTP (see
``executor/replica.py``). The controller adds a replica once its task is RUNNING (the model is
loaded and the server listens), marks it draining before it kills it (no new work goes there;
work in flight finishes), and removes it when the task has ended.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

ReplicaState = Literal["ready", "draining"]


@dataclass(frozen=True)
class Replica:
    """One replica of one member.

    Attributes
    ----------
    replica_id : str
        Unique id (the Mesos task id).
    member : str
        The member (model name) it serves.
    url : str
        Its base URL, ``http://host:port`` (no trailing slash needed).
    agent_id : str
        The agent it runs on.
    sha256 : str
        The model file it loaded.
    """

    replica_id: str
    member: str
    url: str
    agent_id: str
    sha256: str

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")


class ReplicaTable:
    """Thread-safe table of replicas and their states (the controller writes, the gateway reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._replicas: dict[str, Replica] = {}
        self._draining: set[str] = set()
        self._version = 0

    def add(self, replica: Replica) -> None:
        """Add (or replace) a ready replica; a replica re-added after ``mark_draining`` is ready again."""
        if not replica.replica_id or not replica.member or not replica.url:
            raise ValueError(f"a replica needs an id, a member and a url, got {replica!r}")
        with self._lock:
            self._replicas[replica.replica_id] = replica
            self._draining.discard(replica.replica_id)
            self._version += 1

    def mark_draining(self, replica_id: str) -> None:
        """Send no new work to ``replica_id`` (unknown ids are ignored: it may be gone already)."""
        with self._lock:
            if replica_id in self._replicas and replica_id not in self._draining:
                self._draining.add(replica_id)
                self._version += 1

    def remove(self, replica_id: str) -> None:
        """Forget ``replica_id`` (unknown ids are ignored)."""
        with self._lock:
            if self._replicas.pop(replica_id, None) is not None:
                self._draining.discard(replica_id)
                self._version += 1

    def ready(self, member: str) -> list[Replica]:
        """The replicas of ``member`` that take new work, by id."""
        with self._lock:
            chosen = [r for r in self._replicas.values() if r.member == member and r.replica_id not in self._draining]
        return sorted(chosen, key=lambda r: r.replica_id)

    def get(self, replica_id: str) -> Replica | None:
        with self._lock:
            return self._replicas.get(replica_id)

    def state(self, replica_id: str) -> ReplicaState | None:
        """``"ready"``, ``"draining"``, or None when unknown."""
        with self._lock:
            return self._state(replica_id) if replica_id in self._replicas else None

    def _state(self, replica_id: str) -> ReplicaState:
        return "draining" if replica_id in self._draining else "ready"

    def snapshot(self) -> list[tuple[Replica, ReplicaState]]:
        """Every replica with its state, by member then id."""
        with self._lock:
            items = [(r, self._state(r.replica_id)) for r in self._replicas.values()]
        items.sort(key=lambda item: (item[0].member, item[0].replica_id))
        return items

    def counts(self, member: str) -> dict[ReplicaState, int]:
        """How many replicas of ``member`` are ready and draining."""
        counts: dict[ReplicaState, int] = {"ready": 0, "draining": 0}
        for replica, state in self.snapshot():
            if replica.member == member:
                counts[state] += 1
        return counts

    @property
    def version(self) -> int:
        """Grows with every change (a cheap way to notice one)."""
        with self._lock:
            return self._version

    def __len__(self) -> int:
        with self._lock:
            return len(self._replicas)
