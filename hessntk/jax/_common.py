"""Pytree plumbing shared by the JAX builders: parameters, batches and input validation.

Internal. The public builders (:class:`~hessntk.jax.HessianOperator`,
:class:`~hessntk.jax.GramOperator`, :func:`~hessntk.jax.gram`, ...) validate their arguments
once, here: the parameters become a :class:`ParamLayout` (one flat vector and the map back to
the pytree), the data a list of :class:`Batch` es converted to jax arrays once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessntk.spectral.layout import ParamLayout

X64_HINT = (
    "Call jax.config.update('jax_enable_x64', True) at the start of the program (before "
    "creating arrays), or set the environment variable JAX_ENABLE_X64=1."
)


def x64_enabled() -> bool:
    """Whether ``jax_enable_x64`` is on (float64 arrays exist only then)."""
    return bool(jax.config.jax_enable_x64)


def require_x64(what: str) -> None:
    """Raise a ``ValueError`` naming ``what`` unless ``jax_enable_x64`` is on."""
    if not x64_enabled():
        raise ValueError(
            f"Expected jax_enable_x64=True for {what}; got jax_enable_x64=False (jax would "
            f"silently compute in float32). {X64_HINT}"
        )


def path_name(path: tuple) -> str:
    """Readable name of a pytree key path (``"['layers'][0].weight"``; ``"<root>"``)."""
    return jax.tree_util.keystr(path) or "<root>"


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


# -- parameters -----------------------------------------------------------------------------------


class TreeLayout(ParamLayout):
    """The :class:`~hessntk.spectral.layout.ParamLayout` of a params pytree, with its structure.

    Names are the leaves' key paths (``jax.tree_util.keystr``), in ``tree_leaves`` order; the
    inherited :meth:`unravel` and :meth:`flatten` work on dicts by key path, :meth:`ravel` and
    :meth:`unravel_tree` on pytrees with the parameters' structure.

    Attributes
    ----------
    tree : pytree
        The parameters as jax arrays (same structure as given).
    flat : jax.Array of shape (n,)
        The leaves raveled and concatenated in ``tree_leaves`` order.
    treedef
        The structure of the pytree.
    """

    def __init__(self, tree: Any, treedef: Any, names: list[str]) -> None:
        super().__init__(dict(zip(names, jax.tree_util.tree_leaves(tree), strict=True)))
        self.tree = tree
        self.treedef = treedef
        self.flat = ravel_tree(tree)

    def unravel_tree(self, vec: Any, dim: int = -1) -> Any:
        """Split a flat vector (or a stack of them) into a pytree shaped like the parameters.

        ``vec`` of shape ``(..., n)`` (``dim=-1``) gives leaves ``(..., *shape)``; ``(n, ...)``
        (``dim=0``, e.g. eigenvectors ``(n, k)``) gives leaves ``(*shape, ...)``.
        """
        parts = self.unravel(jnp.asarray(vec), dim)
        return jax.tree_util.tree_unflatten(self.treedef, [parts[n] for n in self.names])

    def ravel(self, tree: Any) -> jax.Array:
        """Flatten a pytree with the parameters' structure to a vector of shape ``(n,)``."""
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        if treedef != self.treedef:
            raise ValueError(
                f"Expected a pytree with the parameters' structure {self.treedef}; got "
                f"{treedef}."
            )
        for leaf, shape, name in zip(leaves, self.shapes, self.names, strict=True):
            if tuple(np.shape(leaf)) != shape:
                raise ValueError(f"Expected the leaf at {name} to have shape {shape}; got "
                                 f"{tuple(np.shape(leaf))}.")
        return jnp.concatenate([jnp.ravel(jnp.asarray(leaf)) for leaf in leaves])


def flatten_params(params: Any, what: str = "params") -> TreeLayout:
    """Validate a params pytree and flatten it once.

    Raises
    ------
    TypeError
        A leaf that is not an array (e.g. an activation function of an Equinox module), an
        integer / boolean / complex leaf, or leaves of different floating dtypes.
    ValueError
        An empty pytree, or float64 leaves while ``jax_enable_x64`` is off.
    """
    flat_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not flat_with_path:
        raise ValueError(f"Expected {what} with at least one array leaf; got an empty pytree.")
    dtypes: dict[np.dtype, str] = {}
    for path, leaf in flat_with_path:
        name = path_name(path)
        if not _is_array(leaf):
            raise TypeError(
                f"Expected every leaf of {what} to be an array; got {type(leaf).__name__} at "
                f"{name}. For an Equinox model pass the arrays only: params, static = "
                "equinox.partition(model, equinox.is_inexact_array), and rebuild the model "
                "inside the function with equinox.combine(params, static)."
            )
        dtype = np.dtype(leaf.dtype)
        if not np.issubdtype(dtype, np.floating):
            raise TypeError(
                f"Expected floating-point leaves in {what} (the parameters to differentiate); "
                f"got {dtype} at {name}. Keep integer or boolean state out of {what}: close "
                "over it in the function, or split an Equinox model with "
                "equinox.partition(model, equinox.is_inexact_array)."
            )
        if dtype == np.float64 and not x64_enabled():
            raise ValueError(
                f"Expected jax_enable_x64=True for float64 {what}; got float64 at {name} with "
                f"jax_enable_x64=False (jax would silently compute in float32). {X64_HINT}"
            )
        dtypes.setdefault(dtype, name)
    if len(dtypes) > 1:
        listed = ", ".join(f"{d} at {n}" for d, n in dtypes.items())
        raise TypeError(
            f"Expected one floating dtype across {what}; got {listed}. Cast them, e.g. "
            "jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)."
        )
    first = next((leaf for _, leaf in flat_with_path if isinstance(leaf, jax.Array)), None)
    device = jax.devices()[0] if first is None else (
        next(iter(first.devices())) if len(first.devices()) == 1 else first.sharding)
    tree = jax.tree_util.tree_map(lambda a: commit(a, device), params)
    return TreeLayout(tree, treedef, [path_name(p) for p, _ in flat_with_path])


# -- data -----------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One batch: its jax arrays, number of samples and a signature for consistency checks."""

    tree: Any
    num_samples: int
    signature: Any


def as_batch_list(data: Any, what: str = "data") -> list[Any]:
    """Normalise ``data`` to a list of batches.

    A ``list`` (or any other iterable that is not a tuple, dict or array) holds batches; any
    other pytree (an array, a tuple ``(x, y)``, a dict) is one batch. The batches are
    materialised once.
    """
    if isinstance(data, list):
        batches = data
    elif isinstance(data, (tuple, Mapping, str, bytes)) or _is_array(data):
        batches = [data]
    elif isinstance(data, Iterable):
        batches = list(data)
    else:
        batches = [data]
    if not batches:
        raise ValueError(f"Expected at least one batch in {what}; got an empty list.")
    return batches


def check_pairs(data: Any, what: str, hint: str = "") -> list[Any]:
    """``data`` as a list of ``(inputs, targets)`` pairs, or a clear error naming the batch."""
    pairs = as_batch_list(data, what)
    for i, b in enumerate(pairs):
        if not isinstance(b, (tuple, list)) or len(b) != 2:
            raise ValueError(f"Expected {what} as (inputs, targets) pairs; got "
                             f"{type(b).__name__} in batch {i}. {hint}".rstrip())
    return pairs


def _signature(tree: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return (treedef, tuple((str(leaf.dtype), tuple(leaf.shape[1:])) for leaf in leaves))


def convert_batch(batch: Any, index: int, what: str, device: Any = None) -> Batch:
    """Convert one batch's leaves to jax arrays and count its samples.

    Raises
    ------
    TypeError
        A leaf that is not an array or a number (e.g. a string).
    ValueError
        No leaf with a batch dimension, leaves whose leading dimensions differ, or an empty
        batch.
    """
    flat_with_path, treedef = jax.tree_util.tree_flatten_with_path(batch)
    leaves = []
    for path, leaf in flat_with_path:
        if not (_is_array(leaf) or isinstance(leaf, (int, float, bool))):
            raise TypeError(
                f"Expected array leaves in batch {index} of {what}; got "
                f"{type(leaf).__name__} at {path_name(path)}. Close over constants in the "
                "function instead of passing them with the data."
            )
        leaves.append(commit(leaf, device))
    sizes = {
        path_name(p): int(leaf.shape[0])
        for (p, _), leaf in zip(flat_with_path, leaves, strict=True)
        if leaf.ndim > 0
    }
    if not sizes:
        raise ValueError(
            f"Expected batch {index} of {what} to hold an array with a leading batch "
            "dimension; got only scalars."
        )
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"Expected every array in batch {index} of {what} to have the same leading (batch) "
            f"dimension; got {sizes}. Put the samples along axis 0, and close over per-batch "
            "constants in the function."
        )
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError(f"Expected non-empty batches; got 0 samples in batch {index} of {what}.")
    tree = jax.tree_util.tree_unflatten(treedef, leaves)
    return Batch(tree, n, _signature(tree))


def convert_batches(
    batches: Sequence[Any], what: str, dtype: np.dtype | None, device: Any = None
) -> list[Batch]:
    """Convert every batch and check that they share structure, dtypes and per-sample shapes.

    With ``dtype``, floating leaves must have it (integer leaves such as class indices are
    fine): mixing float32 data with float64 parameters would silently change the products.
    """
    out = [convert_batch(b, i, what, device) for i, b in enumerate(batches)]
    ref = out[0].signature
    for i, b in enumerate(out[1:], start=1):
        if b.signature != ref:
            raise ValueError(
                f"Expected every batch of {what} to match batch 0 in structure, dtypes and "
                f"per-sample shapes; got {_describe(b.signature)} in batch {i} vs "
                f"{_describe(ref)} in batch 0."
            )
    if dtype is not None:
        for i, b in enumerate(out):
            for path, leaf in jax.tree_util.tree_flatten_with_path(b.tree)[0]:
                dt = np.dtype(leaf.dtype)
                if np.issubdtype(dt, np.floating) and dt != dtype:
                    raise TypeError(
                        f"Expected floating-point {what} of the parameters' dtype {dtype}; got "
                        f"{dt} at {path_name(path)} in batch {i}. Cast the data, e.g. "
                        f"x.astype(jnp.{dtype}), or the parameters."
                    )
    return out


def _describe(signature: Any) -> str:
    treedef, leaves = signature
    return f"{treedef} with leaves (dtype, per-sample shape) {list(leaves)}"


def concat_trees(trees: Sequence[Any]) -> Any:
    """Concatenate pytrees of arrays along axis 0 (scalar leaves are taken from the first)."""
    if len(trees) == 1:
        return trees[0]
    return jax.tree_util.tree_map(
        lambda *xs: jnp.concatenate(xs) if xs[0].ndim > 0 else xs[0], *trees
    )


def slice_tree(tree: Any, sl: slice) -> Any:
    """Samples ``sl`` of every leaf with a batch dimension."""
    return jax.tree_util.tree_map(lambda x: x[sl] if x.ndim > 0 else x, tree)


# -- checks ---------------------------------------------------------------------------------------


def check_scalar_loss(value: Any, index: int, what: str = "loss_fn(params, batch)") -> float:
    """Refuse a non-scalar, non-floating or non-finite loss; return it as a float."""
    shape = getattr(value, "shape", None)
    if shape is None or tuple(shape) != ():
        got = tuple(shape) if shape is not None else type(value).__name__
        raise ValueError(
            f"Expected {what} to return a scalar mean loss; got shape {got} for batch {index}. "
            "Reduce it, e.g. return jnp.mean(per_sample_losses)."
        )
    if not np.issubdtype(np.dtype(value.dtype), np.floating):
        raise TypeError(
            f"Expected {what} to return a floating-point scalar; got {value.dtype} for batch "
            f"{index}."
        )
    out = float(value)
    if not np.isfinite(out):
        raise FloatingPointError(
            f"Expected a finite loss; got {out} for batch {index}. Check the data and the loss "
            "(e.g. log of 0), or the parameters."
        )
    return out


def check_deterministic(first: float, second: float, dtype: np.dtype, what: str) -> None:
    """Refuse a function whose value differs between two traces at the same point.

    JAX functions are deterministic given their inputs; a value that changes between two
    traces means randomness outside the inputs (a dropout key drawn in Python, a global
    counter, ``numpy.random``). Each jit trace would bake in different random numbers, so the
    products would belong to different matrices.
    """
    tol = 100 * float(np.finfo(dtype).eps) * max(abs(first), abs(second), 1.0)
    if not abs(first - second) <= tol:
        raise ValueError(
            f"Expected {what} to be deterministic; got {first!r} and then {second!r} at the "
            "same parameters and data. Curvature products need a fixed function: switch "
            "dropout off (Equinox: model = equinox.nn.inference_mode(model)) or pass a fixed "
            "PRNG key inside the batch instead of drawing one in Python. "
            "check_deterministic=False skips this test."
        )


def commit(x: Any, device: Any = None) -> jax.Array:
    """``x`` as a jax array committed to ``device`` (no copy when it is already there).

    Every argument of a compiled product is committed to the parameters' device: jit
    compiles separately for committed and uncommitted arguments (e.g. ``jnp.ones`` vs. the
    spectral core's ``jax.device_put`` vectors), and this keeps it to one compilation.
    """
    x = jnp.asarray(x)
    return x if device is None else jax.device_put(x, device)


def as_jax(V: Any, dtype: np.dtype, device: Any = None) -> jax.Array:
    """``V`` (jax or numpy) as a jax array of ``dtype`` committed to ``device``."""
    V = jnp.asarray(V)
    return commit(V if V.dtype == dtype else V.astype(dtype), device)


# -- flat vectors inside traced code --------------------------------------------------------------


def ravel_tree(tree: Any) -> jax.Array:
    """Concatenate the raveled leaves of a pytree (traceable; no closure over a layout)."""
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)])


def unravel_like(params: Any, vec: jax.Array) -> Any:
    """Split a flat vector of shape ``(n,)`` into a pytree shaped like ``params`` (traceable).

    The layout comes from the (static) leaf shapes of ``params``, so a compiled function
    taking ``params`` as an argument needs no per-operator closure and can be cached across
    operators that share a loss or model function.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    out, o = [], 0
    for leaf in leaves:
        k = int(np.prod(leaf.shape, dtype=np.int64))
        out.append(vec[o : o + k].reshape(leaf.shape).astype(leaf.dtype))
        o += k
    return jax.tree_util.tree_unflatten(treedef, out)
