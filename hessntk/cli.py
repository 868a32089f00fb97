"""The ``hessntk`` command line: ``hessntk demo`` runs the toolkit on an embedded default."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from hessntk.spectral import aslinearoperator, eigsh, slq, trace


def demo_matrix(n: int = 2000, alpha: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return a dense symmetric matrix with a known spectrum and that spectrum.

    The eigenvalues ``lambda_i = ((i - 1/2) / n)^(1/alpha)`` have the exact lower-tail CDF
    exponent ``alpha`` (theory.md section 7, item 1) and ``lambda_max = 1``; the eigenvectors
    are a random orthogonal basis.

    Examples
    --------
    >>> A, lam = demo_matrix(50)
    >>> bool(np.allclose(np.linalg.eigvalsh(A), np.sort(lam)))
    True
    """
    rng = np.random.default_rng(seed)
    lam = ((np.arange(1, n + 1) - 0.5) / n) ** (1.0 / alpha)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (U * lam) @ U.T, lam


def run_demo(n: int = 2000, seed: int = 0, out=None) -> dict[str, float]:
    """Run the spectral core on :func:`demo_matrix` and print estimates next to the truth."""
    out = sys.stdout if out is None else out
    t0 = time.perf_counter()
    A, lam = demo_matrix(n, seed=seed)
    op = aslinearoperator(A)
    top = eigsh(op, k=5, tol=1e-8, seed=seed)
    tr = trace(op, num_matvecs=60, seed=seed)
    dens = slq(op, num_probes=16, num_matvecs=60, seed=seed)
    shift = 1e-3
    logdet = dens.logdet(shift=shift)
    cdf = dens.cdf([1e-2, 1e-1])
    true_logdet = float(np.log(lam + shift).sum())
    rows = [
        ("top eigenvalue", top.eigenvalues[0], lam.max(), f"{top.num_matvecs} products"),
        ("5th eigenvalue", top.eigenvalues[4], np.sort(lam)[-5], ""),
        ("trace (xtrace)", tr.value, lam.sum(), f"+- {tr.stderr:.2g}, {tr.num_matvecs} products"),
        (f"logdet(A+{shift:g}I)", logdet.value, true_logdet, f"+- {logdet.stderr:.2g} (slq)"),
        ("CDF(0.01)", cdf.value[0], np.mean(lam <= 1e-2), f"bracket [{cdf.lower[0]:.3f}, "
         f"{cdf.upper[0]:.3f}]"),
        ("CDF(0.1)", cdf.value[1], np.mean(lam <= 1e-1), f"bracket [{cdf.lower[1]:.3f}, "
         f"{cdf.upper[1]:.3f}]"),
    ]
    print(f"hessntk demo: spectral core on a {n}x{n} matrix with a power-law lower tail "
          "(alpha = 0.5)", file=out)
    print(f"{'quantity':<22}{'estimate':>14}{'exact':>14}  note", file=out)
    for name, est, exact, note in rows:
        print(f"{name:<22}{est:>14.6g}{exact:>14.6g}  {note}", file=out)
    print(f"done in {time.perf_counter() - t0:.1f} s", file=out)
    return {name: float(est) for name, est, _, _ in rows}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hessntk`` console script."""
    parser = argparse.ArgumentParser(prog="hessntk", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the toolkit on an embedded default")
    demo.add_argument("--n", type=int, default=2000, help="matrix size (default 2000)")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.n < 10:
            parser.error(f"--n must be at least 10; got {args.n}")
        run_demo(args.n, args.seed)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
