"""Checks of scalar arguments, shared by every public function.

A count that is not an integer (``k=2.7``), a tolerance that is negative or NaN, an infinite
budget: refused with the argument's name, never truncated or passed on.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["count", "positive", "refuse_low_precision"]

#: Machine epsilons above this (bfloat16: 7.8e-3, float16: 9.8e-4) are refused where a
#: method's bookkeeping or conditioning needs more than three significant digits.
LOW_PRECISION_EPS = 1e-4


def count(value: object, name: str, *, minimum: int = 1) -> int:
    """``value`` as an ``int >= minimum``; integral floats (``4.0``) are accepted.

    Examples
    --------
    >>> count(3, "k"), count(4.0, "k")
    (3, 4)
    >>> count(2.7, "k")
    Traceback (most recent call last):
    ...
    ValueError: Expected k to be an integer >= 1; got 2.7.
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and isinstance(value, numbers.Real) and not isinstance(value, bool):
        ok = math.isfinite(float(value)) and float(value).is_integer()
    if not ok or int(value) < minimum:  # type: ignore[call-overload]
        raise ValueError(f"Expected {name} to be an integer >= {minimum}; got {value!r}.")
    return int(value)  # type: ignore[call-overload]


def positive(value: object, name: str, *, zero: bool = False) -> float:
    """``value`` as a finite float ``> 0`` (``>= 0`` with ``zero=True``).

    Examples
    --------
    >>> positive(1e-6, "tol")
    1e-06
    >>> positive(float("nan"), "tol")
    Traceback (most recent call last):
    ...
    ValueError: Expected tol to be a finite number > 0; got nan.
    """
    bound = ">= 0" if zero else "> 0"
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not math.isfinite(v) or v < 0 or (v == 0 and not zero):
        raise ValueError(f"Expected {name} to be a finite number {bound}; got {value!r}.")
    return v


def refuse_low_precision(eps: float, dtype: object, what: str) -> None:
    """Refuse a 16-bit dtype (``eps > 1e-4``) for ``what``, naming the fix.

    Examples
    --------
    >>> refuse_low_precision(2.2e-16, "float64", "Lanczos")
    >>> refuse_low_precision(7.8e-3, "bfloat16", "Lanczos")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Expected float32 or float64 products for Lanczos; got bfloat16 ...
    """
    if eps > LOW_PRECISION_EPS:
        digits = -math.log10(eps)
        raise ValueError(
            f"Expected float32 or float64 products for {what}; got {dtype} (about {digits:.1f} "
            "significant digits): its thresholds and results would be rounding noise (a "
            "bfloat16 Lanczos 'converges' to wrong eigenvalues). Cast the model to float32 "
            "for the analysis (model.float(), or model.to(torch.float32) on a copy)."
        )
