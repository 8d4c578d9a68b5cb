"""``zk://`` masters end to end: a real ZooKeeper (Debian's ``zookeeper`` package, started by the
test on a free loopback port), the embedded cluster's master registered under ``/mesos`` the way
Mesos' leader election does it (ephemeral sequential ``json.info_`` znodes holding the MasterInfo
JSON; the smallest one leads), and a real job run through the CLI with the master given as
``zk://127.0.0.1:PORT/mesos``: pymesos' detector (kazoo) finds the leader, subscribes, and the job
runs.  ``.ci/run`` installs ZooKeeper and sets ``CI``, so there a
missing ZooKeeper fails rather than skips."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from kazoo.client import KazooClient

from framework.demo import train_demo
from framework.localmesos import AgentSpec, LocalCluster
from harness import skip_or_fail_without

pytestmark = pytest.mark.timeout(240)
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone ZooKeeper server on a loopback port; yields ``127.0.0.1:PORT``."""
    java = shutil.which("java")
    if java is None or not ZOOKEEPER_JAR.is_file():
        reason = "Debian's zookeeper package is not installed (apt-get install zookeeper; .ci/run does)"
        skip_or_fail_without(reason)
    data = tmp_path_factory.mktemp("zookeeper")
    for _attempt in range(5):  # the port is chosen free, but another process may take it first
        port = free_port()
        config = data / f"zoo-{port}.cfg"
        config.write_text(f"tickTime=500\ndataDir={data / str(port)}\nclientPort={port}\n"
                          "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n")
        server = subprocess.Popen(
            [java, "-Xmx128m", "-XX:+UseSerialGC", "-cp", str(ZOOKEEPER_JAR),
             "org.apache.zookeeper.server.ZooKeeperServerMain", str(config)],
            stdout=subprocess.DEVNULL, stderr=(data / f"{port}.log").open("w"), start_new_session=True)
        if answers(f"127.0.0.1:{port}", server):
            break
        server.kill()
        server.wait()
    else:
        pytest.fail(f"ZooKeeper did not start: {(data / f'{port}.log').read_text()[-2000:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def answers(hosts: str, server: subprocess.Popen[bytes], limit: float = 60.0) -> bool:
    """Whether the server accepts a ZooKeeper session before it exits (or the limit passes)."""
    deadline = time.monotonic() + limit
    while server.poll() is None and time.monotonic() < deadline:
        client = KazooClient(hosts=hosts)
        try:
            client.start(timeout=2)
            return True
        except Exception:  # noqa: BLE001 (not listening yet)
            continue
        finally:
            client.stop()
            client.close()
    return False


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The founding example, trained once for this module's tests (each copies it)."""
    return train_demo(tmp_path_factory.mktemp("zk-demo") / "demo")


@pytest.fixture
def job(demo_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(demo_template.parent, tmp_path / "demo")) / demo_template.name


def master_info(address: str) -> bytes:
    """The MasterInfo JSON a Mesos 1.11 master writes into its leader-election znode."""
    host, port = address.rsplit(":", 1)
    ip = int.from_bytes(socket.inet_aton(host), "little")
    return json.dumps({"id": str(uuid.uuid4()), "ip": ip, "port": int(port), "pid": f"master@{address}",
                       "hostname": host, "version": "1.11.0",
                       "address": {"hostname": host, "ip": host, "port": int(port)}}).encode()


def test_job_runs_on_the_master_zookeeper_elects(zookeeper: str, job: Path, tmp_path: Path) -> None:
    """Leader, a standby and the replicated log's node under /mesos; MESOS_MASTER=zk://.../mesos;
    the job runs on the leader (the embedded cluster), the standby (nobody listening) untouched."""
    cluster = LocalCluster(work_dir=tmp_path / "cluster", allocation_interval=0.1).start()
    election = KazooClient(hosts=zookeeper)
    election.start(timeout=30)
    try:
        election.ensure_path("/mesos/log_replicas")
        leader = election.create("/mesos/json.info_", master_info(cluster.master_address), ephemeral=True,
                                 sequence=True)
        standby = election.create("/mesos/json.info_", master_info(f"127.0.0.1:{free_port()}"), ephemeral=True,
                                  sequence=True)
        assert leader < standby  # the smallest sequence number leads, as in Mesos
        master = f"zk://{zookeeper}/mesos"
        result = subprocess.run([sys.executable, "-m", "framework.cli", "run", str(job), "--work-dir",
                                 str(tmp_path / "work")], capture_output=True, text=True, timeout=200,
                                env={**os.environ, "MESOS_MASTER": master, "PYTHONUNBUFFERED": "1"})
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert f"framework subscribed to {master}" in result.stderr  # a progress note
        with (job.parent / "predictions.csv").open() as handle:
            assert len(list(csv.reader(handle))) == 1 + 171  # header and the demo's held-out rows
        state = cluster.state()
        frameworks = state["frameworks"] + state["completed_frameworks"]
        assert [f["name"] for f in frameworks] == ["mesos-ensemble-demo"]
        # Its 8 items (2 members x 4 shards) ran on this cluster; small items travel in bundles, so
        # how many Mesos tasks carried them depends on timing (one per member at least).
        assert sum(len(f["completed_tasks"]) for f in frameworks) >= 2
    finally:
        election.stop()
        election.close()
        cluster.stop()


def test_plan_reads_the_state_of_the_master_zookeeper_elects(zookeeper: str, job: Path, tmp_path: Path) -> None:
    """plan --master zk://...: the leader's /master/state; no leader registered: one line, exit 2."""
    cluster = LocalCluster([AgentSpec(hostname="elected-agent")], work_dir=tmp_path / "cluster").start()
    election = KazooClient(hosts=zookeeper)
    election.start(timeout=30)
    try:
        election.create("/plan/json.info_", master_info(cluster.master_address), ephemeral=True, sequence=True,
                        makepath=True)
        master = f"zk://{zookeeper}/plan"
        result = subprocess.run([sys.executable, "-m", "framework.cli", "plan", str(job), "--master", master,
                                 "--json"], capture_output=True, text=True, timeout=200)
        assert result.returncode == 0, result.stderr
        plan = json.loads(result.stdout)
        assert plan["agents_from"] == f"master {master}"
        assert "elected-agent" in result.stdout  # the plan's agents are the elected master's
        empty = f"zk://{zookeeper}/nobody"
        missing = subprocess.run([sys.executable, "-m", "framework.cli", "plan", str(job), "--master", empty],
                                 capture_output=True, text=True, timeout=200)
        assert missing.returncode == 2 and missing.stdout == ""
        assert missing.stderr == (f"mesos-ensemble: error: --master {empty}: ZooKeeper has no /nobody (no Mesos "
                                  "master registered there)\n")
    finally:
        election.stop()
        election.close()
        cluster.stop()
