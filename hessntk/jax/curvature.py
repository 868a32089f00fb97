"""Hessian and generalised Gauss-Newton operators of a JAX loss over any params pytree.

Both are symmetric :class:`hessntk.spectral.LinearOperator` s (``backend="jax"``) over the
flattened parameters, known through exact products:

- :class:`HessianOperator`: ``H v`` of the full-data mean loss, forward-over-reverse
  (``jax.jvp`` of ``jax.grad``).
- :class:`GGNOperator`: ``G v = J^T (d^2 loss / d out^2) J v`` for a loss split into a model
  ``f(params, inputs)`` and ``loss_fn(outputs, targets)``.

A ``matmat`` of ``k`` vectors is one ``jax.vmap`` ped, ``jax.jit`` -compiled call per batch.
The compiled products are module-level functions with the loss (and model) as static
arguments, so they are traced once per loss function, distinct batch shape and number of
vectors ``k``: Lanczos with a fixed number of probes compiles on its first step and then only
runs, and a second operator built with the same ``loss_fn`` reuses the compiled code. A ragged
last batch has its own shape and therefore compiles once more; a ``matmat`` wider than
``chunk_size`` is split into chunks of ``chunk_size`` columns (one more compile for a narrower
last chunk). Over several batches the product is that of the full-data mean loss: batch ``b``
is weighted by ``n_b / n`` exactly (the ragged last batch included).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from hessntk.jax._common import (
    Batch,
    ParamLayout,
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
from hessntk.spectral.operators import LinearOperator

__all__ = ["GGNOperator", "HessianOperator"]


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"Expected chunk_size to be a positive int or None; got {chunk_size!r}.")


class _CurvatureOperator(LinearOperator):
    """Shared set-up of the Hessian and GGN operators: parameters, batches, compiled product."""

    _product_name = "product"
    _loss_name = "the loss"

    def __init__(
        self,
        params: Any,
        data: Any,
        *,
        chunk_size: int | None,
        check_deterministic: bool,
    ) -> None:
        _check_chunk_size(chunk_size)
        self.layout: ParamLayout = flatten_params(params)
        raw = as_batch_list(data, "data")
        self._check_raw_batches(raw)
        self.batches: list[Batch] = convert_batches(
            raw, "data", self.layout.dtype, self.layout.device
        )
        self.batch_sizes = [b.num_samples for b in self.batches]
        self.num_samples = sum(self.batch_sizes)
        self.weights = [n_b / self.num_samples for n_b in self.batch_sizes]
        super().__init__(self.layout.n, self.layout.dtype, self.layout.device, backend="jax")
        self.block_size = chunk_size
        self.chunk_size = chunk_size
        self.loss = self._check_losses(check_deterministic)

    # -- to implement ------------------------------------------------------------------------
    def _check_raw_batches(self, raw: list[Any]) -> None:
        """Validate the structure of the batches before conversion."""

    # -- checks ------------------------------------------------------------------------------
    def _check_losses(self, deterministic: bool) -> float:
        """One pass over the data: scalar, finite losses; their sample-weighted mean."""
        f, tree = self._loss_parts()
        values = [
            check_scalar_loss(_loss_value(self.loss_fn, f, tree, b.tree), i, self._loss_name)
            for i, b in enumerate(self.batches)
        ]
        if deterministic:
            # A second, separately traced and compiled evaluation at the same point.
            again = _loss_value_retraced(self.loss_fn, f, tree, self.batches[0].tree)
            check_deterministic(values[0], float(again), self.layout.dtype, self._loss_name)
        return float(sum(w * v for w, v in zip(self.weights, values, strict=True)))

    def _loss_parts(self) -> tuple[Callable | None, Any]:
        """``(f, params)``: the model of a split loss (None for ``loss_fn(params, batch)``)."""
        return getattr(self, "f", None), self.layout.tree

    # -- products ----------------------------------------------------------------------------
    def _batch_call(
        self, params: Any, batch: Any, V: jax.Array, acc: jax.Array, weight: float, ok: Any
    ) -> tuple[jax.Array, jax.Array]:
        """``(acc + weight * M_b V, ok & isfinite(M_b V))`` by the compiled product."""
        raise NotImplementedError

    def _matmat(self, V: Any) -> jax.Array:
        V = as_jax(V, self.dtype, self.layout.device)
        acc, ok = jnp.zeros_like(V), commit(True, self.layout.device)
        for b, w in zip(self.batches, self.weights, strict=True):
            acc, ok = self._batch_call(self.layout.tree, b.tree, V, acc, w, ok)
        if not bool(ok):
            for i, b in enumerate(self.batches):  # rare path: name the batch
                zeros, yes = jnp.zeros_like(V), commit(True, self.layout.device)
                if not bool(self._batch_call(self.layout.tree, b.tree, V, zeros, 1.0, yes)[1]):
                    raise FloatingPointError(
                        f"Expected finite values in the {self._product_name} of batch {i}; got "
                        "NaN or Inf. Check the data and the loss (e.g. log of 0), or the "
                        "parameters."
                    )
        return acc

    # -- layout ------------------------------------------------------------------------------
    @property
    def blocks(self) -> list[str]:
        """Key paths of the parameter leaves (one block per leaf)."""
        return list(self.layout.names)

    @property
    def block_slices(self) -> list[slice]:
        """Positions of each leaf in the flat vector, for ``hessntk.trace(..., blocks=)``."""
        return self.layout.slices

    def unravel(self, vec: Any, dim: int = -1) -> Any:
        """Split a flat vector (e.g. an eigenvector) into a pytree shaped like the parameters.

        ``vec`` of shape ``(..., n)`` (``dim=-1``) gives leaves ``(..., *shape)``; ``(n, k)``
        eigenvectors with ``dim=0`` give leaves ``(*shape, k)``. numpy arrays are accepted.
        """
        return self.layout.unravel(vec, dim)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.shape[0]}, dtype={self.dtype}, "
            f"num_samples={self.num_samples}, batches={len(self.batches)})"
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
    chunk_size : int, optional
        Largest number of vectors pushed through one vmapped product (bounds memory; wider
        ``matmat`` calls are split). ``None``: no limit.
    check_deterministic : bool
        Evaluate the loss on the first batch in two separate jit traces and refuse a
        function whose value differs (randomness drawn outside the inputs, e.g. a dropout
        key from Python: every compiled product would use different random numbers).

    Attributes
    ----------
    shape : tuple[int, int]
    dtype : numpy.dtype
        That of the parameters; products are in this dtype.
    device : jax.Device
    layout : hessntk.jax._common.ParamLayout
        Flat layout of the parameters (``names``, ``shapes``, ``unravel``).
    num_samples : int
    batch_sizes : list[int]
    loss : float
        The full-data mean loss at ``params``.

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
        non-deterministic ``loss_fn``.
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
        chunk_size: int | None = 32,
        check_deterministic: bool = True,
    ) -> None:
        if not callable(loss_fn):
            raise TypeError(
                f"Expected loss_fn(params, batch) -> scalar; got {type(loss_fn).__name__}."
            )
        self.loss_fn = loss_fn
        super().__init__(
            params, data, chunk_size=chunk_size, check_deterministic=check_deterministic
        )

    def _batch_call(
        self, params: Any, batch: Any, V: jax.Array, acc: jax.Array, weight: float, ok: Any
    ) -> tuple[jax.Array, jax.Array]:
        return _hessian_product(self.loss_fn, params, batch, V, acc, weight, ok)


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
    chunk_size, check_deterministic
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

    def __init__(
        self,
        f: Callable[[Any, Any], Any],
        loss_fn: Callable[[Any, Any], jax.Array],
        params: Any,
        data: Any,
        *,
        chunk_size: int | None = 32,
        check_deterministic: bool = True,
    ) -> None:
        if not callable(f):
            raise TypeError(f"Expected f(params, inputs) -> outputs; got {type(f).__name__}.")
        if not callable(loss_fn):
            raise TypeError(
                f"Expected loss_fn(outputs, targets) -> scalar; got {type(loss_fn).__name__}."
            )
        self.f = f
        self.loss_fn = loss_fn
        super().__init__(
            params, data, chunk_size=chunk_size, check_deterministic=check_deterministic
        )

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

    def _batch_call(
        self, params: Any, batch: Any, V: jax.Array, acc: jax.Array, weight: float, ok: Any
    ) -> tuple[jax.Array, jax.Array]:
        return _ggn_product(self.f, self.loss_fn, params, batch, V, acc, weight, ok)


# -- compiled functions ----------------------------------------------------------------------------


def _loss(loss_fn: Callable, f: Callable | None, params: Any, batch: Any) -> jax.Array:
    if f is None:
        return loss_fn(params, batch)
    x, y = batch
    return loss_fn(f(params, x), y)


def _loss_again(loss_fn: Callable, f: Callable | None, params: Any, batch: Any) -> jax.Array:
    # _loss again, as a separate function so that jit traces it separately (a cache keyed on
    # the function would otherwise hand back the first trace): check_deterministic compares.
    if f is None:
        return loss_fn(params, batch)
    x, y = batch
    return loss_fn(f(params, x), y)


_loss_value = jax.jit(_loss, static_argnums=(0, 1))
_loss_value_retraced = jax.jit(_loss_again, static_argnums=(0, 1))


def _columns(apply: Callable[[Any], Any], params: Any, V: jax.Array) -> jax.Array:
    """``[vec(apply(unvec(V[:, j])))]_j``: one vmapped call over the ``k`` columns of ``V``."""

    def column(v: jax.Array) -> jax.Array:
        return ravel_tree(apply(unravel_like(params, v)))

    return jax.vmap(column, in_axes=1, out_axes=1)(V)


# The accumulator is donated: the sum over batches is updated in place.
@partial(jax.jit, static_argnums=0, donate_argnums=4)
def _hessian_product(
    loss_fn: Callable,
    params: Any,
    batch: Any,
    V: jax.Array,
    acc: jax.Array,
    weight: jax.Array,
    ok: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """``acc + weight * H_b V`` (forward-over-reverse) and ``ok`` and-ed with its finiteness."""
    grad = jax.grad(loss_fn)

    def hvp(t: Any) -> Any:
        return jax.jvp(lambda p: grad(p, batch), (params,), (t,))[1]

    HV = _columns(hvp, params, V)
    return acc + weight * HV, ok & jnp.all(jnp.isfinite(HV))


@partial(jax.jit, static_argnums=(0, 1), donate_argnums=5)
def _ggn_product(
    f: Callable,
    loss_fn: Callable,
    params: Any,
    batch: Any,
    V: jax.Array,
    acc: jax.Array,
    weight: jax.Array,
    ok: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """``acc + weight * J_b^T Lambda_b J_b V`` and ``ok`` and-ed with its finiteness."""
    x, y = batch

    def model(p: Any) -> Any:
        return f(p, x)

    out, vjp_fn = jax.vjp(model, params)
    loss_grad = jax.grad(lambda o: loss_fn(o, y))

    def ggn_v(t: Any) -> Any:
        Jt = jax.jvp(model, (params,), (t,))[1]
        HJt = jax.jvp(loss_grad, (out,), (Jt,))[1]
        return vjp_fn(HJt)[0]

    GV = _columns(ggn_v, params, V)
    return acc + weight * GV, ok & jnp.all(jnp.isfinite(GV))
