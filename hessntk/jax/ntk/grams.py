"""Explicit NTK Gram matrices ``K = J S J^T`` of JAX functions within a memory budget.

Two engines (Novak et al. 2022, "Fast finite width neural tangent kernel", section 3):
Jacobian contraction, and NTK-vector products ``K[:, B] = J (S J_B^T)``; ``method="auto"``
picks the cheaper by flop count under the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessntk._memory import format_bytes
from hessntk._observations import OutputsSpec
from hessntk.jax._common import convert_batches
from hessntk.jax.ntk._common import (
    METHODS,
    MODES,
    _budget,
    _check_chunk,
    _chunk,
    _Problem,
    _result_dtype,
    _setup,
)
from hessntk.jax.ntk.kernels import _contract, _jacobian_chunks, _ntk_vp_block
from hessntk.spectral._backend import itemsize

__all__ = ["gram"]

def gram(
    f: Callable[[Any, Any], jax.Array],
    params: Any,
    inputs: Any,
    inputs2: Any = None,
    *,
    prior: Any = None,
    mode: str = "full",
    method: str = "auto",
    outputs: OutputsSpec = "raw",
    dtype: Any = None,
    chunk_size: int | None = None,
    max_memory: int | None = None,
) -> jax.Array:
    """Build the (prior-weighted) empirical NTK Gram matrix ``K = J S J^T``.

    Parameters
    ----------
    f, params, inputs
        As in :func:`jacobian`.
    inputs2 : optional
        A second set of ``n2`` samples with the same structure: the cross-kernel
        ``J(inputs) S J(inputs2)^T``.
    prior : None, float, "init" or pytree
        Diagonal prior covariance ``S``: identity, one variance, :func:`init_variances`, or a
        pytree with the parameters' structure holding a float or an array of the leaf's shape
        per leaf.
    mode : {"full", "trace", "diagonal"}
        ``"full"``: ``(n1 c, n2 c)``, row ``i c + j`` = output ``j`` of sample ``i``.
        ``"trace"``: the output-summed ``(n1, n2)`` kernel. ``"diagonal"``: per-sample
        ``(n1, c, c)`` blocks (no ``inputs2``).
    method : {"auto", "jacobian", "ntk_vp"}
        ``"jacobian"``: contract per-sample Jacobian chunks (Novak et al. 2022's Jacobian
        contraction). ``"ntk_vp"``: NTK-vector products, ``K[:, B] = J (S J_B^T)`` by a
        vmapped jvp over the rows (needs no Jacobian of the rows). ``"auto"``: the cheaper of
        the two by flop count within the memory budget. Both give the same matrix up to
        rounding.
    outputs : {"raw", "logits", "probabilities", "simplex"} or callable
        Observation map (``"probabilities"`` Grams have ``n1`` exact null directions).
    dtype : dtype, optional
        Of the result; contractions run in the wider of it and the parameters' dtype.
        Default float64 with ``jax_enable_x64`` (float32 Jacobians accumulated in float64
        resolve eigenvalues down to :func:`hessntk.spectral.gram_floor`), else the
        parameters' dtype.
    chunk_size : int, optional
        Samples per compiled chunk (default from the budget).
    max_memory : int, optional
        Budget in bytes for the result and the working memory (default 25% of the free
        memory); a planned, not a measured, bound.

    Returns
    -------
    jax.Array
        ``(n1 c, n2 c)`` for ``"full"``, ``(n1, n2)`` for ``"trace"``, ``(n1, c, c)`` for
        ``"diagonal"``.

    Raises
    ------
    ValueError
        A result larger than ``max_memory`` (use :class:`GramOperator`), mismatched inputs,
        non-per-sample outputs, unknown options, float64 without ``jax_enable_x64``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> f = lambda p, x: x @ p["w"]
    >>> x = jnp.arange(6.0).reshape(3, 2)
    >>> bool(jnp.allclose(gram(f, {"w": jnp.zeros(2)}, x), x @ x.T))
    True
    """
    if mode not in MODES:
        raise ValueError(f"Expected mode to be one of {MODES}; got {mode!r}.")
    if method not in METHODS:
        raise ValueError(f"Expected method to be one of {METHODS}; got {method!r}.")
    _check_chunk(chunk_size)
    problem = _setup(f, params, prior, outputs)
    x1, n1, c = problem.batch(inputs, "inputs")
    x2, n2 = None, n1
    if inputs2 is not None:
        if mode == "diagonal":
            raise ValueError(
                "Expected no inputs2 with mode='diagonal' (per-sample blocks of one set); got "
                "inputs2. Use mode='full' for a cross-kernel."
            )
        convert_batches([inputs, inputs2], "inputs and inputs2", None)
        x2, n2, c2 = problem.batch(inputs2, "inputs2")
        if c2 != c:
            raise ValueError(
                f"Expected inputs2 to give as many outputs per sample as inputs ({c}); got {c2}."
            )
    out_dtype, cdtype = _result_dtype(dtype, problem.dtype)
    item = itemsize(cdtype)
    shape = {"full": (n1 * c, n2 * c), "trace": (n1, n2), "diagonal": (n1, c, c)}[mode]
    out_bytes = item * int(np.prod(shape))
    budget = _budget(max_memory, problem.layout.device)
    if out_bytes > budget:
        raise ValueError(
            f"Expected a Gram matrix that fits the memory budget {format_bytes(budget)}; got "
            f"{shape} entries of {cdtype} = {format_bytes(out_bytes)}. Use "
            "hessntk.jax.GramOperator for products without forming it, mode='trace' or "
            "'diagonal', fewer samples, or a larger max_memory=."
        )
    left = budget - 2 * out_bytes  # the tiles and the assembled result
    P = problem.layout.n
    if method == "auto":
        method = _plan(mode, n1, n2, c, P, item, left)
    if method == "jacobian" or mode == "diagonal":
        K = _gram_jacobian(problem, mode, x1, x2, n1, n2, c, cdtype, left, chunk_size)
    else:
        K = _gram_ntk_vp(problem, mode, x1, x2, n1, n2, c, cdtype, left, chunk_size)
    return K.astype(out_dtype)


def _plan(mode: str, n1: int, n2: int, c: int, P: int, item: int, left: int) -> str:
    """The cheaper engine by flop count (Novak et al. 2022, section 3; dense-layer proxy)."""
    if mode == "diagonal":
        return "jacobian"
    fwd = 2 * P  # flops of one sample's forward pass
    N1, N2 = n1 * c, n2 * c
    cost_jac = 2 * N1 * N2 * P + 3 * (n1 + n2) * c * fwd
    j_bytes = (n1 + n2) * c * P * item
    if j_bytes > left // 2:  # rows recomputed once per column tile
        tile = max(1, (left // 4) // max(c * P * item, 1))
        cost_jac += 3 * n1 * c * fwd * (-(-n2 // tile) - 1)
    cost_vp = 3 * n2 * c * fwd + 3 * N2 * n1 * fwd
    return "jacobian" if cost_jac <= cost_vp else "ntk_vp"


def _gram_jacobian(
    problem: _Problem, mode: str, x1: Any, x2: Any, n1: int, n2: int, c: int, cdtype: Any,
    left: int, chunk_size: int | None,
) -> jax.Array:
    """Contract per-sample Jacobians ``(J_1 S^1/2)(J_2 S^1/2)^T``, tile by tile."""
    P, item = problem.layout.n, np.dtype(cdtype).itemsize
    scale = problem.sqrt_variances()
    chunk = chunk_size or _chunk(c, P, item, max(left // 2, 1), max(n1, n2))

    def scaled(x: Any, lo: int, hi: int) -> jax.Array:
        parts = [A for _, A in _jacobian_chunks(problem, x, lo, hi, chunk, scale, cdtype)]
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

    if mode == "diagonal":
        blocks = [jnp.einsum("icp,idp->icd", A, A)
                  for _, A in _jacobian_chunks(problem, x1, 0, n1, chunk, scale, cdtype)]
        return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks)
    j_bytes = (n1 + (n2 if x2 is not None else 0)) * c * P * item
    if j_bytes <= left // 2:
        A = scaled(x1, 0, n1)
        return _contract(mode, A, A if x2 is None else scaled(x2, 0, n2))
    # Tiles of samples: a column tile's Jacobian is computed once, the row tiles below it are
    # recomputed; for a symmetric kernel only the lower triangle is computed.
    tile = int(max(1, min(max(n1, n2), (left // 4) // max(c * P * item, 1))))
    src2 = x1 if x2 is None else x2
    rows = [slice(s, min(s + tile, n1)) for s in range(0, n1, tile)]
    cols = [slice(s, min(s + tile, n2)) for s in range(0, n2, tile)]
    grid: list[list[Any]] = [[None] * len(cols) for _ in rows]
    for j, cs in enumerate(cols):
        B = scaled(src2, cs.start, cs.stop)
        for i, rs in enumerate(rows):
            if x2 is None and i < j:
                continue
            A = B if (x2 is None and i == j) else scaled(x1, rs.start, rs.stop)
            grid[i][j] = _contract(mode, A, B)
    if x2 is None:
        for i in range(len(rows)):
            for j in range(i + 1, len(cols)):
                grid[i][j] = grid[j][i].T
    return jnp.block(grid)


def _gram_ntk_vp(
    problem: _Problem, mode: str, x1: Any, x2: Any, n1: int, n2: int, c: int, cdtype: Any,
    left: int, chunk_size: int | None,
) -> jax.Array:
    """``K[:, B] = J (S J_B^T)``: Jacobian rows of a column chunk, then one vmapped jvp."""
    P, item = problem.layout.n, np.dtype(problem.dtype).itemsize
    col_chunk = chunk_size or _chunk(c, P, item, max(left // 4, 1), n2)
    row_chunk = n1 if chunk_size is None else chunk_size
    src2 = x1 if x2 is None else x2
    variances = problem.variances
    col_blocks = []
    for cs, J in _jacobian_chunks(problem, src2, 0, n2, col_chunk, None, problem.dtype):
        b = cs.stop - cs.start
        T = J.reshape(b * c, P)
        if variances is not None:
            T = T * variances
        parts = []
        for start in range(0, n1, row_chunk):
            r = min(start + row_chunk, n1) - start
            block, ok = _ntk_vp_block(problem.f, problem.outputs, mode, r, np.dtype(cdtype),
                                      problem.layout.tree, x1, start, T)
            if not bool(ok):
                raise FloatingPointError("Expected finite NTK-vector products; got NaN/Inf.")
            parts.append(block)
        col_blocks.append(parts[0] if len(parts) == 1 else jnp.concatenate(parts))
    return col_blocks[0] if len(col_blocks) == 1 else jnp.concatenate(col_blocks, axis=1)
