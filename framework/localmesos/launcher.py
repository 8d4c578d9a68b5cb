"""Session leader of every executor: runs the executor and kills its whole session when the agent goes.

Usage (by the agent only): ``python -I -S launcher.py FD PIDFILE EXECUTABLE ARGV...``. ``FD`` is the
read end of a pipe whose write end only the agent's process holds: end of file there means the
agent's process is gone (even after ``kill -9``), and the launcher then SIGKILLs its process group,
so no executor outlives the cluster that started it. ``PIDFILE`` receives ``SESSION CHILD`` (the
cluster's record of the processes it started). The executor's exit status is passed on unchanged.
Stdlib only, run by path, imports nothing of the project.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading


def _watch(fd: int) -> None:
    while True:
        try:
            if os.read(fd, 1):
                continue
        except InterruptedError:
            continue
        except OSError:
            pass
        os.killpg(0, signal.SIGKILL)  # the agent's process died: take the whole session down
        return


def main(argv: list[str]) -> int:
    fd, pidfile, executable, command = int(argv[0]), argv[1], argv[2] or None, argv[3:]
    try:
        child = subprocess.Popen(command, executable=executable)
    except OSError as exc:
        print(f"localmesos launcher: cannot start {command[:1]}: {exc}", file=sys.stderr)
        return 127
    temporary = f"{pidfile}.tmp"
    with open(temporary, "w") as handle:
        handle.write(f"{os.getpid()} {child.pid}\n")
    os.replace(temporary, pidfile)
    threading.Thread(target=_watch, args=(fd,), daemon=True).start()
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
            continue
    if code < 0:  # killed by a signal: die the same way so the agent sees the same wait status
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
