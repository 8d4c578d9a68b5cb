"""``mesos-ensemble plan`` through the real command line: hand-written Mesos offer JSON, a real
embedded master's ``/master/state`` (with authentication), and the job's own local agents."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness import run_cli
from framework.demo import train_demo
from framework.localmesos import AgentSpec, LocalCluster
from framework.plan import offers_from_state

pytestmark = pytest.mark.timeout(240)

REAL_MESOS = Path("/work/shared/reference/real-mesos/mesos-1.11.1-transcript.json")


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, columns=200)


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("plan-demo")
    train_demo(directory)
    return directory


def job_with(demo: Path, extra_models: str = "", settings: str = "", linear: str = "") -> Path:
    """The demo job (4 shards per model, tasks of 0.5 cpus and 128 MB) with extra lines."""
    text = (demo / "job.toml").read_text()
    text = text.replace('name = "linear"\n', f'name = "linear"\n{linear}', 1)
    text = text.replace("[framework]\n", f"{extra_models}\n[framework]\n{settings}", 1)
    job = demo / f"job-{abs(hash((extra_models, settings, linear)))}.toml"
    job.write_text(text)
    return job


def offer(offer_id: str, agent: str, cpus: float, mem: float, **attributes: Any) -> dict[str, Any]:
    """A Mesos v1 Offer as the master sends it in an OFFERS event."""
    attrs = [{"name": k, "type": "SCALAR", "scalar": {"value": v}} if isinstance(v, float)
             else {"name": k, "type": "TEXT", "text": {"value": v}} for k, v in attributes.items()]
    return {"id": {"value": offer_id}, "framework_id": {"value": "F-0000"}, "agent_id": {"value": agent},
            "hostname": f"{agent}.example",
            "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}, "role": "*"},
                          {"name": "mem", "type": "SCALAR", "scalar": {"value": mem}, "role": "*"},
                          {"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 31000, "end": 32000}]},
                           "role": "*"}],
            "attributes": attrs}


HUGE = """
[[models]]
name = "huge"
path = "linear.joblib"
sha256 = "{sha}"
kind = "regressor"
mem = 100000
"""


def test_plan_on_offer_json(demo_template: Path) -> None:
    """linear may only run in zone a; a1 (zone a) has room for exactly its 4 tasks beside the shared
    executor, b1 for logistic's 4; the tiny agent holds not even the executor; 'huge' fits nowhere."""
    sha = [line.split('"')[1] for line in (demo_template / "job.toml").read_text().splitlines()
           if line.startswith("sha256")][0]
    job = job_with(demo_template, HUGE.format(sha=sha), linear='constraints = { attribute = { zone = "a" } }\n')
    event = {"type": "OFFERS", "offers": {"offers": [
        offer("o1", "a1", 2.1, 2048.0, zone="a", price=2.0),
        offer("o2", "b1", 2.1, 2048.0, zone="b", price=1.5),
        offer("o3", "c1", 0.3, 64.0, zone="b", price=0.1),
    ]}}
    offers = demo_template / "offers.json"
    offers.write_text(json.dumps(event))
    result = cli("plan", job, "--offers", offers, "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    agents = {a["agent_id"]: a for a in plan["agents"]}
    assert agents["a1"]["tasks"] == {"linear": [f"linear.s{i:05d}.a1" for i in range(4)]}
    assert agents["b1"]["tasks"] == {"logistic": [f"logistic.s{i:05d}.a1" for i in range(4)]}
    assert agents["a1"]["executors"] == agents["b1"]["executors"] == ["ensemble.g0"]
    assert agents["c1"]["tasks"] == {} and agents["c1"]["declined"] == "unneeded"
    # 4 x (0.5 - 0.01) + the shared executor's 0.01: its share is carved out of its tasks' cpus
    assert agents["a1"]["used"]["cpus"] == pytest.approx(1.97)
    assert plan["cost"] == pytest.approx(3.5)  # the prices of a1 and b1
    assert 0 < plan["lower_bound"] <= plan["cost"]
    assert plan["gap"] == pytest.approx((plan["cost"] - plan["lower_bound"]) / plan["cost"])
    assert (plan["tasks"], plan["placed_first_round"], plan["waiting"]) == (12, 8, 4)
    models = {m["name"]: m for m in plan["models"]}
    assert models["linear"]["agents"] == {"a1.example": 4} and models["linear"]["waiting_reason"] is None
    assert models["huge"]["placed"] == 0
    assert models["huge"]["waiting_reason"] == ("never fits: models[2] (huge).mem = 100000 MB per task, but the "
                                                "largest agent offers 2048 MB (1919.99 MB after the shared executor "
                                                "and a prediction worker)")
    assert any("c1.example" in w and "shared executor" in w for w in plan["warnings"]), plan["warnings"]

    table = cli("plan", job, "--offers", offers)
    assert table.returncode == 0, table.stderr
    assert "a1.example (a1)" in table.stdout and "linear x4" in table.stdout and "logistic x4" in table.stdout
    assert "cost 3.500" in table.stdout and "never runs: models[2] (huge).mem" in table.stdout


def test_scarce_offers_say_which_resource_ran_out(demo_template: Path) -> None:
    offers = demo_template / "scarce.json"
    offers.write_text(json.dumps([offer("o1", "a1", 8.0, 500.0), offer("o2", "a2", 8.0, 500.0)]))
    result = cli("plan", demo_template / "job.toml", "--offers", offers, "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    # 500 MB less the shared executor's ~96 MB holds 2 tasks of 128 MB (+ 32 MB for the prediction
    # worker each may run in) per agent: 4 of the 8 wait.
    assert [len(sum(a["tasks"].values(), [])) for a in plan["agents"]] == [2, 2] and plan["waiting"] == 4
    waiting = [m for m in plan["models"] if m["waiting"]]
    assert waiting and all(m["waiting_reason"].startswith("mem exhausted on 2 agents") for m in waiting), waiting


def test_bad_offers_are_refused_in_one_line(demo_template: Path) -> None:
    bad = demo_template / "bad.json"
    bad.write_text('[{"id": {"value": "o1"}, "hostname": "h"}]')
    result = cli("plan", demo_template / "job.toml", "--offers", bad)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (f"mesos-ensemble: error: {bad}: offers[0] is not a Mesos v1 Offer (id, "
                                     "agent_id, hostname, resources): missing 'agent_id'")
    bad.write_text(json.dumps([offer("o1", "a1", 2.0, 2048.0, price=-1.0)]))
    result = cli("plan", demo_template / "job.toml", "--offers", bad)
    assert result.returncode == 2 and result.stderr.strip() == (
        f"mesos-ensemble: error: {bad}: invalid price -1.0 from attribute price for 'a1.example'")
    bad.write_text("{not json")
    result = cli("plan", demo_template / "job.toml", "--offers", bad)
    assert result.returncode == 2 and f"{bad}: not valid JSON" in result.stderr


def test_plan_on_the_jobs_local_agents(demo_template: Path) -> None:
    """No flags: the job's embedded-cluster agents (two of 2 cpus): 4 tasks of 0.5 cpus each, as
    a user counts (the executor's 0.01 cpus are carved out of its tasks' share)."""
    result = cli("plan", demo_template / "job.toml", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["agents_from"] == "job.toml [local_cluster]"
    assert [(a["hostname"], len(sum(a["tasks"].values(), []))) for a in plan["agents"]] == [("agent-1", 4),
                                                                                             ("agent-2", 4)]
    assert plan["cost"] == pytest.approx(2.0) and plan["waiting"] == 0


def test_plan_against_a_running_master_with_authentication(demo_template: Path, tmp_path: Path) -> None:
    cluster = LocalCluster(agents=[AgentSpec("big", {"cpus": 8, "mem": 8192, "disk": 10000}, {"price": 3.0}),
                                   AgentSpec("small", {"cpus": 2.2, "mem": 2048, "disk": 10000}, {"price": 1.0})],
                           work_dir=tmp_path / "cluster", credentials={"planner": "s3cret-plan"}).start()
    try:
        secret = tmp_path / "secret"
        secret.write_text("s3cret-plan\n")
        refused = cli("plan", demo_template / "job.toml", "--master", cluster.master_address, "--json")
        assert refused.returncode == 2 and "HTTP 401" in refused.stderr and "--principal" in refused.stderr
        assert "s3cret" not in refused.stderr
        result = cli("plan", demo_template / "job.toml", "--master", cluster.master_address, "--principal", "planner",
                     "--secret-file", secret, "--json")
        assert result.returncode == 0, result.stderr
        plan = json.loads(result.stdout)
        assert plan["agents_from"] == f"master {cluster.master_address}"
        by_host = {a["hostname"]: a for a in plan["agents"]}
        assert by_host["big"]["offered"]["cpus"] == 8 and by_host["small"]["offered"]["mem"] == 2048
        # The cheapest plan: all 8 tasks (4 cpus) on "big" costs 3; "small" holds only 4 of them.
        assert by_host["big"]["price"] == 3.0 and by_host["small"]["price"] == 1.0
        assert plan["placed_first_round"] == 8 and plan["cost"] == pytest.approx(3.0)
        assert len(sum(by_host["big"]["tasks"].values(), [])) == 8 and by_host["small"]["tasks"] == {}
        # No flag: a job whose master is host:port is planned on that master, with the job's credentials.
        job = job_with(demo_template, settings=f'master = "{cluster.master_address}"\nprincipal = "planner"\n'
                                               f'secret_file = "{secret}"\n')
        job.write_text(job.read_text().replace('master = "local"', "# master = local"))
        own = cli("plan", job, "--json")
        assert own.returncode == 0, own.stderr
        assert json.loads(own.stdout)["agents_from"] == f"master {cluster.master_address}"
        assert json.loads(own.stdout)["cost"] == pytest.approx(3.0)
    finally:
        cluster.stop()


def test_state_offers_are_resources_minus_used_on_a_real_mesos_agent_record() -> None:
    """The agent record a real Mesos 1.11.1 master sent, with some of it in use."""
    entries = json.loads(REAL_MESOS.read_text())
    agent = next(e for e in entries if e["kind"].startswith("GET /master/state"))["agent"]
    agent["used_resources"].update(cpus=0.5, mem=1024.0)
    [view] = offers_from_state({"slaves": [agent]})
    assert view.agent_id == agent["id"] and view.hostname == "127.0.0.1"
    assert dict((name, amount) for name, _role, amount in view.pools) == {"cpus": 1.5, "mem": 3072.0,
                                                                          "disk": 10000.0}
    assert view.attributes == {"zone": "a", "price": 1.5}
