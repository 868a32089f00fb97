"""Uniform weight quantizers: the ``Q_b(W)`` of quantization-sensitivity analysis.

Round-to-nearest onto a uniform grid of ``b``-bit integers, returned dequantized ("fake
quantization": the grid values in the array's own dtype and on its own backend: torch
tensors, jax or numpy arrays give the same numbers), with one scale per tensor, per output
channel (``axis``: 0 for the ``out_features`` / ``out_channels`` axis of ``nn.Linear``,
``nn.ConvNd`` and ``nn.Embedding`` rows; 1 for Hugging Face ``Conv1D``, whose weight is
``(in, out)``), or per group of ``group_size`` consecutive weights of one output channel (its
other axes flattened in order, as GPTQ/AWQ-style per-group schemes do; a last group that is
short is padded with zeros, which change no grid since both schemes contain 0).

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

__all__ = ["GRANULARITIES", "GROUP_SIZE", "SCHEMES", "check_bits", "check_group_size", "grid",
           "num_levels", "quantize"]

SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("tensor", "channel", "group")
GROUP_SIZE = 128
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


def check_group_size(group_size: object) -> int:
    """Validate a group size (a positive integer) and return it."""
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) or (
            int(group_size) < 1):
        raise ValueError(f"Expected group_size to be a positive integer; got {group_size!r}.")
    return int(group_size)


class _View:
    """``w`` reshaped so that each grid is one slice over the last axis (or the whole array).

    tensor: ``w`` itself, reduced over every axis; channel: ``w``, reduced over every axis but
    ``axis``; group: ``(c, groups, group_size)`` with ``axis`` first, zero-padded.
    """

    def __init__(self, w: Array, granularity: str, axis: int, group_size: int) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"Expected granularity in {GRANULARITIES}; got {granularity!r}.")
        self.xp, self.w, self.granularity = backend_of_array(w), w, granularity
        if granularity == "tensor" or w.ndim < 2:
            self.x, self.dims = w, tuple(range(w.ndim))
            return
        if not -w.ndim <= axis < w.ndim:
            raise ValueError(f"Expected axis in [{-w.ndim}, {w.ndim}); got {axis}.")
        self.axis = axis % w.ndim
        if granularity == "channel":
            self.x, self.dims = w, tuple(d for d in range(w.ndim) if d != self.axis)
            return
        x = self.xp.moveaxis(w, self.axis, 0)
        self.moved = tuple(x.shape)
        c, r = self.moved[0], math.prod(self.moved[1:])
        x = x.reshape(c, r)
        g = check_group_size(group_size)
        k = -(-r // g)
        if k * g > r:
            x = self.xp.concat([x, self.xp.zeros((c, k * g - r), x.dtype)], axis=1)
        self.r = r
        self.x, self.dims = x.reshape(c, k, g), (2,)

    def restore(self, y: Array) -> Array:
        """Undo the reshape: ``y`` has the view's shape; the result has ``w``'s."""
        if self.x is self.w:
            return y
        y = y.reshape(self.moved[0], -1)[:, : self.r]
        return self.xp.moveaxis(y.reshape(self.moved), 0, self.axis)


def _grid(view: _View, b: int, scheme: str) -> tuple[Array, Array]:
    xp, x, dims = view.xp, view.x, view.dims
    if scheme == "symmetric":
        amax = xp.amax(abs(x), dims) if dims else abs(x)
        scale = amax / (2 ** (b - 1) - 1)
        zero = scale * 0
    else:
        lo = xp.amin(x, dims) if dims else x
        hi = xp.amax(x, dims) if dims else x
        lo, hi = xp.clip(lo, None, 0), xp.clip(hi, 0, None)
        scale = (hi - lo) / (2**b - 1)
        zero = xp.round(-lo / xp.where(scale > 0, scale, 1.0))
    scale = xp.where(scale > 0, scale, 1.0)
    if x is view.w and len(dims) == x.ndim:
        scale, zero = scale.reshape(()), zero.reshape(())
    return scale, zero


def grid(
    w: Array,
    bits: int,
    scheme: str = "symmetric",
    granularity: str = "tensor",
    *,
    axis: int = 0,
    group_size: int = GROUP_SIZE,
) -> tuple[Array, Array]:
    """Return the step ``s`` and integer zero point ``z`` of the grid that :func:`quantize` uses.

    Parameters
    ----------
    w, bits, scheme, granularity, axis, group_size
        As for :func:`quantize`.

    Returns
    -------
    scale, zero_point : array
        In ``w``'s dtype; ``zero_point`` is 0 for the symmetric scheme. Shape ``()`` per
        tensor, broadcastable to ``w`` per channel (``(c, 1, ..., 1)`` for ``axis=0``), and
        ``(c, groups, 1)`` per group (over the view of ``w`` with ``axis`` first and the
        rest flattened). A group of zeros gets
        ``scale = 1`` (quantized exactly).

    Examples
    --------
    >>> import numpy as np
    >>> scale, zero = grid(np.array([-1.0, 0.5, 3.5]), 3)  # q = 3: step 3.5 / 3
    >>> round(float(scale), 6), float(zero)
    (1.166667, 0.0)
    >>> grid(np.ones((4, 6)), 4, granularity="group", group_size=4)[0].shape  # 2 groups / row
    (4, 2, 1)
    """
    w = _check_tensor(w)
    b = check_bits(bits, scheme)
    return _grid(_View(w, granularity, axis, group_size), b, scheme)


def quantize(
    w: Array,
    bits: int,
    scheme: str = "symmetric",
    granularity: str = "tensor",
    *,
    axis: int = 0,
    group_size: int = GROUP_SIZE,
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
    granularity : {"tensor", "channel", "group"}
        One grid per tensor, one per slice along ``axis`` (output channels), or one per
        ``group_size`` consecutive weights of an output channel. Tensors with fewer than two
        dimensions (biases) always use one grid.
    axis : int
        The output-channel axis for "channel" and "group" (1 for Hugging Face ``Conv1D``).
    group_size : int
        Weights per group for "group" (default 128).

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
    w = _check_tensor(w)
    b = check_bits(bits, scheme)
    view = _View(w, granularity, axis, group_size)
    scale, zero = _grid(view, b, scheme)
    xp, x = view.xp, view.x
    if scheme == "symmetric":
        q = 2 ** (b - 1) - 1
        y = xp.clip(xp.round(x / scale), -q, q) * scale
    else:
        y = (xp.clip(xp.round(x / scale) + zero, 0, 2**b - 1) - zero) * scale
    return view.restore(y)
