"""Linear solves with symmetric positive definite operators: block conjugate gradients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hessntk.spectral.operators import LinearOperator, aslinearoperator

__all__ = ["CGResult", "cg"]


@dataclass(frozen=True)
class CGResult:
    """Solutions of ``A X = B`` by conjugate gradients.

    Attributes
    ----------
    x : array of shape (n, k) or (n,)
        The solutions, float64, on the operator's backend.
    residuals : numpy.ndarray of shape (k,)
        Final relative residuals ``||B_j - A x_j|| / ||B_j||`` (recomputed, not recursed).
    num_iterations : int
        Iterations (each one a ``matmat`` with the still unconverged columns).
    converged : bool
    """

    x: Any
    residuals: np.ndarray
    num_iterations: int
    converged: bool


def cg(
    op: LinearOperator | Any,
    b: Any,
    *,
    tol: float = 1e-10,
    max_iterations: int | None = None,
    check: bool = True,
) -> CGResult:
    """Solve ``A x = b`` for a symmetric positive definite ``A`` by conjugate gradients.

    Every column of ``b`` runs its own recursion; all columns share one ``matmat`` per
    iteration (columns that converged are frozen). Bookkeeping is in float64.

    Parameters
    ----------
    op : LinearOperator or array
        Symmetric positive definite operator (anything :func:`aslinearoperator` accepts).
    b : array of shape (n,) or (n, k)
        Right-hand sides on the operator's backend (numpy arrays are converted).
    tol : float
        Relative residual at which a column stops.
    max_iterations : int, optional
        Default ``n`` (exact arithmetic converges in at most ``n`` steps).
    check : bool
        Raise when a column did not reach ``tol`` or when ``A`` shows a non-positive
        curvature ``p^T A p <= 0`` (not positive definite).

    Returns
    -------
    CGResult

    Raises
    ------
    ValueError
        Bad shapes, or (with ``check``) an operator that is not positive definite.
    RuntimeError
        With ``check``, when ``max_iterations`` is reached before ``tol``.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> res = cg(A, np.array([1.0, 2.0]))
    >>> bool(np.allclose(A @ res.x, [1.0, 2.0]))
    True
    """
    op = aslinearoperator(op)
    xp = op._xp
    n = op.shape[0]
    B = xp.from_numpy(b, xp.float64) if isinstance(b, np.ndarray) else xp.cast(b, xp.float64)
    vector = B.ndim == 1
    if vector:
        B = B[:, None]
    if B.ndim != 2 or B.shape[0] != n:
        raise ValueError(f"Expected b of shape ({n},) or ({n}, k); got {tuple(B.shape)}.")
    max_iterations = n if max_iterations is None else int(max_iterations)

    def apply(V: Any) -> Any:
        return xp.cast(op.matmat(xp.cast(V, op.dtype)), xp.float64)

    bnorm = xp.to_numpy(xp.norm(B, axis=0))
    bnorm = np.where(bnorm > 0, bnorm, 1.0)
    X = B * 0.0
    R = B
    Pd = R
    rr = xp.to_numpy(xp.sum(R * R, axis=0))
    active = np.sqrt(rr) / bnorm > tol
    it = 0
    while active.any() and it < max_iterations:
        idx = np.flatnonzero(active)
        cols = xp.from_numpy(idx.astype(np.int64)) if len(idx) < len(active) else None
        Pa = Pd if cols is None else Pd[:, cols]
        AP = apply(Pa)
        pap = xp.to_numpy(xp.sum(Pa * AP, axis=0))
        if check and np.any(pap <= 0):
            raise ValueError(f"Expected a positive definite operator; conjugate gradients met "
                             f"p^T A p = {pap.min():.3g} <= 0 at iteration {it + 1}.")
        step = np.zeros(len(active))
        step[idx] = rr[idx] / pap
        step_full = xp.from_numpy(step)
        if cols is None:
            X = X + Pd * step_full
            R = R - AP * step_full
        else:
            AP_full = xp.set_index(B * 0.0, (slice(None), cols), AP)
            X = X + Pd * step_full
            R = R - AP_full * step_full
        rr_new = xp.to_numpy(xp.sum(R * R, axis=0))
        beta = np.where(active, rr_new / np.where(rr > 0, rr, 1.0), 0.0)
        Pd = R + Pd * xp.from_numpy(beta)
        rr = np.where(active, rr_new, rr)
        active = active & (np.sqrt(rr) / bnorm > tol)
        it += 1
    residuals = xp.to_numpy(xp.norm(B - apply(X), axis=0)) / bnorm
    converged = not active.any()
    if check and not converged:
        raise RuntimeError(f"Conjugate gradients did not reach tol={tol:g} in {it} iterations "
                           f"(largest relative residual {residuals.max():.3g}); raise "
                           "max_iterations or precondition the system.")
    return CGResult(X[:, 0] if vector else X, residuals, it, converged)
