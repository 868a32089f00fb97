"""The Hessian of a regulariser ``R(params) -> scalar`` of a JAX params pytree.

The JAX twin of :class:`hessntk.hessian.RegulariserOperator`, with the names of
:class:`hessntk.spectral.protocols.RegulariserLike`: a non-Gaussian negative log prior of the
IIC (docs/theory.md, section 1), matrix-free and compiled once per ``R`` and shape.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessntk.jax._common import TreeLayout, as_jax, flatten_params, ravel_tree, unravel_like
from hessntk.spectral.operators import LinearOperator

__all__ = ["RegulariserOperator"]


class RegulariserOperator(LinearOperator):
    """``hess R(theta)`` of a regulariser of a params pytree, at given parameter values.

    Parameters
    ----------
    R : callable
        ``R(params) -> scalar``, a pure JAX function of a pytree shaped like ``params``.
    params : pytree of floating arrays
        The point.

    Attributes
    ----------
    loss : float
        ``R`` at ``params``.
    name : str
        ``R.__name__`` (a label for reports).
    layout : hessntk.jax._common.TreeLayout

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> R = lambda p: jnp.sum(0.5 * p["w"] ** 2 + p["w"] ** 4 / 12)
    >>> H = RegulariserOperator(R, {"w": jnp.array([1.0, 2.0])})
    >>> round(H.loss, 4), [float(v) for v in H @ jnp.ones(2)]  # diag(1 + w^2)
    (3.9167, [2.0, 5.0])
    """

    def __init__(self, R: Callable[[Any], jax.Array], params: Any) -> None:
        if not callable(R):
            raise TypeError(f"Expected R(params) -> scalar; got {type(R).__name__}.")
        self.layout: TreeLayout = flatten_params(params)
        super().__init__(self.layout.n, self.layout.dtype, self.layout.device, backend="jax")
        self.R = R
        self.name = getattr(R, "__name__", "callable")
        self.loss = self._value(self.layout.tree)

    def _value(self, tree: Any) -> float:
        value = _value(self.R, tree)
        if getattr(value, "shape", None) != ():
            raise ValueError(f"Expected R(params) to return a scalar; got shape "
                             f"{getattr(value, 'shape', type(value).__name__)}.")
        out = float(value)
        if not np.isfinite(out):
            raise FloatingPointError(f"Expected a finite R(params); got {out}.")
        return out

    def _matmat(self, V: Any) -> jax.Array:
        HV, ok = _hvp(self.R, self.layout.tree, as_jax(V, self.dtype, self.layout.device))
        if not bool(ok):
            raise FloatingPointError("Expected finite Hessian-vector products of R; got NaN/Inf.")
        return HV

    def theta(self) -> jax.Array:
        """The point, flat ``(P,)``."""
        return self.layout.flat

    def ravel(self, params: Any) -> jax.Array:
        """Flatten a pytree with the parameters' structure."""
        return self.layout.ravel(params)

    def unravel(self, vec: Any, dim: int = -1) -> Any:
        """Split a flat vector into a pytree shaped like the parameters."""
        return self.layout.unravel_tree(vec, dim)

    def gradient(self) -> jax.Array:
        """``grad R`` at the point, flat ``(P,)``."""
        return _grad(self.R, self.layout.tree)

    def _tree(self, theta: Any) -> Any:
        vec = as_jax(theta, self.dtype, self.layout.device)
        if vec.shape != (self.layout.n,):
            raise ValueError(f"Expected flat parameters of shape ({self.layout.n},); got "
                             f"{tuple(vec.shape)}.")
        return unravel_like(self.layout.tree, vec)

    def loss_at(self, theta: Any) -> float:
        """``R`` at other flat parameters."""
        return self._value(self._tree(theta))

    def at(self, theta: Any) -> RegulariserOperator:
        """The Hessian of the same ``R`` at other flat parameters."""
        return RegulariserOperator(self.R, self._tree(theta))

    def __repr__(self) -> str:
        return f"RegulariserOperator(n={self.shape[0]}, dtype={self.dtype}, R={self.loss:.6g})"


@partial(jax.jit, static_argnums=0)
def _value(R: Callable, tree: Any) -> jax.Array:
    return R(tree)


@partial(jax.jit, static_argnums=0)
def _grad(R: Callable, tree: Any) -> jax.Array:
    return ravel_tree(jax.grad(R)(tree))


@partial(jax.jit, static_argnums=0)
def _hvp(R: Callable, tree: Any, V: jax.Array) -> tuple[jax.Array, jax.Array]:
    grad = jax.grad(R)

    def column(v: jax.Array) -> jax.Array:
        return ravel_tree(jax.jvp(grad, (tree,), (unravel_like(tree, v),))[1])

    HV = jax.vmap(column, in_axes=1, out_axes=1)(V)
    return HV, jnp.all(jnp.isfinite(HV))
