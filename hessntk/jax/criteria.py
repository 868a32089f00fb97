"""The IIC and checkpoint comparison for JAX functions: thin twins of :mod:`hessntk.criteria`.

:func:`iic` and :func:`compare` take ``f(params, x)`` and params pytrees where
:func:`hessntk.criteria.iic` and :func:`hessntk.criteria.compare` take a ``torch.nn.Module``.
They return the same result types (:class:`~hessntk.criteria.IICResult`,
:class:`~hessntk.criteria.Comparison`) and reuse the criteria code unchanged: the spectrum
terms and diagnostics of the exact method, and the whole Jacobi-preconditioned SLQ path, which
runs on a zero-copy torch view of the jax :class:`~hessntk.jax.GramOperator`
(:class:`hessntk.jax.bridge.TorchView`). What is JAX-specific here is only what touches the
model: the Gram matrix, the Jacobian-vector product of the KKT check, the interpolation
residual and the dense Hessians of a callable prior.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessntk.criteria.comparison import Comparison, rank_results
from hessntk.criteria.criterion import (
    DENSE_PRIOR_MAX_P,
    METHODS,
    OBSERVATIONS,
    IICResult,
    _gaussian_slq,
    _spectrum_terms,
    assemble_result,
    interpolation_reasons,
    resolve_method,
)
from hessntk.jax._common import ParamLayout, as_batch_list
from hessntk.jax.bridge import TorchView
from hessntk.jax.ntk import GramOperator, gram, jacobian
from hessntk.spectral.probes import Seed

__all__ = ["compare", "iic"]


def iic(
    f: Callable[[Any, Any], jax.Array],
    params: Any,
    data: Any,
    *,
    prior: Any = "init",
    reference: Any = None,
    observations: str = "outputs",
    method: str = "auto",
    soft: float | None = None,
    seed: Seed = 0,
    num_probes: int = 16,
    num_matvecs: int = 100,
    interpolation_tol: float = 1e-3,
    convention: str = "B",
) -> IICResult:
    """Compute the Interpolating Information Criterion of a trained JAX model.

    The JAX twin of :func:`hessntk.criteria.iic` (same options, same result, same numbers for
    the same weights): ``IIC = log(R* - R0) + (1/N) log det K_H + (1/N)(log det H* - log det
    H0) - log N``, lower is better.

    Parameters
    ----------
    f : callable
        ``f(params, x) -> outputs``, per-sample outputs ``(n, ...)``.
    params : pytree of floating arrays
        The trained parameters ``theta*``.
    data : (inputs, targets) or list of such pairs
        The training data that the model interpolates (targets: regression values, or
        integer class indices).
    prior : "init", float, pytree or callable
        Gaussian prior covariance ``S`` (diagonal): ``"init"`` (``2 / fan_in`` for weights
        stored ``(out, in)``, 1 for biases), a float variance, or a pytree of variances with
        the parameters' structure. A callable ``R(params) -> scalar`` is a general regulariser;
        then ``reference`` must be its minimiser and only method "exact" with at most 4096
        parameters is supported.
    reference : pytree, flat array or None
        The prior mean ``m`` (e.g. the initialisation; default zero), or for a callable prior
        the minimiser ``theta0`` of ``R``.
    observations : {"outputs", "logits", "probabilities"}
    method : {"auto", "exact", "slq"}
    soft : float, optional
    seed : int or numpy.random.Generator
    num_probes, num_matvecs : int
    interpolation_tol : float
        As in :func:`hessntk.criteria.iic`.
    convention : {"B"}
        The curvature convention: ``"B"`` (``hess R`` only; the default of
        :func:`hessntk.criteria.iic`). Convention ``"A"`` (the multiplier correction) is
        available for torch models only.

    Returns
    -------
    hessntk.criteria.IICResult

    Raises
    ------
    ValueError
        Unknown options, data that are not (inputs, targets) pairs, a callable prior without
        ``reference`` or with method "slq", a ``reference`` that does not match ``params``,
        method "exact" without ``jax_enable_x64`` (float64 Gram matrix).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> X = jax.random.normal(jax.random.PRNGKey(0), (4, 10))
    >>> Y = jax.random.normal(jax.random.PRNGKey(1), (4, 1))
    >>> f = lambda p, x: x @ p["w"]
    >>> params = {"w": jnp.linalg.pinv(X) @ Y}  # the minimum-norm interpolator
    >>> res = iic(f, params, (X, Y), prior=1.0, method="slq", num_probes=4, num_matvecs=4)
    >>> res.num_constraints, res.method, res.valid
    (4, 'slq', True)
    """
    if observations not in OBSERVATIONS:
        raise ValueError(f"Expected observations in {tuple(OBSERVATIONS)}; got {observations!r}.")
    if method not in METHODS:
        raise ValueError(f"Expected method in {METHODS}; got {method!r}.")
    if convention != "B":
        raise ValueError(
            f"Expected convention='B' for a JAX model; got {convention!r}. The multiplier "
            "correction of convention 'A' is implemented for torch models "
            "(hessntk.criteria.iic)."
        )
    if soft is not None and not soft > 0:
        raise ValueError(f"Expected soft > 0 (a noise precision); got {soft!r}.")
    pairs = as_batch_list(data, "data")
    for i, b in enumerate(pairs):
        if not isinstance(b, (tuple, list)) or len(b) != 2:
            raise ValueError(
                f"Expected data as (inputs, targets) pairs; got {type(b).__name__} in batch {i}."
            )
    spec = OBSERVATIONS[observations]
    general = callable(prior) and not isinstance(prior, str)
    if general and reference is None:
        raise ValueError("Expected reference= the minimiser theta0 of the callable prior R "
                         "(a params pytree holding theta0).")
    op = GramOperator(f, params, data=pairs, prior=None if general else prior, outputs=spec)
    view = TorchView(op)  # what the torch-side criteria code reads
    N = op.shape[0]
    layout: ParamLayout = op.layout
    theta = np.asarray(layout.flat, dtype=np.float64)
    ref = _reference_vector(reference, layout)
    residual, train_error = _interpolation(f, layout.tree, pairs, observations)
    reasons: list[str] = interpolation_reasons(residual, train_error, interpolation_tol, soft)
    method = resolve_method(method, general, layout.n, N)
    if layout.n < N and soft is None:
        reasons.append(f"K has rank at most P = {layout.n} < N = {N} (fewer parameters than "
                       "constraints): its log-determinant is -inf; use soft=kappa")
    if general:
        if method != "exact":
            raise ValueError(
                f"Expected method='exact' (at most {DENSE_PRIOR_MAX_P} parameters) for a "
                "callable prior with a JAX model; the matrix-free path supports Gaussian priors "
                "(float, pytree or 'init'), or use the torch entry point hessntk.criteria.iic."
            )
        terms = _general_prior(op, view, prior, theta, ref, spec, soft, reasons)
        prior_name = getattr(prior, "__name__", "callable")
    else:
        var = _variance_vector(op)
        delta = theta - ref
        reg_gap = 0.5 * float((delta * delta / var).sum())
        if method == "exact":
            terms = _gaussian_exact(op, view, spec, delta, reg_gap, soft, reasons)
        else:
            terms = _gaussian_slq(view, soft, num_probes, num_matvecs, seed, reasons)
        terms["reg_gap"] = reg_gap
        prior_name = prior if isinstance(prior, str) else (
            f"{prior:g}" if isinstance(prior, (int, float)) else "pytree")
    return assemble_result(
        terms, reasons, num_constraints=N, num_params=layout.n, method=method,
        observations=observations, prior_name=str(prior_name), soft=soft, residual=residual,
        train_error=train_error, structural_nullity=op.structural_nullity,
    )  # fmt: skip


def _gaussian_exact(op: GramOperator, view: TorchView, spec: str, delta: np.ndarray,
                    reg_gap: float, soft: float | None, reasons: list[str]) -> dict[str, Any]:
    prior = None if op.variances is None else op.layout.unravel(op.variances)
    K = gram(op.problem.f, op.layout.tree, op.inputs(), prior=prior, outputs=spec,
             dtype=jnp.float64)
    K = np.asarray(K)
    lam, U = np.linalg.eigh((K + K.T) / 2)
    terms = _spectrum_terms(lam, view, soft, reasons)
    # KKT in the S-metric, as in hessntk.criteria.criterion._gaussian_exact.
    b = U.T @ np.asarray(op.jvp(delta), dtype=np.float64)
    pos = lam > terms["floor"]
    explained = float(np.sum(b[pos] ** 2 / lam[pos]))
    terms["kkt"] = math.sqrt(max(0.0, 1.0 - explained / (2 * reg_gap))) if reg_gap > 0 else math.nan
    terms["curvature"] = 0.0
    return terms


def _general_prior(op: GramOperator, view: TorchView, R: Callable[[Any], jax.Array],
                   theta: np.ndarray, ref: np.ndarray, spec: str, soft: float | None,
                   reasons: list[str]) -> dict[str, Any]:
    layout = op.layout
    P, N = layout.n, op.shape[0]
    if P > DENSE_PRIOR_MAX_P:
        raise ValueError(f"Expected at most {DENSE_PRIOR_MAX_P} parameters for a callable prior "
                         f"(dense Hessians of R); got {P}. Use a Gaussian prior.")

    def R_flat(vec: jax.Array) -> jax.Array:
        return R(layout.unravel(vec.astype(layout.dtype)))

    th, r0v = jnp.asarray(theta, layout.dtype), jnp.asarray(ref, layout.dtype)
    value, hess = jax.jit(R_flat), jax.jit(jax.hessian(R_flat))  # one compilation each
    r_star, r0 = float(value(th)), float(value(r0v))
    H_star = np.asarray(hess(th), dtype=np.float64)
    H0 = np.asarray(hess(r0v), dtype=np.float64)
    J = np.asarray(jacobian(op.problem.f, layout.tree, op.inputs(), outputs=spec),
                   dtype=np.float64)
    logdets = {}
    for name, H in (("H*", H_star), ("H0", H0)):
        ev = np.linalg.eigvalsh((H + H.T) / 2)
        if ev.min() <= 0:
            reasons.append(f"{name} = Hessian of R is not positive definite "
                           f"(smallest eigenvalue {float(ev.min()):.3g})")
        logdets[name] = float(np.log(np.maximum(ev, 1e-300)).sum())
    KH = J @ np.linalg.solve(H_star, J.T)
    lam = np.linalg.eigvalsh((KH + KH.T) / 2)
    terms = _spectrum_terms(lam, view, soft, reasons)
    terms["curvature"] = (logdets["H*"] - logdets["H0"]) / N
    terms["reg_gap"] = r_star - r0
    g = np.asarray(jax.jit(jax.grad(R_flat))(th), dtype=np.float64)
    mu = -np.linalg.lstsq(J.T, g, rcond=None)[0]
    terms["kkt"] = float(np.linalg.norm(g + J.T @ mu) / np.linalg.norm(g))
    return terms


def _variance_vector(op: GramOperator) -> np.ndarray:
    if op.variances is None:
        return np.ones(op.layout.n)
    var = np.asarray(op.variances, dtype=np.float64)
    if not np.all(var > 0):
        raise ValueError("Expected positive prior variances; got a zero or negative one.")
    return var


def _reference_vector(reference: Any, layout: ParamLayout) -> np.ndarray:
    if reference is None:
        return np.zeros(layout.n)
    if isinstance(reference, (jax.Array, np.ndarray)) and reference.shape == (layout.n,):
        return np.asarray(reference, dtype=np.float64)
    try:
        leaves = jax.tree_util.tree_leaves(reference)
        same = jax.tree_util.tree_structure(reference) == layout.treedef and all(
            tuple(np.shape(a)) == s for a, s in zip(leaves, layout.shapes, strict=True))
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ValueError("Expected reference= as a pytree with the parameters' structure and "
                         f"shapes, or a flat array of shape ({layout.n},); got "
                         f"{type(reference).__name__}.")
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in leaves])


def _interpolation(f: Callable, params: Any, pairs: Sequence[Any],
                   observations: str) -> tuple[float, float | None]:
    """Relative residual ``||f - Y|| / ||Y||`` and, for class-index targets, the training error.

    Same rules as :func:`hessntk.criteria.criterion._interpolation`, on jax outputs.
    """
    num, den, wrong, count = 0.0, 0.0, 0, 0
    for x, y in pairs:
        out = np.asarray(f(params, jnp.asarray(x) if isinstance(x, np.ndarray) else x))
        out = out.reshape(out.shape[0], -1)
        if y is None:
            return float("nan"), None
        y = np.asarray(y)
        if not np.issubdtype(y.dtype, np.floating) and y.ndim == 1:
            wrong += int((out.argmax(axis=1) != y).sum())
            count += y.size
            if observations == "probabilities":
                target = np.eye(out.shape[1], dtype=out.dtype)[y]
                z = out - out.max(axis=1, keepdims=True)
                p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
                num += float(((p - target) ** 2).sum())
                den += float((target**2).sum())
            continue
        target = y.reshape(out.shape).astype(out.dtype)
        num += float(((out - target) ** 2).sum())
        den += float((target**2).sum())
    residual = math.sqrt(num / den) if den > 0 else float("nan")
    return residual, (wrong / count if count else None)


# -- comparison -----------------------------------------------------------------------------------


def compare(
    checkpoints: Sequence[Any] | Mapping[str, Any],
    f: Callable[[Any, Any], jax.Array],
    data: Any,
    **iic_kwargs: Any,
) -> Comparison:
    """Rank checkpoints (params pytrees of one function) by the IIC.

    The JAX twin of :func:`hessntk.criteria.compare`. Every checkpoint is evaluated with the
    same ``seed`` (in ``iic_kwargs``, default 0), so stochastic (SLQ) terms use the same
    probes for every checkpoint (common random numbers). The compiled NTK products are shared
    by all checkpoints (same ``f``, same shapes): only the first one compiles.

    Parameters
    ----------
    checkpoints : sequence or mapping name -> params pytree
        Parameters of ``f`` with one structure and shapes (Equinox: load each with
        ``equinox.tree_deserialise_leaves(path, like)`` and pass
        ``equinox.filter(model, equinox.is_inexact_array)``).
    f : callable
        ``f(params, x) -> outputs``.
    data : (inputs, targets) or list of such pairs
        The training data.
    **iic_kwargs
        Passed to :func:`hessntk.jax.iic` (prior, method, soft, seed, ...).

    Returns
    -------
    hessntk.criteria.Comparison

    Raises
    ------
    ValueError
        No checkpoint, or a checkpoint whose structure or shapes differ from the first one
        (named).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> X = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
    >>> Y = jax.random.normal(jax.random.PRNGKey(1), (3, 1))
    >>> f = lambda p, x: x @ p["w"]
    >>> w = jnp.linalg.pinv(X) @ Y
    >>> kw = dict(prior=1.0, method="slq", num_probes=2, num_matvecs=3)
    >>> table = compare({"a": {"w": w}, "b": {"w": 2 * w}}, f, (X, Y), soft=1e6, **kw)
    >>> [row["name"] for row in table.rows]  # "b" does not interpolate: ranked after "a"
    ['a', 'b']
    """
    items = (list(checkpoints.items()) if isinstance(checkpoints, Mapping)
             else [(f"checkpoint {i}", c) for i, c in enumerate(checkpoints)])
    if not items:
        raise ValueError("Expected at least one checkpoint; got none.")
    first = _shapes(items[0][1])
    results: dict[str, IICResult] = {}
    for name, params in items:
        got = _shapes(params)
        if got != first:
            raise ValueError(
                f"Checkpoint {name!r} does not match the first checkpoint's structure and "
                f"shapes: got {got[0]} with shapes {got[1]}, expected {first[0]} with shapes "
                f"{first[1]}."
            )
        results[str(name)] = iic(f, params, data, **iic_kwargs)
    return rank_results(results)


def _shapes(params: Any) -> tuple[Any, list[tuple[int, ...]]]:
    return (jax.tree_util.tree_structure(params),
            [tuple(np.shape(a)) for a in jax.tree_util.tree_leaves(params)])



