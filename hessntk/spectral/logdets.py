"""Differences of log-determinants by SLQ with common probes (docs/theory.md sections 1.6, 3)."""

from __future__ import annotations

from typing import Any

import numpy as np

from hessntk.spectral.krylov import _start_vectors
from hessntk.spectral.operators import LinearOperator, aslinearoperator
from hessntk.spectral.probes import Seed
from hessntk.spectral.quadrature import SpectralDensity, slq
from hessntk.spectral.results import Estimate, mean_estimate

__all__ = ["logdet_difference"]


def _per_probe_logdet(dens: SpectralDensity, name: str) -> np.ndarray:
    w = dens.weights
    smallest = float(dens.nodes[w > 0].min())
    if smallest <= 0:
        raise ValueError(f"Expected {name} to be positive definite; SLQ found a quadrature node "
                         f"{smallest:.3g} <= 0.")
    logs = np.log(np.where(w > 0, dens.nodes, 1.0))
    return dens.n * np.sum(w * logs, axis=1)


def logdet_difference(
    A: LinearOperator | Any,
    B: LinearOperator | Any,
    *,
    num_probes: int = 16,
    num_matvecs: int = 100,
    seed: Seed = 0,
) -> Estimate:
    """Estimate ``log det A - log det B`` for SPD operators by SLQ with shared probes.

    Both log-determinants use the same Rademacher probes (common random numbers), so the
    standard error comes from the per-probe *differences*: when ``A`` and ``B`` are close,
    it is far smaller than either log-determinant's own error.

    Parameters
    ----------
    A, B : LinearOperator or arrays
        Symmetric positive definite, of the same size ``n``.
    num_probes, num_matvecs : int
        SLQ settings (each operator gets ``num_probes * num_matvecs`` products at most).
    seed : int or numpy.random.Generator

    Returns
    -------
    Estimate
        ``method="slq-paired"``; ``num_matvecs`` counts the products of both operators.

    Raises
    ------
    ValueError
        Different sizes, or a non-positive quadrature node (an operator not SPD).

    Examples
    --------
    >>> import numpy as np
    >>> A, B = np.diag(np.linspace(1.0, 2.0, 40)), np.diag(np.linspace(1.0, 2.1, 40))
    >>> d = logdet_difference(A, B, num_probes=4, num_matvecs=40)
    >>> exact = np.log(np.diag(A)).sum() - np.log(np.diag(B)).sum()
    >>> bool(abs(d.value - exact) < 5 * d.stderr + 1e-12)
    True
    """
    A, B = aslinearoperator(A), aslinearoperator(B)
    if A.shape != B.shape:
        raise ValueError(f"Expected operators of the same size; got {A.shape} and {B.shape}.")
    V0 = A._xp.to_numpy(_start_vectors(A, None, num_probes, seed))
    da = slq(A, num_probes=num_probes, num_matvecs=num_matvecs, v0=V0)
    db = slq(B, num_probes=num_probes, num_matvecs=num_matvecs, v0=V0)
    diff = _per_probe_logdet(da, "A") - _per_probe_logdet(db, "B")
    return mean_estimate(diff, da.num_matvecs + db.num_matvecs, "slq-paired")
