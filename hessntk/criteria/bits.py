"""Mixed-precision bit allocation: an exact integer program and its Pareto frontier.

``min_b sum_i P_i(b_i)  s.t.  sum_i n_i b_i <= budget`` with ``P_i(b)`` the predicted loss
increase of quantizing layer ``i`` to ``b`` bits (HAWQ-v3's ILP, Yao et al. 2021, arXiv
2011.10680), solved exactly by ``scipy.optimize.milp`` as a multiple-choice knapsack.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hessntk._checks import positive
from hessntk.criteria.quantization_results import (
    QuantizationMeasurement,
    QuantizationSensitivity,
    plain,
)
from hessntk.criteria.quantizers import check_bits

__all__ = ["BitAllocation", "allocate_bits"]


@dataclass(frozen=True, eq=False)
class BitAllocation:
    """Per-layer bit widths minimising the total predicted loss increase under a size budget.

    Attributes
    ----------
    bits : dict[str, int]
        ``layer -> bit width``.
    predicted_increase : float
        Sum over layers of the predicted increase at the chosen widths (layers treated as
        independent: cross-layer terms ``dW_i^T H_ij dW_j`` are not modelled).
    size_bits : int
        ``sum_i n_i b_i``: bits of the quantized weights (scales and zero points not counted).
    budget_bits : float
        The budget, in the same unit.
    num_params : int
        ``sum_i n_i``.
    predictor : str
    choices : tuple of int
    frontier : tuple of dict
        Pareto frontier, by increasing size: ``size_bits``, ``average_bits``,
        ``predicted_increase`` and ``bits`` (the assignment) of optimal solutions at a grid
        of budgets from all-smallest to all-largest choices; only points that lower the
        predicted increase are kept.
    params : dict[str, tuple of str]
        The parameters of each layer (pass as ``layers=`` to :func:`quantized_loss`).
    verified : bool
        True when the assignment was quantized and its loss measured
        (:func:`hessntk.criteria.mixed_precision`); False for predictions alone.
    measured_increase : float or None
        The measured loss increase of the assignment, every layer quantized together.
    uniform : dict or None
        The best uniform width that fits the budget: ``bits``, ``size_bits`` and its
        ``measured_increase``.
    candidates : tuple of dict
        Every assignment measured (``source``, ``bits``, ``size_bits``, ``predicted_increase``,
        ``measured_increase``), the chosen one among them.
    notes : tuple of str
        What the user should know, e.g. that uniform was returned because no mixed
        assignment measured lower, or that the assignment was not verified.
    """

    bits: dict[str, int]
    predicted_increase: float
    size_bits: int
    budget_bits: float
    num_params: int
    predictor: str
    choices: tuple[int, ...]
    frontier: tuple[dict[str, Any], ...] = ()
    params: dict[str, tuple[str, ...]] = field(default_factory=dict)
    verified: bool = False
    measured_increase: float | None = None
    uniform: dict[str, Any] | None = None
    candidates: tuple[dict[str, Any], ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def average_bits(self) -> float:
        """``size_bits / num_params``."""
        return self.size_bits / self.num_params

    @property
    def size_bytes(self) -> float:
        """``size_bits / 8``."""
        return self.size_bits / 8

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the assignment, its cost and the frontier."""
        return {
            "bits": dict(self.bits),
            "predicted_increase": plain(self.predicted_increase),
            "size_bits": int(self.size_bits),
            "size_bytes": self.size_bytes,
            "average_bits": self.average_bits,
            "budget_bits": float(self.budget_bits),
            "num_params": int(self.num_params),
            "predictor": self.predictor,
            "choices": list(self.choices),
            "frontier": [{k: plain(v) for k, v in p.items()} for p in self.frontier],
            "params": {k: list(v) for k, v in self.params.items()},
            "verified": self.verified,
            "measured_increase": plain(self.measured_increase),
            "uniform": None if self.uniform is None else {
                k: plain(v) for k, v in self.uniform.items()},
            "candidates": [{k: (dict(v) if isinstance(v, dict) else plain(v))
                            for k, v in c.items()} for c in self.candidates],
            "notes": list(self.notes),
        }

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Return :meth:`to_dict` as JSON text; also write it to ``path`` when given."""
        from hessntk.report.tables import write_json

        return write_json(self.to_dict(), path)

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """Return the frontier as CSV (one row per point, one column per layer's bits)."""
        from hessntk.report.tables import frontier_csv

        return frontier_csv(self, path)

    def table(self) -> str:
        """A plain-text table of the chosen bit widths."""
        from hessntk.report.tables import allocation_table

        return allocation_table(self)

    def __str__(self) -> str:
        return self.table()

    def plot(self, ax: Any = None, *, path: str | os.PathLike | None = None) -> Any:
        """Plot the Pareto frontier and the chosen point (:func:`hessntk.report.plots`).

        Returns
        -------
        matplotlib.figure.Figure
        """
        from hessntk.report.plots import plot_frontier

        return plot_frontier(self, ax, path=path)


def allocate_bits(
    sensitivity: QuantizationSensitivity | QuantizationMeasurement,
    *,
    budget_bits: float | None = None,
    budget_bytes: float | None = None,
    average_bits: float | None = None,
    choices: Sequence[int] = (2, 4, 8),
    predictor: str = "direct",
    num_frontier: int = 25,
) -> BitAllocation:
    """Choose per-layer bit widths that minimise the total predicted loss increase.

    Solves exactly, as an integer program (``scipy.optimize.milp``; HAWQ-v3's ILP),

    ``min_b sum_i P_i(b_i)  s.t.  sum_i n_i b_i <= budget,  b_i in choices``,

    with ``P_i(b)`` the predicted increase of quantizing layer ``i`` to ``b`` bits and ``n_i``
    its number of quantized weights. Layers are treated as independent (the total is the sum
    of the single-layer predictions). Give the budget in exactly one form.

    Parameters
    ----------
    sensitivity : QuantizationSensitivity or QuantizationMeasurement
        Must hold every width in ``choices``. A measurement (:func:`measure_quantization`)
        allocates by the measured single-layer increases (``predictor`` is then "measured").
    budget_bits : float, optional
        Total bits over the quantized weights, ``sum_i n_i b_i`` (scales, zero points and
        unquantized parameters such as biases are not counted).
    budget_bytes : float, optional
        ``budget_bits / 8``.
    average_bits : float, optional
        Average bits per quantized weight: ``budget_bits = average_bits * sum_i n_i``
        (``average_bits=4`` allows the size of a uniform 4-bit model).
    choices : sequence of int
        Allowed bit widths.
    predictor : {"direct", "trace", "eigenvalue"}
        Which prediction to minimise: the direct second-order form (default), HAWQ-v2's
        average-trace proxy, or the top-eigenvalue bound.
    num_frontier : int
        Budgets (evenly spaced from all-smallest to all-largest) at which the Pareto frontier
        is solved; the frontier keeps the distinct optimal points.

    Returns
    -------
    BitAllocation
        Not verified: the assignment is optimal for the predictions, which treat layers as
        independent and (for the second-order predictors) fail at low bit widths. Use
        :func:`hessntk.criteria.mixed_precision` for an assignment measured against uniform.

    Raises
    ------
    ValueError
        No or several budgets; a budget below the smallest achievable size (which is
        stated); choices missing from ``sensitivity.bits``; a predictor that was not
        computed (``nan``).

    Examples
    --------
    >>> import numpy as np
    >>> sens = QuantizationSensitivity(
    ...     layers=("a", "b"), num_params=np.array([100, 100]), bits=(2, 4, 8),
    ...     error=np.ones((2, 3)), gradient_term=np.zeros((2, 3)),
    ...     quadratic_term=np.array([[9.0, 1.0, 0.1], [1.0, 0.5, 0.4]]))
    >>> alloc = allocate_bits(sens, average_bits=5)  # 1000 bits: one layer at 8, one at 2
    >>> alloc.bits, alloc.size_bits
    ({'a': 8, 'b': 2}, 1000)
    """
    if isinstance(sensitivity, QuantizationMeasurement):
        table, predictor = sensitivity.increase, "measured"
    elif isinstance(sensitivity, QuantizationSensitivity):
        table = sensitivity.predictions(predictor)
    else:
        raise TypeError(
            "Expected the QuantizationSensitivity from quantization_sensitivity (or the "
            f"QuantizationMeasurement from measure_quantization); got "
            f"{type(sensitivity).__name__}."
        )
    choices = _check_choices(choices, sensitivity)
    pred = table[:, [sensitivity.bits.index(c) for c in choices]]
    if not np.isfinite(pred).all():
        bad = [sensitivity.layers[i] for i in np.flatnonzero(~np.isfinite(pred).all(1))]
        raise ValueError(
            f"Expected finite {predictor!r} predictions; got nan/inf for layers {bad}. "
            "The trace and eigenvalue predictors need metric='trace'/'eigenvalue' or 'both' in "
            "quantization_sensitivity."
        )
    n = sensitivity.num_params.astype(np.int64)
    total = int(n.sum())
    given = {"budget_bits": budget_bits, "budget_bytes": budget_bytes, "average_bits": average_bits}
    given = {k: v for k, v in given.items() if v is not None}
    if len(given) != 1:
        raise ValueError(
            f"Expected exactly one of budget_bits, budget_bytes, average_bits; got {list(given)}."
        )
    ((unit, value),) = given.items()
    positive(value, unit)  # a finite budget
    factor = {"budget_bits": 1.0, "budget_bytes": 8.0, "average_bits": float(total)}[unit]
    budget = float(value) * factor
    smallest, largest = int(n.sum() * choices[0]), int(n.sum() * choices[-1])
    if not budget >= smallest:  # also refuses nan
        raise ValueError(
            f"Expected {unit} of at least {smallest / factor:.6g} (every layer at "
            f"{choices[0]} bits: {smallest} bits, {smallest / 8:.6g} bytes, average "
            f"{choices[0]}); got {value!r}. Raise the budget or add smaller choices."
        )
    sizes = n[:, None] * np.array(choices)[None, :]
    choice = _solve_mckp(pred, sizes, budget)
    points = []
    for b in np.unique(
        np.concatenate(
            [np.linspace(smallest, largest, max(num_frontier, 2)), [min(budget, largest)]]
        )
    ):
        k = _solve_mckp(pred, sizes, b)
        points.append(
            (
                int(sizes[np.arange(len(n)), k].sum()),
                float(pred[np.arange(len(n)), k].sum()),
                tuple(k),
            )
        )
    frontier, best = [], math.inf
    for size, value_, k in sorted(set(points)):
        if value_ < best - 1e-12 * max(1.0, abs(best) if math.isfinite(best) else 1.0):
            best = value_
            frontier.append(
                {
                    "size_bits": size,
                    "average_bits": size / total,
                    "predicted_increase": value_,
                    "bits": {sensitivity.layers[i]: choices[c] for i, c in enumerate(k)},
                }
            )
    rows = np.arange(len(n))
    notes = (f"not verified: optimal for the {predictor!r} predictions of each layer alone; "
             "hessntk.criteria.mixed_precision measures the assignment against uniform",)
    return BitAllocation(
        bits={sensitivity.layers[i]: choices[c] for i, c in enumerate(choice)},
        predicted_increase=float(pred[rows, choice].sum()),
        size_bits=int(sizes[rows, choice].sum()), budget_bits=budget, num_params=total,
        predictor=predictor, choices=choices, frontier=tuple(frontier),
        params=dict(sensitivity.params), notes=notes,
    )  # fmt: skip


# -- helpers ---------------------------------------------------------------------------------


def _check_choices(choices: Any, sensitivity: Any) -> tuple[int, ...]:
    if not isinstance(choices, (list, tuple, np.ndarray)):
        choices = [choices]
    out = sorted({check_bits(c, "asymmetric", "choices") for c in choices})
    if not out:
        raise ValueError("Expected at least one bit width in choices; got none.")
    missing = [c for c in out if c not in sensitivity.bits]
    if missing:
        raise ValueError(
            f"Expected choices among the sensitivity's bits {sensitivity.bits}; got {missing} "
            f"missing. Pass choices within them, or rerun the sensitivity or measurement with "
            f"bits={tuple(sorted(set(sensitivity.bits) | set(out)))}."
        )
    return tuple(out)


def _solve_mckp(pred: np.ndarray, sizes: np.ndarray, budget: float) -> np.ndarray:
    """Exact multiple-choice knapsack by MILP: one choice per row, total size <= budget."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    L, C = pred.shape
    scale = float(np.abs(pred).max()) or 1.0
    total = float(sizes[:, 0].sum()) or 1.0
    one_per_layer = np.kron(np.eye(L), np.ones((1, C)))
    # Sizes are integers: with the budget rounded down, half a bit of slack admits no
    # infeasible assignment and absorbs the solver's feasibility tolerance.
    limit = (math.floor(budget) + 0.5) / total
    res = milp(
        pred.ravel() / scale,
        constraints=[LinearConstraint(one_per_layer, 1, 1),
                     LinearConstraint((sizes / total).ravel()[None, :], -np.inf, limit)],
        integrality=np.ones(L * C), bounds=Bounds(0, 1), options={"mip_rel_gap": 0.0},
    )  # fmt: skip
    if res.x is None:  # pragma: no cover - feasibility is checked by the caller
        raise RuntimeError(f"The bit-allocation integer program failed: {res.message}")
    choice = np.argmax(res.x.reshape(L, C), axis=1)
    assert sizes[np.arange(L), choice].sum() <= budget + 1e-9, "infeasible MILP solution"
    return choice
