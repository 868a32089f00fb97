"""Jacobians of the stacked outputs of JAX functions with respect to a params pytree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessntk._memory import format_bytes
from hessntk._observations import OutputsSpec
from hessntk.jax.ntk._common import _budget, _check_chunk, _chunk, _result_dtype, _setup
from hessntk.jax.ntk.kernels import _jacobian_chunks

__all__ = ["jacobian"]

def jacobian(
    f: Callable[[Any, Any], jax.Array],
    params: Any,
    inputs: Any,
    *,
    chunk_size: int | None = None,
    outputs: OutputsSpec = "raw",
    dtype: Any = None,
    max_memory: int | None = None,
) -> jax.Array:
    """Build the Jacobian of the stacked outputs of ``f(params, inputs)`` w.r.t. ``params``.

    Parameters
    ----------
    f : callable
        ``f(params, x) -> outputs`` on a batch ``x`` with the samples along axis 0, returning
        per-sample outputs ``(n, ...)``. Samples must not interact.
    params : pytree of floating arrays
        One floating dtype (float64 needs ``jax_enable_x64``).
    inputs : array or pytree of arrays
        One batch of ``n`` samples along axis 0 (passed to ``f`` as is).
    chunk_size : int, optional
        Samples per compiled ``vmap(jacrev)`` call (default: from ``max_memory``).
    outputs : {"raw", "logits", "probabilities", "simplex"} or callable
        Observation map, as in :func:`hessntk.ntk.jacobian`.
    dtype : dtype, optional
        Of the result (default the parameters').
    max_memory : int, optional
        Budget in bytes (default 25% of the free memory).

    Returns
    -------
    jax.Array of shape (n * c, P)
        Row ``i c + j`` is the gradient of output ``j`` of sample ``i``; columns follow
        ``jax.flatten_util.ravel_pytree(params)`` (leaves in ``tree_leaves`` order).

    Raises
    ------
    ValueError
        A Jacobian larger than ``max_memory`` (use :func:`gram` or :class:`GramOperator`),
        non-per-sample outputs, invalid options.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> f = lambda p, x: x @ p["w"]
    >>> x = jnp.arange(6.0).reshape(3, 2)
    >>> bool(jnp.allclose(jacobian(f, {"w": jnp.zeros((2, 1))}, x), x))
    True
    """
    _check_chunk(chunk_size)
    problem = _setup(f, params, None, outputs)
    x, n, c = problem.batch(inputs, "inputs")
    out_dtype, cdtype = _result_dtype(dtype, problem.dtype)
    P, item = problem.layout.n, np.dtype(cdtype).itemsize
    budget = _budget(max_memory, problem.layout.device)
    need = n * c * P * item
    if need > budget:
        raise ValueError(
            f"Expected a Jacobian that fits the memory budget {format_bytes(budget)}; got "
            f"({n * c}, {P}) entries = {format_bytes(need)}. Use hessntk.jax.gram or "
            "hessntk.jax.GramOperator, fewer samples, or a larger max_memory=."
        )
    chunk = chunk_size or _chunk(c, P, item, budget - need, n)
    parts = [A for _, A in _jacobian_chunks(problem, x, 0, n, chunk, None, cdtype)]
    J = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
    return J.reshape(n * c, P).astype(out_dtype)
