"""``python -m executor``: the mesos-ensemble executor, as launched by a Mesos agent."""

import sys

from executor.main import main

sys.exit(main())
