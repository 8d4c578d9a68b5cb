"""A pass-through pipeline step that makes a member's tasks controllable by a fault-injection
test through files in a directory (the executor imports this module by its pickled name).

``pause(X, directory, seconds)``: writes ``started-<pid>-<n>`` (the executor process computing),
then sleeps ``seconds``; it sleeps ten times longer for the first attempt at the shard whose
first value is in ``slow-<value>`` (claimed once, so a backup copy runs at normal speed); it
raises ``MemoryError`` (an infrastructure failure) on the agent named in ``bad-agent``, and
``ValueError`` (the member's own error) everywhere once ``member-error`` exists.
It returns ``X`` unchanged, so the member's predictions are exactly its inner model's.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

_calls = itertools.count()


def pause(features: Any, directory: str, seconds: float) -> Any:
    where = Path(directory)
    agent = os.environ.get("MESOS_SLAVE_ID", "")
    if agent and (where / "bad-agent").is_file() and (where / "bad-agent").read_text() == agent:
        raise MemoryError(f"simulated: agent {agent} is out of memory")
    if (where / "member-error").is_file():
        raise ValueError("simulated: column 2 is negative")
    (where / f"started-{os.getpid()}-{next(_calls)}").touch()
    delay = seconds
    slow = where / f"slow-{float(features[0, 0])!r}"
    if slow.is_file():
        try:
            os.close(os.open(str(where / f"claimed-{float(features[0, 0])!r}"), os.O_CREAT | os.O_EXCL))
            delay = seconds * 10
        except FileExistsError:
            pass
    time.sleep(delay)
    return features
