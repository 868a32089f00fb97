"""``torchrun --nproc-per-node 2 -m hessntk ...`` against the single-process command.

Rank 0 alone prints (one JSON document on stdout) and writes the report; the numbers equal
the single-process run's to ``1e-12`` relative (residual norms: relative to the eigenvalue
scale); ``--resume`` reuses rank 0's partial results on both ranks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hessntk.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch import ROOT, free_port, rank_env  # noqa: E402

MODELS = ROOT / "tests" / "cli_models.py"
RTOL = 1e-12
COMMANDS = {
    "spectrum": ["spectrum", f"{MODELS}:build", "--k", "2", "--probes", "4",
                 "--probes-per-group", "2", "--steps", "10", "--trace-matvecs", "20"],
    "iic": ["iic", f"{MODELS}:build_regression", "--probes", "4", "--steps", "10"],
    "quantization": ["quantization", f"{MODELS}:build", "--bits", "2", "4",
                     "--trace-matvecs", "10"],
}
#: Report entries that differ between runs by design.
VOLATILE = ("timings_s", "wall_time_s", "argv", "settings", "notes", "versions")


def torchrun(argv: list[str], out: Path | None = None) -> subprocess.CompletedProcess:
    env = rank_env(0, 1, 0)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT"):
        env.pop(key)  # torchrun sets them per rank
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--nnodes", "1", "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           *(["-m", "hessntk", *argv, "--json", "--timeout", "60", "--out", str(out)]
             if out is not None else argv)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, cwd=ROOT)


def numbers(tree: object, prefix: str = "") -> dict[str, np.ndarray]:
    """Every number and numeric list of a report, by its path."""
    found: dict[str, np.ndarray] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key not in VOLATILE:
                found.update(numbers(value, f"{prefix}.{key}"))
    elif isinstance(tree, list) and tree and not isinstance(tree[0], (str, dict)):
        try:
            found[prefix] = np.asarray(tree, dtype=float)
        except (TypeError, ValueError):
            pass
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        found[prefix] = np.asarray(float(tree))
    return found


def assert_same_numbers(single: dict, parallel: dict) -> None:
    a, b = numbers(single), numbers(parallel)
    assert set(a) == set(b)
    assert len(a) > 10
    for key, expected in a.items():
        if not expected.size:
            continue
        scale = np.max(np.abs(expected))
        if key.endswith("residual_norms"):  # tiny by convergence: compare on the spectrum
            scale = np.max(np.abs(a[key.replace("residual_norms", "values")]))
        assert np.allclose(b[key], expected, rtol=0, atol=RTOL * max(scale, 1e-300)), key


def checkpoints(folder: Path) -> list[str]:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    import cli_models

    paths = []
    for steps in (5, 120):
        path = folder / f"steps{steps}.pt"
        torch.save(cli_models.train(steps), path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("command", [*COMMANDS, "compare"])
def test_torchrun_gives_the_single_process_report(tmp_path: Path, command: str) -> None:
    argv = COMMANDS.get(command) or ["compare", f"{MODELS}:build", *checkpoints(tmp_path),
                                     "--probes", "4", "--steps", "10"]
    assert main([*argv, "--json", "--quiet", "--threads", "1", "--out",
                 str(tmp_path / "single")]) == 0
    single = json.loads((tmp_path / "single" / "report.json").read_text())
    done = torchrun(argv, tmp_path / "parallel")
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)  # one document: rank 0 alone prints
    assert printed == json.loads((tmp_path / "parallel" / "report.json").read_text())
    assert_same_numbers(single, printed)
    if command != "spectrum":
        return
    again = torchrun([*argv, "--resume"], tmp_path / "parallel")
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads(again.stdout)
    assert any("2 partial result(s) reused" in note for note in resumed["notes"])
    assert resumed["hessian"]["density"] == printed["hessian"]["density"]


def test_the_data_parallel_example_prints_the_one_process_numbers() -> None:
    script = [str(ROOT / "examples" / "data_parallel.py"), "--n-train", "64", "--steps", "10"]
    alone = subprocess.run([sys.executable, *script], capture_output=True, text=True,
                           timeout=180, cwd=ROOT)
    assert alone.returncode == 0, alone.stderr[-3000:]
    parallel = torchrun(script)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    lines = parallel.stdout.splitlines()
    assert lines[0].startswith("2 process(es), 64 samples")
    assert lines[1:3] == alone.stdout.splitlines()[1:3]  # top eigenvalues and trace, rounded
    assert "collectives" in lines[3]


def test_a_rank_that_dies_under_torchrun_stops_the_run(tmp_path: Path) -> None:
    argv = ["spectrum", f"{MODELS}:dies_on_rank_one", "--k", "2", "--probes", "2", "--steps",
            "5", "--trace-matvecs", "4"]
    start = time.monotonic()
    done = torchrun(argv, tmp_path / "out")
    assert done.returncode != 0
    assert time.monotonic() - start < 120  # torchrun stops the others; no hang
    assert "exitcode  : 3" in done.stderr  # rank 1's own exit code is the root cause
    assert not (tmp_path / "out" / "report.json").exists()
