"""SLQ wall time against the time of its products alone, with and without reorthogonalisation.

Run: ``python benchmarks/bench_slq_overhead.py [--probes 10 --steps 100 --threads 2]``. The
Hessian of the MLP 64-512-512-10 (301k parameters, float32) on 512 ``load_digits`` images
(issue 16's setting); prints the time of ``steps`` products of ``probes`` vectors alone, and
``slq`` with ``reorth="full"`` (float64 and float32 basis) and ``"none"``, as ratios to it,
plus basis bytes per probe.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from hessntk.hessian import HessianOperator
from hessntk.spectral import slq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / (X.std(0) + 1e-8), dtype=torch.float32)[:512]
    y = torch.tensor(y[:512])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10)).eval()
    op = HessianOperator(model, nn.CrossEntropyLoss(), (X, y))
    n, k, m = op.shape[0], args.probes, args.steps
    V = torch.randn(n, k)
    op.matmat(V)  # warm-up (the method choice, caches)
    t0 = time.perf_counter()
    for _ in range(m):
        V = op.matmat(V)
        V = V / V.norm(dim=0, keepdim=True)
    products = time.perf_counter() - t0
    print(f"n = {n}, {k} probes x {m} steps; products alone: {products:.2f} s "
          f"({1e3 * products / (k * m):.1f} ms per vector)")
    for reorth, basis in (("full", "float64"), ("full", "operator"), ("none", "float64")):
        t0 = time.perf_counter()
        d = slq(op, num_probes=k, num_matvecs=m, seed=0, reorth=reorth, basis_dtype=basis)
        wall = time.perf_counter() - t0
        per_probe = (8 if basis == "float64" else 4) * n * m if reorth == "full" else 16 * n
        print(f"slq reorth={reorth:<5} basis {basis:<8} {wall:6.2f} s = {wall / products:.2f} x "
              "products; basis "
              f"{per_probe / 2**20:.0f} MiB per probe; trace {d.trace().value:.4g}, "
              f"nodes [{np.min(d.nodes):.3g}, {np.max(d.nodes):.3g}]")


if __name__ == "__main__":
    main()
