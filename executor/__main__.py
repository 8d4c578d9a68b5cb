"""``python -m executor``: the mesos-ensemble executor, as launched by a Mesos agent."""

from executor import startup

startup.hold()  # no cyclic collections while the start imports (see executor.startup)

import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from executor.main import main  # noqa: E402

code = main()
# Every update is sent (synchronously) by now: skip the interpreter's teardown, which with
# scikit-learn loaded took 0.3-2 s per executor (the job waits for its executors to end).
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
