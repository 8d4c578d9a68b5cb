"""Custom executors, failover, teardown, executor resources, executor API status codes."""
from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

from localmesos_helpers import Scheduler, executor_task, post, session_alive, wait_for


RAW = Path(__file__).with_name("raw_executor.py")


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def events(path: Path) -> list[dict]:
    return [entry["event"] for entry in read_log(path) if "event" in entry]


def raw_task(task_id, offer, executor_id, mode, log: Path, **kw):
    return executor_task(task_id, offer, executor_id, f"{sys.executable} raw_executor.py {mode}",
                         uris=[{"value": f"file://{RAW}", "extract": False}],
                         env={"RAW_EXECUTOR_LOG": str(log), "CUSTOM_VAR": "custom"}, **kw)


def test_custom_executor_finishes_with_data_and_environment(cluster, tmp_path):
    log = tmp_path / "exec.log"
    sched = Scheduler(cluster.master_address, failover_timeout=60)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    sched.launch(offer, [raw_task("ex-1", offer, "rawexec-1", "finish", log, data=b"task-payload")])
    running = sched.update("ex-1")
    assert running["state"] == "TASK_RUNNING" and running["agent_id"] == offer["agent_id"]
    assert "executor_id" not in running and running["source"] == "SOURCE_EXECUTOR"
    sched.ack(running)
    finished = sched.update("ex-1")
    assert finished["state"] == "TASK_FINISHED" and base64.b64decode(finished["data"]) == b"payload"
    sched.ack(finished)
    wait_for(lambda: len([e for e in events(log) if e["type"] == "ACKNOWLEDGED"]) == 2)
    entries = read_log(log)
    env = entries[0]["env"]
    fid = sched.framework_id
    assert env["MESOS_FRAMEWORK_ID"] == fid and env["MESOS_EXECUTOR_ID"] == "rawexec-1"
    assert env["MESOS_CHECKPOINT"] == "0" and env["MESOS_HTTP_COMMAND_EXECUTOR"] == "0"
    assert env["MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD"] == "1secs" and env["LIBPROCESS_PORT"] == "0"
    assert env["MESOS_SLAVE_ID"] == offer["agent_id"]["value"] and env["CUSTOM_VAR"] == "custom"
    assert env["MESOS_AGENT_ENDPOINT"] == cluster.agent_endpoints()[offer["agent_id"]["value"]]
    assert env["MESOS_DIRECTORY"] == env["MESOS_SANDBOX"] == entries[0]["cwd"]
    assert f"/slaves/{env['MESOS_SLAVE_ID']}/frameworks/{fid}/executors/rawexec-1/runs/" in env["MESOS_DIRECTORY"]
    assert "raw_executor.py" in entries[0]["files"]
    evs = events(log)
    subscribed = evs[0]["subscribed"]
    assert subscribed["executor_info"]["executor_id"] == {"value": "rawexec-1"}
    assert subscribed["framework_info"]["id"] == {"value": fid}
    assert subscribed["agent_info"]["id"] == offer["agent_id"] and "container_id" in subscribed
    launch = evs[1]["launch"]["task"]
    assert launch["data"] == base64.b64encode(b"task-payload").decode()
    assert launch["executor"]["framework_id"] == {"value": fid}
    assert launch["resources"][0]["allocation_info"] == {"role": "*"}
    assert [a["answer"] for a in read_log(log) if "answer" in a] == [202, 202]
    # The executor keeps running (as with real Mesos) until the framework goes away.
    assert sched.call("TEARDOWN") == (202, "")
    wait_for(lambda: any(e["type"] == "SHUTDOWN" for e in events(log)))
    sched.close()


def test_executor_crash_gives_failure_then_task_failed(cluster, tmp_path):
    log = tmp_path / "crash.log"
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    sched.launch(offer, [raw_task("crash-1", offer, "rawexec-crash", "crash", log)])
    failure = sched.next("FAILURE")["failure"]
    assert failure == {"agent_id": offer["agent_id"], "executor_id": {"value": "rawexec-crash"}, "status": 768}
    status = sched.update("crash-1")
    assert status["state"] == "TASK_FAILED" and status["message"] == "Executor terminated"
    assert status["source"] == "SOURCE_AGENT" and status["reason"] == "REASON_EXECUTOR_TERMINATED"
    assert status["executor_id"] == {"value": "rawexec-crash"} and "uuid" in status
    sched.ack(status)
    # Task and executor resources are free again.
    wait_for(lambda: cluster.state()["slaves"][0]["used_resources"]["cpus"] == 0.0)
    sched.close()


def test_executor_resources_are_counted_once_per_executor(cluster, tmp_path):
    log = tmp_path / "hold.log"
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    tasks = [raw_task(f"h-{i}", offer, "shared-exec", "hold", log, cpus=0.2, mem=64, exec_cpus=0.3, exec_mem=128)
             for i in range(2)]
    sched.launch(offer, tasks, refuse=0)
    for task_id in ("h-0", "h-1"):
        sched.ack(sched.update(task_id))
    state = cluster.state()
    assert state["slaves"][0]["used_resources"]["cpus"] == 0.7  # 2 x 0.2 + 0.3 once
    assert state["slaves"][0]["used_resources"]["mem"] == 256.0
    rest = sched.offers()[0]
    assert {r["name"]: r.get("scalar", {}).get("value") for r in rest["resources"]}["cpus"] == 1.3
    assert rest["executor_ids"] == [{"value": "shared-exec"}]
    # Killing both tasks frees task resources; the executor still holds its own.
    for task_id in ("h-0", "h-1"):
        assert sched.call("KILL", {"task_id": {"value": task_id}}) == (202, "")
        killed = sched.update(task_id)
        assert killed["state"] == "TASK_KILLED"
        sched.ack(killed)
    wait_for(lambda: cluster.state()["slaves"][0]["used_resources"]["cpus"] == 0.3)
    # Framework message round trip through the executor.
    assert sched.call("MESSAGE", {"agent_id": offer["agent_id"], "executor_id": {"value": "shared-exec"},
                                  "data": base64.b64encode(b"ping").decode()}) == (202, "")
    message = sched.next("MESSAGE")["message"]
    assert base64.b64decode(message["data"]) == b"ping" and message["executor_id"] == {"value": "shared-exec"}
    # Scheduler SHUTDOWN of the executor: SHUTDOWN event, process exits, executor resources freed.
    assert sched.call("SHUTDOWN", {"agent_id": offer["agent_id"],
                                   "executor_id": {"value": "shared-exec"}}) == (202, "")
    wait_for(lambda: any(e["type"] == "SHUTDOWN" for e in events(log)))
    wait_for(lambda: cluster.state()["slaves"][0]["used_resources"]["cpus"] == 0.0)
    sched.close()


def test_failover_resubscribe_keeps_tasks_then_teardown(cluster, tmp_path):
    log = tmp_path / "fo.log"
    sched = Scheduler(cluster.master_address, failover_timeout=60)
    sched.next("SUBSCRIBED")
    fid = sched.framework_id
    offer = sched.offers()[0]
    sched.launch(offer, [raw_task("keep-1", offer, "keep-exec", "hold", log)])
    sched.ack(sched.update("keep-1"))
    # Same id while subscribed: new stream gets SUBSCRIBED, old one ERROR and is closed.
    second = Scheduler(cluster.master_address, framework_id=fid, failover_timeout=60)
    assert second.next("SUBSCRIBED")["subscribed"]["framework_id"] == {"value": fid}
    assert sched.next("ERROR")["error"]["message"] == "Framework failed over"
    assert sched.closed.wait(5)
    assert second.stream_id != sched.stream_id
    assert second.call("RECONCILE", {"tasks": [{"task_id": {"value": "keep-1"}}]}) == (202, "")
    assert second.update("keep-1")["state"] == "TASK_RUNNING"
    # Disconnect and come back within the failover timeout: task still there.
    second.close()
    wait_for(lambda: not cluster.state()["frameworks"][0]["connected"])
    third = Scheduler(cluster.master_address, framework_id=fid, failover_timeout=60)
    third.next("SUBSCRIBED")
    assert cluster.state()["frameworks"][0]["tasks"][0]["state"] == "TASK_RUNNING"
    assert third.call("TEARDOWN") == (202, "")
    assert third.closed.wait(5)
    wait_for(lambda: any(e["type"] == "SHUTDOWN" for e in events(log)))
    assert read_log(log)[0]["env"]["MESOS_FRAMEWORK_ID"] == fid
    wait_for(lambda: not cluster.state()["frameworks"])
    assert cluster.state()["completed_frameworks"][0]["id"] == fid
    removed = Scheduler(cluster.master_address, framework_id=fid)
    assert removed.status == 200
    assert removed.next("ERROR")["error"]["message"] == "Framework has been removed"
    for s in (sched, second, third, removed):
        s.close()


def test_failover_timeout_removes_framework_and_executors(cluster, tmp_path):
    log = tmp_path / "timeout.log"
    sched = Scheduler(cluster.master_address, failover_timeout=0.5)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    sched.launch(offer, [raw_task("t-1", offer, "to-exec", "hold", log)])
    status = sched.update("t-1")
    sched.ack(status)
    pid = status["container_status"]["executor_pid"]
    sched.close()
    wait_for(lambda: cluster.state()["completed_frameworks"], timeout=5)
    wait_for(lambda: any(e["type"] == "SHUTDOWN" for e in events(log)))
    wait_for(lambda: not session_alive(cluster, pid))
    assert cluster.state()["slaves"][0]["used_resources"]["cpus"] == 0.0


def test_executor_api_status_codes(cluster, tmp_path):
    endpoint = next(iter(cluster.agent_endpoints().values()))
    call = {"type": "UPDATE", "framework_id": {"value": "f"}, "executor_id": {"value": "e"},
            "update": {"status": {"task_id": {"value": "t"}, "state": "TASK_RUNNING", "source": "SOURCE_EXECUTOR",
                                  "uuid": base64.b64encode(b"0123456789abcdef").decode()}}}
    assert post(endpoint, call, path="/api/v1/executor") == (400, "Framework cannot be found")
    assert post(endpoint, None, raw=b"{}", content_type="text/plain", path="/api/v1/executor")[0] == 415
    bad = json.loads(json.dumps(call))
    bad["update"]["status"]["uuid"] = "AAAA"
    assert post(endpoint, bad, path="/api/v1/executor") == (400, "Failed to validate executor::Call: Not a valid UUID")
    del bad["executor_id"]
    assert post(endpoint, bad, path="/api/v1/executor") == (
        400, "Failed to convert JSON into Call protobuf: Missing required fields: executor_id")
    # A registered-but-not-subscribed executor gets 403 for UPDATE.
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    sched.launch(offer, [executor_task("s-1", offer, "slow-exec", "sleep 30")])
    fid = sched.framework_id
    call["framework_id"] = {"value": fid}
    call["executor_id"] = {"value": "slow-exec"}
    wait_for(lambda: cluster.executor_pids())
    assert post(endpoint, call, path="/api/v1/executor") == (403, "Executor is not subscribed")
    call["executor_id"] = {"value": "other"}
    assert post(endpoint, call, path="/api/v1/executor") == (400, "Executor cannot be found")
    sched.close()


def test_fetch_failure_fails_task(cluster, tmp_path):
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    task = executor_task("f-1", offer, "fetch-exec", "true", uris=[{"value": str(tmp_path / "missing.tgz")}])
    sched.launch(offer, [task])
    status = sched.update("f-1")
    assert status["state"] == "TASK_FAILED" and status["reason"] == "REASON_CONTAINER_LAUNCH_FAILED"
    assert "missing.tgz" in status["message"] and "uuid" in status
    sched.ack(status)
    sched.close()


def test_stop_kills_executors_and_removes_sandboxes(make_cluster, tmp_path):
    cluster = make_cluster(work_dir=tmp_path / "wd")
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    # An executor that ignores SHUTDOWN and spawns a grandchild in its own process group.
    task = executor_task("x-1", offer, "stubborn", "trap '' TERM; (sleep 300 &) ; sleep 300")
    sched.launch(offer, [task])
    pid = wait_for(lambda: cluster.executor_pids())[0]
    wait_for(lambda: len(session_alive(cluster, pid)) >= 2)  # the launcher and the stubborn shell
    cluster.stop()
    assert not session_alive(cluster, pid)
    assert not (tmp_path / "wd" / "slaves").exists()
    sched.close()


def test_launch_group_is_delivered_as_one_event(cluster, tmp_path):
    log = tmp_path / "group.log"
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    template = raw_task("unused", offer, "group-exec", "hold", log)
    tasks = [{"name": f"g-{i}", "task_id": {"value": f"g-{i}"}, "agent_id": offer["agent_id"],
              "resources": template["resources"]} for i in range(2)]
    assert sched.call("ACCEPT", {"offer_ids": [offer["id"]], "operations": [{"type": "LAUNCH_GROUP", "launch_group": {
        "executor": dict(template["executor"], type="CUSTOM"), "task_group": {"tasks": tasks}}}]}) == (202, "")
    seen = {}
    while len(seen) < 2:
        status = sched.update()
        sched.ack(status)
        if status["state"] == "TASK_FINISHED":
            seen[status["task_id"]["value"]] = base64.b64decode(status["data"])
    assert seen == {"g-0": b"g-0", "g-1": b"g-1"}
    groups = [e for e in events(log) if e["type"] == "LAUNCH_GROUP"]
    assert len(groups) == 1 and len(groups[0]["launch_group"]["task_group"]["tasks"]) == 2
    # Over-sized group: every task gets TASK_ERROR, none runs.
    offer = sched.offers()[0]
    big = [{"name": "b", "task_id": {"value": f"b-{i}"}, "agent_id": offer["agent_id"],
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 100}}]} for i in range(2)]
    assert sched.call("ACCEPT", {"offer_ids": [offer["id"]], "operations": [{"type": "LAUNCH_GROUP", "launch_group": {
        "executor": template["executor"], "task_group": {"tasks": big}}}]}) == (202, "")
    assert {sched.update()["state"], sched.update()["state"]} == {"TASK_ERROR"}
    sched.close()


def test_periodic_heartbeats(make_cluster):
    cluster = make_cluster(heartbeat_interval=0.2)
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    sched.next("HEARTBEAT", timeout=2)
    sched.next("HEARTBEAT", timeout=2)
    sched.close()


def test_kill_during_launch_and_registration_timeout(make_cluster):
    cluster = make_cluster(executor_registration_timeout=1.0)
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    # Executors that never subscribe: their tasks stay queued at the agent.
    sched.launch(offer, [executor_task("q-1", offer, "mute-1", "sleep 30"),
                         executor_task("q-2", offer, "mute-2", "sleep 30")])
    wait_for(lambda: len(cluster.executor_pids()) == 2)
    assert sched.call("KILL", {"task_id": {"value": "q-1"}}) == (202, "")
    killed = sched.update("q-1")
    assert killed["state"] == "TASK_KILLED" and killed["reason"] == "REASON_TASK_KILLED_DURING_LAUNCH"
    sched.ack(killed)
    timed_out = sched.update("q-2", timeout=5)
    assert timed_out["state"] == "TASK_FAILED"
    assert timed_out["reason"] == "REASON_EXECUTOR_REGISTRATION_TIMEOUT"
    sched.ack(timed_out)
    wait_for(lambda: not cluster.executor_pids(), timeout=5)
    wait_for(lambda: cluster.state()["slaves"][0]["used_resources"]["cpus"] == 0.0)
    sched.close()


def test_remove_agent_rescinds_offers_and_loses_tasks(make_cluster):
    from framework.localmesos import AgentSpec
    cluster = make_cluster(agents=[AgentSpec(hostname="a1", resources={"cpus": 1, "mem": 512}),
                                   AgentSpec(hostname="a2", resources={"cpus": 1, "mem": 512})])
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offers = {o["hostname"]: o for o in sched.offers()}
    sched.launch(offers["a1"], [executor_task("lost-1", offers["a1"], "exec-a1", "sleep 60")], refuse=0)
    rest = sched.offers()[0]
    assert rest["hostname"] == "a1" and rest["executor_ids"] == [{"value": "exec-a1"}]
    wait_for(lambda: cluster.executor_pids())
    pid = cluster.executor_pids()[0]
    cluster.remove_agent("a1")
    assert sched.next("RESCIND")["rescind"]["offer_id"] == rest["id"]
    lost = sched.update("lost-1")
    assert lost["state"] == "TASK_LOST" and lost["reason"] == "REASON_AGENT_REMOVED" and "uuid" not in lost
    failure = sched.next("FAILURE")["failure"]
    assert failure == {"agent_id": offers["a1"]["agent_id"]}
    assert not session_alive(cluster, pid)
    assert [s["hostname"] for s in cluster.state()["slaves"]] == ["a2"]
    sched.close()


def test_executable_that_cannot_run_fails_the_launch(cluster, tmp_path):
    sched = Scheduler(cluster.master_address)
    offer = sched.offers()[0]
    task = executor_task("n-1", offer, "no-such", str(tmp_path / "missing-program"))
    task["executor"]["command"]["shell"] = False
    sched.launch(offer, [task])
    status = sched.update("n-1")
    assert status["state"] == "TASK_FAILED" and status["reason"] == "REASON_CONTAINER_LAUNCH_FAILED"
    assert "missing-program" in status["message"]
    sched.ack(status)
    sched.close()
