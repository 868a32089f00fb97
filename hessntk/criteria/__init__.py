"""Model-quality criteria built on spectra: lower-tail exponents, IIC, quantization sensitivity.

Consumes operators and spectral results from :mod:`hessntk.spectral`; never re-implements them.
"""

from hessntk.criteria.comparison import Comparison, compare, load_checkpoint
from hessntk.criteria.criterion import IICResult, iic
from hessntk.criteria.tails import TailFit, lower_tail_exponent, upper_tail_exponent

__all__ = [
    "Comparison",
    "IICResult",
    "TailFit",
    "compare",
    "iic",
    "load_checkpoint",
    "lower_tail_exponent",
    "upper_tail_exponent",
]
