"""``python -m executor``: the mesos-ensemble executor, as launched by a Mesos agent."""

import logging
import os
import sys

from executor.main import main

code = main()
# Every update is sent (synchronously) by now: skip the interpreter's teardown, which with
# scikit-learn loaded took 0.3-2 s per executor (the job waits for its executors to end).
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
