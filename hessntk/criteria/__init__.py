"""Model-quality criteria built on spectra: lower-tail exponents, IIC, quantization sensitivity.

Consumes operators and spectral results from :mod:`hessntk.spectral`; never re-implements them.
"""

from hessntk.criteria.tails import TailFit, lower_tail_exponent, upper_tail_exponent

__all__ = ["TailFit", "lower_tail_exponent", "upper_tail_exponent"]
