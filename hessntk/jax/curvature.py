"""Hessian and generalised Gauss-Newton operators of a JAX loss over any params pytree.

Both are symmetric :class:`hessntk.spectral.LinearOperator` s (``backend="jax"``) over the
flattened (selected) parameters, known through exact products, and implement
:class:`hessntk.spectral.protocols.CurvatureLike`: every criterion of :mod:`hessntk.criteria`
takes them.

- :class:`HessianOperator`: ``H v`` of the full-data mean loss, forward-over-reverse
  (``jax.jvp`` of ``jax.grad``).
- :class:`GGNOperator`: ``G v = J^T (d^2 loss / d out^2) J v`` for a loss split into a model
  ``f(params, inputs)`` and ``loss_fn(outputs, targets)``.

A ``matmat`` of ``k`` vectors is one ``jax.vmap`` ped, ``jax.jit`` -compiled call per batch.
The compiled products are module-level functions with the loss (and model) and the selected
leaves as static arguments, so they are traced once per loss function, selection, distinct
batch shape and number of vectors ``k``: Lanczos with a fixed number of probes compiles on its
first step and then only runs, and a second operator built with the same ``loss_fn`` reuses
the compiled code. A ragged last batch has its own shape and therefore compiles once more; a
``matmat`` wider than ``chunk_size`` is split into chunks of ``chunk_size`` columns (one more
compile for a narrower last chunk). Over several batches the product is that of the
full-data mean loss: batch ``b`` is weighted by ``n_b / n`` exactly (the ragged last batch
included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from hessntk.jax._common import (
    Batch,
    TreeLayout,
    as_batch_list,
    as_jax,
    check_deterministic,
    check_scalar_loss,
    commit,
    convert_batches,
    flatten_params,
    ravel_tree,
    unravel_like,
)
from hessntk.jax.sharding import mesh_shardings, shard_batches
from hessntk.spectral.layout import ParamBlocks, ParamLayout, resolve_blocks
from hessntk.spectral.operators import LinearOperator

__all__ = ["GGNOperator", "HessianOperator", "layer_name"]

Select = None | str | Sequence[str]
BlockSpec = str | Mapping[str, Sequence[str]]


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"Expected chunk_size to be a positive int or None; got {chunk_size!r}.")


def layer_name(key_path: str) -> str:
    """The layer of a leaf: its key path without the last key (a root leaf is its own layer).

    Examples
    --------
    >>> layer_name(".layers[0].weight"), layer_name("[1][0]"), layer_name("['w']")
    ('.layers[0]', '[1]', "['w']")
    """
    cut = max(key_path.rfind("["), key_path.rfind("."))
    return key_path[:cut] if cut > 0 else key_path


def _selection(full: TreeLayout, select: Select) -> tuple[int, ...]:
    """Indices of the selected leaves (key paths), in ``tree_leaves`` order."""
    if select is None:
        return tuple(range(len(full.names)))
    names = [select] if isinstance(select, str) else list(select)
    unknown = [n for n in names if n not in full.slices]
    if unknown or not names:
        raise ValueError(
            f"Expected select= to name leaves of params by key path; got unknown {unknown}"
            f"{' (empty selection)' if not names else ''}. Valid key paths: "
            f"{full.names[:20]}."
        )
    return tuple(sorted({full.names.index(n) for n in names}))


def _ravel_selected(full: TreeLayout, layout: ParamLayout, idx: tuple[int, ...], params: Any,
                    dtype: Any) -> jax.Array:
    """Flat ``(P,)`` of the selected leaves of a params pytree, or of a dict by key path."""
    if isinstance(params, Mapping) and params and set(params) <= set(full.names):
        return layout.flatten({n: jnp.asarray(params[n], dtype) for n in layout.names
                               if n in params})  # names missing: flatten says which
    flat = full.ravel(params)  # checks the structure and the leaf shapes
    return ravel_tree([flat[full.slices[full.names[i]]] for i in idx]).astype(dtype)


class _CurvatureOperator(ParamBlocks, LinearOperator):
    """Shared set-up of the Hessian and GGN operators: parameters, batches, compiled product."""

    _product_name = "product"
    _loss_name = "the loss"
    kind = "hessian"
    f: Callable | None = None

    def __init__(
        self,
        params: Any,
        data: Any,
        *,
        select: Select,
        blocks: BlockSpec,
        chunk_size: int | None,
        check_deterministic: bool,
        mesh: Any = None,
        batch_axis: str | None = None,
        _checked: float | None = None,
    ) -> None:
        _check_chunk_size(chunk_size)
        self.mesh, self.batch_axis = mesh, batch_axis
        if mesh is not None:
            replicated, sharded, size = mesh_shardings(mesh, batch_axis)
            params = jax.device_put(params, replicated)
        self.full: TreeLayout = flatten_params(params)
        self._idx = _selection(self.full, select)
        leaves = jax.tree_util.tree_leaves(self.full.tree)
        self._sel = [leaves[i] for i in self._idx]
        if len(self._idx) == len(leaves):
            self.layout: ParamLayout = self.full
        else:
            self.layout = ParamLayout({self.full.names[i]: leaves[i] for i in self._idx})
        raw = as_batch_list(data, "data")
        self._check_raw_batches(raw)
        self.batches: list[Batch] = convert_batches(
            raw, "data", self.full.dtype, self.full.device if mesh is None else None
        )
        if mesh is not None:
            self.batches = shard_batches(self.batches, replicated, sharded, size)
        self.batch_sizes = [b.num_samples for b in self.batches]
        self.num_samples = sum(self.batch_sizes)
        self.weights = [n_b / self.num_samples for n_b in self.batch_sizes]
        super().__init__(self.layout.n, self.full.dtype, self.full.device, backend="jax")
        for i in self._idx if _checked is None else ():  # a saturated unit hides an inf
            if not self._xp.all_finite(leaves[i]):
                bad = int(jnp.sum(~jnp.isfinite(leaves[i])))
                raise FloatingPointError(
                    f"Expected finite values in parameter {self.full.names[i]}; got {bad} "
                    f"non-finite of {leaves[i].size}. Check the model's parameters.")
        self.block_size = chunk_size
        self.chunk_size = chunk_size
        self._set_blocks(blocks)
        self.loss = self._check_losses(check_deterministic) if _checked is None else _checked

    # -- to implement ------------------------------------------------------------------------
    def _check_raw_batches(self, raw: list[Any]) -> None:
        """Validate the structure of the batches before conversion."""

    def _clone(self, select: list[str]) -> _CurvatureOperator:
        """The same operator over another selection of leaves (the data check reused)."""
        raise NotImplementedError

    def _batch_call(
        self, batch: Any, V: jax.Array, acc: jax.Array, weight: float, ok: Any
    ) -> tuple[jax.Array, jax.Array]:
        """``(acc + weight * M_b V, ok & isfinite(M_b V))`` by the compiled product."""
        raise NotImplementedError

    # -- checks ------------------------------------------------------------------------------
    def _loss_of(self, sel: list[jax.Array], batch: Any) -> jax.Array:
        return _loss_value(self.loss_fn, self.f, self._idx, self.full.tree, sel, batch)

    def _check_losses(self, deterministic: bool) -> float:
        """One pass over the data: scalar, finite losses; their sample-weighted mean."""
        values = [check_scalar_loss(self._loss_of(self._sel, b.tree), i, self._loss_name)
                  for i, b in enumerate(self.batches)]
        if deterministic:
            # A second, separately traced and compiled evaluation at the same point.
            again = _loss_value_retraced(self.loss_fn, self.f, self._idx, self.full.tree,
                                         self._sel, self.batches[0].tree)
            check_deterministic(values[0], float(again), self.full.dtype, self._loss_name)
        return float(sum(w * v for w, v in zip(self.weights, values, strict=True)))

    # -- the protocol of hessntk.spectral.protocols.CurvatureLike ------------------------------
    def theta(self) -> jax.Array:
        """The selected parameters as one flat vector ``(P,)``."""
        return ravel_tree(self._sel)

    def ravel(self, params: Any) -> jax.Array:
        """Flatten parameter values: a pytree like ``params``, or a dict by key path."""
        return _ravel_selected(self.full, self.layout, self._idx, params, self.dtype)

    def unravel(self, vec: Any, dim: int = -1) -> Any:
        """Split a flat vector (e.g. an eigenvector) into the parameters' structure.

        Without ``select=``: a pytree shaped like ``params`` (``vec`` of shape ``(..., n)``
        with ``dim=-1`` gives leaves ``(..., *shape)``; ``(n, k)`` eigenvectors with
        ``dim=0`` give leaves ``(*shape, k)``). With ``select=``: a dict by key path. numpy
        arrays are accepted.
        """
        if self.layout is self.full:
            return self.full.unravel_tree(vec, dim)
        return self.layout.unravel(jnp.asarray(vec), dim)

    def loss_at(self, theta: Any) -> float:
        """The full-data mean loss at flat parameters ``theta`` (the others as given).

        Raises
        ------
        FloatingPointError
            A non-finite loss, naming the batch.
        """
        vec = as_jax(theta, self.dtype, self.full.device)
        if vec.shape != (self.layout.n,):
            raise ValueError(f"Expected flat parameters of shape ({self.layout.n},); got "
                             f"{tuple(vec.shape)}.")
        sel = unravel_like(self._sel, vec)
        values = [check_scalar_loss(self._loss_of(sel, b.tree), i, self._loss_name)
                  for i, b in enumerate(self.batches)]
        return float(sum(w * v for w, v in zip(self.weights, values, strict=True)))

    def gradient(self) -> jax.Array:
        """The gradient of the full-data mean loss, flat ``(P,)``: one pass over the data."""
        total = None
        for i, (b, w) in enumerate(zip(self.batches, self.weights, strict=True)):
            g = _gradient(self.loss_fn, self.f, self._idx, self.full.tree, self._sel, b.tree)
            if not bool(jnp.all(jnp.isfinite(g))):
                raise FloatingPointError(f"Expected a finite gradient of the loss; got NaN/Inf "
                                         f"in batch {i}.")
            total = w * g if total is None else total + w * g
        return total

    # -- blocks ----------------------------------------------------------------------------
    def _set_blocks(self, blocks: BlockSpec) -> None:
        self._groups = resolve_blocks(self.layout, blocks, each="leaf", what="leaf",
                                      layer_of=layer_name)

    def block(self, name: str) -> _CurvatureOperator:
        """The operator restricted to one block (the other parameters held fixed)."""
        if name not in self._groups:
            raise ValueError(f"Expected a block name among {self.blocks}; got {name!r}.")
        return self._clone(self._groups[name])

    # -- products ----------------------------------------------------------------------------
    def _matmat(self, V: Any) -> jax.Array:
        V = as_jax(V, self.dtype, self.full.device)
        acc, ok = jnp.zeros_like(V), commit(True, self.full.device)
        for b, w in zip(self.batches, self.weights, strict=True):
            acc, ok = self._batch_call(b.tree, V, acc, w, ok)
        if not bool(ok):
            for i, b in enumerate(self.batches):  # rare path: name the batch
                zeros, yes = jnp.zeros_like(V), commit(True, self.full.device)
                if not bool(self._batch_call(b.tree, V, zeros, 1.0, yes)[1]):
                    raise FloatingPointError(
                        f"Expected finite values in the {self._product_name} of batch {i}; got "
                        "NaN or Inf. Check the data and the loss (e.g. log of 0), or the "
                        "parameters."
                    )
        return acc

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.shape[0]}, dtype={self.dtype}, "
            f"num_samples={self.num_samples}, batches={len(self.batches)}, "
            f"blocks={len(self._groups)})"
        )


class HessianOperator(_CurvatureOperator):
    """The Hessian of a JAX loss's full-data mean over a params pytree.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(params, batch) -> scalar``, the mean loss over the batch. Must be a pure
        function of its arguments (see ``check_deterministic``).
    params : pytree of floating arrays
        The point at which the Hessian is taken: a dict, list, tuple or any registered
        pytree (e.g. ``equinox.filter(model, equinox.is_inexact_array)``), with one floating
        dtype. float64 needs ``jax_enable_x64``.
    data : batch or list of batches
        One batch (any pytree of arrays with the samples along axis 0, e.g. ``(x, y)``) or a
        ``list`` of such batches (any other iterable is materialised once). Batches must share
        their structure, dtypes and per-sample shapes; floating leaves must have the
        parameters' dtype. They are converted to jax arrays once.
    select : str or sequence of str, optional
        Key paths (``jax.tree_util.keystr``) of the leaves to differentiate; the others are
        held fixed. Default: every leaf.
    blocks : {"leaf", "layer"} or dict
        How :attr:`blocks` groups the selected leaves: per leaf (default), per layer (the key
        path without its last key, :func:`layer_name`), or ``block name -> key paths``.
    chunk_size : int, optional
        Largest number of vectors pushed through one vmapped product (bounds memory; wider
        ``matmat`` calls are split). ``None``: no limit.
    check_deterministic : bool
        Evaluate the loss on the first batch in two separate jit traces and refuse a
        function whose value differs (randomness drawn outside the inputs, e.g. a dropout
        key from Python: every compiled product would use different random numbers).
    mesh : jax.sharding.Mesh, optional
        Data parallel over the mesh's devices: parameters and vectors replicated, each
        batch's samples sharded along ``batch_axis`` (default the mesh's first axis); each
        product compiles once into a partitioned program and every device holds the whole
        product (:mod:`hessntk.jax.sharding`, which also says how to run multi-host).
    batch_axis : str, optional
        The mesh axis the samples are split along.

    Attributes
    ----------
    shape : tuple[int, int]
    dtype : numpy.dtype
        That of the parameters; products are in this dtype.
    device : jax.Device
    layout : hessntk.spectral.layout.ParamLayout
        Flat layout of the selected leaves (names are key paths).
    full : hessntk.jax._common.TreeLayout
        Layout of the whole params pytree.
    num_samples : int
    batch_sizes : list[int]
    loss : float
        The full-data mean loss at ``params``.
    blocks, block_params, block_slices
        The blocks, their key paths and their positions in the flat vector.

    Notes
    -----
    The spectral core (``hessntk.eigsh``, ``slq``, ``trace``) keeps its bookkeeping in
    float64 and therefore needs ``jax_enable_x64`` even for float32 parameters (products
    stay in float32).

    Raises
    ------
    TypeError
        Non-array, integer or mixed-dtype parameter leaves; data of another floating dtype.
    ValueError
        A non-scalar loss; mismatched batches; float64 without ``jax_enable_x64``; a
        non-deterministic ``loss_fn``; unknown key paths in ``select``/``blocks``.
    FloatingPointError
        A non-finite loss or product, naming the batch.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> params = {"w": jnp.array([1.0, 2.0])}
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), jnp.array([1.0, 0.0, 2.0])
    >>> loss = lambda p, b: 0.5 * jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
    >>> H = HessianOperator(loss, params, (x, y))
    >>> H.shape, [round(float(v), 4) for v in H @ jnp.array([1.0, 0.0])]  # H = X^T X / n
    ((2, 2), [0.6667, 0.3333])
    """

    _product_name = "Hessian-vector product"
    _loss_name = "loss_fn(params, batch)"

    def __init__(
        self,
        loss_fn: Callable[[Any, Any], jax.Array],
        params: Any,
        data: Any,
        *,
        select: Select = None,
        blocks: BlockSpec = "leaf",
        chunk_size: int | None = 32,
        check_deterministic: bool = True,
        mesh: Any = None,
        batch_axis: str | None = None,
        _checked: float | None = None,
    ) -> None:
        if not callable(loss_fn):
            raise TypeError(
                f"Expected loss_fn(params, batch) -> scalar; got {type(loss_fn).__name__}."
            )
        self.loss_fn = loss_fn
        super().__init__(params, data, select=select, blocks=blocks, chunk_size=chunk_size,
                         check_deterministic=check_deterministic, mesh=mesh,
                         batch_axis=batch_axis, _checked=_checked)

    def _clone(self, select: list[str]) -> HessianOperator:
        return HessianOperator(self.loss_fn, self.full.tree, [b.tree for b in self.batches],
                               select=select, chunk_size=self.chunk_size,
                               check_deterministic=False, mesh=self.mesh,
                               batch_axis=self.batch_axis, _checked=self.loss)

    def _batch_call(
        self, batch: Any, V: jax.Array, acc: jax.Array, weight: float, ok: Any
    ) -> tuple[jax.Array, jax.Array]:
        return _hessian_product(self.loss_fn, self._idx, self.full.tree, self._sel, batch, V,
                                acc, weight, ok)


class GGNOperator(_CurvatureOperator):
    """The generalised Gauss-Newton matrix ``J^T (d^2 loss / d out^2) J`` of the mean loss.

    Positive semi-definite for losses convex in the outputs (MSE, cross-entropy); equal to
    the Hessian for models linear in the parameters. Batch ``b`` contributes ``n_b / n``
    times its ``J_b^T Lambda_b J_b``, with ``Lambda_b`` the Hessian of the batch's mean loss
    with respect to the model outputs.

    Parameters
    ----------
    f : callable
        ``f(params, inputs) -> outputs``, the model on a batch of inputs (any output pytree).
    loss_fn : callable
        ``loss_fn(outputs, targets) -> scalar`` mean loss over the batch.
    params : pytree of floating arrays
        As for :class:`HessianOperator`.
    data : (inputs, targets) or list of (inputs, targets)
        One batch as a pair, or a ``list`` of pairs.
    select, blocks, chunk_size, check_deterministic, mesh, batch_axis
        As for :class:`HessianOperator`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> f = lambda p, x: x @ p["w"]
    >>> mse = lambda out, y: 0.5 * jnp.mean((out - y) ** 2)
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), jnp.array([1.0, 0.0, 2.0])
    >>> G = GGNOperator(f, mse, {"w": jnp.zeros(2)}, (x, y))
    >>> [round(float(v), 4) for v in G @ jnp.array([1.0, 0.0])]
    [0.6667, 0.3333]
    """

    _product_name = "GGN-vector product"
    _loss_name = "loss_fn(f(params, inputs), targets)"
    kind = "ggn"

    def __init__(
        self,
        f: Callable[[Any, Any], Any],
        loss_fn: Callable[[Any, Any], jax.Array],
        params: Any,
        data: Any,
        *,
        select: Select = None,
        blocks: BlockSpec = "leaf",
        chunk_size: int | None = 32,
        check_deterministic: bool = True,
        mesh: Any = None,
        batch_axis: str | None = None,
        _checked: float | None = None,
    ) -> None:
        if not callable(f):
            raise TypeError(f"Expected f(params, inputs) -> outputs; got {type(f).__name__}.")
        if not callable(loss_fn):
            raise TypeError(
                f"Expected loss_fn(outputs, targets) -> scalar; got {type(loss_fn).__name__}."
            )
        self.f = f
        self.loss_fn = loss_fn
        super().__init__(params, data, select=select, blocks=blocks, chunk_size=chunk_size,
                         check_deterministic=check_deterministic, mesh=mesh,
                         batch_axis=batch_axis, _checked=_checked)

    def _check_raw_batches(self, raw: Sequence[Any]) -> None:
        for i, b in enumerate(raw):
            if not isinstance(b, (tuple, list)) or len(b) != 2:
                got = type(b).__name__ + (
                    f" of length {len(b)}" if isinstance(b, (tuple, list)) else ""
                )
                raise ValueError(
                    f"Expected each batch of a GGNOperator to be an (inputs, targets) pair; got "
                    f"{got} in batch {i}. Pass (x, y) or a list of (x, y)."
                )

    def _clone(self, select: list[str]) -> GGNOperator:
        return GGNOperator(self.f, self.loss_fn, self.full.tree,
                           [b.tree for b in self.batches], select=select,
                           chunk_size=self.chunk_size, check_deterministic=False,
                           mesh=self.mesh, batch_axis=self.batch_axis, _checked=self.loss)

    def _batch_call(
        self, batch: Any, V: jax.Array, acc: jax.Array, weight: float, ok: Any
    ) -> tuple[jax.Array, jax.Array]:
        return _ggn_product(self.f, self.loss_fn, self._idx, self.full.tree, self._sel, batch,
                            V, acc, weight, ok)


# -- compiled functions ----------------------------------------------------------------------------


def _merge(frozen: Any, idx: tuple[int, ...], sel: Sequence[Any]) -> Any:
    """``frozen`` with its leaves ``idx`` replaced by ``sel`` (traceable)."""
    leaves, treedef = jax.tree_util.tree_flatten(frozen)
    leaves = list(leaves)
    for i, value in zip(idx, sel, strict=True):
        leaves[i] = value
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _loss(loss_fn: Callable, f: Callable | None, idx: tuple[int, ...], frozen: Any,
          sel: Any, batch: Any) -> jax.Array:
    params = _merge(frozen, idx, sel)
    if f is None:
        return loss_fn(params, batch)
    x, y = batch
    return loss_fn(f(params, x), y)


def _loss_again(loss_fn: Callable, f: Callable | None, idx: tuple[int, ...], frozen: Any,
                sel: Any, batch: Any) -> jax.Array:
    # _loss again, as a separate function so that jit traces it separately (a cache keyed on
    # the function would otherwise hand back the first trace): check_deterministic compares.
    params = _merge(frozen, idx, sel)
    if f is None:
        return loss_fn(params, batch)
    x, y = batch
    return loss_fn(f(params, x), y)


_loss_value = jax.jit(_loss, static_argnums=(0, 1, 2))
_loss_value_retraced = jax.jit(_loss_again, static_argnums=(0, 1, 2))


@partial(jax.jit, static_argnums=(0, 1, 2))
def _gradient(loss_fn: Callable, f: Callable | None, idx: tuple[int, ...], frozen: Any,
              sel: Any, batch: Any) -> jax.Array:
    """The flat gradient of the batch loss with respect to the selected leaves."""
    return ravel_tree(jax.grad(lambda s: _loss(loss_fn, f, idx, frozen, s, batch))(sel))


def _columns(apply: Callable[[Any], Any], sel: Any, V: jax.Array) -> jax.Array:
    """``[vec(apply(unvec(V[:, j])))]_j``: one vmapped call over the ``k`` columns of ``V``."""

    def column(v: jax.Array) -> jax.Array:
        return ravel_tree(apply(unravel_like(sel, v)))

    return jax.vmap(column, in_axes=1, out_axes=1)(V)


# The accumulator is donated: the sum over batches is updated in place.
@partial(jax.jit, static_argnums=(0, 1), donate_argnums=6)
def _hessian_product(
    loss_fn: Callable,
    idx: tuple[int, ...],
    frozen: Any,
    sel: Any,
    batch: Any,
    V: jax.Array,
    acc: jax.Array,
    weight: jax.Array,
    ok: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """``acc + weight * H_b V`` (forward-over-reverse) and ``ok`` and-ed with its finiteness."""
    grad = jax.grad(lambda s: loss_fn(_merge(frozen, idx, s), batch))

    def hvp(t: Any) -> Any:
        return jax.jvp(grad, (sel,), (t,))[1]

    HV = _columns(hvp, sel, V)
    return acc + weight * HV, ok & jnp.all(jnp.isfinite(HV))


@partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=7)
def _ggn_product(
    f: Callable,
    loss_fn: Callable,
    idx: tuple[int, ...],
    frozen: Any,
    sel: Any,
    batch: Any,
    V: jax.Array,
    acc: jax.Array,
    weight: jax.Array,
    ok: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """``acc + weight * J_b^T Lambda_b J_b V`` and ``ok`` and-ed with its finiteness."""
    x, y = batch

    def model(s: Any) -> Any:
        return f(_merge(frozen, idx, s), x)

    out, vjp_fn = jax.vjp(model, sel)
    loss_grad = jax.grad(lambda o: loss_fn(o, y))

    def ggn_v(t: Any) -> Any:
        Jt = jax.jvp(model, (sel,), (t,))[1]
        HJt = jax.jvp(loss_grad, (out,), (Jt,))[1]
        return vjp_fn(HJt)[0]

    GV = _columns(ggn_v, sel, V)
    return acc + weight * GV, ok & jnp.all(jnp.isfinite(GV))
