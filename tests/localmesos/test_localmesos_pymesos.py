"""The unmodified pymesos drivers against the embedded cluster."""
from __future__ import annotations

import queue
import sys
from pathlib import Path

from addict import Dict
from pymesos import MesosSchedulerDriver, Scheduler, decode_data, encode_data  # main thread import

from localmesos_helpers import wait_for

EXECUTOR = Path(__file__).with_name("pymesos_executor.py")


class RecordingScheduler(Scheduler):
    """Launches one command task and one pymesos-executor task on the first offer."""

    def __init__(self) -> None:
        self.updates: "queue.Queue[Dict]" = queue.Queue()
        self.messages: "queue.Queue[bytes]" = queue.Queue()
        self.launched = False
        self.registered_id = None

    def registered(self, driver, framework_id, master_info):
        self.registered_id = framework_id["value"]

    def resourceOffers(self, driver, offers):
        for offer in offers:
            if self.launched:
                driver.declineOffer(offer.id, {"refuse_seconds": 60})
                continue
            self.launched = True
            res = [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                   {"name": "mem", "type": "SCALAR", "scalar": {"value": 32}}]
            command = Dict(task_id={"value": "cmd"}, agent_id=offer.agent_id, name="cmd", resources=res,
                           command={"value": "echo hello"})
            custom = Dict(task_id={"value": "py"}, agent_id=offer.agent_id, name="py", resources=res,
                          data=encode_data(b"input"),
                          executor={"executor_id": {"value": "py-exec"}, "name": "py-exec", "resources": res,
                                    "command": {"value": f"{sys.executable} pymesos_executor.py",
                                                "uris": [{"value": str(EXECUTOR), "extract": False}]}})
            driver.launchTasks(offer.id, [command, custom])

    def statusUpdate(self, driver, update):
        self.updates.put(update)

    def frameworkMessage(self, driver, executor_id, agent_id, message):
        self.messages.put(decode_data(message))


def test_pymesos_scheduler_and_executor_drivers(cluster):
    scheduler = RecordingScheduler()
    driver = MesosSchedulerDriver(scheduler, {"user": "tester", "name": "pymesos-test"},
                                  cluster.master_address, use_addict=True)
    driver.start()
    try:
        final = {}
        states: dict[str, list[str]] = {"cmd": [], "py": []}
        while len(final) < 2:
            update = scheduler.updates.get(timeout=20)
            task_id = update.task_id.value
            states[task_id].append(update.state)
            assert update.agent_id.value  # filled by the agent / master
            if update.state in ("TASK_FINISHED", "TASK_FAILED", "TASK_ERROR", "TASK_LOST", "TASK_KILLED"):
                final[task_id] = update
        assert states["cmd"] == ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
        assert states["py"] == ["TASK_RUNNING", "TASK_FINISHED"]
        assert decode_data(final["py"].data) == b"done:input"
        assert scheduler.registered_id == cluster.state()["frameworks"][0]["id"]
        # Framework messages both ways through the pymesos executor.
        driver.sendFrameworkMessage({"value": "py-exec"}, final["py"].agent_id, encode_data(b"hi"))
        assert scheduler.messages.get(timeout=10) == b"echo:hi"
        # Implicit acknowledgements let the master forget the finished tasks.
        wait_for(lambda: not cluster.state()["frameworks"][0]["tasks"], timeout=10)
        # The command executor exits with its task; the pymesos executor lives on until the framework goes away.
        wait_for(lambda: len(cluster.executor_pids()) == 1, timeout=10)
        assert cluster.state()["frameworks"][0]["executors"][0]["executor_id"] == "py-exec"
    finally:
        driver.stop()  # failover=False -> TEARDOWN -> SHUTDOWN to the executor
        driver.join()
    wait_for(lambda: not cluster.executor_pids(), timeout=10)
    assert cluster.state()["completed_frameworks"]


class RegisterOnly(Scheduler):
    def __init__(self) -> None:
        self.registered_event = queue.Queue()
        self.offers: "queue.Queue[list]" = queue.Queue()

    def registered(self, driver, framework_id, master_info):
        self.registered_event.put(framework_id["value"])

    def resourceOffers(self, driver, offers):
        self.offers.put(offers)
        driver.declineOffer([o.id for o in offers], {"refuse_seconds": 60})


def test_pymesos_driver_with_credentials(make_cluster):
    cluster = make_cluster(credentials={"principal": "secret"})
    scheduler = RegisterOnly()
    driver = MesosSchedulerDriver(scheduler, {"user": "tester", "name": "auth", "principal": "principal"},
                                  cluster.master_address, use_addict=True, principal="principal", secret="secret")
    driver.start()
    try:
        framework_id = scheduler.registered_event.get(timeout=10)
        offers = scheduler.offers.get(timeout=10)
        assert offers[0].attributes[0].text.value == "a"
        assert cluster.state()["frameworks"][0]["id"] == framework_id
    finally:
        driver.stop()
        driver.join()
    wait_for(lambda: cluster.state()["completed_frameworks"], timeout=5)


def test_generated_credentials_admit_only_the_driver_holding_them(tmp_path):
    from framework.localmesos import LocalCluster

    from localmesos_helpers import Scheduler as RawScheduler

    cluster, (principal, secret) = LocalCluster.with_generated_credentials(
        work_dir=tmp_path / "cluster", allocation_interval=0.1)
    assert cluster.credentials == {principal: secret} and len(secret) >= 40
    with cluster:
        intruder = RawScheduler(cluster.master_address, name="intruder")
        assert intruder.status == 401
        scheduler = RecordingScheduler()
        driver = MesosSchedulerDriver(scheduler, {"user": "tester", "name": "authenticated"},
                                      cluster.master_address, use_addict=True, principal=principal, secret=secret)
        driver.start()
        try:
            update = scheduler.updates.get(timeout=30)  # it got an offer and launched
            assert update.state in ("TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"), update
            assert scheduler.registered_id is not None
        finally:
            driver.stop()
            driver.join()
