"""NTK of JAX functions: Jacobians, Gram matrices and the matrix-free Gram operator.

``K = J S J^T`` with ``J`` the ``(N, P)`` Jacobian of the ``N = n c`` stacked outputs of
``f(params, x)`` (row ``i c + j`` = output ``j`` of sample ``i``, trailing output dimensions
flattened row-major) and ``S`` a diagonal prior covariance. Same conventions as
:mod:`hessntk.ntk`, for a function of a params pytree instead of a ``torch.nn.Module``.

- :func:`jacobian`: ``J`` itself, in chunks of samples.
- :func:`gram`: explicit ``K`` (full, output-traced or per-sample blocks; cross-kernels) by
  Jacobian contraction or NTK-vector products, within a memory budget.
- :class:`GramOperator`: ``v -> K v`` by one vjp and one jvp per batch, for the spectral core.

Every compiled function is module-level with ``f`` (and ``outputs``) as static arguments:
calls with the same ``f`` and shapes reuse the compiled code (a second :func:`gram` call, or
a :class:`GramOperator` per checkpoint in :func:`hessntk.jax.compare`).
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

from hessntk.jax._common import (
    ParamLayout,
    as_batch_list,
    as_jax,
    commit,
    concat_trees,
    convert_batches,
    flatten_params,
    path_name,
    require_x64,
    slice_tree,
    unravel_like,
)
from hessntk.ntk._common import (
    DEFAULT_MEMORY_FRACTION,
    OUTPUTS,
    available_memory,
    format_bytes,
    simplex_basis,
    structural_nullity,
)
from hessntk.spectral.operators import LinearOperator

__all__ = ["GramOperator", "gram", "init_variances", "jacobian"]

MODES = ("full", "trace", "diagonal")
METHODS = ("auto", "jacobian", "ntk_vp")
OutputsSpec = str | Callable[[jax.Array], jax.Array]
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


def resolve_prior(prior: Any, layout: ParamLayout) -> jax.Array | None:
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


def _check_outputs_spec(outputs: OutputsSpec) -> None:
    if callable(outputs):
        return
    if outputs not in OUTPUTS:
        raise ValueError(
            f"Expected outputs= to be one of {OUTPUTS} or a callable; got {outputs!r}."
        )


def observe(f: Callable, outputs: OutputsSpec, params: Any, x: Any) -> jax.Array:
    """Observed outputs ``(n, c)`` of ``f(params, x)`` (observation map, then flattened)."""
    out = f(params, x)
    if not hasattr(out, "ndim"):
        raise TypeError(
            f"Expected f(params, x) to return an array; got {type(out).__name__}. Return the "
            "output array (e.g. the logits) from f."
        )
    if out.ndim == 0:
        raise ValueError(
            "Expected f(params, x) to return per-sample outputs with a leading batch "
            "dimension; got a 0-d array. Return outputs of shape (n,) or (n, c), not a loss."
        )
    if callable(outputs):
        out = outputs(out)
    elif outputs in ("probabilities", "simplex"):
        if out.ndim != 2 or out.shape[1] < 2:
            raise ValueError(
                f"Expected logits of shape (n, c) with c >= 2 for outputs={outputs!r}; got "
                f"{tuple(out.shape)}."
            )
        out = jax.nn.softmax(out, axis=-1)
        if outputs == "simplex":
            Q = simplex_basis(out.shape[1]).numpy()
            out = out @ jnp.asarray(Q, dtype=out.dtype)
    return out.reshape(out.shape[0], -1)


def _expand(x: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: a[None], x)


# -- the problem ----------------------------------------------------------------------------------


@dataclass
class _Problem:
    """A function, its parameters, prior and output map, validated once."""

    f: Callable
    layout: ParamLayout
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
    _check_outputs_spec(outputs)
    layout = flatten_params(params)
    return _Problem(f, layout, resolve_prior(prior, layout), outputs)


def _budget(max_memory: int | float | None, device: Any) -> int:
    if max_memory is None:
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats and "bytes_limit" in stats:
            free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        else:
            import torch

            free = available_memory(torch.device("cpu"))
        return int(DEFAULT_MEMORY_FRACTION * free)
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, float)):
        raise TypeError(f"Expected max_memory in bytes (int) or None; got {max_memory!r}.")
    if not max_memory > 0:
        raise ValueError(f"Expected a positive max_memory in bytes; got {max_memory}.")
    return int(max_memory)


def _check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"Expected chunk_size to be a positive int or None; got {chunk_size!r}.")


def _result_dtype(dtype: Any, param_dtype: np.dtype) -> tuple[np.dtype, np.dtype]:
    """``(output dtype, contraction dtype)``; float64 needs ``jax_enable_x64``."""
    out = np.dtype(dtype) if dtype is not None else param_dtype
    if not np.issubdtype(out, np.floating):
        raise TypeError(f"Expected a floating dtype=; got {out}.")
    compute = np.promote_types(out, param_dtype)
    if compute == np.float64:
        require_x64("a float64 Gram matrix or Jacobian")
    return out, compute


def _chunk(c: int, P: int, item: int, budget: int, n: int) -> int:
    per = 3 * c * P * item
    return int(max(1, min(n, min(budget, MAX_CHUNK_BYTES) // max(per, 1))))


# -- compiled kernels -----------------------------------------------------------------------------


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


# -- jacobian -------------------------------------------------------------------------------------


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


# -- gram -----------------------------------------------------------------------------------------


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
    item = np.dtype(cdtype).itemsize
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


# -- operator -------------------------------------------------------------------------------------


class GramOperator(LinearOperator):
    """The prior-weighted NTK Gram ``K = J S J^T`` of a JAX function as a linear operator.

    A product never forms ``J`` or ``K``: with the stacked outputs split per batch,
    ``u = S sum_b J_b^T v_b`` (one vjp per batch) and ``(K v)_b = J_b u`` (one jvp per batch);
    ``matmat`` runs both with ``jax.vmap`` over the ``k`` vectors, compiled once per batch
    shape and ``k`` (a ragged last batch compiles once more).

    Parameters
    ----------
    f : callable
        ``f(params, x) -> outputs``, per-sample outputs ``(n, ...)``.
    params : pytree of floating arrays
    inputs : array, pytree of arrays, or a list of those
        One batch of inputs or a ``list`` of batches (same structure and per-sample shapes).
    data : (inputs, targets) or list of such pairs, optional
        Instead of ``inputs``: batches as pairs, targets ignored.
    batch_size : int, optional
        Split every batch further into chunks of at most this many samples (bounds the
        activation memory of one vjp / jvp; the products are unchanged).
    prior, outputs
        As in :func:`gram`.
    chunk_size : int, optional
        Largest number of vectors per vmapped product (wider ``matmat`` calls are split).

    Attributes
    ----------
    shape : (N, N)
        ``N = n c``; rows are sample-major over the batches in order.
    num_samples, num_outputs : int
        ``n`` and ``c``.
    batch_sizes : list[int]
    structural_nullity : int
        Zero eigenvalues forced by the output map (``n`` for ``outputs="probabilities"``).
    layout : hessntk.jax._common.ParamLayout
    variances : jax.Array of shape (P,) or None
        The diagonal of ``S`` (None: identity).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> f = lambda p, x: x @ p["w"]
    >>> x = jnp.arange(12.0).reshape(6, 2)
    >>> K = GramOperator(f, {"w": jnp.zeros(2)}, [x[:4], x[4:]])
    >>> bool(jnp.allclose(K @ jnp.ones(6), x @ (x.T @ jnp.ones(6))))
    True
    """

    def __init__(
        self,
        f: Callable[[Any, Any], jax.Array],
        params: Any,
        inputs: Any = None,
        *,
        data: Any = None,
        batch_size: int | None = None,
        prior: Any = None,
        outputs: OutputsSpec = "raw",
        chunk_size: int | None = 32,
    ) -> None:
        _check_chunk(chunk_size)
        self.problem = _setup(f, params, prior, outputs)
        if (inputs is None) == (data is None):
            raise ValueError(
                "Expected exactly one of inputs= (input batches) or data= ((inputs, targets) "
                f"batches); got {'both' if inputs is not None else 'neither'}."
            )
        if data is not None:
            pairs = as_batch_list(data, "data")
            for i, b in enumerate(pairs):
                if not isinstance(b, (tuple, list)) or len(b) != 2:
                    raise ValueError(
                        f"Expected data= as (inputs, targets) pairs; got {type(b).__name__} in "
                        f"batch {i}. Pass inputs= for batches without targets."
                    )
            raw = [b[0] for b in pairs]
        else:
            raw = as_batch_list(inputs, "inputs")
        converted = convert_batches(raw, "inputs", self.problem.dtype, self.problem.layout.device)
        if batch_size is not None:
            _check_chunk(batch_size)
            raw = [slice_tree(b.tree, slice(s, s + batch_size))
                   for b in converted for s in range(0, b.num_samples, batch_size)]
        self.batches, sizes, cs = [], [], set()
        for i, b in enumerate(raw):
            tree, n, c = self.problem.batch(b, f"batch {i}")
            self.batches.append(tree)
            sizes.append(n)
            cs.add(c)
        if len(cs) != 1:
            raise ValueError(
                "Expected every batch to give the same number of outputs per sample; got "
                f"{sorted(cs)}."
            )
        self.batch_sizes = sizes
        self.num_samples = sum(sizes)
        self.num_outputs = cs.pop()
        self.layout = self.problem.layout
        self.variances = self.problem.variances
        self.structural_nullity = structural_nullity(
            self.num_samples, outputs if isinstance(outputs, str) else "raw"
        )
        self._offsets = [0]
        for n in sizes:
            self._offsets.append(self._offsets[-1] + n * self.num_outputs)
        super().__init__(
            self.num_samples * self.num_outputs, self.problem.dtype, self.layout.device,
            backend="jax",
        )
        self.block_size = chunk_size

    def _matmat(self, V: Any) -> jax.Array:
        p, device = self.problem, self.layout.device
        V = as_jax(V, self.dtype, device)
        k = V.shape[1]
        U = commit(jnp.zeros((k, self.layout.n), self.dtype), device)
        ok = commit(True, device)
        for b, x in enumerate(self.batches):
            U, ok = _pullback(p.f, p.outputs, self.layout.tree, x, V, U, self._offsets[b], ok)
        if not bool(ok):
            raise FloatingPointError(
                "Expected finite outputs of f on every batch; got NaN/Inf. Check the inputs "
                "and the parameters."
            )
        return self._push(U, self.variances)

    def _push(self, U: jax.Array, scale: jax.Array | None) -> jax.Array:
        """``J (scale * U)^T`` of shape ``(N, k)``, batch by batch."""
        p = self.problem
        out = commit(jnp.zeros((self.shape[0], U.shape[0]), self.dtype), self.layout.device)
        for b, x in enumerate(self.batches):
            out = _pushforward_into(p.f, p.outputs, self.layout.tree, x, U, scale, out,
                                    self._offsets[b])
        return out

    def jvp(self, tangent: Any) -> jax.Array:
        """Return ``J t`` of shape ``(N,)`` for a flat parameter tangent ``t`` of shape ``(P,)``.

        Rows are ordered like the operator's (sample-major over the batches).
        """
        t = as_jax(tangent, self.dtype, self.layout.device)
        if t.shape != (self.layout.n,):
            raise ValueError(
                f"Expected a tangent of shape ({self.layout.n},); got {tuple(t.shape)}."
            )
        return self._push(t[None], None)[:, 0]

    def diagonal(self) -> jax.Array:
        """Exact ``diag(K)`` of shape ``(N,)``: squared prior-weighted per-output gradients.

        Its sum is the exact trace (theory.md 4: the oracle for the trace estimators).
        """
        p = self.problem
        c, P = self.num_outputs, self.layout.n
        item = np.dtype(self.dtype).itemsize
        parts = []
        for x, n in zip(self.batches, self.batch_sizes, strict=True):
            chunk = _chunk(c, P, item, MAX_CHUNK_BYTES, n)
            for _, A in _jacobian_chunks(p, x, 0, n, chunk, p.sqrt_variances(), self.dtype):
                parts.append(jnp.sum(A * A, axis=-1).reshape(-1))
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

    def inputs(self) -> Any:
        """All input batches concatenated along axis 0 (one pytree)."""
        return concat_trees(self.batches)

    def __repr__(self) -> str:
        return (
            f"GramOperator(n={self.shape[0]}, dtype={self.dtype}, num_samples="
            f"{self.num_samples}, num_outputs={self.num_outputs}, batches={len(self.batches)})"
        )

