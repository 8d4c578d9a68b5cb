"""The replica table: what the controller writes and the gateway reads."""

from __future__ import annotations

import threading

import pytest

from framework.serving.routing import Replica, ReplicaTable


def replica(rid: str, member: str = "m") -> Replica:
    return Replica(rid, member, f"http://127.0.0.1:{31000 + len(rid)}/", "agent", "abc")


def test_ready_draining_removed():
    table = ReplicaTable()
    for rid, member in (("r2", "m"), ("r1", "m"), ("x1", "other")):
        table.add(replica(rid, member))
    assert [r.replica_id for r in table.ready("m")] == ["r1", "r2"]
    v = table.version
    table.mark_draining("r1")
    assert [r.replica_id for r in table.ready("m")] == ["r2"] and table.state("r1") == "draining"
    assert table.counts("m") == {"ready": 1, "draining": 1} and table.version > v
    table.remove("r1")
    assert table.state("r1") is None and table.counts("m") == {"ready": 1, "draining": 0}
    table.mark_draining("gone")  # unknown ids are ignored
    table.remove("gone")
    assert [(r.replica_id, s) for r, s in table.snapshot()] == [("r2", "ready"), ("x1", "ready")]
    assert len(table) == 2 and table.get("r2") is not None and table.get("r2").base_url.endswith(":31002")


def test_re_adding_a_draining_replica_makes_it_ready():
    table = ReplicaTable()
    table.add(replica("r1"))
    table.mark_draining("r1")
    table.add(replica("r1"))
    assert table.state("r1") == "ready"


def test_a_replica_needs_an_id_a_member_and_a_url():
    with pytest.raises(ValueError):
        ReplicaTable().add(Replica("", "m", "http://x", "a", "s"))


def test_concurrent_writers_and_readers():
    table = ReplicaTable()
    errors: list[BaseException] = []

    def writer(prefix: str) -> None:
        for i in range(300):
            table.add(replica(f"{prefix}{i}"))
            table.mark_draining(f"{prefix}{i}")
            if i % 2:
                table.remove(f"{prefix}{i}")

    def reader() -> None:
        try:
            for _ in range(300):
                for r in table.ready("m"):
                    assert r.member == "m"
                table.snapshot()
        except BaseException as exc:  # noqa: B036  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in "ab"] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and table.counts("m") == {"ready": 0, "draining": 300}
