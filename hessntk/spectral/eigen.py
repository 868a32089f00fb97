"""Extreme eigenpairs by thick-restart Lanczos with partial or full reorthogonalisation."""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from hessntk._checks import count, positive, refuse_low_precision
from hessntk._memory import MemoryBudgetError, format_bytes, operator_budget
from hessntk._progress import progress
from hessntk.spectral._backend import Array, itemsize
from hessntk.spectral._threads import single_threaded_host_blas
from hessntk.spectral.krylov import (
    BREAKDOWN_FACTOR,
    _apply,
    _start_vectors,
    basis_storage,
    check_symmetry_step,
)
from hessntk.spectral.operators import LinearOperator, dense_matrix
from hessntk.spectral.orthogonality import OmegaRecurrence
from hessntk.spectral.probes import Seed, as_generator
from hessntk.spectral.qr import cholesky_factor, tall_qr, upper_inverse

_WHICH = ("LA", "SA", "LM")
_REORTH = ("partial", "full")
_ONE = np.array([0])  # the omega recurrence's one probe

#: Float64 vectors of length n that :func:`eigsh` holds besides its basis: the current and
#: previous vectors, the product and the temporaries of a step, a sweep and a restart
#: (measured peaks 1.07-1.15x the basis plus three such vectors, n = 1e6, float32/float64).
STEP_VECTORS = 8


@dataclass(frozen=True)
class EigshResult:
    """Extreme eigenvalues of a symmetric operator.

    Attributes
    ----------
    eigenvalues : numpy.ndarray of shape (k,)
        Float64; descending for ``which="LA"``, ascending for ``"SA"``, by descending
        magnitude for ``"LM"``.
    eigenvectors : array of shape (n, k) or None
        Orthonormal Ritz vectors (float64, on the operator's backend).
    residual_norms : numpy.ndarray of shape (k,)
        ``||A y_i - lambda_i y_i||`` for unit Ritz vectors ``y_i``.
    num_matvecs : int
        Products used.
    converged : bool
        Whether every residual met the tolerance.
    """

    eigenvalues: np.ndarray
    eigenvectors: Any
    residual_norms: np.ndarray
    num_matvecs: int
    converged: bool

    def __repr__(self) -> str:
        vals = np.array2string(self.eigenvalues, precision=6)
        return (
            f"EigshResult(eigenvalues={vals}, max_residual={self.residual_norms.max():.2g}, "
            f"num_matvecs={self.num_matvecs}, converged={self.converged})"
        )


@single_threaded_host_blas
def eigsh(
    op: LinearOperator,
    k: int = 6,
    *,
    which: str = "LA",
    tol: float = 1e-6,
    seed: Seed = 0,
    v0: Array | np.ndarray | None = None,
    ncv: int | None = None,
    max_matvecs: int | None = None,
    return_eigenvectors: bool = True,
    basis_dtype: str = "operator",
    reorth: str = "partial",
    max_memory: int | None = None,
) -> EigshResult:
    """Compute ``k`` extreme eigenpairs of a symmetric operator.

    Thick-restart Lanczos (Wu and Simon, SIMAX 22(2), 2000): the Krylov basis grows to
    ``ncv`` vectors, then restarts from the best ``~(ncv + k) / 2`` Ritz vectors, so no
    information is thrown away between restarts (unlike power iteration with deflation,
    which keeps one vector). Each step subtracts the recurrence's own terms first and then,
    where it reorthogonalises, sweeps once against the basis (a second time only when the
    DGKS test asks, as after a restart).

    Parameters
    ----------
    op : LinearOperator
        Symmetric operator of size ``n``.
    k : int
        Number of eigenpairs, ``1 <= k < n``.
    which : {"LA", "SA", "LM"}
        Largest algebraic, smallest algebraic or largest magnitude.
    tol : float
        Relative residual tolerance: stop when ``||A y - lambda y|| <= tol * |lambda|`` for all
        ``k`` pairs (ARPACK's criterion; the eigenvalue error is then about ``tol**2 * |lambda|``
        times ``|lambda| / gap``).
    seed : int or numpy.random.Generator
        Seed of the random start vector.
    v0 : array of shape (n,), optional
        Start vector.
    ncv : int, optional
        Largest basis size; default ``min(n, max(2 * k + 20, 40))``.
    max_matvecs : int, optional
        Product budget; default ``max(1000, 20 * ncv)``. When exhausted, the result has
        ``converged=False`` and a warning is issued.
    return_eigenvectors : bool
        Return the Ritz vectors.
    basis_dtype : {"operator", "float64"}
        The Krylov basis in the operator's dtype (default) or in float64. For a float32
        operator the default halves the memory and the reads of the reorthogonalisation
        (most of eigsh's own time), with coefficients and the new vector float64: the
        eigenvalues keep the accuracy of the float32 products and the Ritz vectors are
        orthonormal to float32 rounding (``basis_dtype="float64"``: to float64's).
    reorth : {"partial", "full"}
        ``"partial"`` (default): until the first restart, reorthogonalise only where Simon's
        omega recurrence (Math. Comp. 42, 1984) estimates a loss of orthogonality above
        ``eps**0.75``, then restart from, or return, Ritz vectors orthonormalised by a
        Rayleigh-Ritz step on the host (no product); full from the first restart on. Simon's
        own ``sqrt(eps)`` keeps the Ritz values but not the Ritz vectors' residuals: with a
        float32 basis they came out 23x ``tol`` on a Marchenko-Pastur spectrum. ``"full"``:
        a sweep every step. Both give the same eigenvalues, orthonormality and residuals to
        the products' rounding (tested against exact spectra, float64 and float32).
    max_memory : int, optional
        Bytes the Krylov basis may take: ``(ncv + 1) n s`` with ``s`` bytes per entry of
        ``basis_dtype``, plus :data:`STEP_VECTORS` (8) float64 vectors of length ``n`` for a
        step's and a restart's temporaries (a 124M-parameter float32 model at the default
        ``ncv = 40``: 20.3 GB + 7.9 GB; measured peaks on a 1M-dimensional operator 0.93-0.98
        of it). Default: a quarter of the free memory of the operator's device (the least
        over the ranks of a data-parallel operator). A basis that does not fit is refused
        up front.

    Returns
    -------
    EigshResult

    Raises
    ------
    ValueError
        For ``k`` outside ``[1, n)``, or an unknown ``which`` or ``reorth``.
    hessntk.MemoryBudgetError
        A ``ValueError`` for a basis that does not fit in ``max_memory`` (it names the fixes).

    Examples
    --------
    >>> import numpy as np
    >>> from hessntk.spectral import aslinearoperator
    >>> op = aslinearoperator(np.diag(np.arange(1.0, 101.0)))
    >>> np.round(eigsh(op, k=3).eigenvalues, 6)
    array([100.,  99.,  98.])
    """
    n = op.shape[0]
    if which not in _WHICH:
        raise ValueError(f"Expected which in {_WHICH}; got {which!r}.")
    k = count(k, "k")
    tol = positive(tol, "tol")
    refuse_low_precision(op._xp.eps(op.dtype), op.dtype, "eigsh")
    if reorth not in _REORTH:
        raise ValueError(f"Expected reorth in {_REORTH}; got {reorth!r}.")
    if not 1 <= k < n:
        raise ValueError(
            f"Expected 1 <= k < n = {n}; got k={k}. For all eigenvalues of a small operator "
            "build the dense matrix and use numpy.linalg.eigh."
        )
    ncv = min(n, max(2 * k + 20, 40)) if ncv is None else count(ncv, "ncv")
    if not k < ncv <= n:
        raise ValueError(f"Expected k < ncv <= n = {n}; got ncv={ncv} with k={k}.")
    max_matvecs = (max(1000, 20 * ncv) if max_matvecs is None
                   else count(max_matvecs, "max_matvecs"))
    xp = op._xp
    stored = basis_storage(op, basis_dtype)
    _check_memory(op, ncv, k, stored, max_memory)
    rng = as_generator(seed)
    start = _start_vectors(op, None if v0 is None else v0, 1, rng)
    V = xp.empty((ncv + 1, n), stored)  # row j is written before it is read
    q = q_prev = start[:, 0] / xp.norm(start[:, 0], axis=0)  # float64 v_j, v_{j-1}
    V = xp.set_index(V, 0, xp.cast(q, stored))
    H = np.zeros((ncv + 1, ncv + 1))
    D = np.zeros_like(H)  # Lanczos's relation is A V = V (H + D) + residual
    eps = xp.eps(op.dtype)
    norm_est = 0.0
    # Partial reorthogonalisation (Simon 1984) until the first restart or breakdown: the
    # omega recurrence needs a tridiagonal projection. A restart after skipped sweeps first
    # orthonormalises its Ritz vectors (_rayleigh_ritz); full from there on.
    omega = OmegaRecurrence(1, ncv, eps, threshold=eps**0.75) if reorth == "partial" else None
    sweep_next, skipped = True, False  # skipped: a step kept only semi-orthogonality
    j = 0  # number of basis vectors whose product is in H
    last_wanted = None
    num_matvecs = 0
    for _ in progress(itertools.count(), "eigsh products", total=max_matvecs):
        w = _apply(op, V[j][None, :], num_matvecs, np.array([0]))[0]
        num_matvecs += 1
        # The couplings of A v_j the recurrence knows (beta_{j-1}, or the arrow after a
        # restart) and alpha_j go first, so that a full sweep after them removes only
        # rounding: one sweep where subtracting everything at once needed two (DGKS).
        known = np.flatnonzero(H[:j, j])
        h = np.zeros(j + 1)
        h[known] = H[known, j]
        tridiagonal = len(known) == 1 and known[0] == j - 1
        # w is ours when the product was cast to float64 (a new array): update in place
        a, w = xp.recurrence(q[None, :], w[None, :], q_prev[None, :] if tridiagonal else None,
                             xp.from_numpy(h[known] if tridiagonal else np.zeros(1)),
                             owned=op.dtype != xp.float64)
        w, h[j] = w[0], float(xp.to_numpy(a)[0])
        if len(known) and not tridiagonal:  # the arrow after a restart (a slice: no gather)
            part = xp.transpose(V[:j]) @ xp.from_numpy(h[:j], stored)
            w = w - xp.cast(part, xp.float64)
        before = beta = float(xp.to_numpy(xp.norm(w, axis=0)))
        sweep = omega is None or sweep_next or j <= 1  # j = 1: the symmetry check reads h[0]
        if omega is not None:
            alpha = np.append(np.diag(H)[:j], h[j])[None, :]
            offdiag = np.append(np.diag(H, -1)[:j], beta)[None, :]
            bound = max(norm_est, float(np.sqrt(h @ h + beta**2)))
            over = bool(omega.advance(_ONE, j, alpha, offdiag, np.array([bound]))[0])
            sweep, sweep_next = sweep or over, over  # Simon: this step and the next
        if sweep:
            Vj = V[: j + 1]
            for sweeps in (1, 2):
                # Classical Gram-Schmidt, the second sweep only where the first cancelled
                # much of w (||w'|| < ||w|| / sqrt(2), the DGKS criterion ARPACK uses), and
                # always after a restart: the kept Ritz vectors are orthonormal only to
                # their storage's rounding, and a sweep against Q with Q^T Q = I + E leaves
                # -E c of its coefficients c, large in the arrow; a second one leaves E^2 c.
                c = Vj @ xp.cast(w, stored)  # casts are no-ops with a float64 basis
                w = w - xp.cast(xp.transpose(Vj) @ c, xp.float64)
                c = xp.to_numpy(c)
                h += c
                # Symmetric H replaces the couplings A v_i (i < j) have to v_j (beta_{j-1},
                # the arrow, or 0) by v_i . A v_j: their difference, the sweep's c_i, is
                # Lanczos's relation's own; kept for the Rayleigh-Ritz step.
                D[j, :j] -= c[:j]
                beta = float(xp.to_numpy(xp.norm(w, axis=0)))
                if beta >= before / np.sqrt(2.0) and (sweeps == 2 or len(known) <= 1):
                    break
                before = beta
            if omega is not None:
                omega.reset(_ONE, j)
        skipped = skipped or not sweep
        # ||A v_j||, a lower bound on ||A||, from the coefficients (no read of A v_j).
        norm_est = max(norm_est, float(np.sqrt(h @ h + beta**2)))
        if num_matvecs == 2 and j == 1:  # before any restart: V[0], V[1] = A V[0] / beta
            check_symmetry_step(op, h[:1], H[1:2, 0], np.array([norm_est]), "Krylov")
        H[: j + 1, j] = h
        H[j, : j + 1] = h
        j += 1
        breakdown = beta <= BREAKDOWN_FACTOR * eps * max(norm_est, np.finfo(float).tiny)
        theta, S, sel = _ritz(H[:j, :j], k, which)
        resid = (0.0 if breakdown else beta) * np.abs(S[j - 1, sel])
        floor = eps * max(np.abs(theta).max(), np.finfo(float).tiny)
        scale = np.maximum(np.abs(theta[sel]), floor)
        if breakdown and j < n:
            # An invariant subspace hides multiplicities that a single Krylov sequence cannot
            # see: restart from a fresh vector, and accept once a fresh start changed nothing.
            wanted = theta[sel]
            if last_wanted is not None and len(wanted) == len(last_wanted) and np.allclose(
                wanted, last_wanted, rtol=tol, atol=floor
            ):
                converged = True
                break
            last_wanted = wanted
        elif len(sel) == k and np.all(resid <= tol * scale):
            converged = True
            break
        if num_matvecs >= max_matvecs:
            converged = False
            warnings.warn(
                f"eigsh did not converge in {num_matvecs} products (max residual "
                f"{resid.max():.2g}); raise max_matvecs or ncv, or loosen tol.",
                RuntimeWarning,
                stacklevel=2,
            )
            break
        if breakdown:
            # Invariant subspace with fewer than k wanted pairs: continue from a fresh random
            # vector orthogonal to the basis (its coupling to the basis is exactly zero).
            w = xp.from_numpy(rng.standard_normal(n))
            for _ in range(2):
                c = V[:j] @ xp.cast(w, stored)
                w = w - xp.cast(xp.transpose(V[:j]) @ c, xp.float64)
            beta = 0.0
            w = w / xp.norm(w, axis=0)
            omega = None
        else:  # w is ours by now (the recurrence's or a sweep's): divided in place
            w = xp.divide_rows(w[None, :], xp.from_numpy(np.array([beta])))[0]
        if j == ncv:  # thick restart from the most wanted Ritz vectors
            num_keep = min(ncv - 1, k + (ncv - k) // 2)
            keep = _order(theta, which)[:num_keep]
            V = xp.combine_rows(V, xp.from_numpy(np.ascontiguousarray(S[:, keep]), stored))
            H[:] = 0.0
            if skipped:  # a semi-orthogonal basis: orthonormalise the Ritz vectors first
                Y = xp.transpose(V[:num_keep])  # a view: Q is written over it where it can
                Q, B, arrow, w = _rayleigh_ritz(
                    xp, Y, theta[keep], beta * S[j - 1, keep], w,
                    S[:, keep].T @ D[:j, :j] @ S[:, keep], in_place=True)
                if Q is not Y:  # jax, or the Householder guard: a new array
                    V = xp.set_index(V, slice(0, num_keep), xp.transpose(Q))
                H[:num_keep, :num_keep] = B
                skipped = False
            else:
                H[:num_keep, :num_keep] = np.diag(theta[keep])
                arrow = beta * S[j - 1, keep]
            H[num_keep, :num_keep] = H[:num_keep, num_keep] = arrow
            omega, D[:] = None, 0.0
            j = num_keep
        else:
            H[j, j - 1] = H[j - 1, j] = beta
        q_prev, q = q, w
        V = xp.set_index(V, j, w)  # cast to the basis dtype in the copy: no temporary
    order, values, vectors = sel, theta[sel], None
    if return_eigenvectors:
        vectors = xp.cast(_mm(xp, V[:j], S[:, order]), xp.float64)
        if skipped:  # Ritz vectors of a semi-orthogonal basis: orthonormal ones instead
            a = (0.0 if breakdown else beta) * S[j - 1, order]
            Q, B, arrow, _ = _rayleigh_ritz(xp, vectors, values, a, w / beta if beta else w,
                                            S[:, order].T @ D[:j, :j] @ S[:, order])
            values, Z = np.linalg.eigh(B)
            pick = _order(values, which)
            values, Z = values[pick], Z[:, pick]
            vectors, resid = _mm(xp, xp.transpose(Q), Z), np.abs(arrow @ Z)
    return EigshResult(
        eigenvalues=values.copy(),
        eigenvectors=vectors,
        residual_norms=resid,
        num_matvecs=num_matvecs,
        converged=converged,
    )


def _check_memory(op: LinearOperator, ncv: int, k: int, stored: Any, max_memory: int | None
                  ) -> None:
    """Refuse a Krylov basis (and the step's float64 vectors) beyond the budget."""
    n = op.shape[0]
    budget, allowed = operator_budget(op, max_memory)
    need = ((ncv + 1) * itemsize(stored) + STEP_VECTORS * 8) * n
    if need <= budget:
        return
    smaller = (f"a smaller ncv (at least k + 1 = {k + 1}; more restarts), "
               if ncv > k + 1 else "")
    if stored != op.dtype:  # a float64 basis of a float32 operator
        smaller += "basis_dtype='operator' (half the memory), "
    raise MemoryBudgetError(
        f"eigsh keeps a Krylov basis of ncv + 1 = {ncv + 1} vectors of n = {n} entries "
        f"({itemsize(stored)} bytes each) and {STEP_VECTORS} float64 vectors: "
        f"{format_bytes(need)}, "
        f"more than max_memory = {format_bytes(budget)} ({allowed}). Use "
        f"{smaller}or give a larger max_memory if the memory is there.", need, budget, "eigsh")


def _order(theta: np.ndarray, which: str) -> np.ndarray:
    if which == "LA":
        return np.argsort(-theta, kind="stable")
    if which == "SA":
        return np.argsort(theta, kind="stable")
    return np.argsort(-np.abs(theta), kind="stable")


def _ritz(Hj: np.ndarray, k: int, which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    theta, S = np.linalg.eigh(Hj)
    return theta, S, _order(theta, which)[:k]


def _rayleigh_ritz(xp: Any, Y: Array, theta: np.ndarray, a: np.ndarray, w: Array,
                  F: np.ndarray, in_place: bool = False
                  ) -> tuple[Array, np.ndarray, np.ndarray, Array]:
    """Orthonormalise Ritz vectors ``Y`` (n, m) of a semi-orthogonal Lanczos basis and return
    ``Q``, the projection ``B = Q^T A Q``, the coupling ``c`` and the new residual ``w'`` of
    ``A Q = Q B + w' c^T``, from host work and two reads of ``Y``, no product.

    Lanczos's relation ``A V = V (T + D) + beta v e^T`` holds to rounding whether or not
    ``V`` is orthonormal (Paige 1976; ``T`` symmetric, ``D`` strictly lower: the sweeps'
    coefficients ``T`` does not hold), so ``A Y = Y diag(theta) + V D S + w a^T`` with
    ``a = beta S[-1]``, and ``Y^T V D S = F + O(loss ||D||)`` with ``F = S^T D S``. With
    ``Y = Q R`` and ``w = Q g + nu w'``:
    ``B = R diag(theta) R^-1 + R^-T F R^-1 + g (R^-T a)^T`` and ``c = nu R^-T a``. ``B`` is
    symmetric up to rounding and the basis's loss of orthogonality squared (``eps`` for a
    semi-orthogonal one, Simon 1984). ``in_place``: ``Q`` is written over ``Y`` (the
    caller's basis rows) in row blocks where the backend allows, with no second ``(n, m)``
    array (:func:`eigsh`'s memory statement counts none).
    """
    # One CholeskyQR pass: Y has condition 1 + loss, so Q is orthonormal to the rounding of
    # its storage. The Gram is float64 (a float32 Gram's own 1e-6 would exceed the loss it
    # measures).
    R = cholesky_factor(xp.gram(Y, Y))
    if R is None:  # not reached for a semi-orthogonal basis; kept as a guard
        Q, R, _ = tall_qr(xp, Y, np.finfo(np.float64).eps)  # Q in Y's dtype
        Rinv = upper_inverse(R)
    else:
        Rinv = upper_inverse(R)
        Rinv_dev = xp.from_numpy(Rinv, Y.dtype)
        Q = xp.matmul_inplace(Y, Rinv_dev) if in_place else xp.matmul(Y, Rinv_dev)
    g = xp.transpose(Q) @ xp.cast(w, Q.dtype)
    w = w - xp.cast(Q @ g, xp.float64)
    nu = float(xp.to_numpy(xp.norm(w, axis=0)))
    Ra = scipy.linalg.solve_triangular(R, a, trans="T")
    B = (R * theta) @ Rinv + Rinv.T @ F @ Rinv + np.outer(xp.to_numpy(g), Ra)
    return Q, (B + B.T) / 2, nu * Ra, w / nu if nu > 0 else w


def _mm(xp: Any, Vrows: Array, S: np.ndarray) -> Array:
    """Return ``Vrows^T @ S`` with basis rows Vrows (j, n) and host coefficients S (j, r)."""
    return xp.transpose(Vrows) @ xp.from_numpy(np.ascontiguousarray(S), Vrows.dtype)


def extreme_eigenvalues(
    op: LinearOperator,
    k: int,
    *,
    which: str = "LA",
    tol: float = 1e-6,
    seed: Seed = 0,
    max_matvecs: int | None = None,
    return_eigenvectors: bool = False,
    max_memory: int | None = None,
) -> EigshResult:
    """The ``k`` extreme eigenpairs: :func:`eigsh` for ``k < n``, the dense matrix otherwise.

    With ``k >= n`` (e.g. a 10-entry bias block) all ``n`` eigenpairs come from the dense
    matrix, built with ``n`` products and diagonalised in float64 on the host.

    Examples
    --------
    >>> import numpy as np
    >>> from hessntk.spectral import aslinearoperator
    >>> extreme_eigenvalues(aslinearoperator(np.diag([3.0, 1.0])), 5).eigenvalues
    array([3., 1.])
    """
    n = op.shape[0]
    if which not in _WHICH:
        raise ValueError(f"Expected which in {_WHICH}; got {which!r}.")
    if k < n:
        return eigsh(op, k, which=which, tol=tol, seed=seed, max_matvecs=max_matvecs,
                     return_eigenvectors=return_eigenvectors, max_memory=max_memory)
    xp = op._xp
    A = dense_matrix(op)
    vals, vecs = np.linalg.eigh(A)
    order = _order(vals, which)
    vals, vecs = vals[order], vecs[:, order]
    resid = np.linalg.norm(A @ vecs - vecs * vals, axis=0)
    return EigshResult(
        eigenvalues=vals,
        eigenvectors=xp.from_numpy(np.ascontiguousarray(vecs), xp.float64)
        if return_eigenvectors else None,
        residual_norms=resid,
        num_matvecs=n,
        converged=True,
    )
