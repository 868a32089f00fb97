"""hessntk: curvature of neural networks.

Data flow: Hessian-vector products / Jacobian builders (:mod:`hessntk.hessian`,
:mod:`hessntk.ntk`) -> linear operators -> Lanczos, SLQ and trace estimators
(:mod:`hessntk.spectral`) -> spectra, traces, log-dets -> criteria (:mod:`hessntk.criteria`).

``import hessntk`` never imports jax, and imports torch only when a torch builder
(:mod:`hessntk.hessian`, :mod:`hessntk.ntk`) is first used: the spectral core, the criteria
and :mod:`hessntk.jax` work without torch installed.
"""

import importlib
from typing import Any

from hessntk import criteria, spectral
from hessntk._memory import MemoryBudgetError
from hessntk.spectral import (
    BlockEstimate,
    CountingOperator,
    DenseOperator,
    DiagonalEstimate,
    EigshResult,
    Estimate,
    LinearOperator,
    SpectralDensity,
    Tridiagonal,
    aslinearoperator,
    check_symmetric,
    diagonal,
    eigsh,
    lanczos,
    slq,
    trace,
)

__version__ = "0.1.0"

_TORCH_MODULES = ("distributed", "hessian", "ntk")


def __getattr__(name: str) -> Any:
    """Import the torch builders on first use (``hessntk.hessian``, ``hessntk.ntk``)."""
    if name in _TORCH_MODULES:  # their ImportError names the extra when torch is missing
        return importlib.import_module(f"hessntk.{name}")
    raise AttributeError(f"module 'hessntk' has no attribute {name!r}")

__all__ = [
    "BlockEstimate",
    "CountingOperator",
    "DenseOperator",
    "DiagonalEstimate",
    "EigshResult",
    "Estimate",
    "LinearOperator",
    "MemoryBudgetError",
    "SpectralDensity",
    "Tridiagonal",
    "aslinearoperator",
    "check_symmetric",
    "diagonal",
    "eigsh",
    "lanczos",
    "slq",
    "criteria",
    "hessian",
    "ntk",
    "spectral",
    "trace",
]
