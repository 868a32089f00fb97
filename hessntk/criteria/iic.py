"""The Interpolating Information Criterion (IIC) of an interpolating model (docs/theory.md, 1).

``IIC = log(R* - R0) + (1/N) log det K_H + (1/N) (log det H* - log det H0) - log N``
(Hodgkinson et al. 2023, arXiv 2307.07785, in the kernel form of docs/theory.md 1.4) with
``K_H = J H*^-1 J^T``. Lower is better. For a Gaussian prior ``N(m, S)`` (the practical case)
``H* = H0 = S^-1``, the curvature term vanishes and ``K_H = J S J^T`` is the prior-weighted
NTK Gram. ``N`` counts scalar constraints (``n`` samples times ``c`` observed outputs).
The constant ``1 + log(4 pi)`` of the evidence is dropped; it does not change rankings.

Written once over the operator protocol (:mod:`hessntk.spectral.protocols`): a Gram operator
of any backend (:class:`hessntk.ntk.GramOperator`, :class:`hessntk.jax.GramOperator`) and,
for a non-Gaussian prior, a regulariser operator. A torch model and its data are accepted as
a convenience: the Gram operator is then built here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hessntk._checks import refuse_low_precision
from hessntk._observations import IIC_OBSERVATIONS
from hessntk.criteria._arrays import f64, host, in_dtype
from hessntk.criteria.general_prior import general_exact_terms, general_slq_terms
from hessntk.criteria.manifold import Regulariser, multiplier_correction
from hessntk.criteria.tails import TailFit, lower_tail_exponent
from hessntk.spectral.logdets import jacobi_density
from hessntk.spectral.operators import LinearOperator
from hessntk.spectral.probes import Seed
from hessntk.spectral.protocols import GramLike, RegulariserLike, refuse_options
from hessntk.spectral.resolution import gram_floor

__all__ = ["IICResult", "iic"]

OBSERVATIONS = IIC_OBSERVATIONS
#: The IIC's name of the constraints of a Gram operator with each observation map.
OBSERVED_AS = {"raw": "outputs", "logits": "logits", "simplex": "probabilities",
               "probabilities": "probabilities", "custom": "custom"}
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
        Curvature convention (docs/theory.md 1.6).
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
    subject: Any,
    data: Any = None,
    *,
    prior: Any = "init",
    reference: Any = None,
    observations: str | None = None,
    method: str = "auto",
    soft: float | None = None,
    seed: Seed = 0,
    params: Any = None,
    output_key: str | int | None = None,
    outputs_fn: Any = None,
    num_probes: int = 16,
    num_matvecs: int = 100,
    interpolation_tol: float = 1e-3,
    group: Any = None,
    convention: str = "B",
) -> IICResult:
    """Compute the Interpolating Information Criterion of a trained (interpolating) model.

    Parameters
    ----------
    subject : Gram operator or torch.nn.Module
        A Gram operator ``K = J S J^T`` of any backend, built on the training data with its
        targets (:class:`hessntk.ntk.GramOperator` or :class:`hessntk.jax.GramOperator` with
        ``data=``); its prior ``S`` and observation map are those of the IIC. Or the trained
        torch model ``f(x; theta*)``, in eval mode, with ``data``: the Gram operator is then
        built from ``prior``, ``observations``, ``params``, ``output_key`` and ``outputs_fn``.
    data : (inputs, targets) or iterable of such batches
        With a torch model: the training data that the model interpolates.
    prior : "init", float, dict, callable or regulariser operator
        With a torch model: the Gaussian prior covariance ``S`` (diagonal): ``"init"``
        (per-layer fan-in variances ``2 / fan_in`` for weights, 1 for biases; the IIC
        reference code's choice), a float variance, or a dict ``name -> variance`` (float or a
        tensor of the parameter's shape); or a callable ``R(params: dict) -> scalar``, a
        general regulariser (negative log prior), with ``reference`` its minimiser
        ``theta0``. With a Gram operator, ``S`` is the operator's own; pass a regulariser
        operator (:class:`hessntk.hessian.RegulariserOperator`,
        :class:`hessntk.jax.RegulariserOperator`) at ``theta*`` for a general ``R`` (then
        build the Gram operator with the identity prior). Method "exact" forms dense Hessians
        of ``R`` (at most 4096 parameters); "slq" is matrix-free: the sharpness by SLQ on
        ``J H*^-1 J^T`` with conjugate-gradient solves, the curvature ``log det H* - log det
        H0`` by SLQ on both with common probes. "auto" picks "exact" when it fits.
    reference : dict, Module, pytree, flat array or None
        The prior mean ``m`` (e.g. the initialisation); default zero. For a general
        regulariser, its minimiser ``theta0``.
    observations : {"outputs", "logits", "probabilities"}, optional
        With a torch model (default "outputs"): what the constraints are: raw outputs
        (regression), logits, or softmax probabilities in simplex-tangent coordinates
        (``c - 1`` per sample: probabilities have one exact null direction per sample,
        removed so that ``K`` can be nonsingular). With a Gram operator it is read from the
        operator's observation map ("raw", "logits", "simplex").
    method : {"auto", "exact", "slq"}
        ``"exact"``: ``K_H`` in float64 and its eigenvalues. ``"slq"``: matrix-free
        Jacobi-preconditioned SLQ log-determinant, ``log det K = sum log diag K + log det(
        D^-1/2 K D^-1/2)`` (docs/theory.md 5.3). ``"auto"``: exact up to 4096 constraints.
    soft : float, optional
        Finite-penalty variant (docs/theory.md 1.7): ``log det(K_H + I / soft)``.
    seed : int or numpy.random.Generator
        Seed of the SLQ probes. The same seed gives the same probes for every model with the
        same ``N`` (common random numbers for comparisons), on every backend.
    params, output_key, outputs_fn
        With a torch model: parameter selection and output extraction as in
        :mod:`hessntk.ntk`.
    group : torch.distributed.ProcessGroup, optional
        With a torch model: ``data`` is this rank's shard and the Gram operator is data
        parallel (:class:`hessntk.ntk.GramOperator` ``group=``); every rank gets the IIC.
    num_probes, num_matvecs : int
        SLQ settings.
    interpolation_tol : float
        Largest relative residual that counts as interpolating.
    convention : {"B", "A"}
        ``"B"`` (default, the reference implementation's): curvature from ``hess R`` only.
        ``"A"`` (exact Laplace on the manifold, docs/theory.md 1.6): adds the second
        fundamental form ``sum_i mu_i hess f_i`` with the least-squares multiplier; the extra
        term is reported as ``multiplier_correction`` and vanishes for models linear in
        ``theta``. Needs ``J J^T`` exactly (``N <= 4096``); dense and exact with method
        "exact" and at most 4096 parameters, otherwise by SLQ with common probes (its error
        is in ``curvature_stderr``).

    Returns
    -------
    IICResult

    Raises
    ------
    ValueError
        Unknown options, empty data, a callable prior without ``reference`` or with ``soft``
        and method "slq", a model whose parameters do not match ``reference``, options that
        belong to the operator's construction passed with an operator.

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

    The same from a Gram operator (any backend):

    >>> from hessntk.ntk import GramOperator
    >>> iic(GramOperator(net, data=(X, Y), prior=1.0)).value == res.value
    True
    """
    if observations is not None and observations not in OBSERVATIONS:
        raise ValueError(f"Expected observations in {tuple(OBSERVATIONS)}; got {observations!r}.")
    if method not in METHODS:
        raise ValueError(f"Expected method in {METHODS}; got {method!r}.")
    if convention not in CONVENTIONS:
        raise ValueError(f"Expected convention in {CONVENTIONS}; got {convention!r}.")
    if soft is not None and not soft > 0:
        raise ValueError(f"Expected soft > 0 (a noise precision); got {soft!r}.")
    if isinstance(subject, LinearOperator):
        K, regulariser = _operator_inputs(subject, data, prior, observations, params,
                                          output_key, outputs_fn, group)
    else:
        from hessntk.ntk.iic_inputs import iic_inputs  # the torch convenience

        K, regulariser = iic_inputs(
            subject, data, prior=prior, reference=reference,
            observations=observations or "outputs", params=params, output_key=output_key,
            outputs_fn=outputs_fn, group=group)  # fmt: skip
    return _iic(K, regulariser, reference, method=method, soft=soft, seed=seed,
                num_probes=num_probes, num_matvecs=num_matvecs,
                interpolation_tol=interpolation_tol, convention=convention)


def _operator_inputs(K: Any, data: Any, prior: Any, observations: str | None, params: Any,
                     output_key: Any, outputs_fn: Any, group: Any) -> tuple[Any, Any]:
    """Validate ``iic(K, ...)``: the options that build an operator must not be given."""
    if not isinstance(K, GramLike):
        raise TypeError(f"Expected a Gram operator (hessntk.ntk.GramOperator, "
                        f"hessntk.jax.GramOperator) or a torch model; got {K!r}.")
    refuse_options({"data": data is not None, "params": params is not None,
                    "output_key": output_key is not None, "outputs_fn": outputs_fn is not None,
                    "group": group is not None},
                   "GramOperator(model, data=..., params=..., ...) takes them.")
    observed = OBSERVED_AS.get(K.observation, K.observation)
    if observations is not None and observations != observed:
        raise ValueError(f"Expected observations={observed!r}, the Gram operator's observation "
                         f"map {K.observation!r}; got {observations!r}. Build the operator "
                         f"with outputs={OBSERVATIONS.get(observations)!r}.")
    if isinstance(prior, RegulariserLike):
        if (prior.backend, str(prior.device)) != (K.backend, str(K.device)):
            raise ValueError(f"Expected the regulariser operator on the Gram operator's backend "
                             f"and device ({K.backend}, {K.device}); got ({prior.backend}, "
                             f"{prior.device}). Build both from the same parameters.")
        return K, prior
    if not (isinstance(prior, str) and prior == "init"):
        raise ValueError("Expected prior= to be a regulariser operator (or left out) with a "
                         f"Gram operator, whose Gaussian prior S is its own; got {prior!r}. "
                         "Build the operator with prior=..., or pass "
                         "RegulariserOperator(R, params) for a general prior.")
    return K, None


def _iic(K: Any, reg: Any, reference: Any, *, method: str, soft: float | None, seed: Seed,
         num_probes: int, num_matvecs: int, interpolation_tol: float,
         convention: str) -> IICResult:
    """The criterion on a Gram operator and (for a general prior) a regulariser operator."""
    N, P = K.shape[0], K.layout.n
    refuse_low_precision(K._xp.eps(K.dtype), K.dtype, "the IIC")
    observations = OBSERVED_AS.get(K.observation, K.observation)
    theta = f64(K, K.theta())
    general = reg is not None
    if general:
        if reference is None:
            raise ValueError("Expected reference= the minimiser theta0 of the callable prior R "
                             "(a state dict, a model or a pytree holding theta0).")
        if reg.shape != (P, P) or not np.allclose(host(K, reg.theta()), host(K, theta),
                                                  rtol=1e-12, atol=0.0):
            raise ValueError("Expected the regulariser operator at the Gram operator's "
                             "parameters theta* (same parameters, same order).")
    ref = _reference_vector(reg if general else K, reference, P)
    targets = K.targets()
    if targets is None:
        raise ValueError("Expected a Gram operator built with its targets, e.g. "
                         "GramOperator(model, data=(inputs, targets)): the IIC checks that the "
                         "model interpolates them.")
    residual, train_error = interpolation(host(K, K.outputs()), host(K, targets), observations)
    reasons = interpolation_reasons(residual, train_error, interpolation_tol, soft)
    method = resolve_method(method, general, P, N)
    if convention == "A" and N > EXACT_MAX_N:
        raise ValueError(f"Expected at most {EXACT_MAX_N} constraints for convention='A' (it "
                         f"needs J J^T exactly); got N = {N}. Use convention='B'.")
    if P < N and soft is None:
        reasons.append(f"K has rank at most P = {P} < N = {N} (fewer parameters than "
                       "constraints): its log-determinant is -inf; use soft=kappa")
    if general:
        if method == "exact":
            if P > DENSE_PRIOR_MAX_P:
                raise ValueError(f"Expected at most {DENSE_PRIOR_MAX_P} parameters for a "
                                 f"callable prior with method='exact' (dense Hessians of R); "
                                 f"got {P}. Use method='slq'.")
            terms = general_exact_terms(K, reg, ref, spectrum_terms, soft, reasons)
        else:
            terms = general_slq_terms(K, reg, ref, soft, reasons, num_probes=num_probes,
                                      num_matvecs=num_matvecs, seed=seed)
            density = terms.pop("density", None)
            terms["tail"] = _tail_or_none(density)
        curvature_reg = Regulariser.general(reg) if convention == "A" else None
        prior_name = getattr(reg, "name", "callable")
    else:
        var = f64(K, K.variances())
        if not bool(host(K, var).min() > 0):
            raise ValueError("Expected positive prior variances; got a zero or negative one.")
        delta = theta - ref
        reg_gap = 0.5 * float(host(K, (delta * delta / var).sum()))
        if method == "exact":
            terms = _gaussian_exact(K, delta, reg_gap, soft, reasons)
        else:
            terms = _gaussian_slq(K, soft, num_probes, num_matvecs, seed, reasons)
        terms["reg_gap"] = reg_gap
        curvature_reg = Regulariser.gaussian(K, delta, var) if convention == "A" else None
        prior_name = K.prior_name
    correction_a = None
    if curvature_reg is not None:
        try:
            mc = multiplier_correction(K, curvature_reg,
                                       dense=method == "exact" and P <= DENSE_PRIOR_MAX_P,
                                       num_probes=num_probes, num_matvecs=num_matvecs,
                                       seed=seed)
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
        terms, reasons, num_constraints=N, num_params=P, method=method,
        observations=observations, prior_name=str(prior_name), soft=soft, residual=residual,
        train_error=train_error, structural_nullity=K.structural_nullity,
        convention=convention, multiplier_correction=correction_a,
    )  # fmt: skip


def interpolation_reasons(
    residual: float, train_error: float | None, tol: float, soft: float | None
) -> list[str]:
    """Start the list of invalidity reasons with the interpolation check.

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
                      "(finite noise precision).", RuntimeWarning, stacklevel=4)
    return reasons


def resolve_method(method: str, general: bool, num_params: int, num_constraints: int) -> str:
    """``method="auto"``: exact when the dense matrices fit (``P`` for a callable prior)."""
    if method != "auto":
        return method
    fits = num_params <= DENSE_PRIOR_MAX_P if general else num_constraints <= EXACT_MAX_N
    return "exact" if fits else "slq"


def interpolation(outputs: np.ndarray, targets: np.ndarray | None,
                  observations: str) -> tuple[float, float | None]:
    """Relative residual ``||f - Y|| / ||Y||`` and, for class targets, the training error.

    ``outputs`` are the model outputs ``(n, ...)`` before the observation map. Integer
    targets of the outputs' shape without its last axis are classes: one per sample
    (``(n,)`` for ``(n, c)`` outputs) or one per position of a sequence (``(n, T)`` for
    ``(n, T, V)`` logits: tokens as samples, every position a constraint). They give the
    training error of ``argmax``, and for ``"probabilities"`` the residual of the softmax
    against one-hot targets (nan otherwise: logits have no target values). Other targets are
    values, one per output.

    Raises
    ------
    ValueError
        Targets of another shape, or class targets with the ignore index -100 (a position
        without a target cannot be a constraint).
    """
    if targets is None:
        return float("nan"), None
    if targets.dtype.kind in "iub" and targets.shape == outputs.shape[:-1] and outputs.ndim >= 2:
        if (targets < 0).any():
            raise ValueError(
                f"Expected a class for every position of the outputs {outputs.shape}; got "
                f"{int((targets < 0).sum())} targets < 0 (the ignore index -100 of padding?). "
                "Every observed output is a constraint of the IIC: drop the padded positions "
                "(sequences of one length) or observe fewer outputs (outputs_fn=)."
            )
        logits = outputs.reshape(-1, outputs.shape[-1])
        classes = targets.reshape(-1)
        train_error = float((logits.argmax(axis=1) != classes).mean())
        if observations != "probabilities":
            return float("nan"), train_error
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        target = np.eye(logits.shape[1])[classes]
        return math.sqrt(float(((p - target) ** 2).sum()) / float((target**2).sum())), train_error
    if targets.size != outputs.size:
        raise ValueError(
            f"Expected targets for the interpolation check as classes of shape "
            f"{outputs.shape[:-1]} (integers) or values of shape {outputs.shape} (one per "
            f"model output); got {targets.shape} ({targets.dtype}). For a causal language "
            "model pass next-token targets aligned with the logits (targets[:, t] is the class "
            "of outputs[:, t])."
        )
    target = targets.reshape(outputs.shape).astype(np.float64)
    den = float((target**2).sum())
    residual = math.sqrt(float(((outputs - target) ** 2).sum()) / den) if den > 0 else math.nan
    return residual, None


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
    """Sum the terms into an :class:`IICResult`.

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


def _gaussian_exact(K: Any, delta: Any, reg_gap: float, soft: float | None,
                    reasons: list[str]) -> dict[str, Any]:
    Kd = host(K, K.dense(dtype=K._xp.float64))
    lam, U = np.linalg.eigh((Kd + Kd.T) / 2)
    terms = spectrum_terms(lam, K, soft, reasons)
    # KKT in the S-metric: with b = J (theta* - m), the least-squares multiplier gives
    # ||S^1/2 (grad R + J^T mu)||^2 = 2 (R* - R0) - b^T K^-1 b (docs/theory.md 1.4, 1.10).
    b = U.T @ host(K, K.jvp(in_dtype(K, delta)))
    pos = lam > terms["floor"]
    explained = float(np.sum(b[pos] ** 2 / lam[pos]))
    terms["kkt"] = math.sqrt(max(0.0, 1.0 - explained / (2 * reg_gap))) if reg_gap > 0 else math.nan
    terms["curvature"] = 0.0
    return terms


def _gaussian_slq(K: Any, soft: float | None, num_probes: int, num_matvecs: int, seed: Seed,
                  reasons: list[str]) -> dict[str, Any]:
    N, xp = K.shape[0], K._xp
    shift = 0.0 if soft is None else 1.0 / soft
    d = f64(K, K.diagonal()) + shift
    d_host = host(K, d)
    if not bool((d_host > 0).all()):
        reasons.append("K has a zero diagonal entry (an output with zero gradient)")
        return {"sharpness": float("nan"), "curvature": 0.0, "stderr": float("nan")}
    # Jacobi preconditioning (docs/theory.md 5.3): SLQ on D^-1/2 (K + shift I) D^-1/2.
    log_diag, dens = jacobi_density(K, np.asarray(d_host, dtype=np.float64), shift,
                                    num_probes=num_probes, num_matvecs=num_matvecs, seed=seed)
    terms: dict[str, Any] = {"curvature": 0.0, "floor": float("nan")}
    smallest, largest = float(dens.nodes.min()), float(dens.nodes.max())
    if soft is None and smallest <= xp.eps(K.dtype) * largest:
        reasons.append(f"K is numerically singular at SLQ resolution (smallest node "
                       f"{smallest:.3g}, largest {largest:.3g}); try soft=kappa")
    try:
        ld = dens.logdet()
        terms["sharpness"] = (log_diag + ld.value) / N
        terms["stderr"] = ld.stderr / N
    except ValueError as err:
        reasons.append(f"SLQ log-determinant not defined: {err}")
        terms["sharpness"], terms["stderr"] = float("nan"), float("nan")
    terms["tail"] = _tail_or_none(dens)
    if K.structural_nullity:
        reasons.append(f"K has {K.structural_nullity} structural null directions "
                       "(use observations='probabilities', which projects them out)")
    return terms


def spectrum_terms(lam: np.ndarray, K: Any, soft: float | None,
                   reasons: list[str]) -> dict[str, Any]:
    """Sharpness and rank diagnostics from the exact spectrum of ``K_H``."""
    N = lam.size
    floor = gram_floor(float(lam.max()), K._xp.eps(K.dtype))  # float64 Gram of K.dtype Jacobians
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
            + (f" ({K.structural_nullity} structural)" if K.structural_nullity else "")
            + "; the log-determinant is a candidate value (try soft=kappa)"
        )
    try:
        terms["tail"] = lower_tail_exponent(lam, floor=floor)
    except ValueError:
        terms["tail"] = None
    return terms


def _tail_or_none(density: Any) -> TailFit | None:
    if density is None:
        return None
    try:
        return lower_tail_exponent(density)
    except ValueError:
        return None


def _reference_vector(op: Any, reference: Any, n: int) -> Any:
    """The prior mean / minimiser as a float64 flat vector on ``op``'s backend (default 0)."""
    if reference is None:
        return op._xp.zeros((n,))
    shape = getattr(reference, "shape", None)
    if shape is not None and not isinstance(reference, Mapping) and tuple(shape) == (n,):
        return f64(op, reference)
    try:
        return f64(op, op.ravel(reference))
    except (ValueError, TypeError) as err:
        raise ValueError(f"Expected reference= as a pytree or dict with the parameters' "
                         f"structure and shapes (or a Module, or a flat array of shape "
                         f"({n},)); {err}") from err
