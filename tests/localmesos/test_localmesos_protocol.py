"""Scheduler API over plain HTTP: status codes, texts, framing, offers, updates, reconciliation."""
from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest

from localmesos_helpers import Scheduler, basic, command_task, post, session_alive, wait_for


def test_version_is_numeric(cluster):
    body = json.loads(urllib.request.urlopen(f"http://{cluster.master_address}/version", timeout=5).read())
    assert all(part.isdigit() for part in body["version"].split("."))


def test_error_codes_and_texts(cluster):
    address = cluster.master_address
    assert post(address, None, raw=b"{}", content_type="text/plain") == (
        415, "Expecting 'Content-Type' of application/json or application/x-protobuf")
    assert post(address, None, raw=b"{}", content_type="application/json; charset=utf-8")[0] == 415
    assert post(address, None, raw=b"{}", content_type=None) == (400, "Expecting 'Content-Type' to be present")
    assert post(address, None, raw=b"not json") == (
        400, "Failed to parse body into JSON: syntax error at line 1 near: not json")
    assert post(address, {"type": "SUBSCRIBE", "subscribe": {"framework_info": {"name": "x"}}}) == (
        400, "Failed to convert JSON into Call protobuf: Missing required fields: subscribe.framework_info.user")
    assert post(address, {"type": "REVIVE"}) == (
        400, "Failed to validate scheduler::Call: Expecting 'framework_id' to be present")
    assert post(address, {"type": "REVIVE", "framework_id": {"value": "nope"}}, {"Mesos-Stream-Id": "x"}) == (
        400, "Framework cannot be found")
    code, _ = post(address, {"type": "SUBSCRIBE", "framework_id": {"value": "a"},
                             "subscribe": {"framework_info": {"user": "u", "name": "n", "id": {"value": "b"}}}})
    assert code == 400
    request = urllib.request.Request(f"http://{address}/api/v1/scheduler", method="GET")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 405


def test_subscribe_stream_and_stream_id_checks(cluster):
    sched = Scheduler(cluster.master_address, extra_info={"hostname": "", "unknown_field": [1, 2]})
    assert sched.status == 200
    assert sched.response.getheader("Transfer-Encoding") == "chunked"
    assert sched.response.getheader("Content-Type") == "application/json"
    subscribed = sched.next("SUBSCRIBED")["subscribed"]
    assert subscribed["heartbeat_interval_seconds"] == 15.0
    assert subscribed["master_info"]["version"] and subscribed["master_info"]["port"] == int(
        cluster.master_address.rsplit(":", 1)[1])
    fid = subscribed["framework_id"]["value"]
    assert sched.call("REVIVE", headers={"Mesos-Stream-Id": "not-the-stream"}) == (
        400, f"The stream ID 'not-the-stream' included in this request didn't match the stream ID currently "
             f"associated with framework ID {fid}")
    call = {"type": "REVIVE", "framework_id": {"value": fid}}
    assert post(cluster.master_address, call) == (
        400, "All non-subscribe calls should include the 'Mesos-Stream-Id' header")
    assert sched.call("REVIVE") == (202, "")
    code, text = sched.call("ACKNOWLEDGE", {"agent_id": {"value": "a"}, "task_id": {"value": "t"}, "uuid": "AAAA"})
    assert (code, text) == (400, "Failed to validate scheduler::Call: Not a valid UUID")
    code, text = post(cluster.master_address, {"type": "SUBSCRIBE", "subscribe": {
        "framework_info": {"user": "u", "name": "n"}}}, {"Mesos-Stream-Id": sched.stream_id})
    assert (code, text) == (400, "Subscribe calls should not include the 'Mesos-Stream-Id' header")
    sched.close()


def test_recordio_framing_on_the_wire(make_cluster):
    cluster = make_cluster(heartbeat_interval=0.3)
    host, port = cluster.master_address.rsplit(":", 1)
    body = json.dumps({"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "u", "name": "n"}}}).encode()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /api/v1/scheduler HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        data = b""
        deadline = time.monotonic() + 5
        while data.count(b'{"type":"HEARTBEAT"}') < 2 and time.monotonic() < deadline:
            data += sock.recv(65536)
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Mesos-Stream-Id: " in head and b"Transfer-Encoding: chunked" in head
    # Each chunk: <hex size>\r\n<decimal record length>\n<json>\r\n
    records = []
    while payload:
        size_line, _, rest = payload.partition(b"\r\n")
        size = int(size_line, 16)
        chunk, payload = rest[:size], rest[size + 2:]
        if len(chunk) < size:
            break
        length, _, record = chunk.partition(b"\n")
        assert int(length) == len(record)
        records.append(json.loads(record))
    assert records[0]["type"] == "SUBSCRIBED"
    assert [r["type"] for r in records].count("HEARTBEAT") >= 2


def test_offer_shape_and_attributes(cluster):
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    assert offer["id"]["value"].endswith("-O0") and offer["framework_id"]["value"] == sched.framework_id
    assert offer["hostname"] == "agent-1"
    by_name = {r["name"]: r for r in offer["resources"]}
    assert by_name["cpus"] == {"name": "cpus", "type": "SCALAR", "scalar": {"value": 2.0}, "role": "*"}
    assert by_name["mem"]["scalar"]["value"] == 4096.0 and by_name["disk"]["scalar"]["value"] == 10000.0
    assert "gpus" not in by_name
    assert by_name["ports"]["ranges"] == {"range": [{"begin": 31000, "end": 32000}]}
    assert offer["attributes"] == [{"name": "zone", "type": "TEXT", "text": {"value": "a"}},
                                   {"name": "price", "type": "SCALAR", "scalar": {"value": 1.5}}]
    sched.close()


def test_command_task_updates_in_order_one_at_a_time(cluster):
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    sched.launch(offer, [command_task("cmd-1", offer, "exit 0")])
    starting = sched.update("cmd-1")
    assert starting["state"] == "TASK_STARTING" and starting["source"] == "SOURCE_EXECUTOR"
    assert starting["executor_id"] == {"value": "cmd-1"} and starting["agent_id"] == offer["agent_id"]
    assert "uuid" in starting and starting["container_status"]["executor_pid"] > 0
    # The next update is only forwarded after this one is acknowledged.
    sched.none("UPDATE", 0.6)
    sched.ack(starting)
    running = sched.update("cmd-1")
    assert running["state"] == "TASK_RUNNING"
    sched.ack(running)
    finished = sched.update("cmd-1")
    assert finished["state"] == "TASK_FINISHED" and finished["message"] == "Command exited with status 0"
    assert finished["executor_id"] == {"value": "cmd-1"}
    state = cluster.state()
    assert state["frameworks"][0]["tasks"][0]["state"] == "TASK_FINISHED"
    sched.ack(finished)
    state = wait_for(lambda: (lambda s: s if s["frameworks"][0]["tasks"] == [] else None)(cluster.state()))
    assert state["frameworks"][0]["completed_tasks"][0]["id"] == "cmd-1"
    sched.close()


def test_failed_command_reports_exit_status(cluster):
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    sched.launch(offer, [command_task("bad", offer, "echo oops >&2; exit 3")])
    while True:
        status = sched.update("bad")
        sched.ack(status)
        if status["state"] not in ("TASK_STARTING", "TASK_RUNNING"):
            break
    assert status["state"] == "TASK_FAILED" and status["message"] == "Command exited with status 3"
    sched.close()


def test_unacknowledged_update_is_redelivered(make_cluster):
    cluster = make_cluster(status_update_retry_interval=0.3)
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    sched.launch(offer, [command_task("r-1", offer, "exit 0")])
    first = sched.update("r-1")
    again = sched.update("r-1")
    assert again["state"] == first["state"] == "TASK_STARTING" and again["uuid"] == first["uuid"]
    sched.ack(first)
    assert sched.update("r-1")["state"] == "TASK_RUNNING"
    sched.close()


def test_offer_ids_are_single_use_and_overcommit_is_task_error(cluster):
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    sched.launch(offer, [command_task("c-1", offer, "sleep 30")], refuse=0)
    sched.launch(offer, [command_task("c-2", offer, "true")])
    lost = sched.update("c-2")
    oid = offer["id"]["value"]
    assert lost["state"] == "TASK_LOST" and lost["reason"] == "REASON_INVALID_OFFERS"
    assert lost["message"] == f"Task launched with invalid offers: Offer {oid} is no longer valid"
    assert lost["source"] == "SOURCE_MASTER" and "uuid" not in lost and lost["agent_id"] == offer["agent_id"]
    offer2 = sched.offers()[0]
    assert {r["name"]: r.get("scalar", {}).get("value") for r in offer2["resources"]}["cpus"] == 1.9
    sched.launch(offer2, [command_task("big-1", offer2, "true", cpus=64, mem=32)])
    error = sched.update("big-1")
    assert error["state"] == "TASK_ERROR" and error["reason"] == "REASON_TASK_INVALID" and "uuid" not in error
    # Word for word what Mesos 1.11.1 answered in the recorded transcript (ports first).
    assert error["message"] == (
        "Total resources cpus(allocated: *):64; mem(allocated: *):32 required by task and its executor is more "
        "than available ports(allocated: *):[31000-32000]; cpus(allocated: *):1.9; mem(allocated: *):4064; "
        "disk(allocated: *):10000")
    sched.close()


def test_decline_filter_revive_and_suppress(cluster):
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    assert sched.call("DECLINE", {"offer_ids": [offer["id"]], "filters": {"refuse_seconds": 1.0}}) == (202, "")
    started = time.monotonic()
    sched.offers(timeout=5)
    assert time.monotonic() - started >= 0.8
    # Decline for a long time, then REVIVE clears the filter at once.
    offer = cluster.state()["frameworks"][0]["offers"][0]
    assert sched.call("DECLINE", {"offer_ids": [{"value": offer["id"]}],
                                  "filters": {"refuse_seconds": 3600}}) == (202, "")
    sched.none("OFFERS", 0.5)
    assert sched.call("REVIVE") == (202, "")
    offer = sched.offers(timeout=2)[0]
    # SUPPRESS: declined resources do not come back, until REVIVE.
    assert sched.call("SUPPRESS") == (202, "")
    assert sched.call("DECLINE", {"offer_ids": [offer["id"]], "filters": {"refuse_seconds": 0}}) == (202, "")
    sched.none("OFFERS", 0.6)
    assert sched.call("REVIVE") == (202, "")
    sched.offers(timeout=2)
    sched.close()


def test_revive_allocates_at_once_not_at_the_next_interval(make_cluster):
    """As in Mesos, SUBSCRIBE and REVIVE trigger an allocation batch right away; the periodic
    clock (slowed down here) is not what delivers their offers."""
    cluster = make_cluster(allocation_interval=3600.0, tick_interval=3600.0)  # the clock never ticks in a test
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers(timeout=30)[0]
    assert sched.call("DECLINE", {"offer_ids": [offer["id"]], "filters": {"refuse_seconds": 3600}}) == (202, "")
    assert sched.call("REVIVE") == (202, "")
    sched.offers(timeout=30)
    sched.close()


def test_refuse_filter_hides_only_subsets(cluster):
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    sched.launch(offer, [command_task("short", offer, "sleep 0.5", cpus=1)], refuse=3600)
    for _ in range(3):
        sched.ack(sched.update("short"))
    # The task's resources are freed: the whole agent (larger than the refused rest) is offered again.
    again = sched.offers(timeout=5)[0]
    assert {r["name"]: r.get("scalar", {}).get("value") for r in again["resources"]}["cpus"] == 2.0
    sched.close()


def start_sleeper(sched, task_id):
    """Launch a long command task on the first offer; acknowledge STARTING and RUNNING."""
    offer = sched.offers()[0]
    sched.launch(offer, [command_task(task_id, offer, "sleep 100")])
    sched.ack(sched.update(task_id))
    running = sched.update(task_id)
    assert running["state"] == "TASK_RUNNING"
    sched.ack(running)
    return offer, running


def test_kill_command_task_and_unknown_task(cluster):
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    _offer, running = start_sleeper(sched, "sleep-1")
    pid = running["container_status"]["executor_pid"]
    assert sched.call("KILL", {"task_id": {"value": "sleep-1"}}) == (202, "")
    killed = sched.update("sleep-1")
    assert killed["state"] == "TASK_KILLED" and killed["message"] == "Command terminated with signal Terminated"
    assert killed["executor_id"] == {"value": "sleep-1"}
    sched.ack(killed)
    assert sched.call("KILL", {"task_id": {"value": "never-launched-2"}}) == (202, "")
    lost = sched.update("never-launched-2")
    assert lost["state"] == "TASK_LOST" and lost["message"] == "Reconciliation: Task is unknown"
    assert lost["reason"] == "REASON_RECONCILIATION" and "agent_id" not in lost and "uuid" not in lost
    wait_for(lambda: not session_alive(cluster, pid))
    sched.close()


def test_reconciliation_implicit_explicit_unknown(cluster):
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer, _running = start_sleeper(sched, "sleep-1")
    assert sched.call("RECONCILE", {"tasks": []}) == (202, "")
    status = sched.update("sleep-1")
    assert status["state"] == "TASK_RUNNING" and status["message"] == "Reconciliation: Latest task state"
    assert status["source"] == "SOURCE_MASTER" and status["reason"] == "REASON_RECONCILIATION"
    assert "uuid" not in status and status["agent_id"] == offer["agent_id"]
    assert sched.call("RECONCILE", {"tasks": [{"task_id": {"value": "sleep-1"}},
                                              {"task_id": {"value": "never-launched"}}]}) == (202, "")
    assert sched.update("sleep-1")["state"] == "TASK_RUNNING"
    unknown = sched.update("never-launched")
    assert unknown["state"] == "TASK_LOST" and unknown["message"] == "Reconciliation: Task is unknown"
    assert "agent_id" not in unknown
    sched.close()


def test_authentication(make_cluster):
    cluster = make_cluster(credentials={"principal": "secret"})
    address = cluster.master_address
    call = {"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "u", "name": "n"}}}
    assert post(address, call)[0] == 401
    assert post(address, call, basic("principal", "wrong"))[0] == 401
    assert post(address, call, basic("other", "secret"))[0] == 401
    sched = Scheduler(address, headers=basic("principal", "secret"), extra_info={"principal": "principal"})
    assert sched.status == 200
    sched.next("SUBSCRIBED")
    assert sched.call("REVIVE") == (202, "")
    assert sched.call("REVIVE", headers={"Authorization": ""})[0] == 401
    sched.close()


def test_state_endpoint(cluster):
    sched = Scheduler(cluster.master_address, name="stateful")
    sched.next("SUBSCRIBED")
    sched.offers()
    for path in ("/master/state", "/state"):
        state = json.loads(urllib.request.urlopen(f"http://{cluster.master_address}{path}", timeout=5).read())
        assert {"frameworks", "slaves", "completed_frameworks", "version", "leader_info"} <= set(state)
        agent = state["slaves"][0]
        assert agent["attributes"] == {"zone": "a", "price": 1.5}
        assert agent["resources"]["cpus"] == 2.0 and agent["resources"]["ports"] == "[31000-32000]"
        assert agent["offered_resources"]["cpus"] == 2.0 and agent["used_resources"]["cpus"] == 0.0
        assert state["frameworks"][0]["name"] == "stateful" and state["frameworks"][0]["active"]
    sched.close()


def test_calls_of_a_disconnected_framework_are_forbidden(cluster):
    sched = Scheduler(cluster.master_address, failover_timeout=60)
    sched.next("SUBSCRIBED")
    sched.close()
    wait_for(lambda: not cluster.state()["frameworks"][0]["connected"])
    assert sched.call("REVIVE") == (403, "Framework is not subscribed")


def test_offer_timeout_rescinds(make_cluster):
    cluster = make_cluster(offer_timeout=0.3)
    sched = Scheduler(cluster.master_address)
    sched.next("SUBSCRIBED")
    offer = sched.offers()[0]
    rescind = sched.next("RESCIND")["rescind"]
    assert rescind == {"offer_id": offer["id"]}
    assert sched.offers()[0]["id"] != offer["id"]
    sched.close()


def test_gpu_agents_and_two_frameworks(make_cluster):
    from framework.localmesos import AgentSpec
    cluster = make_cluster(agents=[
        AgentSpec(hostname="cpu-1", resources={"cpus": 1, "mem": 1024}),
        AgentSpec(hostname="gpu-1", resources={"cpus": 1, "mem": 1024, "gpus": 1}, attributes={"zone": "b"})])
    plain = Scheduler(cluster.master_address, name="plain")
    plain.next("SUBSCRIBED")
    offers = plain.offers()
    assert [o["hostname"] for o in offers] == ["cpu-1"]
    plain.none("OFFERS", 0.4)
    gpu = Scheduler(cluster.master_address, name="gpu", extra_info={"capabilities": [{"type": "GPU_RESOURCES"}]})
    gpu.next("SUBSCRIBED")
    gpu_offer = gpu.offers()[0]
    assert gpu_offer["hostname"] == "gpu-1"
    # (scalars only: the agent also offers Mesos' default ports, a RANGES item)
    assert {r["name"]: r["scalar"]["value"] for r in gpu_offer["resources"] if "scalar" in r}["gpus"] == 1.0
    # Resources declined by one framework go to the other one.
    assert plain.call("DECLINE", {"offer_ids": [offers[0]["id"]], "filters": {"refuse_seconds": 60}}) == (202, "")
    assert gpu.offers()[0]["hostname"] == "cpu-1"
    plain.close()
    gpu.close()
