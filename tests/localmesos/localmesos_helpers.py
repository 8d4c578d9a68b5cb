"""Plain-HTTP Mesos v1 scheduler client used by the localmesos tests."""
from __future__ import annotations

import base64
import http.client
import json
import queue
import socket
import threading
import time
from typing import Any, Optional


def post(address: str, body: Any, headers: Optional[dict[str, str]] = None, path: str = "/api/v1/scheduler",
         raw: Optional[bytes] = None, content_type: Optional[str] = "application/json") -> tuple[int, str]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        hdrs = dict(headers or {})
        if content_type is not None:
            hdrs["Content-Type"] = content_type
        data = raw if raw is not None else json.dumps(body).encode()
        conn.request("POST", path, data, hdrs)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def basic(principal: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{principal}:{secret}".encode()).decode()}


def scalar(name: str, value: float) -> dict[str, Any]:
    return {"name": name, "type": "SCALAR", "scalar": {"value": value}}


def resources(cpus: float = 0.1, mem: float = 32) -> list[dict[str, Any]]:
    return [scalar("cpus", cpus), scalar("mem", mem)]


class Scheduler:
    """Subscribes over one connection and reads events on a thread; calls use other connections."""

    def __init__(self, address: str, name: str = "test", framework_id: Optional[str] = None,
                 failover_timeout: float = 60.0, headers: Optional[dict[str, str]] = None,
                 extra_info: Optional[dict[str, Any]] = None) -> None:
        self.address = address
        self.headers = dict(headers or {})
        info: dict[str, Any] = {"user": "tester", "name": name, "failover_timeout": failover_timeout}
        info.update(extra_info or {})
        call: dict[str, Any] = {"type": "SUBSCRIBE", "subscribe": {"framework_info": info}}
        if framework_id:
            info["id"] = {"value": framework_id}
            call["framework_id"] = {"value": framework_id}
        host, port = address.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.conn.request("POST", "/api/v1/scheduler", json.dumps(call).encode(),
                          {"Content-Type": "application/json", "Accept": "application/json", **self.headers})
        self.sock = self.conn.sock
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.stream_id = self.response.getheader("Mesos-Stream-Id")
        self.events: "queue.Queue[dict[str, Any]]" = queue.Queue()
        self.all_events: list[dict[str, Any]] = []
        self.backlog: list[dict[str, Any]] = []
        self.closed = threading.Event()
        self.framework_id: Optional[str] = framework_id
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                header = self.response.readline()
                if not header:
                    break
                data = self.response.read(int(header))
                event = json.loads(data)
                self.all_events.append(event)
                if event["type"] == "SUBSCRIBED":
                    self.framework_id = event["subscribed"]["framework_id"]["value"]
                self.events.put(event)
        except Exception:  # noqa: BLE001 - closed from another thread, reset, bad chunk: stream over
            pass
        finally:
            self.closed.set()

    def _matches(self, event: dict[str, Any], kind: Optional[str], predicate: Any) -> bool:
        return (kind is None or event["type"] == kind) and (predicate is None or predicate(event))

    def next(self, kind: Optional[str] = None, timeout: float = 10.0, skip: tuple[str, ...] = ("HEARTBEAT",),
             predicate: Any = None) -> dict[str, Any]:
        """Next event of ``kind``; other events are kept in a backlog for later calls."""
        for index, event in enumerate(self.backlog):
            if self._matches(event, kind, predicate):
                return self.backlog.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind or 'event'} within {timeout}s")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if event["type"] in skip and event["type"] != kind:
                continue
            if self._matches(event, kind, predicate):
                return event
            self.backlog.append(event)

    def none(self, kind: str, seconds: float, predicate: Any = None) -> None:
        """Assert that no event of ``kind`` arrives within ``seconds`` (others are kept)."""
        assert not [e for e in self.backlog if self._matches(e, kind, predicate)], self.backlog
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return
            if self._matches(event, kind, predicate):
                raise AssertionError(f"unexpected {event}")
            if event["type"] != "HEARTBEAT":
                self.backlog.append(event)

    def update(self, task_id: Optional[str] = None, timeout: float = 10.0) -> dict[str, Any]:
        event = self.next("UPDATE", timeout, predicate=lambda e: task_id is None
                          or e["update"]["status"]["task_id"]["value"] == task_id)
        return event["update"]["status"]

    def offers(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        return self.next("OFFERS", timeout)["offers"]["offers"]

    def call(self, kind: str, body: Optional[dict[str, Any]] = None,
             headers: Optional[dict[str, str]] = None) -> tuple[int, str]:
        call: dict[str, Any] = {"type": kind, "framework_id": {"value": self.framework_id}}
        if body is not None:
            call[kind.lower()] = body
        hdrs = {"Mesos-Stream-Id": self.stream_id or "", **self.headers}
        hdrs.update(headers or {})
        return post(self.address, call, hdrs)

    def ack(self, status: dict[str, Any]) -> None:
        code, text = self.call("ACKNOWLEDGE", {"agent_id": status["agent_id"], "task_id": status["task_id"],
                                               "uuid": status["uuid"]})
        assert code == 202, text

    def launch(self, offer: dict[str, Any], tasks: list[dict[str, Any]], refuse: Optional[float] = None,
               offer_ids: Optional[list[str]] = None) -> None:
        body: dict[str, Any] = {
            "offer_ids": [{"value": o} for o in (offer_ids or [offer["id"]["value"]])],
            "operations": [{"type": "LAUNCH", "launch": {"task_infos": tasks}}]}
        if refuse is not None:
            body["filters"] = {"refuse_seconds": refuse}
        code, text = self.call("ACCEPT", body)
        assert code == 202, text

    def close(self) -> None:
        """Drop the subscription connection (the master sees a disconnect)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.response.close()
            self.conn.close()
        except OSError:
            pass


def command_task(task_id: str, offer: dict[str, Any], command: str, cpus: float = 0.1, mem: float = 32,
                 **extra: Any) -> dict[str, Any]:
    task = {"name": task_id, "task_id": {"value": task_id}, "agent_id": offer["agent_id"],
            "resources": resources(cpus, mem), "command": {"value": command}}
    task.update(extra)
    return task


def executor_task(task_id: str, offer: dict[str, Any], executor_id: str, command: str,
                  uris: Optional[list[dict[str, Any]]] = None, cpus: float = 0.1, mem: float = 32,
                  exec_cpus: float = 0.1, exec_mem: float = 32, data: Optional[bytes] = None,
                  env: Optional[dict[str, str]] = None) -> dict[str, Any]:
    executor: dict[str, Any] = {"executor_id": {"value": executor_id}, "name": executor_id,
                                "command": {"value": command, "uris": uris or []},
                                "resources": resources(exec_cpus, exec_mem)}
    if env:
        executor["command"]["environment"] = {"variables": [{"name": k, "value": v} for k, v in env.items()]}
    task: dict[str, Any] = {"name": task_id, "task_id": {"value": task_id}, "agent_id": offer["agent_id"],
                            "resources": resources(cpus, mem), "executor": executor}
    if data is not None:
        task["data"] = base64.b64encode(data).decode()
    return task


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def session_alive(cluster: Any, sid: int) -> list[int]:
    """Live processes of executor session ``sid``, from the cluster's own process records."""
    from framework.localmesos.agent import process_alive
    return [pid for session, pid in cluster.process_records() if session == sid and process_alive(pid, session)]
