"""Checks of scalar arguments, shared by every public function.

A count that is not an integer (``k=2.7``), a tolerance that is negative or NaN, an infinite
budget: refused with the argument's name, never truncated or passed on.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["count", "positive"]


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
