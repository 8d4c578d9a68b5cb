"""Checks of the Vagrant test cluster in vagrant/ that can run without Vagrant or a hypervisor.

The cluster itself cannot run here (no VirtualBox, no network to the AVENTER repository), so
these tests cover what can break silently: shell and Ruby syntax, the MESOS_* environment files
provision.sh writes, its /etc/hosts clean-up, that it installs exactly requirements.lock, and
that the job file run-demo.sh writes passes the project's own job-file parser.

No test connects anywhere. The Vagrantfile is parsed by Ruby itself (``ruby -c``) and evaluated
against a recording stand-in for Vagrant's configuration API (no Vagrant, no VM, no network), so
the topology is checked from the values Vagrant would see, not from the file's formatting; both
skip cleanly where ruby is not installed. run-demo.sh is only syntax-checked and read.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from framework.demo import train_demo
from framework.jobspec import load_job

ROOT = Path(__file__).resolve().parent.parent
VAGRANT = ROOT / "vagrant"
PROVISION = VAGRANT / "provision.sh"
RUN_DEMO = VAGRANT / "run-demo.sh"
MAKE_JOB = VAGRANT / "make_job.py"
VAGRANTFILE = VAGRANT / "Vagrantfile"
LOCK = ROOT / "requirements.lock"
SHELL_SCRIPTS = [PROVISION, RUN_DEMO]

# Documentation addresses (RFC 5737), never contacted: stand-ins for the cluster's addresses.
MASTER_DOC_IP, AGENT_DOC_IP = "192.0.2.10", "192.0.2.11"


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = (part.strip() for part in line.split("==", 1))
            pins[name.lower().replace("_", "-")] = version
    return pins


def shell_assignment(text: str, name: str) -> str:
    """The literal value of a top-level ``NAME=value`` line in a shell script."""
    match = re.search(rf"^{name}=(\S+)", text, re.MULTILINE)
    assert match, f"no {name}= line"
    return match.group(1)


def source_provision(snippet: str) -> str:
    """Run ``snippet`` in bash after sourcing provision.sh (which then only defines functions)."""
    result = subprocess.run(
        ["bash", "-c", f'source "$1"; ROLE=test; {snippet}', "bash", str(PROVISION)],
        capture_output=True, text=True, timeout=20,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=value lines as both systemd's EnvironmentFile= and bash read them (one shell word)."""
    values = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, raw = line.partition("=")
        assert re.fullmatch(r"MESOS_[A-Z_]+", key), line
        words = shlex.split(raw)
        assert len(words) == 1, f"{line!r} is not a single word"
        values[key] = words[0]
    return values


# --- syntax ------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse_and_are_executable(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)
    assert script.stat().st_mode & 0o111, f"{script.name} must be executable (vagrant ssh -c runs it)"
    assert b"\r\n" not in script.read_bytes()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck() -> None:
    result = subprocess.run(["shellcheck", "-S", "warning", *map(str, SHELL_SCRIPTS)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby not installed")
def test_vagrantfile_ruby_syntax() -> None:
    result = subprocess.run(["ruby", "-c", str(VAGRANTFILE)], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr


# --- Vagrantfile (evaluated against a recording stand-in for Vagrant) -----------------------------

# Loads the Vagrantfile with a fake ``Vagrant`` module whose config objects record every setting
# and call, then prints them as JSON: ``x.y = v`` -> {"y": v}; ``x.y`` -> nested object;
# ``x.f(args, key: v) do |c| ... end`` -> {"f()": [{"args", "options", "body"}]}.
RECORDING_VAGRANT = r"""
require "json"
class Recorder
  def initialize(data) @data = data end
  def respond_to_missing?(*) true end
  def method_missing(name, *args, **options, &block)
    key = name.to_s
    if key.end_with?("=")
      @data[key.chomp("=")] = args[0]
      return args[0]
    end
    if args.empty? && options.empty? && block.nil?
      @data[key] ||= {}
      return Recorder.new(@data[key])
    end
    body = {}
    (@data["#{key}()"] ||= []) << { "args" => args, "options" => options, "body" => body }
    block.call(Recorder.new(body)) if block
    Recorder.new(body)
  end
end
module Vagrant
  def self.require_version(*requirements) $required = requirements end
  def self.configure(version)
    config = {}
    yield Recorder.new(config)
    $configured = { "version" => version, "required" => $required, "config" => config }
  end
end
load ARGV[0]
puts JSON.generate($configured)
"""


@pytest.fixture(scope="module")
def vagrant_config() -> dict:
    if shutil.which("ruby") is None:
        pytest.skip("ruby not installed")
    result = subprocess.run(["ruby", "-e", RECORDING_VAGRANT, str(VAGRANTFILE)], capture_output=True, text=True,
                            timeout=30, cwd=VAGRANT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_vagrantfile_topology(vagrant_config: dict) -> None:
    assert vagrant_config["version"] == "2"
    vm = vagrant_config["config"]["vm"]
    assert vm["box"].startswith("bento/ubuntu-22.04")  # jammy: the aventer-mesos 1.11 deb is built for it
    assert [f["args"] for f in vm["synced_folder()"]] == [["..", "/vagrant"]], "repo root must be /vagrant"
    [provider] = vm["provider()"]
    assert provider["args"] == ["virtualbox"]
    assert provider["body"]["cpus"] == 2 and provider["body"]["memory"] == 2048
    nodes = []
    for define in vm["define()"]:
        machine = define["body"]["vm"]
        [network] = machine["network()"]
        [provision] = machine["provision()"]
        assert network["args"] == ["private_network"] and provision["args"] == ["shell"]
        assert provision["options"]["path"] == "provision.sh"
        assert machine["hostname"] == define["args"][0]
        nodes.append({"name": define["args"][0], "ip": network["options"]["ip"],
                      "primary": define["options"].get("primary", False), "provision": provision["options"]["args"]})
    assert [(n["name"], n["primary"]) for n in nodes] == [("master", True), ("agent1", False), ("agent2", False)]
    ips = {n["name"]: n["ip"] for n in nodes}
    # VirtualBox >= 6.1.28's default host-only range, as the README states it.
    stated = re.search(r"\*\*(\d+\.\d+\.\d+\.\d+/\d+)\*\*", (VAGRANT / "README.md").read_text())
    assert stated, "README.md must state the host-only range in bold"
    host_only = ipaddress.ip_network(stated.group(1))
    assert all(ipaddress.ip_address(ip) in host_only for ip in ips.values()), ips
    assert len(set(ips.values())) == 3
    # The provisioner's arguments, in provision.sh's order: ROLE OWN_IP MASTER_IP HOSTS [ATTRIBUTES].
    hosts = ",".join(f"{name}={ip}" for name, ip in ips.items())
    for node in nodes:
        role, own_ip, master_ip, hosts_arg, attributes = node["provision"]
        assert role == ("master" if node["name"] == "master" else "agent")
        assert own_ip == node["ip"] and master_ip == ips["master"] and hosts_arg == hosts
        assert (attributes == "") == (role == "master")
    assert "provision.sh master OWN_IP MASTER_IP HOSTS" in PROVISION.read_text()
    prices = {n["name"]: dict(kv.split(":", 1) for kv in n["provision"][4].split(";"))["price"]
              for n in nodes if n["name"] != "master"}
    assert len(set(prices.values())) == 2, "agents need different prices for the cost-aware packer"


# --- provision.sh --------------------------------------------------------------------------------

def test_provision_installs_exactly_requirements_lock() -> None:
    text = PROVISION.read_text()
    # The venv is built from the repository's own lock file and http-parser script ...
    assert re.search(r'pip" install -q --require-hashes -r "\$REPO/requirements\.lock"', text)
    assert 'wheel=$(bash "$REPO/scripts/build-http-parser.sh" "$PY" "$wheelhouse")' in text
    assert re.search(r'pip" install -q --no-deps --force-reinstall "\$stage"', text), "project with --no-deps"
    # ... and pins nothing that disagrees with it (a version copied by hand would go stale).
    pins = lock_pins()
    for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][\w.]*)", text):
        key = name.lower().replace("_", "-")
        if key in pins:
            assert version == pins[key], f"provision.sh pins {name}=={version}, requirements.lock has {pins[key]}"
    for name in ("scikit-learn", "numpy", "scipy", "joblib", "pymesos"):
        assert pins[name] not in text, f"provision.sh hard-codes {name}'s version; read requirements.lock"
    # The http-parser wheel it installs is the one scripts/build-http-parser.sh builds (it prints its path).
    assert '"$VENV/bin/pip" install -q --no-deps "$wheel"' in text
    # requires-python >= 3.11 (tomllib; the pinned numpy/scipy have no 3.10 wheels): not jammy's python3.
    assert shell_assignment(text, "PY") == "python3.11"


def test_provision_checks_the_venv_against_the_lock() -> None:
    text = PROVISION.read_text()
    assert '(cd / && "$VENV/bin/python" - "$REPO/requirements.lock") <<\'PY\'' in text
    assert "md.version(name) != version" in text


def test_agent_env_file() -> None:
    out = source_provision(f'agent_env {AGENT_DOC_IP} {MASTER_DOC_IP} "zone:a;price:1.0" 2 1536')
    env = parse_env_file(out)
    assert env["MESOS_MASTER"] == f"{MASTER_DOC_IP}:5050"
    assert env["MESOS_IP"] == env["MESOS_HOSTNAME"] == AGENT_DOC_IP
    assert env["MESOS_HOSTNAME_LOOKUP"] == "false"
    assert env["MESOS_LAUNCHER"] == "posix"
    assert env["MESOS_ISOLATION"] == "posix/cpu,posix/mem"
    assert env["MESOS_CONTAINERIZERS"] == "mesos"
    assert env["MESOS_SYSTEMD_ENABLE_SUPPORT"] == "false"
    assert env["MESOS_WORK_DIR"].startswith("/var/lib/mesos/")
    assert env["MESOS_RESOURCES"] == "cpus:2;mem:1536;disk:4096;ports:[31000-32000]"
    assert env["MESOS_ATTRIBUTES"] == "zone:a;price:1.0"
    assert re.fullmatch(r"\d+(mins|secs)", env["MESOS_EXECUTOR_REGISTRATION_TIMEOUT"])
    # The executor's PATH starts with the venv that run-demo.sh names as executor_python.
    path = json.loads(env["MESOS_EXECUTOR_ENVIRONMENT_VARIABLES"])["PATH"]
    provision = PROVISION.read_text()
    venv = shell_assignment(provision, "VENV").replace("$PREFIX", shell_assignment(provision, "PREFIX"))
    assert path.split(":")[0] == f"{venv}/bin"
    assert shell_assignment(RUN_DEMO.read_text(), "VENV") == venv


def test_agent_env_file_without_attributes() -> None:
    env = parse_env_file(source_provision(f'agent_env {AGENT_DOC_IP} {MASTER_DOC_IP} "" 2 1536'))
    assert "MESOS_ATTRIBUTES" not in env


def test_master_env_file() -> None:
    env = parse_env_file(source_provision(f"master_env {MASTER_DOC_IP}"))
    assert env["MESOS_IP"] == env["MESOS_HOSTNAME"] == MASTER_DOC_IP
    assert env["MESOS_REGISTRY"] == "in_memory"
    assert env["MESOS_HOSTNAME_LOOKUP"] == "false"
    assert "MESOS_ZK" not in env and "MESOS_QUORUM" not in env


def test_hosts_file_cleanup_is_idempotent(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n127.0.1.1\tmaster\tmaster\n127.0.2.1 agent1 agent1\n"
                     "::1 localhost ip6-localhost\n203.0.113.7 elsewhere\n")
    nodes = f"master={MASTER_DOC_IP},agent1={AGENT_DOC_IP},agent2=192.0.2.12"
    snippet = f'HOSTS_FILE="$2"; HOSTS="{nodes}"; setup_hosts; cp "$2" "$2.first"; setup_hosts'
    result = subprocess.run(["bash", "-c", f'source "$1"; ROLE=test; {snippet}', "bash", str(PROVISION), str(hosts)],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    text = hosts.read_text()
    assert text == (tmp_path / "hosts.first").read_text(), "a second run must not change /etc/hosts"
    assert "127.0.1.1" not in text and "127.0.2.1" not in text
    assert "127.0.0.1 localhost" in text and "203.0.113.7 elsewhere" in text
    assert f"{MASTER_DOC_IP} master\n{AGENT_DOC_IP} agent1\n192.0.2.12 agent2\n" in text


# --- the job file run-demo.sh writes -------------------------------------------------------------

def run_demo_make_job_flags() -> list[str]:
    """The make_job.py flags run-demo.sh passes (checked statically: run-demo.sh is not run here)."""
    text = RUN_DEMO.read_text()
    call = re.search(r'"\$HERE/make_job\.py" "\$OUT/job\.toml" "\$OUT/cluster-job\.toml" \\\n'
                     r'((?:\s+--[^\n]*\n)+)', text)
    assert call, "run-demo.sh must call make_job.py on train-demo's job.toml"
    return re.findall(r"(--[a-z-]+)", call.group(1))


def test_run_demo_sets_every_framework_field() -> None:
    assert run_demo_make_job_flags() == ["--master", "--user", "--executor-python", "--artifact-host",
                                         "--artifact-port"]
    text = RUN_DEMO.read_text()
    assert '"$VENV/bin/mesos-ensemble" train-demo "$OUT"' in text
    assert '"$VENV/bin/mesos-ensemble" run "$OUT/cluster-job.toml"' in text
    assert "FRAMEWORK_USER=${FRAMEWORK_USER:-vagrant}" in text
    assert "MASTER=$MASTER_IP:5050" in text


def test_generated_job_file_passes_load_job(tmp_path: Path) -> None:
    train_demo(tmp_path)
    venv_python = "/opt/mesos-ensemble/venv/bin/python"
    result = subprocess.run(
        [sys.executable, str(MAKE_JOB), str(tmp_path / "job.toml"), str(tmp_path / "cluster-job.toml"),
         "--master", f"{MASTER_DOC_IP}:5050", "--user", "vagrant", "--executor-python", venv_python,
         "--artifact-host", MASTER_DOC_IP, "--artifact-port", "8000"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    spec = load_job(tmp_path / "cluster-job.toml")
    demo = load_job(tmp_path / "job.toml")
    assert spec.framework.master == f"{MASTER_DOC_IP}:5050"
    assert spec.framework.user == "vagrant"
    assert spec.framework.executor_python == venv_python
    assert spec.framework.artifact_host == MASTER_DOC_IP
    assert spec.framework.artifact_port == 8000
    assert spec.framework.name == demo.framework.name  # untouched framework keys survive
    assert spec.models == demo.models and spec.data == demo.data and spec.output == demo.output


def _make_job_module():
    spec = importlib.util.spec_from_file_location("vagrant_make_job", MAKE_JOB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_job_text_edge_cases() -> None:
    make_job = _make_job_module()
    settings = {"master": "m.invalid:5050", "user": 'o"dd\\user', "artifact_port": 8000}
    # No [framework] table yet; a table after [framework] must survive.
    text = make_job.cluster_job_text('[job]\nname = "x"\n', settings)
    assert 'user = "o\\"dd\\\\user"' in text
    text = make_job.cluster_job_text(
        '[job]\nname = "x"\n[framework] # old\nmaster = "local"\nname = "n"\n[[models]]\nname = "a"\n', settings)
    assert "local" not in text and 'name = "n"' in text and "[[models]]" in text
    # A top-level dotted key cannot be rewritten safely: refuse instead of producing a broken file.
    with pytest.raises(ValueError):
        make_job.cluster_job_text('framework.master = "local"\n[job]\nname = "x"\n', settings)


def test_make_job_refuses_a_destination_in_another_directory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "job.toml").write_text("[job]\n")
    code = _make_job_module().main([str(tmp_path / "job.toml"), str(tmp_path / "sub" / "x.toml"),
                                    "--master", "m.invalid:5050", "--user", "u", "--executor-python", "/p",
                                    "--artifact-host", "m.invalid", "--no-validate"])
    assert code == 2
