"""SLQ wall time against the time of its own products, for each reorthogonalisation.

Run: ``python benchmarks/bench_slq_overhead.py [--probes 10 --steps 100 --threads 2]``. The
Hessian of the MLP 64-512-512-10 (301k parameters, float32) on 512 ``load_digits`` images
(issue 16's setting). Each run wraps the operator in a ``CountingOperator``, so the ratio
``wall / products`` compares the algorithm with the products it made, in the same run (robust
to the machine's load drifting between runs). Prints, per setting, the wall time, the ratio,
the steps that read the basis and the basis bytes per probe.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from hessntk.hessian import HessianOperator
from hessntk.spectral import CountingOperator, slq

SETTINGS = (("full", "float64"), ("full", "operator"), ("partial", "float64"),
            ("partial", "operator"), ("none", "float64"))


def digits_mlp(width: int = 512, n: int = 512) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The MLP 64-width-width-10 of issue 16 (seed 0, untrained) on ``n`` digits images."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / (X.std(0) + 1e-8), dtype=torch.float32)[:n]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, 10)).eval()
    return model, X, torch.tensor(y[:n])


def first_touch(k: int, m: int, n: int) -> float:
    """Seconds to write a fresh (k, m, n) float32 array one (k, n) row at a time (host
    memory from torch's allocator, as the library allocates a large basis)."""
    basis = torch.empty((k, m, n), dtype=torch.float32)
    row = torch.ones(k, n)
    start = time.perf_counter()
    for j in range(m):
        basis[:, j] = row
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, X, y = digits_mlp()
    op = HessianOperator(model, nn.CrossEntropyLoss(), (X, y))
    n, k, m = op.shape[0], args.probes, args.steps
    op.matmat(torch.randn(n, k))  # warm-up: the method choice, the cached graph
    print(f"n = {n}, {k} probes x {m} steps, products by method {op.batched_method!r}")
    print(f"first touch of a fresh float32 basis ({k} x {m} x n, written a row per step as "
          f"Lanczos does): {first_touch(k, m, n):.2f} s (part of the wall time of every "
          "setting that keeps a basis; on a VM whose freed memory goes back to the host it "
          "can exceed the sweeps)", flush=True)
    for reorth, basis in SETTINGS:
        counted = CountingOperator(op)
        start = time.perf_counter()
        d = slq(counted, num_probes=k, num_matvecs=m, seed=0, reorth=reorth, basis_dtype=basis)
        wall = time.perf_counter() - start
        size = 8 if basis == "float64" else 4
        per_probe = size * n * m if reorth != "none" else 16 * n
        print(f"slq reorth={reorth:<7} basis {basis:<8} {wall:6.2f} s = "
              f"{wall / counted.seconds:.2f} x its products ({counted.seconds:.2f} s, "
              f"{1e3 * counted.seconds / counted.num_matvecs:.1f} ms per vector); basis "
              f"{per_probe / 2**20:.0f} MiB per probe; trace {d.trace().value:.5g}, "
              f"top node {np.max(d.nodes):.6g}", flush=True)


if __name__ == "__main__":
    main()
