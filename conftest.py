"""Pytest configuration at the repository root.

``hessntk/jax`` modules import jax at module level; where jax is not installed their doctests
are not collected (``tests/jax`` skips itself with ``pytest.importorskip``).
"""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("jax") else ["hessntk/jax/*"]
