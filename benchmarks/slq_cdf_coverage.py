"""Coverage of SLQ spectral-CDF summaries against exact dense spectra (issue 14, item 3).

Run: ``python benchmarks/slq_cdf_coverage.py [--reps 100]``. Prints, for several probe x step
settings, how often each summary of the fraction of negative eigenvalues covers the exact
fraction: the Gauss point estimate +- 1.96 standard errors (probe noise only) and
``CDFEstimate.interval(0.95)`` (quadrature brackets and probe noise). Two operators:

1. the exact Hessian of the demo's MLP 64-32-10 (2,410 parameters, tanh, cross-entropy)
   trained on 256 ``load_digits`` images, built densely from Hessian-vector products;
2. a synthetic spectrum with 22% negative eigenvalues, a bulk near zero and 8 outliers.

Each SLQ run uses the dense matrix as its operator (the same Lanczos as on the model; only
faster), with seeds 0..reps-1.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hessntk import hessian
from hessntk.cli.demo import _digits, _train
from hessntk.spectral import aslinearoperator, slq

SETTINGS = [(4, 20), (8, 40), (12, 80), (30, 30), (16, 120)]


def demo_hessian() -> np.ndarray:
    torch.set_num_threads(1)
    train, _ = _digits(256, 0, torch.float64, torch.device("cpu"))
    model, info = _train(32, train, 0)
    op = hessian.HessianOperator(model, torch.nn.CrossEntropyLoss(), train)
    H = np.asarray(op.matmat(np.eye(op.shape[0])))
    print(f"demo MLP: {op.shape[0]} parameters, {info['steps']} training steps, "
          f"final loss {info['final_loss']:.2e}")
    return (H + H.T) / 2


def synthetic(n: int = 600, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lam = np.concatenate([-np.abs(rng.standard_normal(132)) * 0.05,
                          np.abs(rng.standard_normal(n - 140)) * 0.1, rng.uniform(5, 50, 8)])
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (U * lam) @ U.T


def coverage(H: np.ndarray, name: str, reps: int) -> None:
    lam = np.linalg.eigvalsh(H)
    op = aslinearoperator(H)
    level = 16 * np.finfo(np.float64).eps * np.abs(lam).max()
    truth = float(np.mean(lam < -level))
    print(f"\n{name}: n = {H.shape[0]}, exact negative fraction {truth:.4f}")
    print(f"{'probes x steps':>15} {'mean value':>11} {'mean stderr':>12} {'+-1.96 se':>10} "
          f"{'interval':>9} {'mean width':>11} {'time':>7}")
    for P, m in SETTINGS:
        t0 = time.perf_counter()
        pm = inside = 0
        values, errs, widths = [], [], []
        for seed in range(reps):
            dens = slq(op, num_probes=P, num_matvecs=min(m, H.shape[0]), seed=seed)
            c = dens.cdf(-dens.rounding_level)
            lo, hi = c.interval(0.95)
            values.append(c.value[0])
            errs.append(c.stderr[0])
            widths.append(hi[0] - lo[0])
            pm += abs(c.value[0] - truth) <= 1.96 * c.stderr[0]
            inside += lo[0] <= truth <= hi[0]
        print(f"{P:>7} x {m:<5} {np.mean(values):>11.4f} {np.mean(errs):>12.4f} "
              f"{pm / reps:>10.2f} {inside / reps:>9.2f} {np.mean(widths):>11.3f} "
              f"{time.perf_counter() - t0:>6.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100)
    args = parser.parse_args()
    coverage(demo_hessian(), "Hessian of the demo MLP", args.reps)
    coverage(synthetic(), "synthetic spectrum", args.reps)


if __name__ == "__main__":
    main()
