"""Write the Vagrant cluster's job file: a job file with its ``[framework]`` table set for real Mesos.

run-demo.sh calls this on the job.toml that ``mesos-ensemble train-demo`` wrote::

    python make_job.py SOURCE.toml DEST.toml --master HOST:PORT --user USER \
        --executor-python PATH --artifact-host HOST [--artifact-port N] [--no-validate]

Everything outside ``[framework]`` is kept as it is; keys of the old ``[framework]`` table that
are not overridden (e.g. ``name``) are kept too.  The result is checked twice: it must parse to
exactly the old job plus the new settings, and (unless ``--no-validate``) it must pass the
project's own ``framework.jobspec.load_job``.  tests/test_vagrant_files.py runs it the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

_FRAMEWORK_HEADER = re.compile(r"^\s*\[\s*framework\s*\]\s*(#.*)?$")
_ANY_HEADER = re.compile(r"^\s*\[")


def toml_value(value: Any) -> str:
    """A scalar as TOML (JSON's string escapes are valid in TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value!r} into [framework]")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise ValueError(f"cannot write {value!r} into [framework]: only strings, numbers and booleans")


def strip_table(text: str, header: re.Pattern[str]) -> str:
    """``text`` without the table whose header line matches ``header`` (up to the next header)."""
    kept: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        if header.match(line):
            inside = True
            continue
        if inside and _ANY_HEADER.match(line):
            inside = False
        if not inside:
            kept.append(line)
    return "".join(kept)


def cluster_job_text(source_text: str, settings: dict[str, Any]) -> str:
    """The job file ``source_text`` with ``settings`` merged into its ``[framework]`` table."""
    original = tomllib.loads(source_text)
    framework = dict(original.get("framework", {}))
    framework.update(settings)
    body = strip_table(source_text, _FRAMEWORK_HEADER).rstrip() + "\n"
    lines = [f"{key} = {toml_value(value)}" for key, value in framework.items()]
    text = (body + "\n# Set by vagrant/make_job.py for the Vagrant Mesos cluster.\n[framework]\n"
            + "\n".join(lines) + "\n")
    expected = {**original, "framework": framework}
    try:
        rewritten = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"could not rewrite [framework] ({error}); edit the job file by hand instead") from None
    if rewritten != expected:
        raise ValueError("rewriting [framework] would change other parts of the job file; "
                         "edit its [framework] table by hand instead")
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the job file to start from (e.g. train-demo's job.toml)")
    parser.add_argument("dest", type=Path, help="where to write the new job file (same directory as SOURCE)")
    parser.add_argument("--master", required=True, help='the Mesos master, "host:port"')
    parser.add_argument("--user", required=True, help="framework user; must exist on every agent")
    parser.add_argument("--executor-python", required=True, help="Python on the agents (absolute path)")
    parser.add_argument("--artifact-host", required=True, help="address the agents use to reach this host")
    parser.add_argument("--artifact-port", type=int, default=8000, help="artifact server port (default 8000)")
    parser.add_argument("--no-validate", action="store_true", help="skip framework.jobspec.load_job")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source, dest = args.source.resolve(), args.dest.resolve()
    if source.parent != dest.parent:
        # The job's relative paths (models, data, output) are resolved against its directory.
        print(f"make_job: {dest} must be in the same directory as {source}", file=sys.stderr)
        return 2
    settings = {
        "master": args.master,
        "user": args.user,
        "executor_python": args.executor_python,
        "artifact_host": args.artifact_host,
        "artifact_port": args.artifact_port,
    }
    try:
        text = cluster_job_text(source.read_text(encoding="utf-8"), settings)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as error:
        print(f"make_job: {source}: {error}", file=sys.stderr)
        return 2
    dest.write_text(text, encoding="utf-8")
    if not args.no_validate:
        from framework.errors import JobSpecError
        from framework.jobspec import load_job

        try:
            spec = load_job(dest)
        except JobSpecError as error:
            print(f"make_job: the new job file does not validate: {error}", file=sys.stderr)
            return 2
        print(f"wrote {dest}: master {spec.framework.master}, user {spec.framework.user}, "
              f"{len(spec.models)} models; output -> {spec.output}"
              + (f", report -> {spec.report}" if spec.report else ""))
    else:
        print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
