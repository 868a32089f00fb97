"""The map between named parameter arrays and one flat vector, for every backend.

Curvature and Gram operators act on flat vectors; the parameters they differentiate are named
arrays (torch tensors keyed by ``named_parameters()`` names, jax leaves keyed by their pytree
key paths). :class:`ParamLayout` is that map, written once: the torch and JAX builders both
use it, and the criteria use it to find a layer's entries in a flat vector.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from hessntk.spectral._backend import Array, Backend, backend_of_array

__all__ = ["ParamBlocks", "ParamLayout", "resolve_blocks"]


class ParamLayout:
    """Names, shapes and offsets of parameter arrays concatenated into one flat vector.

    Parameters
    ----------
    params : dict[str, array]
        Parameter arrays of one backend (torch tensors, jax or numpy arrays), one dtype and
        one device. The flat order is the dict order.

    Attributes
    ----------
    names : list[str]
    shapes : list[tuple[int, ...]]
    numels : list[int]
    offsets : list[int]
        Start of each array in the flat vector.
    n : int
        Total number of entries.
    dtype, device
        Common dtype and device of the arrays.
    backend : {"torch", "jax", "numpy"}
    slices : dict[str, slice]
        ``name -> slice`` into the flat vector.

    Examples
    --------
    >>> import numpy as np
    >>> layout = ParamLayout({"weight": np.zeros((2, 3)), "bias": np.zeros(2)})
    >>> layout.n, layout.slices["bias"]
    (8, slice(6, 8, None))
    >>> layout.unravel(np.arange(8.0))["weight"].shape
    (2, 3)
    """

    def __init__(self, params: Mapping[str, Array]) -> None:
        if not params:
            raise ValueError("Expected at least one parameter; got an empty dict.")
        self.names = [str(k) for k in params]
        arrays = list(params.values())
        self.shapes = [tuple(int(s) for s in a.shape) for a in arrays]
        self.numels = [math.prod(s) for s in self.shapes]
        self.offsets = [0]
        for k in self.numels[:-1]:
            self.offsets.append(self.offsets[-1] + k)
        self.n = sum(self.numels)
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) > 1:
            raise ValueError(
                f"Expected selected parameters of one dtype; got {sorted(map(str, dtypes))}. "
                "Cast the model with model.to(dtype) or select parameters of one dtype."
            )
        xps = [backend_of_array(a) for a in arrays]
        devices = {str(xp.device) for xp in xps}
        if len(devices) > 1:
            raise ValueError(
                f"Expected selected parameters on one device; got {sorted(devices)}. "
                "Move the model with model.to(device)."
            )
        self._xp: Backend = xps[0]
        self.backend = self._xp.name
        self.dtype = arrays[0].dtype
        self.device = self._xp.device
        self.slices = {
            name: slice(o, o + k)
            for name, o, k in zip(self.names, self.offsets, self.numels, strict=True)
        }

    def __repr__(self) -> str:
        return f"ParamLayout(n={self.n}, tensors={len(self.names)}, dtype={self.dtype})"

    def flatten(self, arrays: Mapping[str, Array] | Sequence[Array], batch_ndim: int = 0) -> Array:
        """Concatenate arrays (a dict keyed like the layout, or a list in layout order).

        Parameters
        ----------
        arrays : dict or list of arrays
            Each of shape ``(*batch, *shape)``.
        batch_ndim : int
            Number of leading batch dimensions shared by all arrays.

        Returns
        -------
        array of shape (*batch, n)
        """
        if isinstance(arrays, Mapping):
            missing = [name for name in self.names if name not in arrays]
            if missing:
                raise ValueError(f"Expected arrays for every layout name; missing {missing}.")
            arrays = [arrays[name] for name in self.names]
        if len(arrays) != len(self.names):
            raise ValueError(f"Expected {len(self.names)} arrays; got {len(arrays)}.")
        flat = []
        for a, shape in zip(arrays, self.shapes, strict=True):
            batch = tuple(a.shape[:batch_ndim])
            if tuple(a.shape[batch_ndim:]) != shape:
                raise ValueError(
                    f"Expected an array of shape (*batch, {shape}); got {tuple(a.shape)}."
                )
            flat.append(a.reshape((*batch, -1)))
        return self._xp.concat(flat, axis=-1)  # a new array even for one parameter

    def unravel(self, vec: Array, dim: int = -1) -> dict[str, Array]:
        """Split a flat vector into arrays shaped like the parameters (views where possible).

        Parameters
        ----------
        vec : array
            Of shape ``(n,)``; or ``(..., n)`` with ``dim=-1`` (leading batch dims, returned
            arrays ``(..., *shape)``); or ``(n, ...)`` with ``dim=0`` (trailing batch dims,
            returned arrays ``(*shape, ...)``, e.g. the columns of an ``(n, k)`` block).
        dim : {-1, 0}
            The axis of length ``n``.

        Returns
        -------
        dict[str, array]
        """
        if dim not in (-1, 0, vec.ndim - 1):
            raise ValueError(f"Expected dim=-1 or dim=0; got {dim}.")
        last = dim in (-1, vec.ndim - 1)
        if vec.ndim == 0 or vec.shape[-1 if last else 0] != self.n:
            raise ValueError(
                f"Expected an array with {self.n} entries along dim {dim}; got shape "
                f"{tuple(vec.shape)}."
            )
        out = {}
        for name, sl, shape in zip(self.names, self.slices.values(), self.shapes, strict=True):
            if last:
                out[name] = vec[..., sl].reshape((*vec.shape[:-1], *shape))
            else:
                out[name] = vec[sl].reshape((*shape, *vec.shape[1:]))
        return out

    def layer_groups(self, layer_of: Callable[[str], str] | None = None) -> dict[str, list[str]]:
        """Group parameter names by their layer.

        By default the layer is the owning module (the name without its last part):
        ``"0.weight", "0.bias" -> "0"``, and parameters of the root module are grouped under
        ``""``, as in ``model.named_modules()``. ``layer_of(name)`` gives another rule (e.g.
        pytree key paths).

        Returns
        -------
        dict[str, list[str]]
            In order of first appearance.
        """
        layer_of = layer_of or (lambda name: name.rpartition(".")[0])
        groups: dict[str, list[str]] = {}
        for name in self.names:
            groups.setdefault(layer_of(name), []).append(name)
        return groups

    def index(self, names: Sequence[str]) -> slice | np.ndarray:
        """Positions of the given parameters in the flat vector.

        Returns a ``slice`` when the arrays are contiguous in layout order, else a 1-D numpy
        integer index array (ascending).
        """
        unknown = [name for name in names if name not in self.slices]
        if unknown or not names:
            raise ValueError(f"Expected parameter names among {self.names}; got {list(names)}.")
        pos = sorted(self.names.index(name) for name in names)
        if pos == list(range(pos[0], pos[-1] + 1)):
            return slice(self.offsets[pos[0]], self.offsets[pos[-1]] + self.numels[pos[-1]])
        return np.concatenate(
            [np.arange(self.offsets[i], self.offsets[i] + self.numels[i]) for i in pos]
        )


def resolve_blocks(
    layout: ParamLayout,
    blocks: str | Mapping[str, Sequence[str]],
    *,
    each: str,
    what: str,
    layer_of: Callable[[str], str] | None = None,
) -> dict[str, list[str]]:
    """Resolve the ``blocks=`` of a curvature operator to ``block name -> names``.

    Parameters
    ----------
    layout : ParamLayout
    blocks : str or dict
        ``each`` (one block per array, e.g. ``"tensor"`` or ``"leaf"``), ``"layer"``
        (:meth:`ParamLayout.layer_groups` with ``layer_of``), or a dict ``block name ->
        names`` that partitions ``layout.names``.
    each, what : str
        The word for one-block-per-array and for the arrays (error messages).
    layer_of : callable, optional

    Raises
    ------
    ValueError
        A dict that does not partition the names, or an unknown option.

    Examples
    --------
    >>> import numpy as np
    >>> layout = ParamLayout({"0.weight": np.zeros((2, 2)), "0.bias": np.zeros(2)})
    >>> resolve_blocks(layout, "layer", each="tensor", what="parameter")
    {'0': ['0.weight', '0.bias']}
    """
    names = layout.names
    if blocks == each:
        return {name: [name] for name in names}
    if blocks == "layer":
        return layout.layer_groups(layer_of)
    if isinstance(blocks, Mapping):
        groups = {str(k): list(v) for k, v in blocks.items()}
        members = [name for group in groups.values() for name in group]
        unknown = [name for name in members if name not in layout.slices]
        if unknown or sorted(members) != sorted(names):
            raise ValueError(
                f"Expected blocks= to partition the selected {what}s {names}; got unknown "
                f"{unknown} and {len(members)} members for {len(names)} {what}s."
            )
        return groups
    raise ValueError(f"Expected blocks='{each}', 'layer' or a dict block name -> {what} names; "
                     f"got {blocks!r}.")


class ParamBlocks:
    """The block members of a curvature operator whose ``_groups`` partition its ``layout``.

    A mixin of the torch and JAX curvature operators (the same names and meanings).
    """

    layout: ParamLayout
    _groups: dict[str, list[str]]

    @property
    def blocks(self) -> list[str]:
        """Names of the parameter blocks (per array, per layer or as given by ``blocks=``)."""
        return list(self._groups)

    @property
    def block_params(self) -> dict[str, list[str]]:
        """``block name -> layout names`` of each block."""
        return {k: list(v) for k, v in self._groups.items()}

    @property
    def block_slices(self) -> list[slice | np.ndarray]:
        """Positions of each block in the flat vector, in :attr:`blocks` order.

        A ``slice`` for a contiguous block, else a 1-D numpy integer index array. Together
        they partition ``range(n)``, as ``hessntk.spectral.trace(..., blocks=)`` expects.
        """
        return [self.layout.index(names) for names in self._groups.values()]


def even_bounds(n: int, parts: int) -> list[int]:
    """Bounds ``[r n // parts for r in 0..parts]`` of ``parts`` contiguous, balanced ranges.

    Examples
    --------
    >>> even_bounds(10, 3)
    [0, 3, 6, 10]
    """
    return [r * n // parts for r in range(parts + 1)]
