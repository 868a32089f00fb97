"""Quantizable layers of a torch model, and the curvature operator whose blocks they are.

The quantization criteria (:mod:`hessntk.criteria.quantization`) work on a curvature operator
whose blocks are the layers to quantize; :func:`layer_operator` builds it from a model: which
parameters a layer holds (:func:`resolve_layers`: modules, explicit groups, biases or not),
with clear refusals for layers that cannot be quantized (integer or already quantized
weights, layers with no weights).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hessntk.hessian.operators import GGNOperator, HessianOperator

__all__ = ["check_layer", "layer_operator", "resolve_layers"]

Layers = None | str | Sequence[str] | Mapping[str, Sequence[str]]
CURVATURES = {"hessian": HessianOperator, "ggn": GGNOperator}


def layer_operator(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
    data: Any,
    *,
    layers: Layers = None,
    quantize_biases: bool = False,
    curvature: str = "hessian",
    output_key: str | int | None = None,
    outputs_fn: Callable[[Any], torch.Tensor] | None = None,
    allow_train_mode: bool = False,
    group: Any = None,
) -> HessianOperator | GGNOperator:
    """The Hessian (or GGN) over the quantizable weights, one block per layer.

    Parameters
    ----------
    model, loss_fn, data
        As for :class:`~hessntk.hessian.HessianOperator`.
    layers, quantize_biases
        Which parameters form the layers (see :func:`resolve_layers`).
    curvature : {"hessian", "ggn"}
    output_key, outputs_fn, allow_train_mode, group
        Operator options (``group``: data parallel, ``data`` this rank's shard).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> op = layer_operator(net, nn.CrossEntropyLoss(), (x, y))
    >>> op.block_params
    {'0': ['0.weight'], '2': ['2.weight']}
    """
    if curvature not in CURVATURES:
        raise ValueError(f"Expected curvature in {tuple(CURVATURES)}; got {curvature!r}.")
    groups = resolve_layers(model, layers, quantize_biases)
    names = [name for group in groups.values() for name in group]
    return CURVATURES[curvature](
        model, loss_fn, data, params=names, blocks=groups, output_key=output_key,
        outputs_fn=outputs_fn, allow_train_mode=allow_train_mode, group=group,
    )  # fmt: skip


def resolve_layers(model: nn.Module, layers: Layers, quantize_biases: bool) -> dict[str, list]:
    """``layer name -> parameter names`` to quantize, validated (see quantization_sensitivity)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected model to be a torch.nn.Module; got {type(model).__name__}.")
    named = dict(model.named_parameters())
    kind = "floating-point parameters" if quantize_biases else "weights (ndim >= 2)"

    def quantizable(p: torch.Tensor) -> bool:
        return p.is_floating_point() and (p.ndim >= 2 or quantize_biases)

    if layers is None:
        groups: dict[str, list[str]] = {}
        for name, p in named.items():
            if quantizable(p) and p.requires_grad:
                groups.setdefault(name.rpartition(".")[0], []).append(name)
        if not groups:
            raise ValueError(
                f"Expected a model with {kind} that require grad; got none among "
                f"{len(named)} parameters. Pass quantize_biases=True to quantize 1-D "
                "parameters, or layers= to choose them."
            )
        return groups
    if isinstance(layers, Mapping):
        groups = {str(k): list(v) for k, v in layers.items()}
        for layer, group in groups.items():
            unknown = [n for n in group if n not in named]
            if unknown:
                raise ValueError(
                    f"Expected parameter names of the model for layer {layer!r}; got unknown "
                    f"{unknown}. Valid names: {list(named)[:20]}."
                )
    else:
        if isinstance(layers, str):
            layers = [layers]
        modules = dict(model.named_modules())
        groups = {}
        for layer in layers:
            if layer not in modules:
                raise ValueError(
                    f"Expected layer names among the model's modules; got {layer!r}. "
                    f"Valid names: {[k for k in modules if k][:20]}."
                )
            prefix = f"{layer}." if layer else ""
            groups[layer] = [n for n in named if n.startswith(prefix)]
    seen: dict[str, str] = {}
    for layer, group in groups.items():
        check_layer(model, layer, [n for n in group], named, quantize_biases)
        groups[layer] = [n for n in group if quantizable(named[n])]
        for n in groups[layer]:
            if n in seen:
                raise ValueError(
                    f"Expected disjoint layers; parameter {n!r} is in layers {seen[n]!r} and "
                    f"{layer!r}. Name each module once (not a module and its parent)."
                )
            seen[n] = layer
    return groups


def check_layer(
    model: nn.Module, layer: str, group: list[str], named: dict, quantize_biases: bool
) -> None:
    label = repr(layer) if layer else "'' (the root module)"
    ints = [n for n in group if not named[n].is_floating_point()]
    if ints:
        raise TypeError(
            f"Expected floating-point weights in layer {label}; got integer parameters {ints} "
            f"({named[ints[0]].dtype}), i.e. already quantized. Pass the float model."
        )
    ok = [n for n in group if named[n].ndim >= 2 or quantize_biases]
    if ok:
        return
    module = dict(model.named_modules()).get(layer)
    if module is not None and "quantized" in type(module).__module__:
        raise TypeError(
            f"Expected a float layer; layer {label} is an already quantized "
            f"{type(module).__module__}.{type(module).__name__} (its packed weights are not "
            "parameters). Pass the float model, before torch.ao conversion."
        )
    have = f"1-D parameters {group}" if group else "no parameters"
    raise ValueError(
        f"Expected layer {label} to hold weights to quantize (floating-point parameters with "
        f"ndim >= 2{', or 1-D with quantize_biases' if quantize_biases else ''}); got {have}. "
        "Drop it from layers="
        + (
            ""
            if quantize_biases or not group
            else ", or pass quantize_biases=True to quantize 1-D parameters"
        )
        + "."
    )
