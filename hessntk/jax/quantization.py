"""Per-layer quantization sensitivity of a JAX loss: the twin of
:func:`hessntk.criteria.quantization_sensitivity`.

Same predictors (``"direct"`` quadratic form plus gradient term, HAWQ-v2 block traces, HAWQ-v1
top block eigenvalues; theory.md section 6), same result type
(:class:`hessntk.criteria.QuantizationSensitivity`, with its tables, predictions and
:func:`hessntk.criteria.allocate_bits`). The quantizer is the torch one,
:func:`hessntk.criteria.quantizers.quantize`, applied to zero-copy torch views of the jax
leaves (:mod:`hessntk.jax.bridge`); the option checks are those of the torch entry point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessntk.criteria.quantization import (
    METRICS,
    TRACE_METHODS,
    QuantizationSensitivity,
    _check_bit_list,
    _check_options,
)
from hessntk.criteria.quantizers import quantize
from hessntk.jax._common import ParamLayout, flatten_params
from hessntk.jax.bridge import to_jax, to_torch
from hessntk.jax.curvature import HessianOperator
from hessntk.spectral import eigsh
from hessntk.spectral import trace as _trace
from hessntk.spectral.probes import Seed

__all__ = ["quantization_sensitivity"]

Layers = None | str | Sequence[str] | Mapping[str, Sequence[str]]


def quantization_sensitivity(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    data: Any,
    *,
    bits: int | Sequence[int] = (2, 3, 4, 8),
    quantizer: str = "symmetric",
    granularity: str = "tensor",
    metric: str = "both",
    num_matvecs: int = 100,
    seed: Seed = 0,
    layers: Layers = None,
    quantize_biases: bool = False,
    trace_method: str = "xtrace",
) -> QuantizationSensitivity:
    """Predict the loss increase of quantizing each layer of a params pytree alone.

    The JAX twin of :func:`hessntk.criteria.quantization_sensitivity` (Hessian curvature):
    the same products, estimators and seeds give the same numbers for the same weights.

    Parameters
    ----------
    loss_fn, params, data
        As for :class:`hessntk.jax.HessianOperator`.
    bits, quantizer, granularity, metric, num_matvecs, seed, quantize_biases, trace_method
        As in :func:`hessntk.criteria.quantization_sensitivity`. ``granularity="channel"``
        quantizes per slice along axis 0 (the output axis of ``(out, in)`` weights).
    layers : None, str, sequence of str, or dict
        ``None``: leaves grouped by their key path without its last key (Equinox
        ``.layers[0].weight`` and ``.layers[0].bias`` form layer ``.layers[0]``; ``[(W1,
        b1), ...]`` gives ``[0]``, ...); a leaf at the root of the pytree is its own layer.
        Prefixes of key paths: all leaves under each. A dict ``layer name -> leaf key
        paths``: explicit groups. Key paths are ``jax.tree_util.keystr`` strings.

    Returns
    -------
    hessntk.criteria.QuantizationSensitivity
        ``params`` maps each layer to its leaf key paths.

    Raises
    ------
    ValueError
        Unknown options or key paths, overlapping layers, no quantizable leaf.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    >>> params = [(jax.random.normal(k1, (8, 4)), jnp.zeros(8)),
    ...           (jax.random.normal(k2, (3, 8)), jnp.zeros(3))]
    >>> def loss(p, b):
    ...     (W1, b1), (W2, b2) = p
    ...     out = jnp.tanh(b[0] @ W1.T + b1) @ W2.T + b2
    ...     return jnp.mean((out - b[1]) ** 2)
    >>> x, y = jnp.ones((16, 4)), jnp.zeros((16, 3))

    With ``jax_enable_x64`` on (the trace estimator's float64 bookkeeping needs it):

    >>> sens = quantization_sensitivity(loss, params, (x, y), bits=(2, 8), metric="trace",
    ...                                 num_matvecs=4)  # doctest: +SKIP
    >>> sens.layers, sens.num_params.tolist(), sens.predictions("direct").shape  # doctest: +SKIP
    (('[0]', '[1]'), [32, 24], (2, 2))
    """
    bits = _check_bit_list(bits, quantizer)
    _check_options(quantizer, granularity)
    if metric not in METRICS:
        raise ValueError(f"Expected metric in {METRICS}; got {metric!r}.")
    if trace_method not in TRACE_METHODS:
        raise ValueError(f"Expected trace_method in {TRACE_METHODS}; got {trace_method!r}.")
    if isinstance(num_matvecs, bool) or not isinstance(num_matvecs, int) or num_matvecs < 1:
        raise ValueError(f"Expected num_matvecs to be a positive int; got {num_matvecs!r}.")
    full = flatten_params(params)
    groups = _resolve_layers(full, layers, quantize_biases)
    chosen = [full.names.index(name) for group in groups.values() for name in group]
    order = sorted(chosen)  # the operator's leaves, in pytree order (as torch's layout)
    op = HessianOperator(_restricted(loss_fn, full, order), [_leaf(full, i) for i in order],
                         data)
    sub = op.layout
    position = {full.names[i]: k for k, i in enumerate(order)}
    L, B = len(groups), len(bits)

    # Perturbations: column i * B + j is dW of layer i at bits[j], zero outside the layer.
    V = np.zeros((sub.n, L * B), dtype=np.dtype(op.dtype))
    for i, group in enumerate(groups.values()):
        for j, b in enumerate(bits):
            for name in group:
                w = _leaf(full, full.names.index(name))
                q = to_jax(quantize(to_torch(w), b, quantizer, granularity))
                V[sub.slices[position[name]], i * B + j] = np.ravel(np.asarray(q - w))
    grad = _gradient(op)
    HV = np.asarray(op.matmat(V), dtype=np.float64)
    V64 = V.astype(np.float64)
    error = np.square(V64).sum(0).reshape(L, B)
    quadratic = 0.5 * (V64 * HV).sum(0).reshape(L, B)
    gradient_term = (grad @ V64).reshape(L, B)
    num_matvecs_used = {"direct": L * B, "trace": 0, "eigenvalue": 0}
    block_slices = [_indices(sub, [position[n] for n in group]) for group in groups.values()]

    tr = tr_se = lam = None
    if metric in ("trace", "both"):
        m = min(num_matvecs, sub.n)
        method = "exact" if m >= sub.n else trace_method
        est = _trace(op, num_matvecs=m, method=method, seed=seed, blocks=block_slices)
        tr, tr_se = np.asarray(est.values, float), np.asarray(est.stderrs, float)
        num_matvecs_used["trace"] = int(est.num_matvecs)
        trace_method = method
    if metric in ("eigenvalue", "both"):
        lam = np.zeros(L)
        for i, group in enumerate(groups.values()):
            idx = sorted(full.names.index(n) for n in group)
            block = HessianOperator(_restricted(loss_fn, full, idx),
                                    [_leaf(full, k) for k in idx], data,
                                    check_deterministic=False)
            lam[i], used = _top_eigenvalue(block, seed)
            num_matvecs_used["eigenvalue"] += used
    return QuantizationSensitivity(
        layers=tuple(groups),
        num_params=np.array([sum(int(np.prod(full.shapes[full.names.index(n)])) for n in g)
                             for g in groups.values()]),
        bits=bits, error=error, gradient_term=gradient_term, quadratic_term=quadratic,
        trace=tr, trace_stderr=tr_se, top_eigenvalue=lam,
        params={k: tuple(v) for k, v in groups.items()}, loss=float(op.loss),
        quantizer=quantizer, granularity=granularity, metric=metric, curvature="hessian",
        trace_method=trace_method if metric != "eigenvalue" else "",
        num_samples=op.num_samples, num_matvecs=num_matvecs_used,
    )


def _leaf(layout: ParamLayout, i: int) -> jax.Array:
    return jax.tree_util.tree_leaves(layout.tree)[i]


def _restricted(loss_fn: Callable, full: ParamLayout, idx: list[int]) -> Callable:
    """``loss_fn`` as a function of the leaves ``idx`` (a list), the others held fixed."""
    leaves = jax.tree_util.tree_leaves(full.tree)

    def loss(selected: list[jax.Array], batch: Any) -> jax.Array:
        merged = list(leaves)
        for k, value in zip(idx, selected, strict=True):
            merged[k] = value
        return loss_fn(jax.tree_util.tree_unflatten(full.treedef, merged), batch)

    return loss


def _indices(layout: ParamLayout, leaves: list[int]) -> slice | np.ndarray:
    """Positions of some leaves in the flat vector: a slice when contiguous."""
    leaves = sorted(leaves)
    parts = [np.arange(layout.slices[k].start, layout.slices[k].stop) for k in leaves]
    idx = np.concatenate(parts)
    if np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def _gradient(op: HessianOperator) -> np.ndarray:
    """Gradient of the full-data mean loss (float64 numpy), one compiled pass per batch shape."""
    grad = jax.jit(jax.grad(op.loss_fn))
    total = None
    for b, w in zip(op.batches, op.weights, strict=True):
        g = np.asarray(op.layout.ravel(grad(op.layout.tree, b.tree)), dtype=np.float64)
        if not np.all(np.isfinite(g)):
            raise FloatingPointError("Expected a finite gradient of the loss; got NaN/Inf.")
        total = w * g if total is None else total + w * g
    return total


def _top_eigenvalue(op: HessianOperator, seed: Seed) -> tuple[float, int]:
    """``lambda_max`` of a block and the products used (dense for a 1-entry block)."""
    n = op.shape[0]
    if n == 1:
        return float(np.asarray(op.matmat(jnp.ones((1, 1), op.dtype)))[0, 0]), 1
    res = eigsh(op, 1, which="LA", tol=1e-4, seed=seed, return_eigenvectors=False)
    return float(res.eigenvalues[0]), int(res.num_matvecs)


def _resolve_layers(layout: ParamLayout, layers: Layers, quantize_biases: bool
                    ) -> dict[str, list[str]]:
    """``layer name -> leaf key paths`` to quantize (see quantization_sensitivity)."""
    ndim = {name: len(shape) for name, shape in zip(layout.names, layout.shapes, strict=True)}

    def quantizable(name: str) -> bool:
        return ndim[name] >= 2 or quantize_biases

    def owner(name: str) -> str:
        cut = max(name.rfind("["), name.rfind("."))
        return name[:cut] if cut > 0 else name  # a root leaf is its own layer

    if layers is None:
        groups: dict[str, list[str]] = {}
        for name in layout.names:
            if quantizable(name):
                groups.setdefault(owner(name), []).append(name)
    elif isinstance(layers, Mapping):
        groups = {str(k): list(v) for k, v in layers.items()}
        for layer, group in groups.items():
            unknown = [n for n in group if n not in ndim]
            if unknown:
                raise ValueError(
                    f"Expected leaf key paths of params for layer {layer!r}; got unknown "
                    f"{unknown}. Valid key paths: {layout.names[:20]}."
                )
    else:
        prefixes = [layers] if isinstance(layers, str) else list(layers)
        groups = {}
        for prefix in prefixes:
            members = [n for n in layout.names if n.startswith(prefix)]
            if not members:
                raise ValueError(
                    f"Expected key-path prefixes of params; got {prefix!r}, which matches no "
                    f"leaf. Valid key paths: {layout.names[:20]}."
                )
            groups[prefix] = members
    seen: dict[str, str] = {}
    for layer, group in list(groups.items()):
        kept = [n for n in group if quantizable(n)]
        if not kept:
            raise ValueError(
                f"Expected layer {layer!r} to hold weights to quantize (leaves with ndim >= 2"
                f"{', or 1-D with quantize_biases' if quantize_biases else ''}); got "
                f"{group}. Drop it from layers= or pass quantize_biases=True."
            )
        for n in kept:
            if n in seen:
                raise ValueError(
                    f"Expected disjoint layers; leaf {n!r} is in layers {seen[n]!r} and "
                    f"{layer!r}."
                )
            seen[n] = layer
        groups[layer] = kept
    if not groups:
        raise ValueError(
            "Expected params with weights (leaves with ndim >= 2) to quantize; got none. Pass "
            "quantize_biases=True to quantize 1-D leaves, or layers= to choose them."
        )
    return groups
