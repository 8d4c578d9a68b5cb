"""``mesos-ensemble local-cluster``: run an embedded Mesos cluster until SIGINT/SIGTERM.

Framework authentication is on by default: unless credentials are given, principal
``mesos-ensemble`` with a random secret is required; the secret is written to ``secret`` (the
secret alone, as a job file's ``secret_file`` reads it) and ``credentials.json`` (Mesos credentials
JSON), both mode 0600, in the work directory, whose paths are printed. ``--no-auth`` restores the
open cluster. Secrets never come from the command line.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from .cluster import DEFAULT_PRINCIPAL, AgentSpec, LocalCluster, generate_secret
from .resources import parse_attributes


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``local-cluster`` sub-command."""
    parser.add_argument("--agents", type=int, default=1, help="number of agents (default 1)")
    parser.add_argument("--cpus", type=float, default=2.0, help="cpus per agent")
    parser.add_argument("--mem", type=float, default=4096.0, help="memory (MB) per agent")
    parser.add_argument("--disk", type=float, default=10000.0, help="disk (MB) per agent")
    parser.add_argument("--gpus", type=float, default=0.0, help="gpus per agent")
    parser.add_argument("--ports", default=None,
                        help='port ranges per agent (default "[31000-32000]", as a Mesos agent; "[]" for none)')
    parser.add_argument("--attributes", default="",
                        help='agent attributes in Mesos agent syntax, e.g. "zone:a;price:1.5" (default: none)')
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5050, help="master port (0 = any free port)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="sandboxes live under this directory (default: a temporary directory)")
    parser.add_argument("--keep-sandboxes", action="store_true", help="do not delete sandboxes on exit")
    parser.add_argument("--credentials-file", type=Path, default=None,
                        help="Mesos credentials JSON ({\"credentials\": [{\"principal\", \"secret\"}]}), "
                             "a JSON {principal: secret} or 'principal secret' lines (default: principal "
                             "mesos-ensemble with a random secret, written to the work directory)")
    parser.add_argument("--principal", default=None,
                        help=f"require this principal, its secret read from ${SECRET_ENV} (never from argv) "
                             "(default: see --credentials-file)")
    parser.add_argument("--secret", default=None, help=argparse.SUPPRESS)  # refused: it would show in ps
    parser.add_argument("--no-auth", action="store_true",
                        help="no framework authentication: any local process can act as any framework")


SECRET_ENV = "LOCAL_CLUSTER_SECRET"
"""Environment variable holding the secret of ``--principal``."""
CREDENTIALS_NAME = "credentials.json"
SECRET_NAME = "secret"


class UsageError(ValueError):
    """Bad command-line input: one line, exit status 2."""


def generate_credentials() -> dict[str, str]:
    """Principal ``mesos-ensemble`` with a fresh random secret (256 bits)."""
    return {DEFAULT_PRINCIPAL: generate_secret()}


def _write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable by its owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)
    return path


def write_credentials(work_dir: Path, credentials: dict[str, str]) -> list[Path]:
    """Write ``credentials`` (one principal) to ``work_dir``: ``credentials.json`` in Mesos' format
    and ``secret`` holding the secret alone; both 0600. Returns their paths."""
    document = {"credentials": [{"principal": p, "secret": s} for p, s in credentials.items()]}
    [secret] = credentials.values()
    return [_write_private(work_dir / CREDENTIALS_NAME, json.dumps(document) + "\n"),
            _write_private(work_dir / SECRET_NAME, secret + "\n")]


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


def cluster_credentials(args: argparse.Namespace) -> tuple[Optional[dict[str, str]], bool]:
    """The credentials the cluster requires, and whether they were generated (to be written out)."""
    if args.secret is not None:
        raise UsageError(f"--secret: a secret on the command line shows in the process list; put it in "
                         f"--credentials-file or the {SECRET_ENV} environment variable")
    if args.no_auth:
        if args.credentials_file is not None or args.principal:
            raise UsageError("--no-auth: cannot be combined with --credentials-file or --principal")
        return None, False
    credentials: dict[str, str] = {}
    if args.credentials_file is not None:
        try:
            credentials = load_credentials(args.credentials_file)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{args.credentials_file}: not a readable credentials file ({type(exc).__name__})") \
                from None
        if not credentials:
            raise UsageError(f"{args.credentials_file}: no credentials in it")
    if args.principal:
        secret = os.environ.get(SECRET_ENV)
        if not secret:
            raise UsageError(f"--principal {args.principal}: expected its secret in ${SECRET_ENV}")
        credentials[args.principal] = secret
    if credentials:
        return credentials, False
    return generate_credentials(), True


def build_cluster(args: argparse.Namespace, credentials: Optional[dict[str, str]] = None) -> LocalCluster:
    """The cluster the options describe, requiring ``credentials`` (by default those of
    ``cluster_credentials``; pass them to keep generated ones)."""
    if credentials is None:
        credentials, _generated = cluster_credentials(args)
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
        credentials, generated = cluster_credentials(args)
    except UsageError as exc:
        print(f"local-cluster: {exc}", file=sys.stderr)
        return 2
    written: list[Path] = []
    try:
        cluster = build_cluster(args, credentials)
        if generated and cluster.credentials:
            written = write_credentials(cluster.work_dir, cluster.credentials)
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
        if written:
            principal = next(iter(cluster.credentials or {}))
            print(f"framework authentication required: principal {principal}, secret in {written[1]} "
                  f"(Mesos credentials file {written[0]})", file=sys.stderr, flush=True)
            print(f"a job file uses them with, in its [framework] table: master = \"{cluster.master_address}\", "
                  f"principal = \"{principal}\", secret_file = \"{written[1]}\"", file=sys.stderr, flush=True)
        elif credentials:
            print("framework authentication required (credentials as given)", file=sys.stderr, flush=True)
        else:
            print("WARNING: no authentication (--no-auth): any local process can subscribe as any framework",
                  file=sys.stderr, flush=True)
        while not done.wait(0.5):
            pass
    finally:
        cluster.stop()
        for path in written:
            path.unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="localmesos", description=__doc__)
    add_cli_arguments(parser)
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
