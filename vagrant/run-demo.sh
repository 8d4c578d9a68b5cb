#!/usr/bin/env bash
# Run the founding example (breast-cancer LinearRegression + LogisticRegression, averaged) on
# the Vagrant Mesos cluster.  Run it on the master VM, from the host:
#
#   vagrant ssh master -c /vagrant/vagrant/run-demo.sh            # output in ~/mesos-ensemble-demo
#   vagrant ssh master -c '/vagrant/vagrant/run-demo.sh /vagrant/build/vagrant-demo'   # visible on the host
#
# Steps: check the master and its agents, `mesos-ensemble train-demo OUTDIR`, write
# OUTDIR/cluster-job.toml (the demo's job.toml with [framework] pointing at the real master,
# see make_job.py), then `mesos-ensemble run` it.  The framework runs here, on the master VM,
# and serves models, shards and the executor package to the agents' fetchers from
# http://$ARTIFACT_HOST:$ARTIFACT_PORT.
set -euo pipefail

MASTER_IP=${MASTER_IP:-192.168.56.10}
MASTER=$MASTER_IP:5050
ARTIFACT_HOST=${ARTIFACT_HOST:-$MASTER_IP}      # must be an address of this VM the agents can reach
ARTIFACT_PORT=${ARTIFACT_PORT:-8000}
FRAMEWORK_USER=${FRAMEWORK_USER:-vagrant}       # exists on every agent (tasks run as this user)
VENV=/opt/mesos-ensemble/venv                   # built by provision.sh on every node
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HOME/mesos-ensemble-demo}

say() { printf '==> %s\n' "$*"; }
die() { printf 'run-demo: error: %s\n' "$*" >&2; exit 1; }

[[ -x $VENV/bin/mesos-ensemble ]] || die "$VENV has no mesos-ensemble; provision this VM first (vagrant provision master)"
ip -4 -o addr show | grep -qF "inet $ARTIFACT_HOST/" \
    || die "$ARTIFACT_HOST is not an address of this machine; run this on the master VM (vagrant ssh master)"

say "checking the Mesos master at $MASTER"
state=$(curl -fsS --max-time 5 "http://$MASTER/master/state") \
    || die "no answer from http://$MASTER/master/state; is mesos-master running? (sudo journalctl -u mesos-master)"
agents=$("$VENV/bin/python" -c '
import json, sys
print(sum(1 for s in json.load(sys.stdin).get("slaves", []) if s.get("active", True)))' <<<"$state")
[[ $agents -ge 1 ]] || die "the master has no active agents; provision them (vagrant up agent1 agent2)"
[[ $agents -ge 2 ]] || say "warning: only $agents agent(s) registered; the demo still runs"
say "$agents agent(s) registered"

say "training the demo models into $OUT"
mkdir -p "$OUT"
"$VENV/bin/mesos-ensemble" train-demo "$OUT"

say "writing $OUT/cluster-job.toml"
"$VENV/bin/python" "$HERE/make_job.py" "$OUT/job.toml" "$OUT/cluster-job.toml" \
    --master "$MASTER" \
    --user "$FRAMEWORK_USER" \
    --executor-python "$VENV/bin/python" \
    --artifact-host "$ARTIFACT_HOST" \
    --artifact-port "$ARTIFACT_PORT"

work=$OUT/work   # shards and uploaded results, kept for inspection
rm -rf "$work"
say "running the job on $MASTER (framework UI: http://$MASTER/#/frameworks)"
"$VENV/bin/mesos-ensemble" run "$OUT/cluster-job.toml" --work-dir "$work"

cat <<EOF
==> done.  On the master VM:
    predictions:  $OUT/predictions.csv
    report:       $OUT/report.json
    job file:     $OUT/cluster-job.toml
    work dir:     $work
    Task sandboxes (executor stdout/stderr) are on the agents under /var/lib/mesos/agent/slaves/,
    and in the master UI: http://$MASTER/ -> Frameworks -> the completed framework -> Sandbox.
EOF
