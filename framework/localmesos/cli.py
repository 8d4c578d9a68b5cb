"""``mesos-ensemble local-cluster``: run an embedded Mesos cluster until SIGINT/SIGTERM."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from .cluster import AgentSpec, LocalCluster
from .resources import parse_attributes


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``local-cluster`` sub-command."""
    parser.add_argument("--agents", type=int, default=1, help="number of agents (default 1)")
    parser.add_argument("--cpus", type=float, default=2.0, help="cpus per agent")
    parser.add_argument("--mem", type=float, default=4096.0, help="memory (MB) per agent")
    parser.add_argument("--disk", type=float, default=10000.0, help="disk (MB) per agent")
    parser.add_argument("--gpus", type=float, default=0.0, help="gpus per agent")
    parser.add_argument("--ports", default=None, help='port ranges per agent, e.g. "[31000-32000]"')
    parser.add_argument("--attributes", default="",
                        help='agent attributes in Mesos agent syntax, e.g. "zone:a;price:1.5"')
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5050, help="master port (0 = any free port)")
    parser.add_argument("--work-dir", type=Path, default=None, help="sandboxes live under this directory")
    parser.add_argument("--keep-sandboxes", action="store_true", help="do not delete sandboxes on exit")
    parser.add_argument("--credentials-file", type=Path, default=None,
                        help="file with 'principal secret' lines (or JSON {principal: secret})")
    parser.add_argument("--principal", default=None, help="require this principal (HTTP basic auth)")
    parser.add_argument("--secret", default=None, help="secret of --principal")


def load_credentials(path: Path) -> dict[str, str]:
    """Mesos credentials file: JSON ``{"credentials":[{"principal","secret"}]}``, a mapping, or text lines."""
    import json
    text = path.read_text()
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("credentials"), list):
        return {c["principal"]: c["secret"] for c in data["credentials"]}
    if isinstance(data, dict):
        return {str(k): str(v) for k, v in data.items()}
    creds: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            principal, _, secret = line.partition(" ")
            creds[principal] = secret.strip()
    return creds


def build_cluster(args: argparse.Namespace) -> LocalCluster:
    credentials: Optional[dict[str, str]] = None
    if args.credentials_file is not None:
        credentials = load_credentials(args.credentials_file)
    if args.principal:
        credentials = dict(credentials or {})
        credentials[args.principal] = args.secret or ""
    attributes = parse_attributes(args.attributes) if args.attributes else {}
    resources: dict[str, Any] = {"cpus": args.cpus, "mem": args.mem, "disk": args.disk, "gpus": args.gpus}
    if args.ports:
        resources["ports"] = args.ports
    agents = [AgentSpec(hostname=f"agent-{i + 1}", resources=dict(resources), attributes=dict(attributes))
              for i in range(max(1, args.agents))]
    return LocalCluster(agents=agents, work_dir=args.work_dir, credentials=credentials,
                        keep_sandboxes=args.keep_sandboxes, host=args.host, master_port=args.port)


def run_cli(args: argparse.Namespace) -> int:
    """Start the cluster, print the master address, run until SIGINT/SIGTERM, stop cleanly."""
    try:
        cluster = build_cluster(args)
        cluster.start()
    except (OSError, ValueError) as exc:
        print(f"local-cluster: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(cluster.master_address, flush=True)
        for agent_id, endpoint in cluster.agent_endpoints().items():
            print(f"agent {agent_id} at {endpoint}", file=sys.stderr, flush=True)
        while not done.wait(0.5):
            pass
    finally:
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="localmesos", description=__doc__)
    add_cli_arguments(parser)
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
