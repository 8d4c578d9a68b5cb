"""Make ``ensemble_helpers`` importable for the ensemble tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
