"""IIC terms of a general regulariser ``R`` (a non-Gaussian negative log prior).

``R* - R0``, the sharpness ``(1/N) log det(J H*^-1 J^T)`` and the curvature
``(1/N)(log det H* - log det H0)`` with ``H* = hess R(theta*)``, ``H0 = hess R(theta0)``
(docs/theory.md 1.4). ``R`` comes as a regulariser operator
(:class:`hessntk.spectral.protocols.RegulariserLike`) at ``theta*``; ``J`` from the Gram
operator (built with the identity prior). Dense (exact, ``P <= 4096``) or matrix-free (SLQ
with conjugate-gradient solves, common probes for the curvature difference).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from hessntk.criteria._arrays import dense, f64, float64_operator, host, in_dtype
from hessntk.spectral.logdets import logdet_difference
from hessntk.spectral.operators import LinearOperator
from hessntk.spectral.probes import Seed
from hessntk.spectral.quadrature import slq
from hessntk.spectral.solvers import cg

__all__ = ["general_exact_terms", "general_slq_terms", "kernel_operator"]


def kernel_operator(K: Any, H: LinearOperator, tol: float = 1e-10) -> LinearOperator:
    """``K_H = J H^-1 J^T`` as an ``N x N`` float64 operator (CG solves in ``H``)."""

    def matmat(V: Any) -> Any:
        U = f64(K, K.vjp(in_dtype(K, V)))
        W = cg(H, U, tol=tol).x
        return f64(K, K.jvp(in_dtype(K, W)))

    return float64_operator(K, K.shape[0], matmat)


def general_exact_terms(K: Any, reg: Any, ref: Any, spectrum_terms: Callable,
                        soft: float | None, reasons: list[str]) -> dict[str, Any]:
    """The terms with dense ``P x P`` Hessians of ``R`` and the dense Jacobian ``J``."""
    N = K.shape[0]
    H_star, H0 = dense(reg), dense(reg.at(ref))
    J = host(K, K.jacobian(dtype=K._xp.float64))
    logdets = {}
    for name, H in (("H*", H_star), ("H0", H0)):
        ev = np.linalg.eigvalsh(H)
        if ev.min() <= 0:
            reasons.append(f"{name} = Hessian of R is not positive definite "
                           f"(smallest eigenvalue {float(ev.min()):.3g})")
        logdets[name] = float(np.log(np.maximum(ev, 1e-300)).sum())
    KH = J @ np.linalg.solve(H_star, J.T)
    lam = np.linalg.eigvalsh((KH + KH.T) / 2)
    terms = spectrum_terms(lam, K, soft, reasons)
    terms["curvature"] = (logdets["H*"] - logdets["H0"]) / N
    terms["reg_gap"] = reg.loss - reg.loss_at(in_dtype(reg, ref))
    g = host(reg, reg.gradient())
    mu = -np.linalg.lstsq(J.T, g, rcond=None)[0]
    terms["kkt"] = float(np.linalg.norm(g + J.T @ mu) / np.linalg.norm(g))
    return terms


def general_slq_terms(K: Any, reg: Any, ref: Any, soft: float | None, reasons: list[str], *,
                      num_probes: int, num_matvecs: int, seed: Seed) -> dict[str, Any]:
    """The terms matrix-free: SLQ on ``K_H`` and common-probe SLQ on ``H*`` and ``H0``."""
    if soft is not None:
        raise ValueError("Expected soft=None with a callable prior and method='slq' (the "
                         "finite-penalty variant is implemented for method='exact').")
    N, P = K.shape[0], reg.shape[0]
    reg_gap = reg.loss - reg.loss_at(in_dtype(reg, ref))
    try:
        dens = slq(kernel_operator(K, reg), num_probes=num_probes,
                   num_matvecs=min(num_matvecs, N), seed=seed)
        ld = dens.logdet()
        curv = logdet_difference(reg, reg.at(in_dtype(reg, ref)), num_probes=num_probes,
                                 num_matvecs=min(num_matvecs, P), seed=seed)
    except (ValueError, RuntimeError) as err:
        reasons.append(f"a Hessian of R is not positive definite or K_H not resolved: {err}")
        return {"sharpness": math.nan, "curvature": math.nan, "stderr": math.nan,
                "reg_gap": reg_gap}
    return {"sharpness": ld.value / N, "stderr": ld.stderr / N, "curvature": curv.value / N,
            "curvature_stderr": curv.stderr / N, "density": dens, "floor": math.nan,
            "reg_gap": reg_gap}
