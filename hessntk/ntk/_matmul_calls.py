"""Record the products ``x @ W^T`` of chosen weights below autograd.

``nn.MultiheadAttention`` applies its projections inside
``F.multi_head_attention_forward``: no submodule is called (``out_proj``'s forward never
runs), so forward hooks cannot see the projection inputs and outputs, and a
``__torch_function__`` mode cannot either (the function hands itself to the mode whole). A
dispatch mode sees the ATen products themselves: ``mm(x, W.t())`` or
``addmm(b, x, W.t())``, whatever route ``F.linear`` takes. The recorded output is the
autograd node of the product (a bias added in place afterwards does not change its
gradient), so the layer's output signal is the gradient with respect to it.

What is recorded is checked like every structured capture (``structured.verify``); a weight
used in any other way fails the check and takes the generic path.
"""

from __future__ import annotations

from typing import Any

import torch

try:  # a private module, stable since torch 1.13; without it MHA takes the generic path
    from torch.utils._python_dispatch import TorchDispatchMode
except ImportError:  # pragma: no cover
    TorchDispatchMode = None

AVAILABLE = TorchDispatchMode is not None

_aten = torch.ops.aten


class MatmulCalls(TorchDispatchMode if AVAILABLE else object):
    """Record ``(x, x @ W^T)`` for every product of a tracked weight ``W``.

    Parameters
    ----------
    weights : dict[int, str]
        ``id`` of the tracked weight tensors (the leaves the forward runs on) -> the name
        the records are filed under.

    Examples
    --------
    >>> import torch
    >>> mha = torch.nn.MultiheadAttention(4, 2)
    >>> W = mha.in_proj_weight
    >>> with MatmulCalls({id(W): "in_proj"}) as calls:
    ...     _ = mha(*(3 * (torch.randn(5, 2, 4),)))
    >>> [tuple(x.shape) for x, _ in calls.records["in_proj"]]
    [(10, 4)]
    """

    def __init__(self, weights: dict[int, str]) -> None:
        super().__init__()
        self.weights = weights
        self.records: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {
            name: [] for name in weights.values()
        }

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        out = func(*args, **(kwargs or {}))
        if func is _aten.mm.default:
            x, wt = args[0], args[1]
        elif func is _aten.addmm.default:
            x, wt = args[1], args[2]
        else:
            return out
        base = wt._base
        if base is None or id(base) not in self.weights:
            return out
        # W.t() itself, not a slice of W (cross-attention splits the packed weight).
        if tuple(wt.shape) == tuple(base.shape)[::-1] and wt.data_ptr() == base.data_ptr():
            self.records[self.weights[id(base)]].append((x.detach(), out))
        return out
