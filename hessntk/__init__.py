"""hessntk: curvature of neural networks.

Data flow: Hessian-vector products / Jacobian builders (:mod:`hessntk.hessian`,
:mod:`hessntk.ntk`) -> linear operators -> Lanczos, SLQ and trace estimators
(:mod:`hessntk.spectral`) -> spectra, traces, log-dets -> criteria (:mod:`hessntk.criteria`).

``import hessntk`` never imports jax.
"""

from hessntk import criteria, hessian, ntk, spectral
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

__all__ = [
    "BlockEstimate",
    "CountingOperator",
    "DenseOperator",
    "DiagonalEstimate",
    "EigshResult",
    "Estimate",
    "LinearOperator",
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
