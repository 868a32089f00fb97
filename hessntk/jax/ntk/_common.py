"""Shared set-up of the JAX NTK builders: priors, the observation map, the problem, budgets.

Internal. The public entry points (:func:`~hessntk.jax.gram`, :func:`~hessntk.jax.jacobian`,
:class:`~hessntk.jax.GramOperator`) validate their arguments once through :func:`_setup`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessntk._memory import memory_budget
from hessntk._observations import (
    OutputsSpec,
    check_batched_output,
    check_logits_shape,
    check_outputs_spec,
    simplex_basis_np,
)
from hessntk.jax._common import (
    TreeLayout,
    commit,
    convert_batches,
    flatten_params,
    path_name,
    require_x64,
)

MODES = ("full", "trace", "diagonal")
METHODS = ("auto", "jacobian", "ntk_vp")
#: Cap on the working memory of one chunk of per-sample Jacobians: larger is no faster.
MAX_CHUNK_BYTES = 256 * 2**20


# -- prior ----------------------------------------------------------------------------------------


def init_variances(params: Any) -> Any:
    """Per-leaf fan-in variances: ``2 / fan_in`` for weights, ``1`` for biases.

    A leaf with ``ndim >= 2`` is a weight with ``fan_in = size / shape[0]``: the output
    dimension first, as in Equinox (``eqx.nn.Linear.weight`` is ``(out, in)``) and PyTorch.
    Leaves with ``ndim <= 1`` get variance 1. For weights stored ``(in, out)`` (``x @ W``)
    pass the variances as a pytree instead.

    Returns
    -------
    pytree of float
        Same structure as ``params``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> init_variances({"w": jnp.zeros((2, 4)), "b": jnp.zeros(2)})
    {'b': 1.0, 'w': 0.5}
    """

    def var(p: Any) -> float:
        if p.ndim >= 2:
            return 2.0 / max(int(np.prod(p.shape)) // p.shape[0], 1)
        return 1.0

    return jax.tree_util.tree_map(var, params)


def _check_variance(v: float, what: str) -> None:
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"Expected {what} to be a finite non-negative variance; got {v}.")


def resolve_prior(prior: Any, layout: TreeLayout) -> jax.Array | None:
    """Turn ``prior=`` into a flat variance vector of shape ``(P,)`` (None: the identity).

    ``None``: identity. A float: that variance everywhere. ``"init"``: :func:`init_variances`.
    A pytree with the parameters' structure whose leaves are floats or arrays of the leaf's
    shape (an elementwise diagonal).
    """
    if prior is None:
        return None
    if isinstance(prior, str):
        if prior != "init":
            raise ValueError(
                f"Expected prior= to be None, a float, 'init' or a pytree; got {prior!r}."
            )
        prior = init_variances(layout.tree)
    elif isinstance(prior, (int, float)) and not isinstance(prior, bool):
        _check_variance(float(prior), "prior")
        return commit(jnp.full(layout.n, float(prior), dtype=layout.dtype), layout.device)
    flat_with_path, treedef = jax.tree_util.tree_flatten_with_path(prior)
    if treedef != layout.treedef:
        raise ValueError(
            "Expected prior= as a pytree with the parameters' structure (one variance, or an "
            f"array of the leaf's shape, per leaf); got {treedef} for parameters "
            f"{layout.treedef}. Build it with jax.tree_util.tree_map(lambda p: 1.0, params)."
        )
    parts = []
    for (path, v), shape in zip(flat_with_path, layout.shapes, strict=True):
        name = path_name(path)
        arr = np.asarray(v, dtype=np.float64)
        if arr.ndim == 0:
            _check_variance(float(arr), f"prior{name}")
            arr = np.full(shape, float(arr))
        elif arr.shape != shape:
            raise ValueError(
                f"Expected the prior variance at {name} to be a float or have the parameter's "
                f"shape {shape}; got shape {arr.shape}."
            )
        elif not (np.all(np.isfinite(arr)) and np.all(arr >= 0)):
            raise ValueError(
                f"Expected finite non-negative prior variances at {name}; got negative or "
                "non-finite entries."
            )
        parts.append(arr.reshape(-1))
    return commit(jnp.asarray(np.concatenate(parts), dtype=layout.dtype), layout.device)


# -- observation map ------------------------------------------------------------------------------


def observe(f: Callable, outputs: OutputsSpec, params: Any, x: Any) -> jax.Array:
    """Observed outputs ``(n, c)`` of ``f(params, x)`` (observation map, then flattened)."""
    out = f(params, x)
    if not hasattr(out, "ndim"):
        raise TypeError(
            f"Expected f(params, x) to return an array; got {type(out).__name__}. Return the "
            "output array (e.g. the logits) from f."
        )
    check_batched_output(out.ndim, "f(params, x) to return per-sample outputs")
    if callable(outputs):
        out = outputs(out)
    elif outputs in ("probabilities", "simplex"):
        check_logits_shape(tuple(out.shape), outputs)
        # In float64 when available (see hessntk.ntk._common.transform_outputs: the softmax
        # Jacobian of a confident model cancels in float32).
        wide = jnp.float64 if jax.config.jax_enable_x64 else out.dtype
        p = jax.nn.softmax(out.astype(wide), axis=-1)
        if outputs == "simplex":
            p = p @ jnp.asarray(simplex_basis_np(p.shape[1]), dtype=wide)
        out = p.astype(out.dtype)
    return out.reshape(out.shape[0], -1)


def _expand(x: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: a[None], x)


# -- the problem ----------------------------------------------------------------------------------


@dataclass
class _Problem:
    """A function, its parameters, prior and output map, validated once."""

    f: Callable
    layout: TreeLayout
    variances: jax.Array | None  # flat (P,), None for the identity
    outputs: OutputsSpec

    @property
    def dtype(self) -> np.dtype:
        return self.layout.dtype

    def sqrt_variances(self) -> jax.Array | None:
        return None if self.variances is None else jnp.sqrt(self.variances)

    def batch(self, inputs: Any, what: str) -> tuple[Any, int, int]:
        """Convert one batch of inputs; return it with ``(n, c)`` from two abstract evaluations.

        Two sizes (2 and 3 samples), so that a function reducing over the batch cannot pass
        by coincidence.
        """
        (b,) = convert_batches([inputs], what, self.dtype, self.layout.device)
        for path, leaf in jax.tree_util.tree_flatten_with_path(b.tree)[0]:
            if leaf.ndim == 0:
                raise ValueError(
                    f"Expected every leaf of {what} to have a leading batch dimension; got a "
                    f"scalar at {path_name(path)}. Close over constants in f."
                )
        n, c = b.num_samples, None
        for m in sorted({min(n, 2), min(n, 3)}):
            # Shapes only (jax.eval_shape: traced, neither compiled nor run); the compiled
            # kernels check that the outputs are finite.
            x = jax.tree_util.tree_map(
                lambda a, m=m: jax.ShapeDtypeStruct((m, *a.shape[1:]), a.dtype), b.tree
            )
            out = jax.eval_shape(partial(observe, self.f, self.outputs), self.layout.tree, x)
            if out.shape[0] != m:
                raise ValueError(
                    f"Expected f(params, x) to return outputs with the batch size of {what} "
                    f"along axis 0 ({m} for {m} samples); got shape {tuple(out.shape)}. "
                    "hessntk needs per-sample outputs (n, ...), not batch reductions."
                )
            c = int(out.shape[1])
        return b.tree, n, c


def _setup(f: Callable, params: Any, prior: Any, outputs: OutputsSpec) -> _Problem:
    if not callable(f):
        raise TypeError(f"Expected f(params, x) -> outputs; got {type(f).__name__}.")
    check_outputs_spec(outputs)
    layout = flatten_params(params)
    return _Problem(f, layout, resolve_prior(prior, layout), outputs)


def _budget(max_memory: int | float | None, device: Any) -> int:
    """``max_memory=`` in bytes, or a fraction of the device's (else the host's) free memory."""
    from hessntk.spectral._backend import JaxBackend

    return memory_budget(max_memory,
                         JaxBackend(device).free_memory() if max_memory is None else None)


def _check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"Expected chunk_size to be a positive int or None; got {chunk_size!r}.")


def _result_dtype(dtype: Any, param_dtype: np.dtype) -> tuple[np.dtype, np.dtype]:
    """``(output dtype, contraction dtype)``; float64 needs ``jax_enable_x64``.

    Default: float64 with ``jax_enable_x64`` (float64 accumulation of the Jacobians, as on
    torch: :func:`hessntk.spectral.gram_floor`), else the parameters' dtype.
    """
    if dtype is None:
        out = np.dtype(np.float64) if jax.config.jax_enable_x64 else param_dtype
    else:
        out = np.dtype(dtype)
    if not np.issubdtype(out, np.floating):
        raise TypeError(f"Expected a floating dtype=; got {out}.")
    compute = np.promote_types(out, param_dtype)
    if compute == np.float64:
        require_x64("a float64 Gram matrix or Jacobian")
    return out, compute


def _chunk(c: int, P: int, item: int, budget: int, n: int) -> int:
    per = 3 * c * P * item
    return int(max(1, min(n, min(budget, MAX_CHUNK_BYTES) // max(per, 1))))
