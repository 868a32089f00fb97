"""A short label of a prior covariance specification, for results and reports (both backends)."""

from __future__ import annotations

from typing import Any

__all__ = ["prior_label"]


def prior_label(prior: Any) -> str:
    """``"identity"``, the string given (``"init"``), the variance (``"0.5"``), else ``what``.

    Examples
    --------
    >>> prior_label(None), prior_label("init"), prior_label(0.5), prior_label({"w": 1.0})
    ('identity', 'init', '0.5', 'dict')
    """
    if prior is None:
        return "identity"
    if isinstance(prior, str):
        return prior
    if isinstance(prior, (int, float)) and not isinstance(prior, bool):
        return f"{prior:g}"
    return "dict" if isinstance(prior, dict) else "pytree"
