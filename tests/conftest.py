"""Shared pytest set-up: make ``tests/harness.py`` and ``tests/factories.py`` importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
