"""Lets `python bench/<script>.py` import the project: the one place bench puts the repository root on
sys.path. A script run by its path has its own folder (bench/) first on sys.path, so it finds this module as
`_root`; the scripts in bench/compare are started as `python -m bench.compare.<name>` from the root.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
