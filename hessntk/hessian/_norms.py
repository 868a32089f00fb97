"""Exact composites of the normalisation layers for torch.func's second derivatives.

Internal to :mod:`hessntk.hessian` (and the NTK output Hessians of :mod:`hessntk.ntk`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["CompositeNorms"]


class CompositeNorms(TorchFunctionMode):
    """Route layer, instance and train-mode batch norm through differentiable composites.

    ``torch.func`` gets second derivatives of the fused norm kernels wrong in torch 2.13: the
    derivative of the weight gradient with respect to the input is missing the dependence of
    the saved mean and inverse standard deviation on the input (``F.layer_norm`` and
    ``F.instance_norm`` with affine weights, ``F.batch_norm`` with batch statistics; relative
    errors 0.1-0.4 against finite differences and ``torch.autograd`` double backward; compare
    functorch issue 534, pytorch issues 196700 and 196699). Spelling the normalisation with
    ``mean`` and ``rsqrt`` makes forward-over-reverse exact. Running statistics are not
    updated (train-mode norms need ``allow_train_mode=True`` anyway).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.layer_norm:
            return _layer_norm(*args, **kwargs)
        if func is F.batch_norm:
            return _batch_norm(*args, **kwargs)
        if func is F.instance_norm:
            return _instance_norm(*args, **kwargs)
        return func(*args, **kwargs)


def _normalise(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    xc = x - x.mean(dim=dims, keepdim=True)
    return xc * torch.rsqrt(xc.square().mean(dim=dims, keepdim=True) + eps)


def _affine(y: torch.Tensor, weight: Any, bias: Any, channel_dim: int | None) -> torch.Tensor:
    shape = None if channel_dim is None else [1, -1] + [1] * (y.ndim - 2)
    if weight is not None:
        y = y * (weight if shape is None else weight.reshape(shape))
    if bias is not None:
        y = y + (bias if shape is None else bias.reshape(shape))
    return y


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(input.ndim - len(normalized_shape), input.ndim))
    return _affine(_normalise(input, dims, eps), weight, bias, None)


def _batch_norm(  # noqa: ANN202
    input,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
):
    if not training and running_mean is not None:  # eval mode: an affine map, exact as is
        return F.batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    dims = (0, *range(2, input.ndim))
    return _affine(_normalise(input, dims, eps), weight, bias, 1)


def _instance_norm(  # noqa: ANN202
    input,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    use_input_stats=True,
    momentum=0.1,
    eps=1e-5,
):
    if not use_input_stats:
        return F.instance_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    dims = tuple(range(2, input.ndim))
    return _affine(_normalise(input, dims, eps), weight, bias, 1)
