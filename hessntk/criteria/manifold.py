"""Convention A of the IIC: the curvature of the interpolating manifold (docs/theory.md 1.6).

Convention B (the default, the reference implementation's) uses ``H* = hess R(theta*)`` only.
Convention A (the exact Laplace approximation on the interpolating manifold ``M``) replaces
it, along ``M``, by the Riemannian Hessian ``H_M = hess R(theta*) + sum_i mu_i hess f_i(theta*)``
with the least-squares multiplier ``mu = -(J J^T)^-1 J grad R(theta*)``; the IIC then gains

``(1/N) [log det(Q^T H_M Q) - log det(Q^T H* Q)]``,  ``Q`` an orthonormal basis of ``ker J``.

Matrix-free, with the projector ``Pr = I - J^T (J J^T)^-1 J`` onto ``ker J`` and any ``c > 0``,
``log det(Q^T B Q) = log det(Pr B Pr + c (I - Pr)) - N log c`` (docs/theory.md 1.6), so the
correction is a difference of two ``P x P`` log-determinants, estimated with common probes
(:func:`hessntk.spectral.logdet_difference`). The multiplier term's products come from the
Gram operator (``K.output_hessian(mu)``), so the same code serves every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hessntk.criteria._arrays import dense, f64, float64_operator, host, in_dtype
from hessntk.spectral.logdets import logdet_difference
from hessntk.spectral.operators import LinearOperator
from hessntk.spectral.probes import Seed

__all__ = ["MultiplierCorrection", "Regulariser", "multiplier_correction"]

DENSE_MAX_P = 4096  # dense P x P matrices (float64, 134 MB at the limit)


@dataclass
class Regulariser:
    """``R`` at ``theta*``: its gradient (flat, float64) and a Hessian-product operator.

    Either Gaussian (``R = 1/2 ||theta - m||^2_{S^-1}``, ``H = diag(1 / var)``) or a general
    regulariser operator (:class:`hessntk.spectral.protocols.RegulariserLike`).
    """

    grad: Any
    hessian: LinearOperator
    scale: float  # a typical diagonal entry of H (sets the c of the projected operators)
    dense: Callable[[], np.ndarray]

    @classmethod
    def gaussian(cls, like: LinearOperator, delta: Any, var: Any) -> Regulariser:
        inv = 1.0 / var

        def matmat(V: Any) -> Any:
            return f64(like, V) * inv[:, None]

        inv_host = np.sort(host(like, inv))
        # The lower median (torch.median's), so both backends pick the same c.
        scale = float(inv_host[(inv_host.size - 1) // 2])
        return cls(delta * inv, float64_operator(like, inv_host.size, matmat), scale,
                   lambda: np.diag(host(like, inv)))

    @classmethod
    def general(cls, reg: Any) -> Regulariser:
        grad = f64(reg, reg.gradient())
        n = reg.shape[0]
        ones = reg._xp.from_numpy(np.ones(n), reg.dtype)
        scale = float(host(reg, (ones * reg.matvec(ones)).sum())) / n
        return cls(grad, reg, scale if scale > 0 else 1.0, lambda: dense(reg))


@dataclass(frozen=True)
class MultiplierCorrection:
    """The convention-A term and the multiplier behind it."""

    value: float  # (1/N) [log det(Q^T H_M Q) - log det(Q^T H* Q)]
    stderr: float
    multiplier_norm: float
    kkt_residual: float  # ||grad R + J^T mu|| / ||grad R||
    method: str


def multiplier_correction(
    K: Any,
    reg: Regulariser,
    *,
    dense: bool,
    num_probes: int,
    num_matvecs: int,
    seed: Seed,
) -> MultiplierCorrection:
    """Convention A's correction to the curvature term (module docstring).

    ``K`` supplies ``J`` products and the constraint Hessians (its prior weighting is not
    used). ``J J^T`` is formed exactly (``N <= 4096`` in practice). ``dense=True`` builds
    ``P x P`` matrices and ``Q`` (exact); otherwise the difference of projected
    log-determinants is estimated by SLQ with common probes.

    Raises
    ------
    ValueError
        ``J`` without full row rank (the manifold and its tangent space are not defined).
    """
    N, P = K.shape[0], K.layout.n
    xp = K._xp

    def J(T: Any) -> Any:
        return f64(K, K.jvp(in_dtype(K, T)))

    def Jt(V: Any) -> Any:
        return f64(K, K.vjp(in_dtype(K, V)))

    if dense:
        if P > DENSE_MAX_P:
            raise ValueError(f"Expected at most {DENSE_MAX_P} parameters for the dense "
                             f"convention-A correction; got {P}. Use method='slq'.")
        Jd = host(K, K.jacobian(dtype=xp.float64))  # (N, P), also gives J J^T below
        G = Jd @ Jd.T
    else:
        G = host(K, K.dense(dtype=xp.float64, weighted=False))
        G = (G + G.T) / 2
    lam, U = np.linalg.eigh(G)
    if float(lam[0]) <= N * xp.eps(K.dtype) * float(lam[-1]):
        raise ValueError(f"Expected J to have full row rank for convention='A' (J J^T has "
                         f"eigenvalue {float(lam[0]):.3g} against {float(lam[-1]):.3g}); the "
                         "interpolating manifold's tangent space is not defined.")

    def solve_G(B: np.ndarray) -> np.ndarray:
        return U @ ((U.T @ B) / lam[:, None])

    g = reg.grad
    mu = -solve_G(host(K, J(g[:, None])))[:, 0]
    kkt = float(host(K, xp.norm(g + Jt(f64(K, mu[:, None]))[:, 0], axis=0))
                / host(K, xp.norm(g, axis=0)))
    M = K.output_hessian(in_dtype(K, mu))

    def M_apply(V: Any) -> Any:
        return f64(K, M.matmat(in_dtype(M, V)))

    if dense:
        _, _, Vh = np.linalg.svd(Jd, full_matrices=True)
        Q = Vh[N:].T
        H = reg.dense()
        Md = host(K, M_apply(xp.eye(P)))
        logdets = []
        for name, B in (("Q^T H_M Q", H + (Md + Md.T) / 2), ("Q^T H* Q", H)):
            ev = np.linalg.eigvalsh(Q.T @ B @ Q)
            if float(ev[0]) <= 0:
                raise ValueError(f"Expected {name} to be positive definite; its smallest "
                                 f"eigenvalue is {float(ev[0]):.3g}: theta* is not a "
                                 "constrained minimum of R on the interpolating manifold.")
            logdets.append(float(np.log(ev).sum()))
        value, stderr, how = (logdets[0] - logdets[1]) / N, 0.0, "dense"
    else:
        c = reg.scale

        def project(V: Any) -> Any:
            return V - Jt(f64(K, solve_G(host(K, J(V)))))

        def projected(with_mu: bool) -> LinearOperator:
            def matmat(V: Any) -> Any:
                V = f64(K, V)
                PV = project(V)
                B = f64(K, reg.hessian.matmat(in_dtype(reg.hessian, PV)))
                if with_mu:
                    B = B + M_apply(PV)
                return project(B) + c * (V - PV)

            return float64_operator(K, P, matmat)

        try:
            est = logdet_difference(projected(True), projected(False), num_probes=num_probes,
                                    num_matvecs=min(num_matvecs, P), seed=seed)
        except ValueError as err:
            raise ValueError(f"Expected Q^T H_M Q and Q^T H* Q to be positive definite "
                             f"(theta* a constrained minimum of R): {err}") from err
        value, stderr, how = est.value / N, est.stderr / N, "slq-paired"
    return MultiplierCorrection(value, stderr, float(np.linalg.norm(mu)), kkt, how)
