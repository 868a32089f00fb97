"""JAX operators on a 2-device mesh (forced host devices) against one device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")

WORKER = Path(__file__).with_name("mesh_worker.py")
ROOT = Path(__file__).resolve().parents[2]
RTOL = 1e-12  # float64: the batch mean is reduced in another order over the devices
COMPARED = ("HV", "GV", "gradient", "loss", "loss_at", "eigsh", "slq_nodes", "slq_weights",
            "trace", "KW", "K_dense", "K_diagonal", "iic")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("mesh") / "results.npz"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, str(WORKER), str(out)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as z:
        return dict(z)


@pytest.mark.parametrize("key", COMPARED)
def test_a_mesh_gives_the_one_device_numbers(runs: dict, key: str) -> None:
    expected, got = runs[f"single_{key}"], runs[f"mesh_{key}"]
    assert np.all(np.isfinite(expected))
    assert np.max(np.abs(got - expected)) <= RTOL * max(np.max(np.abs(expected)), 1e-300)


def test_the_batches_are_sharded_and_the_remainder_replicated(runs: dict) -> None:
    # 16 and 21 samples over 2 devices: 16 and 20 sharded, 1 replicated.
    assert (int(runs["mesh_num_batches"]), int(runs["mesh_sharded_batches"])) == (3, 2)
    assert (int(runs["single_num_batches"]), int(runs["single_sharded_batches"])) == (2, 0)


def test_products_on_a_mesh_compile_once(runs: dict) -> None:
    assert int(runs["mesh_retraced"]) == 0
    assert int(runs["single_retraced"]) == 0
