"""The examples run (at small settings) and print their tables."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXAMPLES = [
    ("hessian_cnn.py", [], "eigen"),
    ("ntk_spectrum.py", [], ""),
    ("data_parallel.py", ["--n-train", "64", "--steps", "10"], "top eigenvalues"),
    ("model_selection.py", ["--n-train", "100", "--widths", "8", "32", "128"], "Kendall tau"),
    ("compare_checkpoints.py", ["--n-train", "60", "--steps", "90", "--every", "30"],
     "Kendall tau"),
    pytest.param(
        "transformer_spectra.py", ["--steps", "20", "--matvecs", "20", "--probes", "2"],
        "one SLQ pass",
        marks=pytest.mark.skipif(not importlib.util.find_spec("transformers"),
                                 reason="needs transformers (a test dependency)"),
    ),
    pytest.param(
        "jax_hessian_spectrum.py",
        ["--n-train", "128", "--width", "16", "--steps", "20", "--k", "2", "--ncv", "8",
         "--num-probes", "2", "--num-matvecs", "8", "--trace-matvecs", "4", "--n-ntk", "20",
         "--n-iic", "10"],
        "IIC",
        marks=pytest.mark.skipif(
            not (importlib.util.find_spec("jax") and importlib.util.find_spec("equinox")),
            reason="needs jax and equinox: pip install 'hessntk[jax]'",
        ),
    ),
]
IDS = [e.values[0] if hasattr(e, "values") else e[0] for e in EXAMPLES]


@pytest.mark.parametrize("script,args,expect", EXAMPLES, ids=IDS)
def test_example_runs(script, args, expect, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert expect.lower() in done.stdout.lower()
    assert len(done.stdout.strip().splitlines()) >= 3
