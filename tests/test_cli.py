import subprocess
import sys

import numpy as np

from hessntk.cli import demo_matrix, main


def test_demo_runs_in_process_and_estimates_are_close(capsys):
    assert main(["demo", "--n", "300"]) == 0
    out = capsys.readouterr().out
    assert "top eigenvalue" in out and "logdet" in out
    A, lam = demo_matrix(300)
    assert np.isclose(np.trace(A), lam.sum())


def test_module_entry_point_and_bad_argument():
    done = subprocess.run([sys.executable, "-m", "hessntk", "demo", "--n", "5"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--n must be at least 10" in done.stderr
