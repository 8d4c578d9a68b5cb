"""A serving replica launched on the embedded cluster by a real pymesos scheduler: the real
executor process (``python -m executor``) loads the model, listens on the port it was offered,
answers HTTP, drains when the framework kills it, and goes away with the framework."""

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
from executor.protocol import ReplicaPayload, ReplicaReady, array_to_npy, npy_to_array, sha256_hex
from framework.localmesos import AgentSpec, LocalCluster

ROOT = Path(executor_package.__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scalar(name: str, value: float) -> dict[str, Any]:
    return {"name": name, "type": "SCALAR", "scalar": {"value": value}}


class ReplicaScheduler(Scheduler):
    """Launches one replica on the first offer, on the first port of the offer's ``ports``."""

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
            port = int(ranges[0].ranges.range[0].begin)
            payload = ReplicaPayload(**{**self.payload.__dict__, "port": port})
            executor = {"executor_id": {"value": "serve-exec"}, "name": "serve-exec",
                        "resources": [scalar("cpus", 0.1), scalar("mem", 128)],
                        "command": {"value": f"exec {sys.executable} -m executor", "environment": {"variables": [
                            {"name": "PYTHONPATH", "value": str(ROOT)},
                            {"name": "MESOS_ENSEMBLE_WORKERS", "value": "1"}]}}}
            task = {"task_id": {"value": "replica-1"}, "agent_id": offer.agent_id, "name": "replica",
                    "resources": [scalar("cpus", 0.5), scalar("mem", 256),
                                  {"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": port,
                                                                                          "end": port}]}}],
                    "executor": executor, "data": encode_data(payload.to_json())}
            driver.launchTasks(offer.id, [task])

    def statusUpdate(self, driver: Any, update: Any) -> None:  # noqa: N802
        self.updates.put(update)


def next_state(scheduler: ReplicaScheduler) -> Any:
    return scheduler.updates.get(timeout=60)


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_replica_on_the_embedded_cluster_serves_drains_and_goes(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    features = rng.normal(size=(200, 4))
    model = LogisticRegression().fit(features, (features[:, 0] > 0).astype(int))
    path = tmp_path / "logistic.joblib"
    joblib.dump(model, path)
    port = free_port()
    agent = AgentSpec(hostname="agent-1", resources={"cpus": 2, "mem": 4096, "disk": 10000,
                                                     "ports": f"[{port}-{port}]"})
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
        assert next_state(scheduler).state == "TASK_STARTING"
        running = next_state(scheduler)
        assert running.state == "TASK_RUNNING", running.get("message")
        ready = ReplicaReady.from_json(base64.b64decode(running.data))
        assert ready.port == port and ready.pid in cluster.live_processes()
        status, body = request(port, "POST", "/v1/predict", array_to_npy(features[:25]))
        assert status == 200 and np.array_equal(npy_to_array(body), model.predict_proba(features[:25]))
        status, body = request(port, "GET", "/v1/health")
        assert status == 200 and json.loads(body)["task_id"] == "replica-1"
        driver.killTask({"value": "replica-1"})
        killed = next_state(scheduler)
        assert killed.state == "TASK_KILLED" and "drained" in killed.message
        try:
            request(port, "GET", "/v1/health")
            raise AssertionError("the killed replica still answers")
        except ConnectionRefusedError:
            pass
    finally:
        driver.stop()  # TEARDOWN: the executor is shut down (the no-orphan check follows the test)
        driver.join()
        cluster.stop()
