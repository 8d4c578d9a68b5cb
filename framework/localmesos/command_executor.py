"""Built-in command executor (like ``mesos-executor``), run by the agent as a separate process.

It speaks the v1 executor HTTP API to its agent, runs ``TaskInfo.command`` in its own process
group and reports TASK_STARTING, TASK_RUNNING and a terminal state. Stdlib only and
self-contained: it is started by path, not imported.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Optional


class CommandExecutor:
    def __init__(self) -> None:
        self.endpoint = os.environ["MESOS_AGENT_ENDPOINT"]
        self.framework_id = {"value": os.environ["MESOS_FRAMEWORK_ID"]}
        self.executor_id = {"value": os.environ["MESOS_EXECUTOR_ID"]}
        self.default_grace = float(os.environ.get("LOCALMESOS_COMMAND_KILL_GRACE", "3"))
        self.task: Optional[dict[str, Any]] = None
        self.proc: Optional[subprocess.Popen] = None
        self.killed = False
        self.terminal_uuid: Optional[str] = None
        self.done = threading.Event()
        self.lock = threading.Lock()

    # -- calls -------------------------------------------------------------
    def _post(self, body: dict[str, Any]) -> None:
        host, port = self.endpoint.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            data = json.dumps(body).encode()
            conn.request("POST", "/api/v1/executor", data, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status // 100 != 2:
                raise RuntimeError(f"agent answered {response.status}")
        finally:
            conn.close()

    def update(self, state: str, message: Optional[str] = None, uuid_b64: Optional[str] = None) -> str:
        assert self.task is not None
        status: dict[str, Any] = {"task_id": self.task["task_id"], "state": state, "source": "SOURCE_EXECUTOR",
                                  "executor_id": self.executor_id, "timestamp": time.time(),
                                  "uuid": uuid_b64 or base64.b64encode(uuid.uuid4().bytes).decode()}
        if message is not None:
            status["message"] = message
        self._post({"type": "UPDATE", "framework_id": self.framework_id, "executor_id": self.executor_id,
                    "update": {"status": status}})
        return status["uuid"]

    # -- task --------------------------------------------------------------
    def launch(self, task: dict[str, Any]) -> None:
        self.task = task
        self.update("TASK_STARTING")
        command = task.get("command") or {}
        env = dict(os.environ)
        env.pop("LOCALMESOS_COMMAND_KILL_GRACE", None)
        for variable in (command.get("environment") or {}).get("variables", []):
            env[variable["name"]] = str(variable.get("value", ""))
        try:
            if command.get("shell", True):
                self.proc = subprocess.Popen(["/bin/sh", "-c", command.get("value", "")], env=env,
                                             process_group=0)
            else:
                argv = list(command.get("arguments") or [command.get("value", "")])
                self.proc = subprocess.Popen(argv, executable=command.get("value"), env=env, process_group=0)
        except OSError as exc:
            self.finish("TASK_FAILED", f"Failed to launch command: {exc}")
            return
        self.update("TASK_RUNNING")
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        assert self.proc is not None
        code = self.proc.wait()
        if code == 0:
            self.finish("TASK_FINISHED", "Command exited with status 0")
        elif code > 0:
            self.finish("TASK_FAILED", f"Command exited with status {code}")
        else:
            text = f"Command terminated with signal {signal.strsignal(-code) or -code}"
            self.finish("TASK_KILLED" if self.killed else "TASK_FAILED", text)

    def finish(self, state: str, message: str) -> None:
        with self.lock:
            if self.terminal_uuid is not None:
                return
            self.terminal_uuid = base64.b64encode(uuid.uuid4().bytes).decode()
        self.update(state, message, self.terminal_uuid)
        # Exit once the agent acknowledged the terminal update (or after a while).
        timer = threading.Timer(10.0, self.done.set)
        timer.daemon = True
        timer.start()

    def kill(self, grace: Optional[float]) -> None:
        if self.proc is None or self.proc.poll() is not None:
            if self.task is not None and self.proc is None:
                self.finish("TASK_KILLED", "Command was killed before it started")
            return
        self.killed = True
        grace = self.default_grace if grace is None else grace
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return

        def escalate() -> None:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        timer = threading.Timer(grace, escalate)
        timer.daemon = True
        timer.start()

    # -- event loop -------------------------------------------------------------
    def run(self) -> int:
        host, port = self.endpoint.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=None)
        body = json.dumps({"type": "SUBSCRIBE", "framework_id": self.framework_id,
                           "executor_id": self.executor_id,
                           "subscribe": {"unacknowledged_tasks": [], "unacknowledged_updates": []}})
        conn.request("POST", "/api/v1/executor", body.encode(),
                     {"Content-Type": "application/json", "Accept": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            sys.stderr.write(f"SUBSCRIBE failed: {response.status} {response.read()!r}\n")
            return 1
        threading.Thread(target=self._events, args=(response,), daemon=True).start()
        self.done.wait()
        return 0

    def _events(self, response: http.client.HTTPResponse) -> None:
        try:
            while True:
                header = response.readline()
                if not header:
                    break
                length = int(header.strip())
                event = json.loads(response.read(length))
                self.on_event(event)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            sys.stderr.write(f"event stream error: {exc}\n")
        # Agent went away or closed the stream: kill the task and exit.
        self.kill(0.0)
        self.done.set()

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "LAUNCH":
            self.launch(event["launch"]["task"])
        elif kind == "KILL":
            nanos = ((event["kill"].get("kill_policy") or (self.task or {}).get("kill_policy") or {})
                     .get("grace_period") or {}).get("nanoseconds")
            self.kill(None if nanos is None else float(nanos) / 1e9)
        elif kind == "ACKNOWLEDGED":
            if event["acknowledged"].get("uuid") == self.terminal_uuid:
                self.done.set()
        elif kind == "SHUTDOWN":
            self.kill(None)
            if self.proc is None:
                self.done.set()


if __name__ == "__main__":
    sys.exit(CommandExecutor().run())
