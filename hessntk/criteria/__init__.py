"""Model-quality criteria built on spectra: lower-tail exponents, IIC, quantization sensitivity.

Consumes operators and spectral results from :mod:`hessntk.spectral`; never re-implements them.
"""

from hessntk.criteria.comparison import Comparison, compare, load_checkpoint
from hessntk.criteria.criterion import IICResult, iic
from hessntk.criteria.quantization import (
    BitAllocation,
    QuantizationMeasurement,
    QuantizationSensitivity,
    allocate_bits,
    measure_quantization,
    quantization_sensitivity,
    quantized_loss,
)
from hessntk.criteria.quantizers import quantize
from hessntk.criteria.tails import TailFit, lower_tail_exponent, upper_tail_exponent

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
    "load_checkpoint",
    "lower_tail_exponent",
    "measure_quantization",
    "quantization_sensitivity",
    "quantize",
    "quantized_loss",
    "upper_tail_exponent",
]
