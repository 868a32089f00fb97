"""Prior covariances ``S`` of the prior-weighted NTK ``K = J S J^T``.

``S`` is diagonal. It is given per parameter tensor: one variance for every entry of the
tensor (a float), or, on the generic paths, one per entry (a tensor of the parameter's shape).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["init_variances", "resolve_prior"]

PriorSpec = None | float | str | Mapping[str, Any]


def init_variances(params: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per-tensor fan-in variances: ``2 / fan_in`` for weights, ``1`` for biases.

    A tensor with ``ndim >= 2`` is a weight with ``fan_in = numel / shape[0]`` (inputs times
    receptive field, as :func:`torch.nn.init._calculate_fan_in_and_fan_out`); tensors with
    ``ndim <= 1`` (biases, norm scales) get variance 1. This is the He-initialisation prior
    that the IIC reference code uses (docs/theory.md section 1.4, "Choice of S").

    Examples
    --------
    >>> init_variances(dict(nn.Linear(4, 2).named_parameters()))
    {'weight': 0.5, 'bias': 1.0}
    """
    out = {}
    for name, p in params.items():
        if p.ndim >= 2:
            fan_in = p.numel() // p.shape[0]
            out[name] = 2.0 / max(fan_in, 1)
        else:
            out[name] = 1.0
    return out


def resolve_prior(
    prior: PriorSpec, model: nn.Module, params: Mapping[str, torch.Tensor]
) -> dict[str, float | torch.Tensor]:
    """Turn ``prior=`` into a variance per selected parameter tensor.

    Parameters
    ----------
    prior : None, float, "init" or dict
        ``None``: identity (variance 1). A float: the same variance everywhere. ``"init"``:
        :func:`init_variances`. A dict ``name -> variance`` (float, or a tensor of the
        parameter's shape for an elementwise diagonal); names may be any alias of a selected
        parameter; parameters not named get variance 1.
    model : torch.nn.Module
    params : dict[str, torch.Tensor]
        The selected parameters.

    Returns
    -------
    dict[str, float or torch.Tensor]
    """
    if prior is None:
        return {name: 1.0 for name in params}
    if isinstance(prior, str):
        if prior != "init":
            raise ValueError(
                f"Expected prior= to be None, a float, 'init' or a dict; got {prior!r}."
            )
        return dict(init_variances(params))
    if isinstance(prior, (int, float)) and not isinstance(prior, bool):
        _check_variance(float(prior), "prior")
        return {name: float(prior) for name in params}
    if isinstance(prior, Mapping):
        canonical_by_id = {id(p): name for name, p in model.named_parameters()}
        aliases = {
            name: canonical_by_id[id(p)]
            for name, p in model.named_parameters(remove_duplicate=False)
        }
        out: dict[str, float | torch.Tensor] = {name: 1.0 for name in params}
        for key, value in prior.items():
            name = aliases.get(key)
            if name is None or name not in params:
                raise ValueError(
                    f"Expected prior keys among the selected parameters {list(params)}; got "
                    f"{key!r}."
                )
            if torch.is_tensor(value) and value.ndim > 0:
                if value.shape != params[name].shape:
                    raise ValueError(
                        f"Expected the prior variance tensor for {key!r} to have the "
                        f"parameter's shape {tuple(params[name].shape)}; got "
                        f"{tuple(value.shape)}."
                    )
                if bool((value < 0).any()) or not bool(torch.isfinite(value).all()):
                    raise ValueError(
                        f"Expected finite non-negative prior variances for {key!r}; got "
                        "negative or non-finite entries."
                    )
                out[name] = value.detach().to(params[name].dtype, copy=False)
            else:
                v = float(value)
                _check_variance(v, f"prior[{key!r}]")
                out[name] = v
        return out
    raise TypeError(
        f"Expected prior= to be None, a float, 'init' or a dict; got {type(prior).__name__}."
    )


def _check_variance(v: float, what: str) -> None:
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"Expected {what} to be a finite non-negative variance; got {v}.")
