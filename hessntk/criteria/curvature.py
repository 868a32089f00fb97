"""Curvature pieces of the IIC: Hessians of the regulariser and the multiplier correction.

Theory.md section 1.6. Convention B (the default, the reference implementation's) uses
``H* = hess R(theta*)`` only. Convention A (the exact Laplace approximation on the
interpolating manifold ``M``) replaces it, along ``M``, by the Riemannian Hessian
``H_M = hess R(theta*) + sum_i mu_i hess f_i(theta*)`` with the least-squares multiplier
``mu = -(J J^T)^-1 J grad R(theta*)``; the IIC then gains

``(1/N) [log det(Q^T H_M Q) - log det(Q^T H* Q)]``,  ``Q`` an orthonormal basis of ``ker J``.

Matrix-free, with the projector ``Pr = I - J^T (J J^T)^-1 J`` onto ``ker J`` and any ``c > 0``,
``log det(Q^T B Q) = log det(Pr B Pr + c (I - Pr)) - N log c`` (theory.md 1.6), so the
correction is a difference of two ``P x P`` log-determinants, estimated with common probes
(:func:`hessntk.spectral.logdet_difference`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hessntk._model import concat_inputs
from hessntk.hessian import HessianOperator
from hessntk.ntk import GramOperator, gram
from hessntk.ntk._common import transform_outputs
from hessntk.spectral import (
    Estimate,
    LinearOperator,
    aslinearoperator,
    cg,
    logdet_difference,
    slq,
)
from hessntk.spectral.probes import Seed

DENSE_MAX_P = 4096  # dense P x P matrices (float64, 134 MB at the limit)


@dataclass
class Regulariser:
    """``R`` at ``theta*``: its gradient and a Hessian-product operator (flat, float64).

    Either Gaussian (``R = 1/2 ||theta - m||^2_{S^-1}``, ``H = diag(1 / var)``) or a callable
    ``R(params: dict) -> scalar`` differentiated with ``torch.func``.
    """

    grad: torch.Tensor
    hessian: LinearOperator
    scale: float  # a typical diagonal entry of H (sets the c of the projected operators)
    dense: Callable[[], torch.Tensor]

    @classmethod
    def gaussian(cls, delta: torch.Tensor, var: torch.Tensor) -> Regulariser:
        inv = 1.0 / var

        def matmat(V: torch.Tensor) -> torch.Tensor:
            return V.to(torch.float64) * inv[:, None]

        op = aslinearoperator(None, matmat=matmat, n=var.numel(), dtype=torch.float64,
                              device=var.device, backend="torch")
        return cls(delta * inv, op, float(inv.median()), lambda: torch.diag(inv))

    @classmethod
    def general(cls, R_flat: Callable[[torch.Tensor], torch.Tensor], point: torch.Tensor
                ) -> Regulariser:
        point = point.to(torch.float64)
        grad = torch.func.grad(R_flat)(point)

        def hvp(v: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(torch.func.grad(R_flat), (point,), (v,))[1]

        def matmat(V: torch.Tensor) -> torch.Tensor:
            return torch.func.vmap(hvp)(V.to(torch.float64).T).T

        op = aslinearoperator(None, matmat=matmat, n=point.numel(), dtype=torch.float64,
                              device=point.device, backend="torch")
        probe = torch.ones(point.numel(), dtype=torch.float64, device=point.device)
        scale = float(probe @ op.matvec(probe)) / point.numel()
        return cls(grad, op, scale if scale > 0 else 1.0,
                   lambda: torch.func.hessian(R_flat)(point))


def kernel_operator(jac: GramOperator, H: LinearOperator, tol: float = 1e-10) -> LinearOperator:
    """``K_H = J H^-1 J^T`` as an ``N x N`` operator, with conjugate-gradient solves in ``H``."""

    def matmat(V: torch.Tensor) -> torch.Tensor:
        U = jac.vjp(V.to(jac.dtype)).to(torch.float64)
        W = cg(H, U, tol=tol).x
        return jac.jvp(W.to(jac.dtype)).to(torch.float64)

    return aslinearoperator(None, matmat=matmat, n=jac.shape[0], dtype=torch.float64,
                            device=jac.device, backend="torch")


def constraint_hessian(
    model: torch.nn.Module,
    batches: list[tuple[Any, Any]],
    mu: torch.Tensor,
    jac: GramOperator,
    *,
    params: list[str],
    output_key: str | int | None,
    outputs_fn: Callable[[Any], torch.Tensor] | None,
) -> HessianOperator:
    """``M_mu = hess_theta (mu^T f(X; theta))`` as a :class:`HessianOperator`.

    The HessianOperator weights batch ``b`` by ``n_b / n``, so batch ``b``'s "targets" are
    ``mu_b n / n_b`` and its "loss" is ``<f_b, targets_b>``: the total is ``mu^T f``. Its
    product path handles normalisation layers exactly (torch.func alone does not).
    """
    n = sum(jac.batch_sizes)
    spec, c = jac.problem.outputs_spec, jac.num_outputs
    data, start = [], 0
    for (x, _), n_b in zip(batches, jac.batch_sizes, strict=True):
        mu_b = mu[start : start + n_b * c].reshape(n_b, c) * (n / n_b)
        data.append((x, mu_b.to(jac.dtype)))
        start += n_b * c

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (transform_outputs(out, spec) * target).sum()

    return HessianOperator(model, loss, data, params=params, output_key=output_key,
                           outputs_fn=outputs_fn, allow_train_mode=True, method="func")


@dataclass(frozen=True)
class MultiplierCorrection:
    """The convention-A term and the multiplier behind it."""

    value: float  # (1/N) [log det(Q^T H_M Q) - log det(Q^T H* Q)]
    stderr: float
    multiplier_norm: float
    kkt_residual: float  # ||grad R + J^T mu|| / ||grad R||
    method: str


def multiplier_correction(
    model: torch.nn.Module,
    batches: list[tuple[Any, Any]],
    jac: GramOperator,
    reg: Regulariser,
    *,
    params: list[str],
    output_key: str | int | None,
    outputs_fn: Callable[[Any], torch.Tensor] | None,
    dense: bool,
    num_probes: int,
    num_matvecs: int,
    seed: Seed,
) -> MultiplierCorrection:
    """Convention A's correction to the curvature term (module docstring).

    ``jac`` supplies ``J`` products (its prior weighting is not used). ``J J^T`` is formed
    exactly (``N <= 4096`` in practice). ``dense=True`` builds ``P x P`` matrices and ``Q``
    (exact); otherwise the difference of projected log-determinants is estimated by SLQ with
    common probes.

    Raises
    ------
    ValueError
        ``J`` without full row rank (the manifold and its tangent space are not defined).
    """
    N, P = jac.shape[0], jac.layout.n
    p = jac.problem

    def J(T: torch.Tensor) -> torch.Tensor:
        return jac.jvp(T.to(jac.dtype)).to(torch.float64)

    def Jt(V: torch.Tensor) -> torch.Tensor:
        return jac.vjp(V.to(jac.dtype)).to(torch.float64)

    if dense:
        if P > DENSE_MAX_P:
            raise ValueError(f"Expected at most {DENSE_MAX_P} parameters for the dense "
                             f"convention-A correction; got {P}. Use method='slq'.")
        eye = torch.eye(P, dtype=torch.float64, device=p.device)
        Jd = J(eye)  # (N, P), also gives J J^T below
        G = Jd @ Jd.T
    else:
        G = gram(model, concat_inputs([x for x, _ in batches]), params=params, prior=1.0,
                 outputs=p.outputs_spec, output_key=output_key, outputs_fn=outputs_fn,
                 dtype=torch.float64)
        G = (G + G.T) / 2
    lam, U = torch.linalg.eigh(G)
    if float(lam[0]) <= N * torch.finfo(p.dtype).eps * float(lam[-1]):
        raise ValueError(f"Expected J to have full row rank for convention='A' (J J^T has "
                         f"eigenvalue {float(lam[0]):.3g} against {float(lam[-1]):.3g}); the "
                         "interpolating manifold's tangent space is not defined.")

    def solve_G(B: torch.Tensor) -> torch.Tensor:
        return U @ ((U.T @ B) / lam[:, None])

    g = reg.grad.to(torch.float64)
    mu = -solve_G(J(g[:, None]))[:, 0]
    kkt = float(torch.linalg.norm(g + Jt(mu[:, None])[:, 0]) / torch.linalg.norm(g))
    M = constraint_hessian(model, batches, mu, jac, params=params, output_key=output_key,
                           outputs_fn=outputs_fn)

    def M_apply(V: torch.Tensor) -> torch.Tensor:
        return M.matmat(V.to(M.dtype)).to(torch.float64)

    if dense:
        _, _, Vh = torch.linalg.svd(Jd, full_matrices=True)
        Q = Vh[N:].T
        H = reg.dense().to(torch.float64)
        Md = M_apply(eye)
        logdets = []
        for name, B in (("Q^T H_M Q", H + (Md + Md.T) / 2), ("Q^T H* Q", H)):
            ev = torch.linalg.eigvalsh(Q.T @ B @ Q)
            if float(ev[0]) <= 0:
                raise ValueError(f"Expected {name} to be positive definite; its smallest "
                                 f"eigenvalue is {float(ev[0]):.3g}: theta* is not a "
                                 "constrained minimum of R on the interpolating manifold.")
            logdets.append(float(torch.log(ev).sum()))
        value, stderr, how = (logdets[0] - logdets[1]) / N, 0.0, "dense"
    else:
        c = reg.scale

        def project(V: torch.Tensor) -> torch.Tensor:
            return V - Jt(solve_G(J(V)))

        def projected(with_mu: bool) -> LinearOperator:
            def matmat(V: torch.Tensor) -> torch.Tensor:
                V = V.to(torch.float64)
                PV = project(V)
                B = reg.hessian.matmat(PV).to(torch.float64)
                if with_mu:
                    B = B + M_apply(PV)
                return project(B) + c * (V - PV)

            return aslinearoperator(None, matmat=matmat, n=P, dtype=torch.float64,
                                    device=g.device, backend="torch")

        try:
            est: Estimate = logdet_difference(projected(True), projected(False),
                                              num_probes=num_probes,
                                              num_matvecs=min(num_matvecs, P), seed=seed)
        except ValueError as err:
            raise ValueError(f"Expected Q^T H_M Q and Q^T H* Q to be positive definite "
                             f"(theta* a constrained minimum of R): {err}") from err
        value, stderr, how = est.value / N, est.stderr / N, "slq-paired"
    return MultiplierCorrection(value, stderr, float(torch.linalg.norm(mu)), kkt, how)


def general_slq_terms(
    jac: GramOperator,
    reg_star: Regulariser,
    reg_zero: Regulariser,
    *,
    num_probes: int,
    num_matvecs: int,
    seed: Seed,
) -> dict[str, Any]:
    """Sharpness and curvature of a general regulariser, matrix-free.

    Sharpness ``(1/N) log det(J H*^-1 J^T)`` by SLQ with CG solves in ``H*``; curvature
    ``(1/N)(log det H* - log det H0)`` by SLQ on both with common probes.
    """
    N, P = jac.shape
    K = kernel_operator(jac, reg_star.hessian)
    dens = slq(K, num_probes=num_probes, num_matvecs=min(num_matvecs, N), seed=seed)
    ld = dens.logdet()
    curv = logdet_difference(reg_star.hessian, reg_zero.hessian, num_probes=num_probes,
                             num_matvecs=min(num_matvecs, P), seed=seed)
    return {"sharpness": ld.value / N, "stderr": ld.stderr / N, "curvature": curv.value / N,
            "curvature_stderr": curv.stderr / N, "density": dens,
            "nodes": np.asarray(dens.nodes), "floor": math.nan}
