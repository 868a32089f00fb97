"""Quantizable layers of a params pytree, and the curvature operator whose blocks they are.

The JAX twin of :mod:`hessntk.hessian.layers`: leaves are grouped into layers by their key
path (Equinox ``.layers[0].weight`` and ``.layers[0].bias`` form layer ``.layers[0]``;
``[(W1, b1), ...]`` gives ``[0]``, ...), and :func:`layer_operator` builds the Hessian over the
quantizable leaves with one block per layer, for :mod:`hessntk.criteria.quantization`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from hessntk.jax._common import TreeLayout, flatten_params
from hessntk.jax.curvature import GGNOperator, HessianOperator, layer_name

__all__ = ["layer_operator", "resolve_layers"]

Layers = None | str | Sequence[str] | Mapping[str, Sequence[str]]


def layer_operator(
    loss_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    data: Any,
    *,
    layers: Layers = None,
    quantize_biases: bool = False,
    f: Callable[[Any, Any], Any] | None = None,
) -> HessianOperator | GGNOperator:
    """The Hessian (or, with ``f``, the GGN) over the quantizable leaves, a block per layer.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(params, batch)`` (Hessian), or ``loss_fn(outputs, targets)`` with ``f``.
    params, data
        As for :class:`~hessntk.jax.HessianOperator`.
    layers : None, str, sequence of str, or dict
        ``None``: leaves grouped by :func:`~hessntk.jax.curvature.layer_name`; a leaf at the
        root of the pytree is its own layer. Prefixes of key paths: all leaves under each. A
        dict ``layer name -> leaf key paths``: explicit groups. Key paths are
        ``jax.tree_util.keystr`` strings.
    quantize_biases : bool
        Also quantize 1-D leaves.
    f : callable, optional
        ``f(params, inputs)``: build the GGN of ``loss_fn(f(params, x), y)`` instead.
    """
    full = flatten_params(params)
    groups = resolve_layers(full, layers, quantize_biases)
    names = [n for group in groups.values() for n in group]
    if f is None:
        return HessianOperator(loss_fn, params, data, select=names, blocks=groups)
    return GGNOperator(f, loss_fn, params, data, select=names, blocks=groups)


def resolve_layers(layout: TreeLayout, layers: Layers, quantize_biases: bool
                   ) -> dict[str, list[str]]:
    """``layer name -> leaf key paths`` to quantize (see :func:`hessntk.jax.layer_operator`).

    Raises
    ------
    ValueError
        Unknown key paths, overlapping layers, a layer without weights, no quantizable leaf.
    """
    ndim = {name: len(shape) for name, shape in zip(layout.names, layout.shapes, strict=True)}

    def quantizable(name: str) -> bool:
        return ndim[name] >= 2 or quantize_biases

    if layers is None:
        groups: dict[str, list[str]] = {}
        for name in layout.names:
            if quantizable(name):
                groups.setdefault(layer_name(name), []).append(name)
    elif isinstance(layers, Mapping):
        groups = {str(k): list(v) for k, v in layers.items()}
        for layer, group in groups.items():
            unknown = [n for n in group if n not in ndim]
            if unknown:
                raise ValueError(
                    f"Expected leaf key paths of params for layer {layer!r}; got unknown "
                    f"{unknown}. Valid key paths: {layout.names[:20]}."
                )
    else:
        prefixes = [layers] if isinstance(layers, str) else list(layers)
        groups = {}
        for prefix in prefixes:
            members = [n for n in layout.names if n.startswith(prefix)]
            if not members:
                raise ValueError(
                    f"Expected key-path prefixes of params; got {prefix!r}, which matches no "
                    f"leaf. Valid key paths: {layout.names[:20]}."
                )
            groups[prefix] = members
    seen: dict[str, str] = {}
    for layer, group in list(groups.items()):
        kept = [n for n in group if quantizable(n)]
        if not kept:
            raise ValueError(
                f"Expected layer {layer!r} to hold weights to quantize (leaves with ndim >= 2"
                f"{', or 1-D with quantize_biases' if quantize_biases else ''}); got "
                f"{group}. Drop it from layers= or pass quantize_biases=True."
            )
        for n in kept:
            if n in seen:
                raise ValueError(
                    f"Expected disjoint layers; leaf {n!r} is in layers {seen[n]!r} and "
                    f"{layer!r}."
                )
            seen[n] = layer
        groups[layer] = kept
    if not groups:
        raise ValueError(
            "Expected params with weights (leaves with ndim >= 2) to quantize; got none. Pass "
            "quantize_biases=True to quantize 1-D leaves, or layers= to choose them."
        )
    return groups
