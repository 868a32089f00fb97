"""Thin QR factorisation ``Y = Q R`` of tall sketches (``n >> k``), for the trace estimators.

CholeskyQR computes ``R`` from the Cholesky factor of the small Gram matrix ``Y^T Y`` and
``Q = Y R^{-1}``: two matrix products, the fastest tall-skinny QR, but ``Q`` loses
orthogonality like ``kappa(Y)^2``. A second pass on ``Q`` (CholeskyQR2) restores it to working
accuracy whenever ``kappa(Y)`` is small enough for the first Cholesky to be reliable
(Yamamoto, Nakatsukasa, Yanagisawa and Fukaya, "Roundoff error analysis of the CholeskyQR2
algorithm", ETNA 44, 2015, section 3). Beyond that bound, or for a rank-deficient
sketch, Householder QR (the backend's ``qr``) is used instead.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from hessntk.spectral._backend import Array, Backend

_UNIT_ROUNDOFF = np.finfo(np.float64).eps / 2


def tall_qr(xp: Backend, Y: Array, tol: float) -> tuple[Array, np.ndarray, str]:
    """Thin QR of ``Y`` (n, k), ``Q`` orthonormal to within ``tol``.

    The Grams are float64 whatever ``Y``'s dtype (:meth:`Backend.gram`) and ``Q`` is in
    ``Y``'s dtype: a float32 sketch of a float32 operator gives a float32 ``Q``, orthonormal
    to float32 rounding (the products round their inputs to float32 anyway), with half the
    memory and none of the float64 copies.

    Parameters
    ----------
    xp : Backend
        The backend holding ``Y``.
    Y : array of shape (n, k), float32 or float64, ``n >= k``
    tol : float
        Accepted ``||Q^T Q - I||_2``; one CholeskyQR pass is kept when its loss of
        orthogonality is below it, by Yamamoto et al.'s bound for float64 ``Y`` and as
        measured on the float64 Gram of ``Q`` for float32 ``Y`` (pass the unit roundoff of
        the products' dtype: a loss below the products' own rounding changes nothing).

    Returns
    -------
    Q : array of shape (n, k), in ``Y``'s dtype, on the backend
    R : numpy.ndarray of shape (k, k), upper triangular, float64
    method : {"cholesky", "cholesky2", "householder"}
        The factorisation used.

    Examples
    --------
    >>> from hessntk.spectral._backend import Backend
    >>> Y = np.random.default_rng(0).standard_normal((1000, 5))
    >>> Q, R, method = tall_qr(Backend(), Y, tol=1e-7)
    >>> method, bool(np.allclose(Q @ R, Y)), bool(np.allclose(Q.T @ Q, np.eye(5)))
    ('cholesky', True, True)
    """
    n, k = Y.shape
    # Yamamoto et al. (2015), section 3, with u the float64 unit roundoff: for delta <= 1 the
    # first Cholesky succeeds and ||Q1^T Q1 - I||_2 <= (5/64) delta^2; the second pass then
    # gives ||Q^T Q - I||_F <= 6 (n k u + k (k + 1) u).
    size = n * k + k * (k + 1)
    R1 = cholesky_factor(xp.gram(Y, Y))
    if R1 is None:
        return (*_householder(xp, Y), "householder")
    kappa = np.linalg.cond(R1)  # = kappa(Y), up to the Gram's rounding
    delta = 8.0 * kappa * np.sqrt(size * _UNIT_ROUNDOFF)
    if not np.isfinite(kappa) or delta > 1.0:
        return (*_householder(xp, Y), "householder")
    Q = xp.matmul(Y, xp.from_numpy(upper_inverse(R1), Y.dtype))
    if Y.dtype == xp.float64:
        if 5.0 / 64.0 * delta**2 <= tol:
            return Q, R1, "cholesky"
        G = xp.gram(Q, Q)
    else:
        # Q = Y R^-1 formed in float32 loses about kappa eps32 more (0.05 eps32 at kappa 1,
        # 4.5 at 40, 160 at 500), which the bound above does not see: measure the loss on
        # the Gram a second pass needs anyway.
        G = xp.gram(Q, Q)
        if np.linalg.norm(G - np.eye(k), 2) <= tol:
            return Q, R1, "cholesky"
    R2 = cholesky_factor(G)
    if R2 is None:  # not reached within the bound above; kept as a guard
        return (*_householder(xp, Y), "householder")
    Q = xp.matmul_inplace(Q, xp.from_numpy(upper_inverse(R2), Y.dtype))  # Q is ours
    return Q, R2 @ R1, "cholesky2"


def cholesky_factor(G: np.ndarray) -> np.ndarray | None:
    """Upper ``R`` with ``R^T R = G``, or None when ``G`` is not numerically positive definite."""
    if not np.all(np.isfinite(G)):
        return None
    try:
        return scipy.linalg.cholesky((G + G.T) / 2, lower=False)
    except np.linalg.LinAlgError:
        return None


def upper_inverse(R: np.ndarray) -> np.ndarray:
    return scipy.linalg.solve_triangular(R, np.eye(R.shape[0]), lower=False)


def _householder(xp: Backend, Y: Array) -> tuple[Array, np.ndarray]:
    Q, R = xp.qr(xp.cast(Y, xp.float64))
    return xp.cast(Q, Y.dtype), xp.to_numpy(R)
