"""Hessian and generalised Gauss-Newton operators of PyTorch models, and one-call spectra.

Operators (:class:`HessianOperator`, :class:`GGNOperator`) are
:class:`hessntk.spectral.LinearOperator` s over the flattened selected parameters that
implement :class:`hessntk.spectral.protocols.CurvatureLike` (gradient, loss at other
parameters, blocks); :class:`RegulariserOperator` is the Hessian of a regulariser ``R(params)``
(a non-Gaussian IIC prior). The functions (:func:`top_eigenvalues`, :func:`trace`,
:func:`density` and their ``block_*`` variants) take an operator or build one, and call the
spectral core.

Examples
--------
>>> import torch
>>> from hessntk.hessian import HessianOperator, top_eigenvalues
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
>>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
>>> H = HessianOperator(net, torch.nn.CrossEntropyLoss(), (x, y), blocks="layer")
>>> H.shape, H.blocks
((67, 67), ['0', '2'])
"""

try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "hessntk.hessian needs PyTorch: pip install 'hessntk[torch]' (or pip install torch)."
    ) from err

from hessntk.hessian.functions import (
    block_density,
    block_top_eigenvalues,
    block_traces,
    density,
    top_eigenvalues,
    trace,
)
from hessntk.hessian.layers import layer_operator
from hessntk.hessian.operators import GGNOperator, HessianOperator
from hessntk.hessian.regulariser import RegulariserOperator

__all__ = [
    "GGNOperator",
    "HessianOperator",
    "RegulariserOperator",
    "block_density",
    "block_top_eigenvalues",
    "block_traces",
    "density",
    "layer_operator",
    "top_eigenvalues",
    "trace",
]
