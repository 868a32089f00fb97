"""Observation maps of the NTK builders: what the rows of ``J`` differentiate (both backends).

``"raw"`` / ``"logits"``: the model output as is; ``"probabilities"``: its softmax over the
last axis; ``"simplex"``: the softmax in the coordinates of :func:`simplex_basis`, which drops
the direction ``1^T dp = 0`` along which probabilities cannot move (docs/theory.md, IIC
recipe, step 7). Backend-free: the arrays are applied by each builder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

OUTPUTS = ("raw", "logits", "probabilities", "simplex")
OutputsSpec = str | Callable[[Any], Any]


def check_outputs_spec(outputs: OutputsSpec) -> None:
    """Refuse an unknown observation map (callables are accepted as they are)."""
    if callable(outputs):
        return
    if outputs not in OUTPUTS:
        raise ValueError(
            f"Expected outputs= to be one of {OUTPUTS} or a callable; got {outputs!r}."
        )


def simplex_basis_np(c: int) -> np.ndarray:
    """Orthonormal basis ``(c, c - 1)`` of the complement of the all-ones vector (Helmert).

    Column ``k`` is ``(1, ..., 1, -(k+1), 0, ..., 0) / sqrt((k+1)(k+2))`` with ``k+1`` leading
    ones, so ``Q^T Q = I`` and ``Q^T 1 = 0``.

    Examples
    --------
    >>> Q = simplex_basis_np(3)
    >>> Q.shape, bool(np.allclose(Q.T @ Q, np.eye(2))), bool(np.allclose(Q.sum(0), 0))
    ((3, 2), True, True)
    """
    if c < 2:
        raise ValueError(f"Expected at least 2 classes for a simplex basis; got c={c}.")
    Q = np.zeros((c, c - 1))
    for k in range(c - 1):
        Q[: k + 1, k] = 1.0
        Q[k + 1, k] = -(k + 1.0)
        Q[:, k] /= math.sqrt((k + 1.0) * (k + 2.0))
    return Q


def structural_nullity(n: int, outputs: OutputsSpec = "raw") -> int:
    """Number of exact zero eigenvalues of the Gram that the observation map forces.

    ``outputs="probabilities"``: each sample's probabilities sum to one, so ``1^T J_i = 0``
    and the ``(n c, n c)`` Gram has (at least) ``n`` zero eigenvalues. Every other map forces
    none (``"simplex"`` removes exactly that direction).

    Examples
    --------
    >>> structural_nullity(100, "probabilities"), structural_nullity(100, "simplex")
    (100, 0)
    """
    return int(n) if outputs == "probabilities" else 0


def check_logits_shape(shape: tuple[int, ...], outputs: OutputsSpec) -> None:
    """Probabilities need ``(n, c)`` logits with ``c >= 2``."""
    if len(shape) != 2 or shape[1] < 2:
        raise ValueError(
            f"Expected logits of shape (n, c) with c >= 2 for outputs={outputs!r}; got "
            f"{tuple(shape)}."
        )


def check_batched_output(ndim: int, what: str) -> None:
    """Refuse a 0-d output (a reduced loss rather than per-sample outputs)."""
    if ndim == 0:
        raise ValueError(
            f"Expected {what} with a leading batch dimension; got a 0-d array. Return "
            "per-sample outputs of shape (n,) or (n, c), not a loss (a reduction over the batch)."
        )


#: The IIC's choices of constraints and the observation map each one builds the NTK with.
IIC_OBSERVATIONS = {"outputs": "raw", "logits": "logits", "probabilities": "simplex"}
