"""Model-quality criteria built on spectra: lower-tail exponents, IIC, quantization sensitivity.

Consumes operators and spectral results from :mod:`hessntk.spectral`; never re-implements them.
(Filled in by the criteria and quantization issues.)
"""

__all__: list[str] = []
