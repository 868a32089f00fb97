"""Estimated loss of orthogonality of Lanczos vectors, for partial reorthogonalisation.

Simon's omega recurrence (H. D. Simon, "The Lanczos algorithm with partial
reorthogonalization", Math. Comp. 42(165), 1984, eq. 2.11 and section 4) tracks
``omega[j, i] ~ q_j . q_i`` from the Lanczos coefficients alone, at ``O(j)`` host work per
step and no product or basis read. Lanczos reorthogonalises only when some
``|omega[j + 1, i]|`` exceeds ``sqrt(eps)`` (then for two consecutive steps, since the
three-term recurrence brings the lost components back through ``q_j``). Semi-orthogonality,
``|q_i . q_j| <= sqrt(eps)``, is enough for the tridiagonal matrix to be that of an
orthonormal basis up to ``eps ||A||`` (Simon 1984, theorem 4): the same Ritz values and
quadrature as full reorthogonalisation, for a fraction of its basis reads.
"""

from __future__ import annotations

import numpy as np


class OmegaRecurrence:
    """``omega[p, i] ~ q_j . q_i`` of every probe ``p``, advanced one Lanczos step at a time.

    Parameters
    ----------
    num_probes, num_steps : int
        Probes and Lanczos steps ``m`` (the vectors ``q_0 ... q_m``).
    eps : float
        Unit roundoff of the products (a float32 operator's products carry ``eps32 ||A||``
        errors even when the vectors are float64).
    threshold : float, optional
        The estimate that asks for reorthogonalisation; default ``sqrt(eps)``.

    Examples
    --------
    >>> omega = OmegaRecurrence(1, 3, 1e-16)
    >>> alpha, beta = np.array([[2.0, 2.0, 2.0]]), np.array([[1.0, 1.0, 1.0]])
    >>> bool(omega.advance(np.array([0]), 0, alpha, beta, np.array([3.0]))[0])
    False
    """

    def __init__(self, num_probes: int, num_steps: int, eps: float,
                 threshold: float | None = None) -> None:
        self.eps = float(eps)
        self.threshold = float(np.sqrt(eps) if threshold is None else threshold)
        self.prev = np.zeros((num_probes, num_steps + 1))  # omega[j - 1, :]
        self.cur = np.zeros((num_probes, num_steps + 1))  # omega[j, :]
        self.cur[:, 0] = 1.0

    def advance(self, active: np.ndarray, j: int, alpha: np.ndarray, beta: np.ndarray,
                norm: np.ndarray) -> np.ndarray:
        """Estimate ``omega[j + 1, :j + 1]`` of the active probes from ``alpha[:, :j + 1]``
        and ``beta[:, :j + 1]`` (``beta[:, j]`` the new residual norm) and ``norm``, a lower
        bound on ``||A||`` per active probe; return which probes exceed the threshold."""
        a, b = alpha[active, : j + 1], beta[active, : j + 1]
        cur, prev = self.cur[active], self.prev[active]
        bj = np.maximum(b[:, j], np.finfo(np.float64).tiny)
        # Rounding of one step: eps ||A|| / beta_j (Simon's psi and theta, bounded together).
        psi = self.eps * np.maximum(norm, bj) / bj
        new = np.zeros_like(cur)
        if j > 0:
            i = np.arange(j)
            t = b[:, i] * cur[:, i + 1] + (a[:, i] - a[:, [j]]) * cur[:, i]
            t[:, 1:] += b[:, : j - 1] * cur[:, : j - 1]
            t -= b[:, [j - 1]] * prev[:, :j]
            new[:, :j] = t / bj[:, None]
            new[:, :j] += np.copysign(psi[:, None], new[:, :j])
        new[:, j] = psi
        new[:, j + 1] = 1.0
        self.prev[active], self.cur[active] = cur, new
        return np.abs(new[:, : j + 1]).max(axis=1) > self.threshold

    def reset(self, rows: np.ndarray, j: int) -> None:
        """Record that ``q_{j + 1}`` of probes ``rows`` was orthogonalised against ``q_0..q_j``."""
        self.cur[rows, : j + 1] = self.eps
