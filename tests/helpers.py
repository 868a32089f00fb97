"""Shared test helpers: one dtype-aware closeness check and matrices with known spectra."""

from __future__ import annotations

import numpy as np
import torch

# Default relative tolerances per dtype: a few hundred ulps of accumulated rounding.
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def assert_close(actual, expected, *, rtol: float | None = None, atol: float = 0.0) -> None:
    """Assert ``|actual - expected| <= atol + rtol * max|expected|`` elementwise.

    ``rtol`` defaults by the coarser dtype of the two inputs (float64: 1e-10, float32: 1e-4).
    The scale is the largest magnitude of ``expected`` so that entries near zero in a vector
    of large entries are judged on the vector's scale.
    """
    a, e = _to_numpy(actual), _to_numpy(expected)
    if a.shape != e.shape:
        raise AssertionError(f"shape mismatch: {a.shape} vs {e.shape}")
    if rtol is None:
        dt = np.result_type(a.dtype if a.dtype.kind == "f" else np.float64,
                            e.dtype if e.dtype.kind == "f" else np.float64)
        coarse = np.float32 if np.float32 in (a.dtype, e.dtype) else dt
        rtol = RTOL.get(np.dtype(coarse), 1e-10)
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    scale = np.abs(e64).max() if e64.size else 0.0
    err = np.abs(a64 - e64).max() if e64.size else 0.0
    if not err <= atol + rtol * scale:
        raise AssertionError(
            f"not close: max abs error {err:.3g} > atol {atol:.3g} + rtol {rtol:.3g} * "
            f"scale {scale:.3g}"
        )


def matrix_with_spectrum(lam: np.ndarray, seed: int = 0) -> np.ndarray:
    """Dense symmetric matrix ``U diag(lam) U^T`` with a random orthogonal ``U``."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((len(lam), len(lam))))
    A = (U * lam) @ U.T
    return (A + A.T) / 2


def power_law_spectrum(n: int, alpha: float, lam_max: float = 1.0) -> np.ndarray:
    """Deterministic spectrum with exact lower-tail CDF exponent ``alpha`` (docs/theory.md 7.1)."""
    return lam_max * ((np.arange(1, n + 1) - 0.5) / n) ** (1.0 / alpha)


def marchenko_pastur_matrix(n: int, p: int, seed: int = 0) -> np.ndarray:
    """Wishart ``Z^T Z / n`` with ``Z`` of shape (n, p) iid normal (docs/theory.md 7.2)."""
    Z = np.random.default_rng(seed).standard_normal((n, p))
    return Z.T @ Z / n
