"""Uniform weight quantizers: the ``Q_b(W)`` of quantization-sensitivity analysis.

Round-to-nearest onto a uniform grid of ``b``-bit integers, returned dequantized ("fake
quantization": the grid values in the array's own dtype and on its own backend: torch
tensors, jax or numpy arrays give the same numbers), with one scale per tensor or per
output channel (axis 0, the ``out_features`` / ``out_channels`` axis of ``nn.Linear`` and
``nn.ConvNd`` weights).

- ``"symmetric"``: ``Q(w) = s * clamp(round(w / s), -q, q)`` with ``q = 2**(b-1) - 1`` and
  ``s = max|w| / q``: ``2**b - 1`` levels, symmetric about an exact zero (``b >= 2``).
- ``"asymmetric"`` (affine): ``Q(w) = s * (clamp(round(w / s) + z, 0, 2**b - 1) - z)`` with
  ``s = (hi - lo) / (2**b - 1)`` over the range ``[lo, hi]`` of ``w`` widened to contain 0 and
  the integer zero point ``z = round(-lo / s)``: ``2**b`` levels, zero exact (``b >= 1``).

Both keep every element within half a step of its value, ``|Q(w) - w| <= s / 2``, and are
idempotent up to rounding, ``Q(Q(w)) = Q(w)``.
"""

from __future__ import annotations

import math
import numbers

from hessntk.spectral._backend import Array, backend_of_array

__all__ = ["GRANULARITIES", "SCHEMES", "check_bits", "grid", "num_levels", "quantize"]

SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("tensor", "channel")
MAX_BITS = 16


def check_bits(bits: object, scheme: str = "symmetric", what: str = "bits") -> int:
    """Validate one bit width for ``scheme`` and return it as an ``int``.

    Raises
    ------
    TypeError
        If ``bits`` is not an integer.
    ValueError
        If ``bits`` is outside ``1..16``, or is 1 with the symmetric scheme (whose only 1-bit
        level is 0).

    Examples
    --------
    >>> check_bits(4)
    4
    """
    if scheme not in SCHEMES:
        raise ValueError(f"Expected scheme in {SCHEMES}; got {scheme!r}.")
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"Expected {what} to be an integer in 1..{MAX_BITS}; got {bits!r}.")
    b = int(bits)
    if not 1 <= b <= MAX_BITS:
        raise ValueError(f"Expected {what} in 1..{MAX_BITS}; got {b}.")
    if b == 1 and scheme == "symmetric":
        raise ValueError(
            f"Expected {what} >= 2 for scheme='symmetric' (its 2**b - 1 levels leave only 0 at "
            "1 bit); got 1. Use scheme='asymmetric' for 1-bit (two levels)."
        )
    return b


def num_levels(bits: int, scheme: str = "symmetric") -> int:
    """Number of distinct grid values: ``2**b - 1`` (symmetric) or ``2**b`` (asymmetric).

    Examples
    --------
    >>> num_levels(4), num_levels(4, "asymmetric")
    (15, 16)
    """
    b = check_bits(bits, scheme)
    return 2**b - 1 if scheme == "symmetric" else 2**b


def _check_tensor(w: object) -> Array:
    try:
        xp = backend_of_array(w)
    except TypeError:
        raise TypeError(
            f"Expected a torch.Tensor (or jax / numpy array) of weights; got {type(w).__name__}."
        ) from None
    if getattr(w, "is_quantized", False):
        raise TypeError(
            f"Expected a floating-point tensor; got an already quantized tensor ({w.dtype}). "
            "Pass the float weights (w.dequantize(), or the float model before conversion)."
        )
    if not xp.is_floating(w):
        raise TypeError(
            f"Expected a floating-point tensor; got dtype {w.dtype} (integer weights are "
            "already quantized). Pass the float weights."
        )
    if math.prod(w.shape) == 0:
        raise ValueError("Expected a non-empty tensor; got 0 elements.")
    if not xp.all_finite(w):
        raise FloatingPointError("Expected finite weights to quantize; got NaN or infinity.")
    return xp.detach(w)


def _reduce_dims(w: Array, granularity: str, axis: int) -> tuple[int, ...]:
    if granularity not in GRANULARITIES:
        raise ValueError(f"Expected granularity in {GRANULARITIES}; got {granularity!r}.")
    if granularity == "tensor" or w.ndim < 2:
        return tuple(range(w.ndim))
    if not -w.ndim <= axis < w.ndim:
        raise ValueError(f"Expected axis in [{-w.ndim}, {w.ndim}); got {axis}.")
    axis %= w.ndim
    return tuple(d for d in range(w.ndim) if d != axis)


def grid(
    w: Array,
    bits: int,
    scheme: str = "symmetric",
    granularity: str = "tensor",
    *,
    axis: int = 0,
) -> tuple[Array, Array]:
    """Return the step ``s`` and integer zero point ``z`` of the grid that :func:`quantize` uses.

    Parameters
    ----------
    w, bits, scheme, granularity, axis
        As for :func:`quantize`.

    Returns
    -------
    scale, zero_point : array
        Broadcastable to ``w`` (shape ``()`` per tensor, ``(c, 1, ..., 1)`` per channel), in
        ``w``'s dtype; ``zero_point`` is 0 for the symmetric scheme. A group of zeros gets
        ``scale = 1`` (quantized exactly).

    Examples
    --------
    >>> import numpy as np
    >>> scale, zero = grid(np.array([-1.0, 0.5, 3.5]), 3)  # q = 3: step 3.5 / 3
    >>> round(float(scale), 6), float(zero)
    (1.166667, 0.0)
    """
    w = _check_tensor(w)
    xp = backend_of_array(w)
    b = check_bits(bits, scheme)
    dims = _reduce_dims(w, granularity, axis)
    if scheme == "symmetric":
        amax = xp.amax(abs(w), dims) if dims else abs(w)
        scale = amax / (2 ** (b - 1) - 1)
        zero = scale * 0
    else:
        lo = xp.amin(w, dims) if dims else w
        hi = xp.amax(w, dims) if dims else w
        lo, hi = xp.clip(lo, None, 0), xp.clip(hi, 0, None)
        scale = (hi - lo) / (2**b - 1)
        zero = xp.round(-lo / xp.where(scale > 0, scale, 1.0))
    scale = xp.where(scale > 0, scale, 1.0)
    if granularity == "tensor" or w.ndim < 2:
        scale, zero = scale.reshape(()), zero.reshape(())
    return scale, zero


def quantize(
    w: Array,
    bits: int,
    scheme: str = "symmetric",
    granularity: str = "tensor",
    *,
    axis: int = 0,
) -> Array:
    """Round ``w`` to a uniform ``bits``-bit grid and return the grid values (dequantized).

    Parameters
    ----------
    w : torch.Tensor, jax or numpy array
        Floating-point weights of any shape; not modified.
    bits : int
        Bit width, ``1..16`` (``2..16`` for the symmetric scheme).
    scheme : {"symmetric", "asymmetric"}
        See the module docstring.
    granularity : {"tensor", "channel"}
        One grid per tensor, or one per slice along ``axis`` (output channels). Tensors with
        fewer than two dimensions (biases) always use one grid.
    axis : int
        The channel axis for ``granularity="channel"``.

    Returns
    -------
    array
        Same shape, dtype and backend as ``w`` (a torch tensor is detached), with
        ``|Q(w) - w| <= scale / 2`` elementwise (``scale`` from :func:`grid`).

    Raises
    ------
    TypeError
        Integer or already quantized (``torch.qint8``, ...) tensors.
    ValueError
        Bits outside ``1..16`` (or 1 for the symmetric scheme), an unknown scheme or
        granularity.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.array([-1.0, -0.6, 0.1, 0.7])
    >>> quantize(w, 2)  # 3 levels {-1, 0, 1}
    array([-1., -1.,  0.,  1.])
    >>> np.round(quantize(w, 2, "asymmetric"), 4)  # 4 levels, step (0.7 + 1) / 3, zero 2
    array([-1.1333, -0.5667,  0.    ,  0.5667])
    """
    scale, zero = grid(w, bits, scheme, granularity, axis=axis)
    xp = backend_of_array(w)
    w = xp.detach(w)
    b = int(bits)
    if scheme == "symmetric":
        q = 2 ** (b - 1) - 1
        return xp.clip(xp.round(w / scale), -q, q) * scale
    return (xp.clip(xp.round(w / scale) + zero, 0, 2**b - 1) - zero) * scale
