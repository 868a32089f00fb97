"""Scale proof on a CPU box: SLQ on a 10M-parameter model and Lanczos on a 50M-dimensional
operator, within a stated memory bound.

Run: ``python benchmarks/bench_scale.py [--width 3200 --probes 10 --steps 100 --dim 50000000]``.

1. The Hessian of the MLP 64-width-width-10 (10.5M parameters at width 3200, float32) on 64
   ``load_digits`` images: ``slq`` with ``reorth="none"`` (two float64 Lanczos vectors per
   probe: the memory bound is ``16 n`` bytes per probe) and, for comparison, the memory a
   stored float32 basis (``reorth="partial"``, ``basis_dtype="operator"``) would need
   (``4 n m`` per probe).
   Prints the wall time, the time of the products (``CountingOperator``), the peak resident
   memory of the process and the bound.
2. A diagonal operator of dimension ``--dim`` (float32, a known spectrum: a power law with
   six outliers): ``lanczos`` with ``reorth="none"`` from one probe, the distinct top Ritz
   values (and their ghost copies) against the exact top eigenvalues, and ``slq``'s traces
   of ``x^2``, ``sqrt(x)`` and ``exp(-x)`` against the exact ones (for a diagonal operator
   Rademacher probes have no noise: the error is the quadrature's). The memory bound is
   ``16 n`` bytes per probe of float64 Lanczos vectors plus the operator's own ``4 n``.

Peak memory is ``ru_maxrss`` of the process (a high-water mark: section 2 includes section
1's).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from torch import nn

from hessntk.hessian import HessianOperator
from hessntk.spectral import CountingOperator, LinearOperator, lanczos, slq


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class Diagonal(LinearOperator):
    """``diag(d)`` for a float32 torch vector ``d``."""

    def __init__(self, d: torch.Tensor) -> None:
        super().__init__(d.shape[0], d.dtype)
        self.d = d[:, None]
        self.assume_symmetric = True

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.d * V


def model_section(width: int, probes: int, steps: int) -> None:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / (X.std(0) + 1e-8), dtype=torch.float32)[:64]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, 10)).eval()
    op = HessianOperator(model, nn.CrossEntropyLoss(), (X, torch.tensor(y[:64])),
                         method="graph")
    n = op.shape[0]
    before = peak_gib()
    counted = CountingOperator(op)
    start = time.perf_counter()
    d = slq(counted, num_probes=probes, num_matvecs=steps, seed=0, reorth="none")
    wall = time.perf_counter() - start
    bound = 16 * n * probes / 2**30
    print(f"1. MLP 64-{width}-{width}-10, n = {n:,} parameters, float32, 64 images; SLQ "
          f"{probes} probes x {steps} steps, reorth='none'")
    print(f"   wall {wall:.1f} s, products {counted.seconds:.1f} s "
          f"({counted.num_matvecs} vectors, {1e3 * counted.seconds / counted.num_matvecs:.0f}"
          f" ms each), wall / products {wall / counted.seconds:.2f}")
    print(f"   Lanczos vectors: bound 16 n x {probes} probes = {bound:.2f} GiB; peak resident "
          f"memory {before:.2f} GiB before SLQ (model, data, graph), {peak_gib():.2f} GiB "
          f"after; a stored basis (reorth='partial', float32) would need "
          f"{4 * n * steps * probes / 2**30:.1f} GiB")
    print(f"   trace {d.trace().value:.5g} +- {d.trace().stderr:.2g}, top node "
          f"{d.nodes.max():.5g}, bottom node {d.nodes.min():.5g}")


def synthetic_section(dim: int, steps: int) -> None:
    rng = np.random.default_rng(0)
    lam = (rng.uniform(0, 1, dim) ** 4).astype(np.float32)  # a power law at 0
    lam[:6] = [50.0, 40.0, 30.0, 20.0, 10.0, 5.0]
    d = torch.from_numpy(lam)
    op = Diagonal(d)
    exact_top = np.sort(lam[:6])[::-1][:3]
    before = peak_gib()
    counted = CountingOperator(op)
    start = time.perf_counter()
    T = lanczos(counted, steps, num_probes=1, seed=0, reorth="none")
    wall = time.perf_counter() - start
    ritz = T.eigh(0)[0]
    print(f"2. diagonal operator, n = {dim:,}, float32; Lanczos {steps} steps, reorth='none', "
          "one probe")
    print(f"   wall {wall:.1f} s, products {counted.seconds:.1f} s; peak resident memory "
          f"{before:.2f} GiB before, {peak_gib():.2f} GiB after (bound: operator 4 n = "
          f"{4 * dim / 2**30:.2f} GiB + vectors 16 n = {16 * dim / 2**30:.2f} GiB)")
    clusters: list[list[float]] = []  # Ritz values within 1% of each other: one eigenvalue
    for value in np.sort(ritz)[::-1]:
        if clusters and abs(value - clusters[-1][-1]) <= 1e-2 * abs(value):
            clusters[-1].append(float(value))
        else:
            clusters.append([float(value)])
    print("   top 3 distinct Ritz values " + ", ".join(
        f"{c[0]:.6g} ({len(c)} cop{'y' if len(c) == 1 else 'ies'})" for c in clusters[:3])
        + f" (exact {', '.join(f'{x:g}' for x in exact_top)}); smallest Ritz value "
        f"{ritz.min():.3g} (exact {lam.min():.3g})")
    dens = slq(op, num_probes=2, num_matvecs=steps, seed=1, reorth="none")
    lam64 = lam.astype(np.float64)
    # Rademacher probes give v^T f(D) v = tr f(D) for a diagonal D: what is left is the
    # quadrature error of the steps.
    for name, f in (("x^2", np.square), ("sqrt(x)", np.sqrt), ("exp(-x)", lambda x: np.exp(-x))):
        est, exact = dens.trace(f).value, float(f(lam64).sum())
        print(f"   SLQ 2 x {steps}: trace of {name} {est:.7g} (exact {exact:.7g}, relative "
              f"error {abs(est - exact) / abs(exact):.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=3200)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--dim", type=int, default=50_000_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_section(args.width, args.probes, args.steps)
    synthetic_section(args.dim, args.steps)


if __name__ == "__main__":
    main()
