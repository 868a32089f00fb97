"""The Interpolating Information Criterion (IIC) of an interpolating model (theory.md section 1).

``IIC = log(R* - R0) + (1/N) log det K_H + (1/N) (log det H* - log det H0) - log N``
(Hodgkinson et al. 2023, arXiv 2307.07785, in the kernel form of theory.md 1.4) with
``K_H = J H*^-1 J^T``. Lower is better. For a Gaussian prior ``N(m, S)`` (the practical case)
``H* = H0 = S^-1``, the curvature term vanishes and ``K_H = J S J^T`` is the prior-weighted
NTK Gram. ``N`` counts scalar constraints (``n`` samples times ``c`` observed outputs).
The constant ``1 + log(4 pi)`` of the evidence is dropped; it does not change rankings.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from hessntk._model import ParamLayout, call_model, concat_inputs, iter_batches
from hessntk.criteria.curvature import (
    Regulariser,
    general_slq_terms,
    multiplier_correction,
)
from hessntk.criteria.tails import TailFit, lower_tail_exponent
from hessntk.ntk import GramOperator, gram, jacobian
from hessntk.spectral import aslinearoperator, slq
from hessntk.spectral.probes import Seed

OBSERVATIONS = {"outputs": "raw", "logits": "logits", "probabilities": "simplex"}
METHODS = ("auto", "exact", "slq")
CONVENTIONS = ("B", "A")
EXACT_MAX_N = 4096  # method="auto" builds K exactly up to this many constraints
DENSE_PRIOR_MAX_P = 4096  # a general (callable) prior needs dense P x P Hessians


@dataclass(frozen=True)
class IICResult:
    """The IIC, its terms and the diagnostics that say whether it is theory-valid.

    Attributes
    ----------
    value : float
        ``regularization + sharpness + curvature + correction``; lower is better. Computed
        even when ``valid`` is False (a candidate value: see ``reasons``).
    regularization : float
        ``log(R* - R0)``.
    sharpness : float
        ``(1/N) log det K_H`` (``log det(K_H + I / soft)`` with ``soft``).
    curvature : float
        ``(1/N) (log det H* - log det H0)``; 0 for a Gaussian prior.
    correction : float
        ``-log N``.
    sharpness_stderr : float
        Standard error of the sharpness term (0 for method "exact").
    num_constraints : int
        ``N``.
    num_params : int
    method, observations, prior : str
    soft : float or None
    residual : float
        Relative interpolation residual ``||f(X) - Y|| / ||Y||`` (nan when the targets are
        class indices and observations are logits).
    train_error : float or None
        Fraction of misclassified training points (class-index targets only).
    kkt_residual : float
        Relative KKT residual of ``theta*`` as the minimiser of ``R`` on the interpolating
        manifold, with the least-squares multiplier (nan for method "slq").
    rank : int or None
        Numerical rank of ``K_H`` (exact method).
    structural_nullity : int
        Zero eigenvalues forced by the observation map (0 after the simplex projection).
    floor : float
        Eigenvalues of ``K_H`` at or below it are numerically zero (``eps * lambda_max``).
    num_below_floor : int or None
    tail : TailFit or None
        Lower-tail exponent of ``spec(K_H)``.
    valid : bool
    reasons : tuple of str
        Why the value is not theory-valid (empty when valid).
    eigenvalues : numpy.ndarray or None
        The spectrum of ``K_H`` (exact method).
    curvature_stderr : float
        Standard error of the curvature term (0 when exact).
    convention : {"B", "A"}
        Curvature convention (theory.md 1.6).
    multiplier_correction : float or None
        Convention A's part of ``curvature``: ``(1/N)[log det(Q^T H_M Q) - log det(Q^T H* Q)]``
        (None for convention B).
    """

    value: float
    regularization: float
    sharpness: float
    curvature: float
    correction: float
    sharpness_stderr: float
    num_constraints: int
    num_params: int
    method: str
    observations: str
    prior: str
    soft: float | None
    residual: float
    train_error: float | None
    kkt_residual: float
    rank: int | None
    structural_nullity: int
    floor: float
    num_below_floor: int | None
    tail: TailFit | None = field(repr=False)
    valid: bool = True
    reasons: tuple[str, ...] = ()
    eigenvalues: np.ndarray | None = field(default=None, repr=False)
    curvature_stderr: float = 0.0
    convention: str = "B"
    multiplier_correction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every number (the spectrum excluded)."""
        d = asdict(self)
        d.pop("eigenvalues")
        tail = self.tail
        d["tail"] = None if tail is None else {
            "alpha": tail.alpha, "stderr": tail.stderr, "cutoff": tail.cutoff,
            "ks_distance": tail.ks_distance, "mass_below_floor": tail.mass_below_floor,
        }
        d["reasons"] = list(self.reasons)
        return d


def iic(
    model: nn.Module,
    data: Any,
    *,
    prior: float | str | Mapping[str, Any] | Callable[[dict[str, torch.Tensor]], torch.Tensor]
    = "init",
    reference: Any = None,
    observations: str = "outputs",
    method: str = "auto",
    soft: float | None = None,
    seed: Seed = 0,
    params: Any = None,
    output_key: str | int | None = None,
    outputs_fn: Callable[[Any], torch.Tensor] | None = None,
    num_probes: int = 16,
    num_matvecs: int = 100,
    interpolation_tol: float = 1e-3,
    convention: str = "B",
) -> IICResult:
    """Compute the Interpolating Information Criterion of a trained (interpolating) model.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model ``f(x; theta*)``, in eval mode.
    data : (inputs, targets) or iterable of such batches
        The training data that the model interpolates.
    prior : "init", float, dict or callable
        Gaussian prior covariance ``S`` (diagonal): ``"init"`` (per-layer fan-in variances
        ``2 / fan_in`` for weights, 1 for biases; the IIC reference code's choice), a float
        variance, or a dict ``name -> variance`` (float or a tensor of the parameter's shape).
        A callable ``R(params: dict) -> scalar`` is a general regulariser (negative log prior);
        then ``reference`` must be its minimiser ``theta0``. Method "exact" forms dense
        Hessians of ``R`` (at most 4096 parameters); "slq" is matrix-free: the sharpness by
        SLQ on ``J H*^-1 J^T`` with conjugate-gradient solves, the curvature ``log det H* -
        log det H0`` by SLQ on both with common probes. "auto" picks "exact" when it fits.
    reference : state dict, Module or None
        The prior mean ``m`` (e.g. the initialisation); default zero. For a callable prior,
        the minimiser ``theta0`` of ``R``.
    observations : {"outputs", "logits", "probabilities"}
        What the constraints are: raw outputs (regression), logits, or softmax probabilities
        in simplex-tangent coordinates (``c - 1`` per sample: probabilities have one exact
        null direction per sample, removed so that ``K`` can be nonsingular).
    method : {"auto", "exact", "slq"}
        ``"exact"``: ``K_H`` in float64 and its eigenvalues. ``"slq"``: matrix-free
        Jacobi-preconditioned SLQ log-determinant, ``log det K = sum log diag K + log det(
        D^-1/2 K D^-1/2)`` (theory.md 5.3). ``"auto"``: exact up to 4096 constraints.
    soft : float, optional
        Finite-penalty variant (theory.md 1.7): ``log det(K_H + I / soft)``.
    seed : int or numpy.random.Generator
        Seed of the SLQ probes. The same seed gives the same probes for every model with the
        same ``N`` (common random numbers for comparisons).
    params, output_key, outputs_fn
        Parameter selection and output extraction as in :mod:`hessntk.ntk`.
    num_probes, num_matvecs : int
        SLQ settings.
    interpolation_tol : float
        Largest relative residual that counts as interpolating.
    convention : {"B", "A"}
        ``"B"`` (default, the reference implementation's): curvature from ``hess R`` only.
        ``"A"`` (exact Laplace on the manifold, theory.md 1.6): adds the second fundamental
        form ``sum_i mu_i hess f_i`` with the least-squares multiplier; the extra term is
        reported as ``multiplier_correction`` and vanishes for models linear in ``theta``.
        Needs ``J J^T`` exactly (``N <= 4096``); dense and exact with method "exact" and at
        most 4096 parameters, otherwise by SLQ with common probes (its error is in
        ``curvature_stderr``).

    Returns
    -------
    IICResult

    Raises
    ------
    ValueError
        Unknown options, empty data, a callable prior without ``reference`` or with method
        "slq", or a model whose parameters do not match ``reference``.

    Examples
    --------
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> X, Y = torch.randn(4, 10, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    >>> net = torch.nn.Linear(10, 1, bias=False).double()
    >>> with torch.no_grad():  # minimum-norm interpolator
    ...     _ = net.weight.copy_((torch.linalg.pinv(X) @ Y).T)
    >>> res = iic(net, (X, Y), prior=1.0)
    >>> res.valid, res.num_constraints
    (True, 4)
    """
    if observations not in OBSERVATIONS:
        raise ValueError(f"Expected observations in {tuple(OBSERVATIONS)}; got {observations!r}.")
    if method not in METHODS:
        raise ValueError(f"Expected method in {METHODS}; got {method!r}.")
    if convention not in CONVENTIONS:
        raise ValueError(f"Expected convention in {CONVENTIONS}; got {convention!r}.")
    if soft is not None and not soft > 0:
        raise ValueError(f"Expected soft > 0 (a noise precision); got {soft!r}.")
    batches = list(iter_batches(data))
    spec = OBSERVATIONS[observations]
    general = callable(prior) and not isinstance(prior, str)
    if general and reference is None:
        raise ValueError("Expected reference= the minimiser theta0 of the callable prior R "
                         "(a state dict or a model holding theta0).")
    op = GramOperator(model, data=batches, params=params, prior=None if general else prior,
                      outputs=spec, output_key=output_key, outputs_fn=outputs_fn)
    N = op.shape[0]
    layout: ParamLayout = op.layout
    theta = layout.flatten(op.problem.detached()).to(torch.float64)
    ref = _reference_vector(reference, model, layout, params)
    residual, train_error = _interpolation(model, batches, observations, output_key, outputs_fn)
    reasons: list[str] = interpolation_reasons(residual, train_error, interpolation_tol, soft)
    method = resolve_method(method, general, layout.n, N)
    if convention == "A" and N > EXACT_MAX_N:
        raise ValueError(f"Expected at most {EXACT_MAX_N} constraints for convention='A' (it "
                         f"needs J J^T exactly); got N = {N}. Use convention='B'.")
    if layout.n < N and soft is None:
        reasons.append(f"K has rank at most P = {layout.n} < N = {N} (fewer parameters than "
                       "constraints): its log-determinant is -inf; use soft=kappa")
    names = params if params is not None else list(layout.names)
    if general:

        def R_flat(vec: torch.Tensor) -> torch.Tensor:
            return prior(layout.unravel(vec.to(layout.dtype)))

        if method == "exact":
            terms = _general_prior(op, R_flat, theta, ref, batches, model, params, spec,
                                   output_key, outputs_fn, soft, reasons)
        else:
            terms = _general_slq(op, R_flat, theta, ref, soft, num_probes, num_matvecs, seed,
                                 reasons)
        reg = Regulariser.general(R_flat, theta) if convention == "A" else None
        prior_name = getattr(prior, "__name__", "callable")
    else:
        var = _variance_vector(op, layout)
        delta = theta - ref
        reg_gap = 0.5 * float((delta * delta / var).sum())
        if method == "exact":
            terms = _gaussian_exact(op, batches, model, params, prior, spec, output_key,
                                    outputs_fn, delta, reg_gap, soft, reasons)
        else:
            terms = _gaussian_slq(op, soft, num_probes, num_matvecs, seed, reasons)
        terms["reg_gap"] = reg_gap
        reg = Regulariser.gaussian(delta, var) if convention == "A" else None
        prior_name = prior if isinstance(prior, str) else (
            f"{prior:g}" if isinstance(prior, (int, float)) else "dict")
    correction_a = None
    if reg is not None:
        try:
            mc = multiplier_correction(
                model, batches, op, reg, params=names, output_key=output_key,
                outputs_fn=outputs_fn, dense=method == "exact" and layout.n <= DENSE_PRIOR_MAX_P,
                num_probes=num_probes, num_matvecs=num_matvecs, seed=seed,
            )  # fmt: skip
            correction_a = mc.value
            if math.isnan(terms.get("kkt", math.nan)):
                terms["kkt"] = mc.kkt_residual
            terms["curvature"] += mc.value
            terms["curvature_stderr"] = math.hypot(terms.get("curvature_stderr", 0.0),
                                                   mc.stderr)
        except ValueError as err:
            reasons.append(f"convention A correction not defined: {err}")
            correction_a = float("nan")
            terms["curvature"] = float("nan")
    return assemble_result(
        terms, reasons, num_constraints=N, num_params=layout.n, method=method,
        observations=observations, prior_name=str(prior_name), soft=soft, residual=residual,
        train_error=train_error, structural_nullity=op.structural_nullity,
        convention=convention, multiplier_correction=correction_a,
    )  # fmt: skip


def interpolation_reasons(
    residual: float, train_error: float | None, tol: float, soft: float | None
) -> list[str]:
    """Start the list of invalidity reasons with the interpolation check (shared with JAX).

    Warns (``RuntimeWarning``) when the model does not interpolate and ``soft`` is not set.
    """
    reasons = []
    if train_error is not None:
        if train_error > 0:
            reasons.append(f"not interpolating: training error {train_error:.3g}")
    elif not residual <= tol:
        reasons.append(f"not interpolating: relative residual {residual:.3g} > {tol:g}")
    if reasons and soft is None:
        warnings.warn(f"{reasons[0]}; the IIC assumes interpolation. Consider soft=kappa "
                      "(finite noise precision).", RuntimeWarning, stacklevel=3)
    return reasons


def resolve_method(method: str, general: bool, num_params: int, num_constraints: int) -> str:
    """``method="auto"``: exact when the dense matrices fit (``P`` for a callable prior)."""
    if method != "auto":
        return method
    fits = num_params <= DENSE_PRIOR_MAX_P if general else num_constraints <= EXACT_MAX_N
    return "exact" if fits else "slq"


def assemble_result(
    terms: dict[str, Any],
    reasons: list[str],
    *,
    num_constraints: int,
    num_params: int,
    method: str,
    observations: str,
    prior_name: str,
    soft: float | None,
    residual: float,
    train_error: float | None,
    structural_nullity: int,
    convention: str = "B",
    multiplier_correction: float | None = None,
) -> IICResult:
    """Sum the terms into an :class:`IICResult` (shared by the torch and JAX entry points).

    ``terms`` holds ``reg_gap`` (``R* - R0``), ``sharpness``, ``curvature`` and optionally
    ``stderr``, ``curvature_stderr``, ``kkt``, ``rank``, ``floor``, ``below``, ``tail``,
    ``eigenvalues``; ``reasons`` gains a line when ``R* - R0`` is not positive.
    """
    reg_gap = terms["reg_gap"]
    if not reg_gap > 0:
        reasons.append(f"R* - R0 = {reg_gap:.3g} is not positive")
        regularization = float("nan")
    else:
        regularization = math.log(reg_gap)
    correction = -math.log(num_constraints)
    value = regularization + terms["sharpness"] + terms["curvature"] + correction
    return IICResult(
        value=float(value), regularization=regularization, sharpness=terms["sharpness"],
        curvature=terms["curvature"], correction=correction,
        sharpness_stderr=terms.get("stderr", 0.0), num_constraints=num_constraints,
        num_params=num_params, method=method, observations=observations, prior=prior_name,
        soft=soft, residual=residual, train_error=train_error,
        kkt_residual=terms.get("kkt", float("nan")), rank=terms.get("rank"),
        structural_nullity=structural_nullity, floor=terms.get("floor", float("nan")),
        num_below_floor=terms.get("below"), tail=terms.get("tail"), valid=not reasons,
        reasons=tuple(reasons), eigenvalues=terms.get("eigenvalues"),
        curvature_stderr=float(terms.get("curvature_stderr", 0.0)), convention=convention,
        multiplier_correction=multiplier_correction,
    )


# -- Gaussian prior ------------------------------------------------------------------------------


def _gaussian_exact(op, batches, model, params, prior, spec, output_key, outputs_fn, delta,
                    reg_gap, soft, reasons) -> dict[str, Any]:
    inputs = concat_inputs([x for x, _ in batches])
    K = gram(model, inputs, params=params if params is not None else list(op.layout.names),
             prior=op.problem.variances, outputs=spec, output_key=output_key,
             outputs_fn=outputs_fn, dtype=torch.float64)
    K = K.detach().cpu().numpy()
    lam, U = np.linalg.eigh((K + K.T) / 2)
    terms = _spectrum_terms(lam, op, soft, reasons)
    # KKT in the S-metric: with b = J (theta* - m), the least-squares multiplier gives
    # ||S^1/2 (grad R + J^T mu)||^2 = 2 (R* - R0) - b^T K^-1 b (theory.md 1.4, 1.10).
    b = U.T @ op.jvp(delta).detach().cpu().numpy()
    pos = lam > terms["floor"]
    explained = float(np.sum(b[pos] ** 2 / lam[pos]))
    terms["kkt"] = math.sqrt(max(0.0, 1.0 - explained / (2 * reg_gap))) if reg_gap > 0 else math.nan
    terms["curvature"] = 0.0
    return terms


def _gaussian_slq(op, soft, num_probes, num_matvecs, seed, reasons) -> dict[str, Any]:
    N = op.shape[0]
    shift = 0.0 if soft is None else 1.0 / soft
    d = op.diagonal().to(torch.float64) + shift
    if not bool((d > 0).all()):
        reasons.append("K has a zero diagonal entry (an output with zero gradient)")
        return {"sharpness": float("nan"), "curvature": 0.0, "stderr": float("nan")}
    scale = d.rsqrt().to(op.dtype)

    def matmat(V: torch.Tensor) -> torch.Tensor:
        KV = op.matmat(V * scale[:, None]) * scale[:, None]
        return KV + (shift * scale**2)[:, None] * V if shift else KV

    C = aslinearoperator(None, matmat=matmat, n=N, dtype=op.dtype, device=op.device,
                         backend="torch")
    dens = slq(C, num_probes=num_probes, num_matvecs=min(num_matvecs, N), seed=seed)
    log_diag = float(torch.log(d).sum())
    terms: dict[str, Any] = {"curvature": 0.0, "floor": float("nan")}
    smallest, largest = float(dens.nodes.min()), float(dens.nodes.max())
    if soft is None and smallest <= torch.finfo(op.dtype).eps * largest:
        reasons.append(f"K is numerically singular at SLQ resolution (smallest node "
                       f"{smallest:.3g}, largest {largest:.3g}); try soft=kappa")
    try:
        ld = dens.logdet()
        terms["sharpness"] = (log_diag + ld.value) / N
        terms["stderr"] = ld.stderr / N
    except ValueError as err:
        reasons.append(f"SLQ log-determinant not defined: {err}")
        terms["sharpness"], terms["stderr"] = float("nan"), float("nan")
    try:
        terms["tail"] = lower_tail_exponent(dens)
    except ValueError:
        terms["tail"] = None
    if op.structural_nullity:
        reasons.append(f"K has {op.structural_nullity} structural null directions "
                       "(use observations='probabilities', which projects them out)")
    return terms


def _spectrum_terms(lam: np.ndarray, op, soft, reasons) -> dict[str, Any]:
    """Sharpness and rank diagnostics from the exact spectrum of K_H."""
    N = lam.size
    eps = torch.finfo(op.dtype).eps
    floor = eps * max(float(lam.max()), 0.0)
    below = int(np.sum(lam <= floor))
    terms: dict[str, Any] = {"floor": floor, "below": below, "rank": N - below,
                             "eigenvalues": lam, "stderr": 0.0}
    if soft is not None:
        shifted = lam + 1.0 / soft
        terms["sharpness"] = float(np.sum(np.log(shifted)) / N) if shifted.min() > 0 else math.nan
    elif lam.min() > 0:
        terms["sharpness"] = float(np.sum(np.log(lam)) / N)
    else:
        terms["sharpness"] = math.nan
    if soft is None and below:
        reasons.append(
            f"K is numerically singular: {below} of {N} eigenvalues <= floor {floor:.3g}"
            + (f" ({op.structural_nullity} structural)" if op.structural_nullity else "")
            + "; the log-determinant is a candidate value (try soft=kappa)"
        )
    try:
        terms["tail"] = lower_tail_exponent(lam, floor=floor)
    except ValueError:
        terms["tail"] = None
    return terms


# -- general regulariser (dense) -------------------------------------------------------------------


def _general_prior(op, R_flat, theta, ref, batches, model, params, spec, output_key,
                   outputs_fn, soft, reasons) -> dict[str, Any]:
    layout = op.layout
    P, N = layout.n, op.shape[0]
    if P > DENSE_PRIOR_MAX_P:
        raise ValueError(f"Expected at most {DENSE_PRIOR_MAX_P} parameters for a callable prior "
                         f"with method='exact' (dense Hessians of R); got {P}. Use "
                         "method='slq'.")
    r_star, r0 = float(R_flat(theta)), float(R_flat(ref))
    H_star = torch.func.hessian(R_flat)(theta).to(torch.float64)
    H0 = torch.func.hessian(R_flat)(ref).to(torch.float64)
    inputs = concat_inputs([x for x, _ in batches])
    J = jacobian(model, inputs, params=params if params is not None else list(layout.names),
                 outputs=spec, output_key=output_key, outputs_fn=outputs_fn)
    J = J.to(torch.float64)
    logdets = {}
    for name, H in (("H*", H_star), ("H0", H0)):
        ev = torch.linalg.eigvalsh((H + H.T) / 2)
        if ev.min() <= 0:
            reasons.append(f"{name} = Hessian of R is not positive definite "
                           f"(smallest eigenvalue {float(ev.min()):.3g})")
        logdets[name] = float(torch.log(ev.clamp_min(1e-300)).sum())
    KH = J @ torch.linalg.solve(H_star, J.T)
    lam = np.linalg.eigvalsh(((KH + KH.T) / 2).cpu().numpy())
    terms = _spectrum_terms(lam, op, soft, reasons)
    terms["curvature"] = (logdets["H*"] - logdets["H0"]) / N
    terms["reg_gap"] = r_star - r0
    g = torch.func.grad(R_flat)(theta).to(torch.float64)
    mu = -torch.linalg.lstsq(J.T, g[:, None]).solution
    terms["kkt"] = float(torch.linalg.norm(g + (J.T @ mu)[:, 0]) / torch.linalg.norm(g))
    return terms


def _general_slq(op, R_flat, theta, ref, soft, num_probes, num_matvecs, seed,
                 reasons) -> dict[str, Any]:
    if soft is not None:
        raise ValueError("Expected soft=None with a callable prior and method='slq' (the "
                         "finite-penalty variant is implemented for method='exact').")
    r_star, r0 = float(R_flat(theta)), float(R_flat(ref))
    try:
        terms = general_slq_terms(op, Regulariser.general(R_flat, theta),
                                  Regulariser.general(R_flat, ref), num_probes=num_probes,
                                  num_matvecs=num_matvecs, seed=seed)
    except (ValueError, RuntimeError) as err:
        reasons.append(f"a Hessian of R is not positive definite or K_H not resolved: {err}")
        return {"sharpness": float("nan"), "curvature": float("nan"), "stderr": float("nan"),
                "reg_gap": r_star - r0}
    try:
        terms["tail"] = lower_tail_exponent(terms.pop("density"))
    except ValueError:
        terms["tail"] = None
    terms["reg_gap"] = r_star - r0
    return terms


# -- helpers -----------------------------------------------------------------------------------


def _variance_vector(op, layout: ParamLayout) -> torch.Tensor:
    variances = {name: torch.as_tensor(op.problem.variances[name], dtype=torch.float64,
                                       device=layout.device).expand(shape)
                 for name, shape in zip(layout.names, layout.shapes, strict=True)}
    var = layout.flatten(variances)
    if not bool((var > 0).all()):
        raise ValueError("Expected positive prior variances; got a zero or negative one.")
    return var


def _reference_vector(reference, model, layout: ParamLayout, params) -> torch.Tensor:
    if reference is None:
        return torch.zeros(layout.n, dtype=torch.float64, device=layout.device)
    if isinstance(reference, nn.Module):
        reference = dict(reference.named_parameters())
    if isinstance(reference, Mapping):
        try:
            vec = layout.flatten({n: reference[n].detach() for n in layout.names
                                  if n in reference})
        except ValueError as err:
            raise ValueError(f"Expected the reference to match the model's parameters (same "
                             f"architecture): {err}") from err
        return vec.to(layout.device, torch.float64)
    if torch.is_tensor(reference) and reference.shape == (layout.n,):
        return reference.detach().to(layout.device, torch.float64)
    raise TypeError("Expected reference to be None, a state dict, a Module or a flat tensor; "
                    f"got {type(reference).__name__}.")


def _interpolation(model, batches, observations, output_key, outputs_fn):
    """Relative residual ||f - Y|| / ||Y|| and, for class-index targets, the training error."""
    num, den, wrong, count = 0.0, 0.0, 0, 0
    params = dict(model.named_parameters())
    with torch.no_grad():
        for x, y in batches:
            out = call_model(model, params, x, output_key=output_key, outputs_fn=outputs_fn)
            out = out.reshape(out.shape[0], -1)
            if y is None:
                return float("nan"), None
            if not y.is_floating_point() and y.dim() == 1:
                wrong += int((out.argmax(dim=1) != y).sum())
                count += y.numel()
                if observations == "probabilities":
                    target = torch.nn.functional.one_hot(y, out.shape[1]).to(out.dtype)
                    p = torch.softmax(out, dim=1)
                    num += float(((p - target) ** 2).sum())
                    den += float((target**2).sum())
                continue
            target = y.reshape(out.shape).to(out.dtype)
            num += float(((out - target) ** 2).sum())
            den += float((target**2).sum())
    residual = math.sqrt(num / den) if den > 0 else float("nan")
    return residual, (wrong / count if count else None)


__all__ = ["IICResult", "iic"]
