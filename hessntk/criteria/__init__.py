"""Model-quality criteria built on spectra: lower-tail exponents, IIC, quantization sensitivity.

Each criterion is written once over the operator protocol of :mod:`hessntk.spectral.protocols`
(Gram operators for the IIC, curvature operators for quantization), so it runs on the torch
and the JAX builders alike; torch models are accepted as a convenience (the operator is then
built for you). Imports neither torch nor jax at module level.
"""

from hessntk.criteria.bits import BitAllocation, allocate_bits
from hessntk.criteria.comparison import Comparison, compare
from hessntk.criteria.iic import IICResult, iic
from hessntk.criteria.mixed_precision import mixed_precision
from hessntk.criteria.quantization import (
    measure_quantization,
    quantization_sensitivity,
    quantized_loss,
)
from hessntk.criteria.quantization_results import QuantizationMeasurement, QuantizationSensitivity
from hessntk.criteria.quantizers import quantize
from hessntk.criteria.tails import TailFit, lower_tail_exponent, upper_tail_exponent


def __getattr__(name: str) -> object:
    """``load_checkpoint`` lives in :mod:`hessntk.checkpoints` (torch); imported on first use."""
    if name == "load_checkpoint":
        from hessntk.checkpoints import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'hessntk.criteria' has no attribute {name!r}")


__all__ = [
    "BitAllocation",
    "Comparison",
    "IICResult",
    "QuantizationMeasurement",
    "QuantizationSensitivity",
    "TailFit",
    "allocate_bits",
    "compare",
    "iic",
    "lower_tail_exponent",
    "measure_quantization",
    "mixed_precision",
    "quantization_sensitivity",
    "quantize",
    "quantized_loss",
    "upper_tail_exponent",
]
