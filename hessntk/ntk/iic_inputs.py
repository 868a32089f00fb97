"""The operators of the IIC for a torch model: what ``hessntk.criteria.iic(model, data)`` builds.

The criterion itself (:mod:`hessntk.criteria.iic`) only sees operators; this module turns a
model, its data and the IIC's prior and observation options into a
:class:`~hessntk.ntk.GramOperator` (and, for a callable prior, a
:class:`~hessntk.hessian.RegulariserOperator` at ``theta*``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hessntk._model import iter_batches
from hessntk._observations import IIC_OBSERVATIONS
from hessntk.hessian.regulariser import RegulariserOperator
from hessntk.ntk.operator import GramOperator

__all__ = ["iic_inputs"]


def iic_inputs(
    model: nn.Module,
    data: Any,
    *,
    prior: Any,
    reference: Any,
    observations: str,
    params: Any = None,
    output_key: str | int | None = None,
    outputs_fn: Callable[[Any], torch.Tensor] | None = None,
    group: Any = None,
) -> tuple[GramOperator, RegulariserOperator | None]:
    """Return ``(K, regulariser or None)`` for :func:`hessntk.criteria.iic`.

    Raises
    ------
    ValueError
        No data, or a callable prior without ``reference``.
    """
    if data is None:
        raise ValueError("Expected data= the (inputs, targets) batches the model interpolates, "
                         "with a torch model.")
    batches = list(iter_batches(data))
    general = callable(prior) and not isinstance(prior, str)
    if general and reference is None:
        raise ValueError("Expected reference= the minimiser theta0 of the callable prior R "
                         "(a state dict or a model holding theta0).")
    K = GramOperator(model, data=batches, params=params, prior=None if general else prior,
                     outputs=IIC_OBSERVATIONS[observations], output_key=output_key,
                     outputs_fn=outputs_fn, group=group)
    regulariser = RegulariserOperator(prior, K.unravel(K.theta())) if general else None
    return K, regulariser
