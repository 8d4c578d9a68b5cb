"""Serving replicas launched on the embedded cluster by a real pymesos scheduler: the real
executor process (``python -m executor``) loads the model, each replica listens on a port it was
offered and answers HTTP; one drains when the framework kills it, the other stops with the
executor when the framework goes away (no process, no listening port left)."""

from __future__ import annotations

import base64
import http.client
import json
import queue
import socket
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from addict import Dict
from pymesos import MesosSchedulerDriver, Scheduler, encode_data  # main thread import
from sklearn.linear_model import LogisticRegression

import executor as executor_package
from executor import timeline
from executor.protocol import ReplicaPayload, ReplicaReady, array_to_npy, npy_to_array, sha256_hex
from framework.localmesos import AgentSpec, LocalCluster
from tests.executor.test_replica import wait_for

ROOT = Path(executor_package.__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scalar(name: str, value: float) -> dict[str, Any]:
    return {"name": name, "type": "SCALAR", "scalar": {"value": value}}


class ReplicaScheduler(Scheduler):
    """Launches two replicas of one model in one executor on the first offer, each on one of the
    offer's ports."""

    def __init__(self, payload: ReplicaPayload) -> None:
        self.payload = payload
        self.updates: queue.Queue[Dict] = queue.Queue()
        self.launched = False

    def resourceOffers(self, driver: Any, offers: Any) -> None:  # noqa: N802
        for offer in offers:
            ranges = [r for r in offer.resources if r.name == "ports"]
            if self.launched or not ranges:
                driver.declineOffer(offer.id, {"refuse_seconds": 60})
                continue
            self.launched = True
            ports = [p for r in ranges[0].ranges.range for p in range(int(r.begin), int(r.end) + 1)][:2]
            executor = {"executor_id": {"value": "serve-exec"}, "name": "serve-exec",
                        "resources": [scalar("cpus", 0.1), scalar("mem", 128)],
                        "command": {"value": f"exec {sys.executable} -m executor", "environment": {"variables": [
                            {"name": "PYTHONPATH", "value": str(ROOT)},
                            {"name": "MESOS_ENSEMBLE_WORKERS", "value": "1"}]}}}
            tasks = []
            for number, port in enumerate(ports, 1):
                payload = ReplicaPayload(**{**self.payload.__dict__, "port": port})
                tasks.append({"task_id": {"value": f"replica-{number}"}, "agent_id": offer.agent_id,
                              "name": f"replica {number}", "executor": executor,
                              "data": encode_data(payload.to_json()),
                              "resources": [scalar("cpus", 0.5), scalar("mem", 256),
                                            {"name": "ports", "type": "RANGES",
                                             "ranges": {"range": [{"begin": port, "end": port}]}}]})
            driver.launchTasks(offer.id, tasks)

    def statusUpdate(self, driver: Any, update: Any) -> None:  # noqa: N802
        self.updates.put(update)


def next_states(scheduler: ReplicaScheduler, count: int) -> dict[str, list[Any]]:
    """The next ``count`` status updates, by task id."""
    seen: dict[str, list[Any]] = {}
    for _ in range(count):
        update = scheduler.updates.get(timeout=60)
        seen.setdefault(update.task_id.value, []).append(update)
    return seen


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_replicas_on_the_embedded_cluster_serve_drain_and_go(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    features = rng.normal(size=(200, 4))
    model = LogisticRegression().fit(features, (features[:, 0] > 0).astype(int))
    path = tmp_path / "logistic.joblib"
    joblib.dump(model, path)
    ports = sorted({free_port(), free_port()})
    assert len(ports) == 2
    agent = AgentSpec(hostname="agent-1", resources={"cpus": 2, "mem": 4096, "disk": 10000,
                                                     "ports": "[" + ",".join(f"{p}-{p}" for p in ports) + "]"})
    cluster = LocalCluster(agents=[agent], work_dir=tmp_path / "cluster", allocation_interval=0.1,
                           executor_shutdown_grace_period=3.0)
    cluster.start()
    payload = ReplicaPayload(model="logistic", model_url=path.as_uri(), sha256=sha256_hex(path.read_bytes()),
                             port=0, output="predict_proba", host="127.0.0.1")
    scheduler = ReplicaScheduler(payload)
    driver = MesosSchedulerDriver(scheduler, {"user": "tester", "name": "replica-test"}, cluster.master_address,
                                  use_addict=True)
    driver.start()
    try:
        seen = next_states(scheduler, 4)
        ready = {}
        for task_id, updates in seen.items():
            assert [u.state for u in updates] == ["TASK_STARTING", "TASK_RUNNING"], updates[-1].get("message")
            ready[task_id] = ReplicaReady.from_json(base64.b64decode(updates[-1].data))
        assert sorted(r.port for r in ready.values()) == ports  # the ports offered, one each
        # Each start is timed; only the first replica's includes the executor's own start.
        assert sorted("executor_start" in r.phases for r in ready.values()) == [False, True]
        assert all({"fetch", "load", "probe", "listen"} <= set(r.phases) for r in ready.values())
        assert len({r.pid for r in ready.values()}) == 1 and ready["replica-1"].pid in cluster.live_processes()
        # The executor held its garbage collector off from its start until its first model load.
        steps = {m.group(1): float(m.group(2)) for log in (tmp_path / "cluster").rglob("stderr")
                 for m in timeline.LINE.finditer(log.read_text())}
        assert steps["process"] <= steps["model_loaded:logistic"] <= steps["collector_released"], steps
        for replica in ready.values():
            status, body = request(replica.port, "POST", "/v1/predict", array_to_npy(features[:25]))
            assert status == 200 and np.array_equal(npy_to_array(body), model.predict_proba(features[:25]))
        status, body = request(ready["replica-1"].port, "GET", "/v1/health")
        assert status == 200 and json.loads(body)["task_id"] == "replica-1"
        driver.killTask({"value": "replica-1"})
        killed = next_states(scheduler, 1)["replica-1"][0]
        assert killed.state == "TASK_KILLED" and "drained" in killed.message
        assert refused(ready["replica-1"].port)
        status, _body = request(ready["replica-2"].port, "GET", "/v1/health")  # the other one serves on
        assert status == 200
        driver.stop()  # TEARDOWN: the agent shuts the executor down, and it stops its other replica
        driver.join()
        wait_for(lambda: refused(ready["replica-2"].port), timeout=60)  # closed by the executor itself
        wait_for(lambda: not cluster.live_processes(), timeout=60)
    finally:
        driver.stop()
        cluster.stop()
