"""The shared estimation core: symmetric operators, Lanczos, eigsh, SLQ and trace estimators.

Backend-agnostic (torch on CPU or CUDA, numpy, jax): algorithms only call ``op.matmat``.
"""

from hessntk.spectral.eigen import EigshResult, eigsh, extreme_eigenvalues
from hessntk.spectral.krylov import Tridiagonal, lanczos
from hessntk.spectral.layout import ParamLayout
from hessntk.spectral.logdets import logdet, logdet_difference
from hessntk.spectral.operators import (
    CallableOperator,
    CountingOperator,
    DenseOperator,
    LinearOperator,
    aslinearoperator,
    check_symmetric,
)
from hessntk.spectral.probes import as_generator, rademacher
from hessntk.spectral.quadrature import CDFEstimate, SpectralDensity, block_slq, slq
from hessntk.spectral.resolution import gram_floor
from hessntk.spectral.results import BlockEstimate, Estimate
from hessntk.spectral.solvers import CGResult, cg
from hessntk.spectral.traces import DiagonalEstimate, diagonal, trace

__all__ = [
    "BlockEstimate",
    "CDFEstimate",
    "CGResult",
    "CallableOperator",
    "CountingOperator",
    "DenseOperator",
    "DiagonalEstimate",
    "EigshResult",
    "Estimate",
    "LinearOperator",
    "ParamLayout",
    "SpectralDensity",
    "Tridiagonal",
    "as_generator",
    "aslinearoperator",
    "block_slq",
    "cg",
    "check_symmetric",
    "gram_floor",
    "diagonal",
    "eigsh",
    "extreme_eigenvalues",
    "lanczos",
    "logdet",
    "logdet_difference",
    "rademacher",
    "slq",
    "trace",
]
