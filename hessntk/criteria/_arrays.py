"""Moving arrays between an operator's backend and the host, for the criteria.

The criteria run on operators of any backend (:mod:`hessntk.spectral.protocols`): vectors of
the parameter space stay on the operator's device in float64, small objects (spectra,
``N``-sized outputs, dense ``N x N`` matrices) come to the host as numpy float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hessntk.spectral.operators import CallableOperator, LinearOperator


def host(op: LinearOperator, x: Any) -> np.ndarray | None:
    """``x`` (on ``op``'s backend, or numpy) on the host: floating arrays as numpy float64.

    Integer arrays (class labels) keep their dtype; None stays None.
    """
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        return x.astype(np.float64, copy=False) if x.dtype.kind == "f" else x
    xp = op._xp
    return xp.to_numpy(xp.cast(x, xp.float64)) if xp.is_floating(x) else xp.to_numpy(x)


def f64(op: LinearOperator, x: Any) -> Any:
    """``x`` (numpy or on ``op``'s backend) as a float64 array on ``op``'s backend and device."""
    xp = op._xp
    if isinstance(x, np.ndarray):
        return xp.from_numpy(x.astype(np.float64), xp.float64)
    return xp.cast(xp.move(x), xp.float64)


def in_dtype(op: LinearOperator, x: Any) -> Any:
    """``x`` on ``op``'s backend and device in the operator's dtype."""
    xp = op._xp
    if isinstance(x, np.ndarray):
        return xp.from_numpy(x, op.dtype)
    return xp.cast(xp.move(x), op.dtype)


def float64_operator(
    like: LinearOperator, n: int, matmat: Any
) -> LinearOperator:
    """A float64 operator of size ``n`` on ``like``'s backend and device, from a ``matmat``."""
    return CallableOperator(n, like._xp.float64, like.device, matmat=matmat,
                            backend=like.backend)


def dense(op: LinearOperator) -> np.ndarray:
    """The ``(n, n)`` matrix of ``op`` from ``n`` products (host, float64, symmetrised)."""
    xp = op._xp
    A = host(op, op.matmat(xp.eye(op.shape[0], op.dtype)))
    return (A + A.T) / 2
