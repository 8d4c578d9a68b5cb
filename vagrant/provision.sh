#!/usr/bin/env bash
# Provision one VM of the mesos-ensemble Vagrant cluster (see README.md in this folder).
#
# Usage (as root; the Vagrantfile passes the arguments):
#   provision.sh master OWN_IP MASTER_IP HOSTS
#   provision.sh agent  OWN_IP MASTER_IP HOSTS [ATTRIBUTES]
#   provision.sh check  MASTER_IP [EXPECTED_AGENTS]       (any user: list the agents the master sees)
# HOSTS is "name=ip,name=ip,...", ATTRIBUTES a Mesos attribute string such as "zone:a;price:1.0".
#
# Idempotent: `vagrant provision` re-runs it; every step checks what is already there.
# What it sets up (the reasons are in README.md, "Troubleshooting"):
#   1. /etc/hosts with every node's host-only address and without the "127.0.1.1 <hostname>" line;
#   2. Apache Mesos 1.11 from AVENTER's aventer-mesos deb (the only maintained build in 2026);
#   3. Python 3.11 and a venv at /opt/mesos-ensemble/venv built from the repository's own
#      requirements.lock and scripts/build-http-parser.sh, plus the project itself;
#   4. mesos-master (master) or mesos-agent (agents) as systemd services configured through
#      MESOS_* variables in /etc/default/mesos-master or /etc/default/mesos-agent;
#   5. a smoke check: agents wait until the master lists them.
set -euo pipefail

HOSTS_FILE=/etc/hosts
REPO=/vagrant                          # the synced repository root (Vagrantfile: synced_folder "..")
PREFIX=/opt/mesos-ensemble
VENV=$PREFIX/venv                      # executor_python = $VENV/bin/python in run-demo.sh's job file
PY=python3.11                          # pyproject: requires-python >= 3.11; jammy's python3 is 3.10
AVENTER_REPO_URL=https://rpm.aventer.biz/Ubuntu/jammy
AVENTER_SUITE=jammy
AVENTER_KEY_URL=https://www.aventer.biz/assets/support_aventer.asc
AVENTER_KEY=/etc/apt/keyrings/support_aventer.asc
MESOS_PACKAGE=aventer-mesos
MESOS_SERIES=1.11                      # refuse anything else
MASTER_PORT=5050
AGENT_PORT=5051
PIP_VERSION=24.3.1                     # the venv's pip (not a project dependency)
FRAMEWORK_USER=vagrant                 # run-demo.sh's [framework] user; must exist on every agent

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '==> [provision %s] %s\n' "${ROLE:-?}" "$*"; }
warn() { printf '==> [provision %s] WARNING: %s\n' "${ROLE:-?}" "$*" >&2; }
die() { printf '==> [provision %s] ERROR: %s\n' "${ROLE:-?}" "$*" >&2; exit 1; }

usage() {
    sed -n '4,8p' "$0" >&2
    exit 2
}

# --- helpers ---------------------------------------------------------------------------------

# Write stdin to $1 (mode $2) only if the content differs; sets CHANGED=1 when it wrote.
CHANGED=0
put_file() {
    local dest=$1 mode=$2 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        return 0
    fi
    install -D -m "$mode" "$tmp" "$dest"
    rm -f "$tmp"
    CHANGED=1
    log "wrote $dest"
}

# The master's /master/state as JSON on stdout (empty output if unreachable).
master_state() {
    curl -fsS --max-time 5 "http://$1:$MASTER_PORT/master/state" 2>/dev/null || true
}

# Python snippets for the JSON of /master/state (the system python3, 3.10 on jammy).
summarize_agents_py() {
    cat <<'PY'
import json, sys
text = sys.stdin.read()
try:
    slaves = json.loads(text).get("slaves", []) if text.strip() else []
except ValueError:
    slaves = []
active = [s for s in slaves if s.get("active", True)]
print(len(active), " ".join(sorted(s.get("hostname", "?") for s in active)))
PY
}

describe_agents_py() {
    cat <<'PY'
import json, sys
state = json.load(sys.stdin)
for s in sorted(state.get("slaves", []), key=lambda s: s.get("hostname", "")):
    res = s.get("resources", {})
    attrs = ";".join(f"{k}:{v}" for k, v in sorted(s.get("attributes", {}).items()))
    print("  %s  active=%s  cpus=%s mem=%s disk=%s  attributes=%s" % (
        s.get("hostname"), s.get("active"), res.get("cpus"), res.get("mem"), res.get("disk"), attrs or "-"))
PY
}

# Print "<active agents> <space-separated agent hostnames>" from /master/state on stdin.
summarize_agents() { python3 -c "$(summarize_agents_py)"; }

# List agents with their resources and attributes (for `provision.sh check`).
describe_agents() { python3 -c "$(describe_agents_py)"; }

# --- 1. /etc/hosts ---------------------------------------------------------------------------

setup_hosts() {
    local names=() entries entry name ip block="" tmp
    IFS=',' read -r -a entries <<<"$HOSTS"
    for entry in "${entries[@]}"; do
        name=${entry%%=*}
        ip=${entry#*=}
        [[ $name =~ ^[A-Za-z0-9-]+$ && $ip =~ ^[0-9]+(\.[0-9]+){3}$ ]] || die "bad HOSTS entry '$entry'"
        names+=("$name")
        block+="$ip $name"$'\n'
    done
    names+=("$(hostname)" "$(hostname -f 2>/dev/null || hostname)")
    tmp=$(mktemp)
    # Drop our previous block, and our node names from any 127.x line other than plain localhost
    # (Ubuntu and Vagrant map the hostname to 127.0.1.1 / 127.0.2.1; Mesos would then advertise
    # a loopback address and the master would see no agents).
    awk -v names="${names[*]}" '
        BEGIN {
            n = split(names, list, " "); for (i = 1; i <= n; i++) drop[list[i]] = 1
            delete drop["localhost"]
        }
        /^# BEGIN mesos-ensemble/ { skip = 1; next }
        /^# END mesos-ensemble/ { skip = 0; next }
        skip { next }
        $1 ~ /^127\./ {
            line = $1; kept = 0
            for (i = 2; i <= NF; i++) {
                if ($i ~ /^#/) break
                if (!($i in drop)) { line = line " " $i; kept++ }
            }
            if (kept) print line
            next
        }
        { print }
    ' "$HOSTS_FILE" >"$tmp"
    {
        echo "# BEGIN mesos-ensemble (managed by vagrant/provision.sh)"
        printf '%s' "$block"
        echo "# END mesos-ensemble"
    } >>"$tmp"
    if ! cmp -s "$tmp" "$HOSTS_FILE"; then
        cat "$tmp" >"$HOSTS_FILE" # keep the inode and permissions
        log "updated $HOSTS_FILE"
    fi
    rm -f "$tmp"
}

# --- 2. packages and Python ------------------------------------------------------------------

install_base_packages() {
    log "installing base packages"
    # Ubuntu's own archive only; the AVENTER repository is added (and removed again) in
    # install_mesos so an expired AVENTER key can never break this step.
    apt-get update -q
    # Besides build tools: the libraries the aventer-mesos deb needs but does not declare
    # (Toil's and AVENTER's own images install these by hand).
    apt-get install -y -q --no-install-recommends \
        ca-certificates curl gnupg jq python3 build-essential \
        libsvn1 libapr1 libaprutil1 libcurl4 libunwind8 libsasl2-2 libsasl2-modules zlib1g \
        libevent-2.1-7 libevent-pthreads-2.1-7 libevent-openssl-2.1-7
}

install_python() {
    local packages=("$PY" "$PY-venv" "$PY-dev") installed
    installed=$(dpkg-query -W -f='${Status}\n' "${packages[@]}" 2>/dev/null | grep -c 'install ok installed' || true)
    if [[ $installed == "${#packages[@]}" ]]; then
        log "$PY already installed"
    elif ! apt-get install -y -q --no-install-recommends "${packages[@]}"; then
        # jammy ships python3.11 in universe (jammy-updates); if a mirror lacks it, use the
        # deadsnakes PPA, the usual source of other Python versions on Ubuntu LTS.
        warn "$PY is not installable from the Ubuntu archive; adding ppa:deadsnakes/ppa"
        apt-get install -y -q --no-install-recommends software-properties-common
        add-apt-repository -y ppa:deadsnakes/ppa
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${packages[@]}"
    fi
    "$PY" -c 'import sys, tomllib, ensurepip; assert sys.version_info >= (3, 11), sys.version' \
        || die "$PY is not a usable Python >= 3.11 with venv support"
}

# --- 3. Apache Mesos (AVENTER aventer-mesos) -------------------------------------------------
#
# KEY EXPIRY: AVENTER's repository signing key (support_aventer.asc) was published with an
# expiry date of 2026-09-28.  Unless AVENTER has renewed it, apt rejects the repository after
# that day (EXPKEYSIG / "The repository ... is not signed") and this step fails.  Then either
#   a) put a renewed key at vagrant/support_aventer.asc (it is used instead of downloading
#      $AVENTER_KEY_URL; check its fingerprint with AVENTER first), or
#   b) put a Mesos 1.11 deb for jammy/amd64 at vagrant/aventer-mesos_1.11.0-<revision>_amd64.deb
#      (e.g. fetched with `apt-get download aventer-mesos` on a machine where the repository
#      still verifies, or from $AVENTER_REPO_URL/pool/ after checking it) and it is installed
#      from there without the repository,
# and run `vagrant provision`.  A cached deb always wins over the repository, so caching one
# also makes re-provisioning independent of rpm.aventer.biz being up.

key_expiry_warning() {
    local now expired when
    now=$(date +%s)
    # pub/sub lines: field 2 is the validity ("e" = expired), field 7 the expiry in epoch seconds.
    expired=$(gpg --show-keys --with-colons "$1" 2>/dev/null | awk -F: -v now="$now" '
        ($1 == "pub" || $1 == "sub") && ($2 == "e" || ($7 != "" && $7 + 0 < now)) {
            print ($7 == "" ? "?" : $7); exit }' || true)
    if [[ -n $expired ]]; then
        when=unknown
        [[ $expired == "?" ]] || when=$(date -u -d "@$expired" +%F)
        warn "the AVENTER signing key in $1 expired (on $when); apt will probably reject the repository."
        warn "see the KEY EXPIRY comment in vagrant/provision.sh (renewed key or cached .deb)."
    fi
}

install_mesos_from_repo() {
    local list=/etc/apt/sources.list.d/aventer-mesos.list
    install -d -m 0755 /etc/apt/keyrings
    if [[ -f $REPO/vagrant/support_aventer.asc ]]; then
        log "using the AVENTER key from vagrant/support_aventer.asc"
        install -m 0644 "$REPO/vagrant/support_aventer.asc" "$AVENTER_KEY"
    else
        log "downloading the AVENTER key from $AVENTER_KEY_URL"
        curl -fsSL --retry 3 "$AVENTER_KEY_URL" -o "$AVENTER_KEY.tmp" || { warn "key download failed"; return 1; }
        mv "$AVENTER_KEY.tmp" "$AVENTER_KEY"
        chmod 0644 "$AVENTER_KEY"
    fi
    key_expiry_warning "$AVENTER_KEY"
    echo "deb [signed-by=$AVENTER_KEY] $AVENTER_REPO_URL $AVENTER_SUITE main" >"$list"
    local ok=1
    # Update only this source, so a failure here says something about AVENTER alone.
    if ! apt-get update -q -o Dir::Etc::sourcelist="$list" -o Dir::Etc::sourceparts=- \
        -o APT::Get::List-Cleanup=0; then
        warn "apt-get update failed for $AVENTER_REPO_URL (expired key? repository down?)"
        ok=0
    elif ! apt-cache policy "$MESOS_PACKAGE" | grep -q 'Candidate: [0-9]'; then
        warn "$AVENTER_REPO_URL offers no $MESOS_PACKAGE package"
        ok=0
    elif ! apt-get install -y -q --no-install-recommends "$MESOS_PACKAGE"; then
        ok=0
    fi
    # The package is held below and never upgraded, so the source is not needed any more;
    # removing it keeps later `apt-get update` runs working after the key expires.
    rm -f "$list"
    [[ $ok == 1 ]]
}

# Print the path of a Mesos binary (they live in /usr/sbin in most builds).
mesos_binary() {
    local path
    path=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/sbin:/usr/local/bin command -v "$1" || true)
    if [[ -z $path ]]; then
        path=$(dpkg -L "$MESOS_PACKAGE" 2>/dev/null | grep -E "/$1\$" | head -n 1 || true)
    fi
    [[ -n $path && -x $path ]] || die "$MESOS_PACKAGE is installed but has no $1 binary"
    echo "$path"
}

install_mesos() {
    [[ $(dpkg --print-architecture) == amd64 ]] \
        || die "aventer-mesos for jammy is built for amd64 only; this VM is $(dpkg --print-architecture)"
    if dpkg-query -W -f='${Status}' "$MESOS_PACKAGE" 2>/dev/null | grep -q 'install ok installed'; then
        log "$MESOS_PACKAGE $(dpkg-query -W -f='${Version}' "$MESOS_PACKAGE") already installed"
    else
        local cached
        cached=$(find "$REPO/vagrant" -maxdepth 1 -name "${MESOS_PACKAGE}_${MESOS_SERIES}.*_amd64.deb" 2>/dev/null \
            | sort -V | tail -n 1 || true)
        if [[ -n $cached ]]; then
            log "installing the cached $(basename "$cached")"
            apt-get install -y -q --no-install-recommends "$cached"
        elif ! install_mesos_from_repo; then
            die "could not install $MESOS_PACKAGE from $AVENTER_REPO_URL.
    If apt reported EXPKEYSIG or 'not signed', AVENTER's signing key has expired (2026-09-28).
    Fix: put a renewed key at vagrant/support_aventer.asc, or a Mesos ${MESOS_SERIES} deb for jammy/amd64
    at vagrant/${MESOS_PACKAGE}_${MESOS_SERIES}.0-<revision>_amd64.deb, then run 'vagrant provision'.
    Details: the KEY EXPIRY comment in vagrant/provision.sh and vagrant/README.md."
        fi
    fi
    apt-mark hold "$MESOS_PACKAGE" >/dev/null
    local daemon=mesos-$ROLE bin missing version
    bin=$(mesos_binary "$daemon")
    missing=$(ldd "$bin" 2>/dev/null | grep 'not found' || true)
    [[ -z $missing ]] || die "$bin cannot load these libraries (install them with apt-get):
$missing"
    version=$("$bin" --version 2>&1 | head -n 1 || true)
    [[ $version == *" $MESOS_SERIES."* ]] || warn "expected Mesos $MESOS_SERIES.x, $bin --version says: $version"
    log "Mesos: $version ($bin)"
}

# --- 4. the Python environment ---------------------------------------------------------------
# The same pins as the framework host: requirements.lock (joblib pickles need the same
# scikit-learn/numpy on both sides) and the http-parser wheel that pymesos needs, built by the
# project's own script (Python >= 3.11 needs its Cython rebuild).

# The directory for the http-parser wheel: shared between the VMs through the synced folder
# when possible (vagrant/.cache, git-ignored), so the wheel is built once for all three.
wheel_cache_dir() {
    local shared=$REPO/vagrant/.cache
    if mkdir -p "$shared" 2>/dev/null && touch "$shared/.probe" 2>/dev/null; then
        rm -f "$shared/.probe"
        echo "$shared"
    else
        mkdir -p /var/cache/mesos-ensemble
        echo /var/cache/mesos-ensemble
    fi
}

setup_python_env() {
    local cache stamp=$PREFIX/venv.stamp want pytag wheelhouse wheel stage
    cache=$(wheel_cache_dir)
    # pip's own cache stays local: pip running as root ignores a cache it does not own, and
    # files in the synced folder belong to the vagrant user.
    export PIP_CACHE_DIR=/var/cache/mesos-ensemble/pip
    want=$({
        "$PY" -VV
        sha256sum "$REPO/requirements.lock" "$REPO/scripts/build-http-parser.sh" | awk '{print $1}'
    } | sha256sum | cut -d' ' -f1)
    if [[ -x $VENV/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
        log "venv $VENV is up to date with requirements.lock"
    else
        log "building the venv $VENV from requirements.lock (takes a few minutes)"
        rm -rf "$VENV" "$stamp"
        mkdir -p "$PREFIX"
        "$PY" -m venv "$VENV"
        # jammy's venvs start with Ubuntu's pip 22.0; use a newer pinned one.
        "$VENV/bin/python" -m pip install -q "pip==$PIP_VERSION"
        pytag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
        wheelhouse=$cache/wheels-$pytag-$(uname -m)
        wheel=$(bash "$REPO/scripts/build-http-parser.sh" "$PY" "$wheelhouse")
        "$VENV/bin/pip" install -q --no-deps "$wheel"
        "$VENV/bin/pip" install -q --require-hashes -r "$REPO/requirements.lock"
        echo "$want" >"$stamp"
    fi
    # The project itself, always refreshed (cheap).  Installed from a staged copy so nothing
    # (build/, *.egg-info) is written into the developer's checkout through the synced folder.
    stage=$(mktemp -d)
    cp -R "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/framework" "$REPO/executor" "$stage/"
    find "$stage" -name __pycache__ -prune -exec rm -rf {} +
    "$VENV/bin/pip" install -q --no-deps --force-reinstall "$stage"
    rm -rf "$stage"
    # Fail now, not at the first task: the venv must import everything and match the lock.
    # (From / so that the installed copy is imported, not a checkout in the current directory.)
    (cd / && "$VENV/bin/python" - "$REPO/requirements.lock") <<'PY'
import importlib.metadata as md
import sys

import executor, framework, joblib, numpy, pymesos, sklearn  # noqa: F401

wrong = []
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if "==" in line:
        name, version = (part.strip() for part in line.split("==", 1))
        if md.version(name) != version:
            wrong.append(f"{name} {md.version(name)} (lock: {version})")
if wrong:
    sys.exit("venv does not match requirements.lock: " + ", ".join(wrong))
print(f"venv OK: python {sys.version.split()[0]}, scikit-learn {sklearn.__version__}, numpy {numpy.__version__}")
PY
    chmod -R a+rX "$PREFIX" # executors run as $FRAMEWORK_USER, not root
}

# --- 5. Mesos services -----------------------------------------------------------------------

# Our own unit, named like the package's (a unit in /etc/systemd/system wins over one in
# /lib/systemd/system): it runs the binary directly with MESOS_* from /etc/default/<name>, so
# nothing depends on the package's init wrapper or on files it may ship under /etc/mesos*.
write_unit() {
    local name=$1 bin=$2 extra=${3:-}
    put_file "/etc/systemd/system/$name.service" 0644 <<EOF
# Managed by vagrant/provision.sh (mesos-ensemble Vagrant cluster).
[Unit]
Description=Apache Mesos ${name#mesos-} (mesos-ensemble Vagrant cluster)
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/default/$name
ExecStart=$bin
Restart=always
RestartSec=5
LimitNOFILE=65536
$extra
[Install]
WantedBy=multi-user.target
EOF
}

stop_unit() {
    systemctl disable --now "$1.service" >/dev/null 2>&1 || true
}

start_unit() {
    systemctl daemon-reload
    systemctl enable --quiet "$1.service"
    if [[ $CHANGED == 1 ]] || ! systemctl is-active --quiet "$1.service"; then
        systemctl restart "$1.service"
        log "(re)started $1"
    else
        log "$1 already running with this configuration"
    fi
}

# The MESOS_* environment files, printed to stdout (tests/test_vagrant_files.py checks them).
# Each line is valid both for systemd's EnvironmentFile= and for a shell's `source`.

# master_env OWN_IP
master_env() {
    # No ZooKeeper: one master with an in-memory registry (no --zk, no --quorum).
    # IP and HOSTNAME are the host-only address: never the NAT address that every VirtualBox
    # VM shares, and no hostname lookup (which would give 127.0.1.1).
    cat <<EOF
# Managed by vagrant/provision.sh; edit the Vagrantfile and run \`vagrant provision master\`.
# Every mesos-master flag --x can be given as MESOS_X (see \`mesos-master --help\`).
MESOS_IP=$1
MESOS_HOSTNAME=$1
MESOS_HOSTNAME_LOOKUP=false
MESOS_PORT=$MASTER_PORT
MESOS_WORK_DIR=/var/lib/mesos/master
MESOS_REGISTRY=in_memory
MESOS_CLUSTER=mesos-ensemble-vagrant
EOF
}

# agent_env OWN_IP MASTER_IP ATTRIBUTES CPUS MEM_MB
agent_env() {
    local attributes_line=""
    [[ -z $3 ]] || attributes_line="MESOS_ATTRIBUTES='$3'"
    # cgroups v2 (jammy): upstream 1.11's linux launcher and cgroups isolators need v1, so use
    # the posix launcher/isolators (no memory enforcement) and no systemd integration.
    # Executors get ONLY the variables below (plus Mesos' own): PATH puts the venv first.
    # A cold scikit-learn import can take longer than the default 1 min registration timeout.
    cat <<EOF
# Managed by vagrant/provision.sh; edit the Vagrantfile and run \`vagrant provision\`.
# Every mesos-agent flag --x can be given as MESOS_X (see \`mesos-agent --help\`).
MESOS_MASTER=$2:$MASTER_PORT
MESOS_IP=$1
MESOS_HOSTNAME=$1
MESOS_HOSTNAME_LOOKUP=false
MESOS_PORT=$AGENT_PORT
MESOS_WORK_DIR=/var/lib/mesos/agent
MESOS_CONTAINERIZERS=mesos
MESOS_LAUNCHER=posix
MESOS_ISOLATION=posix/cpu,posix/mem
MESOS_SYSTEMD_ENABLE_SUPPORT=false
MESOS_EXECUTOR_REGISTRATION_TIMEOUT=2mins
MESOS_RESOURCES='cpus:$4;mem:$5;disk:4096;ports:[31000-32000]'
$attributes_line
MESOS_EXECUTOR_ENVIRONMENT_VARIABLES='{"PATH":"$VENV/bin:/usr/local/bin:/usr/bin:/bin"}'
EOF
}

configure_master() {
    local bin
    bin=$(mesos_binary mesos-master)
    stop_unit mesos-agent
    stop_unit mesos-slave
    install -d -m 0755 /var/lib/mesos/master
    CHANGED=0
    put_file /etc/default/mesos-master 0644 < <(master_env "$OWN_IP")
    write_unit mesos-master "$bin"
    start_unit mesos-master
    for _ in $(seq 1 60); do
        if curl -fsS --max-time 3 -o /dev/null "http://$OWN_IP:$MASTER_PORT/master/health" 2>/dev/null; then
            log "mesos-master is up: http://$OWN_IP:$MASTER_PORT/"
            return 0
        fi
        sleep 2
    done
    die "mesos-master did not answer on http://$OWN_IP:$MASTER_PORT/master/health within 2 minutes
    (see: journalctl -u mesos-master)"
}

configure_agent() {
    local bin cpus mem_mb
    bin=$(mesos_binary mesos-agent)
    stop_unit mesos-master
    stop_unit mesos-slave
    id "$FRAMEWORK_USER" >/dev/null 2>&1 \
        || warn "user $FRAMEWORK_USER does not exist: tasks of a framework with user=$FRAMEWORK_USER would fail"
    install -d -m 0755 /var/lib/mesos/agent
    # Offer what the VM has, minus ~512 MB for the OS and the agent itself.
    cpus=$(nproc)
    mem_mb=$(awk '/^MemTotal:/ { m = int($2 / 1024) - 512; print (m < 512 ? 512 : m) }' /proc/meminfo)
    CHANGED=0
    put_file /etc/default/mesos-agent 0644 < <(agent_env "$OWN_IP" "$MASTER_IP" "$ATTRIBUTES" "$cpus" "$mem_mb")
    # KillMode=process: restarting the agent must not kill running executors (posix launcher).
    write_unit mesos-agent "$bin" "KillMode=process"
    if [[ $CHANGED == 1 && -e /var/lib/mesos/agent/meta/slaves/latest ]]; then
        # Changed resources/attributes: the agent would refuse to recover its old identity.
        log "agent configuration changed: forgetting the old agent id"
        systemctl stop mesos-agent.service || true
        rm -f /var/lib/mesos/agent/meta/slaves/latest
    fi
    start_unit mesos-agent
}

# --- 6. smoke check --------------------------------------------------------------------------

wait_for_registration() {
    local expected=$1 summary count hosts
    for _ in $(seq 1 60); do
        summary=$(master_state "$MASTER_IP" | summarize_agents)
        count=${summary%% *}
        hosts=" ${summary#* } "
        if [[ $hosts == *" $OWN_IP "* ]]; then
            log "the master sees this agent; agents registered: $count of $expected ($hosts)"
            if [[ $count -ge $expected ]]; then
                log "cluster ready: the master at http://$MASTER_IP:$MASTER_PORT/ sees $count agents"
            fi
            return 0
        fi
        sleep 2
    done
    die "the master at $MASTER_IP:$MASTER_PORT does not list this agent ($OWN_IP) after 2 minutes.
    Is the master VM up? Check: journalctl -u mesos-agent, and curl http://$MASTER_IP:$MASTER_PORT/master/state"
}

check_cluster() {
    local master_ip=${1:?usage: provision.sh check MASTER_IP [EXPECTED_AGENTS]} expected=${2:-2} state summary count
    state=$(master_state "$master_ip")
    [[ -n $state ]] || die "no answer from http://$master_ip:$MASTER_PORT/master/state"
    summary=$(summarize_agents <<<"$state")
    count=${summary%% *}
    echo "master $master_ip:$MASTER_PORT sees $count active agent(s):"
    describe_agents <<<"$state"
    [[ $count -ge $expected ]] || die "expected $expected agents"
}

# --- main ------------------------------------------------------------------------------------

main() {
    ROLE=${1:-}
    case $ROLE in
        check)
            shift
            check_cluster "$@"
            return 0
            ;;
        master | agent) ;;
        *) usage ;;
    esac
    [[ $# -ge 4 ]] || usage
    OWN_IP=$2
    MASTER_IP=$3
    HOSTS=$4
    ATTRIBUTES=${5:-}
    [[ $OWN_IP =~ ^[0-9]+(\.[0-9]+){3}$ && $MASTER_IP =~ ^[0-9]+(\.[0-9]+){3}$ ]] || die "bad address arguments"
    [[ $ATTRIBUTES =~ ^[A-Za-z0-9_.:\;/-]*$ ]] || die "bad attribute string '$ATTRIBUTES'"
    [[ $(id -u) == 0 ]] || die "run as root (Vagrant's shell provisioner does)"
    [[ -d $REPO/framework && -f $REPO/requirements.lock ]] || die "$REPO is not the mesos-ensemble repository"

    setup_hosts
    install_base_packages
    install_python
    install_mesos
    setup_python_env
    if [[ $ROLE == master ]]; then
        configure_master
        log "master ready; agents register when their VMs are provisioned"
    else
        configure_agent
        # Every node in HOSTS except the master runs an agent.
        local all_nodes node expected=0
        IFS=',' read -r -a all_nodes <<<"$HOSTS"
        for node in "${all_nodes[@]}"; do
            if [[ ${node#*=} != "$MASTER_IP" ]]; then
                expected=$((expected + 1))
            fi
        done
        wait_for_registration "$expected"
    fi
    log "done"
}

# Sourcing this file (as tests/test_vagrant_files.py does) only defines the functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
