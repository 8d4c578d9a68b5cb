"""A tiny executor speaking the v1 executor API with plain http.client (used by the tests).

Usage: raw_executor.py MODE   with MODE in finish | crash | hold
Every event received and the environment are appended as JSON lines to $RAW_EXECUTOR_LOG.
"""
import base64
import http.client
import json
import os
import sys
import time
import uuid

MODE = sys.argv[1] if len(sys.argv) > 1 else "finish"
LOG = os.environ.get("RAW_EXECUTOR_LOG", "raw_executor.log")
HOST, PORT = os.environ["MESOS_AGENT_ENDPOINT"].rsplit(":", 1)
FID = {"value": os.environ["MESOS_FRAMEWORK_ID"]}
EID = {"value": os.environ["MESOS_EXECUTOR_ID"]}


def log(entry):
    with open(LOG, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def call(body):
    conn = http.client.HTTPConnection(HOST, int(PORT), timeout=10)
    conn.request("POST", "/api/v1/executor", json.dumps(body).encode(), {"Content-Type": "application/json"})
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    log({"answer": response.status, "text": text})
    return response.status


def update(task_id, state, data=None):
    status = {"task_id": task_id, "state": state, "source": "SOURCE_EXECUTOR",
              "uuid": base64.b64encode(uuid.uuid4().bytes).decode(), "timestamp": time.time()}
    if data is not None:
        status["data"] = base64.b64encode(data).decode()
    call({"type": "UPDATE", "framework_id": FID, "executor_id": EID, "update": {"status": status}})


log({"env": {k: v for k, v in os.environ.items() if k.startswith(("MESOS_", "LIBPROCESS_", "CUSTOM_"))},
     "cwd": os.getcwd(), "files": sorted(os.listdir("."))})
conn = http.client.HTTPConnection(HOST, int(PORT), timeout=None)
conn.request("POST", "/api/v1/executor", json.dumps({
    "type": "SUBSCRIBE", "framework_id": FID, "executor_id": EID,
    "subscribe": {"unacknowledged_tasks": [], "unacknowledged_updates": []}}).encode(),
    {"Content-Type": "application/json", "Accept": "application/json"})
response = conn.getresponse()
log({"subscribe_status": response.status})
while True:
    header = response.readline()
    if not header:
        log({"closed": True})
        break
    event = json.loads(response.read(int(header)))
    log({"event": event})
    kind = event["type"]
    if kind == "LAUNCH":
        task_id = event["launch"]["task"]["task_id"]
        if MODE == "crash":
            sys.exit(3)
        update(task_id, "TASK_RUNNING")
        if MODE == "finish":
            update(task_id, "TASK_FINISHED", b"payload")
    elif kind == "LAUNCH_GROUP":
        for task in event["launch_group"]["task_group"]["tasks"]:
            update(task["task_id"], "TASK_RUNNING")
            update(task["task_id"], "TASK_FINISHED", task["task_id"]["value"].encode())
    elif kind == "KILL":
        update(event["kill"]["task_id"], "TASK_KILLED")
    elif kind == "MESSAGE":
        call({"type": "MESSAGE", "framework_id": FID, "executor_id": EID,
              "message": {"data": event["message"]["data"]}})
    elif kind == "SHUTDOWN":
        break
