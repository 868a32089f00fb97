"""Compiled kernels of the JAX NTK builders: Jacobian rows, NTK-vector products, pull-backs.

Every compiled function is module-level with ``f`` (and ``outputs``) as static arguments:
calls with the same ``f`` and shapes reuse the compiled code (a second :func:`~hessntk.jax.gram`
call, or a :class:`~hessntk.jax.GramOperator` per checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessntk._observations import OutputsSpec
from hessntk.jax._common import unravel_like
from hessntk.jax.ntk._common import _expand, _Problem, observe


def _rows(x: Any, start: jax.Array, size: int) -> Any:
    """Samples ``start : start + size`` of every leaf (traced offset, static size)."""
    return jax.tree_util.tree_map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, size), x)


@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _jacobian_rows(
    f: Callable, outputs: OutputsSpec, size: int, dtype: np.dtype, params: Any, x: Any,
    start: jax.Array, scale: jax.Array | None,
) -> tuple[jax.Array, jax.Array]:
    """Per-sample Jacobians ``(size, c, P)`` of samples ``start : start + size``, times
    ``scale`` (flat), in ``dtype``; and whether the outputs are finite."""

    def single(p: Any, xi: Any) -> tuple[jax.Array, jax.Array]:
        out = observe(f, outputs, p, _expand(xi))[0]
        return out, out

    J, out = jax.vmap(jax.jacrev(single, has_aux=True), in_axes=(None, 0))(
        params, _rows(x, start, size)
    )
    leaves = jax.tree_util.tree_leaves(J)
    b, c = out.shape
    A = jnp.concatenate([leaf.reshape(b, c, -1) for leaf in leaves], axis=-1)
    if scale is not None:
        A = A * scale
    return A.astype(dtype), jnp.all(jnp.isfinite(out))


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _ntk_vp_block(
    f: Callable, outputs: OutputsSpec, mode: str, size: int, dtype: np.dtype, params: Any,
    x: Any, start: jax.Array, T: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Kernel block of rows ``start : start + size`` against the ``b c`` tangents ``T``.

    ``T`` (b c, P) holds ``S J_B^T`` of a column block; the block is ``(size c, b c)``
    (``mode="full"``) or the output-traced ``(size, b)``.
    """
    xr = _rows(x, start, size)

    def push(t: jax.Array) -> jax.Array:
        tangent = unravel_like(params, t)
        return jax.jvp(lambda p: observe(f, outputs, p, xr), (params,), (tangent,))[1]

    out = jax.vmap(push)(T).astype(dtype)  # (b c, size, c)
    c = out.shape[-1]
    out = out.reshape(-1, c, size, c)
    if mode == "full":
        block = out.transpose(2, 3, 0, 1).reshape(size * c, -1)
    else:
        block = jnp.einsum("bcrc->rb", out)
    return block, jnp.all(jnp.isfinite(block))


@partial(jax.jit, static_argnums=0)
def _contract(mode: str, A: jax.Array, B: jax.Array) -> jax.Array:
    """Kernel tile of scaled Jacobians ``A`` (a, c, P) and ``B`` (b, c, P)."""
    if mode == "full":
        P = A.shape[-1]
        return A.reshape(-1, P) @ B.reshape(-1, P).T
    return jnp.einsum("icp,jcp->ij", A, B)


# The accumulators are donated: sums and results are updated in place batch by batch, and
# the batch's rows are addressed by a traced offset, so one compilation serves every batch of
# the same shape.
@partial(jax.jit, static_argnums=(0, 1), donate_argnums=5)
def _pullback(
    f: Callable, outputs: OutputsSpec, params: Any, x: Any, V: jax.Array, acc: jax.Array,
    start: jax.Array, ok: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """``acc + (J(x)^T V[rows])^T``, rows ``start : start + n_b c`` of ``V`` (N, k); (k, P)."""
    out, vjp_fn = jax.vjp(lambda p: observe(f, outputs, p, x), params)
    k = V.shape[1]
    Vb = jax.lax.dynamic_slice_in_dim(V, start, out.size, axis=0)
    cot = Vb.T.reshape(k, *out.shape).astype(out.dtype)
    (g,) = jax.vmap(vjp_fn)(cot)
    G = jnp.concatenate([leaf.reshape(k, -1) for leaf in jax.tree_util.tree_leaves(g)], axis=1)
    return acc + G, ok & jnp.all(jnp.isfinite(out))


@partial(jax.jit, static_argnums=(0, 1), donate_argnums=6)
def _pushforward_into(
    f: Callable, outputs: OutputsSpec, params: Any, x: Any, U: jax.Array,
    scale: jax.Array | None, result: jax.Array, start: jax.Array,
) -> jax.Array:
    """``result`` with rows ``start : start + n_b c`` set to ``J(x) (scale * U)^T`` (N, k)."""
    T = U if scale is None else U * scale

    def push(t: jax.Array) -> jax.Array:
        tangent = unravel_like(params, t)
        return jax.jvp(lambda p: observe(f, outputs, p, x), (params,), (tangent,))[1]

    JU = jax.vmap(push)(T)  # (k, n_b, c)
    block = JU.reshape(T.shape[0], -1).T.astype(result.dtype)
    return jax.lax.dynamic_update_slice_in_dim(result, block, start, axis=0)


def _jacobian_chunks(
    problem: _Problem, x: Any, lo: int, hi: int, chunk: int, scale: Any, dtype: Any
):
    """Yield ``(samples, (b, c, P) array)``: (scaled) per-sample Jacobians of ``lo:hi``."""
    for start in range(lo, hi, chunk):
        sl = slice(start, min(start + chunk, hi))
        A, ok = _jacobian_rows(problem.f, problem.outputs, sl.stop - sl.start, np.dtype(dtype),
                               problem.layout.tree, x, start, scale)
        if not bool(ok):
            raise FloatingPointError(
                f"Expected finite outputs of f (samples {sl.start}..{sl.stop - 1}); got NaN/Inf."
            )
        yield sl, A
