"""Result types of quantization sensitivity analysis: predictions and measurements.

Small frozen dataclasses of numpy arrays (backend-free); their tables, CSV/JSON export and
plots live in :mod:`hessntk.report`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PREDICTORS", "QuantizationMeasurement", "QuantizationSensitivity", "plain"]

PREDICTORS = ("direct", "trace", "eigenvalue")


@dataclass(frozen=True, eq=False)
class QuantizationSensitivity:
    """Predicted loss increase of quantizing each layer alone, per bit width.

    Arrays have shape ``(L,)`` per layer or ``(L, B)`` per layer and bit width, in the order of
    :attr:`layers` and :attr:`bits`. Quantities that the chosen ``metric`` did not compute are
    ``nan``.

    Attributes
    ----------
    layers : tuple of str
        Layer (block) names: module names, ``""`` for the root module.
    params : dict[str, tuple of str]
        The parameters quantized in each layer.
    num_params : numpy.ndarray of shape (L,)
        Quantized entries ``n_i`` per layer.
    bits : tuple of int
        Bit widths, ascending.
    error : numpy.ndarray of shape (L, B)
        ``||Q_b(W_i) - W_i||^2``.
    gradient_term : numpy.ndarray of shape (L, B)
        ``g_i . dW_i``.
    quadratic_term : numpy.ndarray of shape (L, B)
        ``1/2 dW_i^T H_ii dW_i`` (exact products).
    trace, trace_stderr : numpy.ndarray of shape (L,)
        ``Tr(H_ii)`` and its standard error (0 when exact).
    top_eigenvalue : numpy.ndarray of shape (L,)
        ``lambda_max(H_ii)``.
    loss : float
        The full-data mean loss of the unquantized model.
    quantizer, granularity, metric, curvature, trace_method : str
    num_samples : int
    num_matvecs : dict[str, int]
        Operator products (columns) spent on ``"trace"``, ``"eigenvalue"`` and ``"direct"``.
    interaction : numpy.ndarray of shape (L * B, L * B) or None
        ``dW_a^T H dW_c`` for every pair of perturbations (row ``i * B + j``: layer ``i`` at
        ``bits[j]``), from the direct products; its diagonal is ``2 * quadratic_term``. The
        off-diagonal blocks between layers are the cross-layer terms that
        :meth:`joint_prediction` adds.
    group_size : int or None
        Weights per group with ``granularity="group"``.
    """

    layers: tuple[str, ...]
    num_params: np.ndarray
    bits: tuple[int, ...]
    error: np.ndarray
    gradient_term: np.ndarray
    quadratic_term: np.ndarray
    trace: np.ndarray | None = None
    trace_stderr: np.ndarray | None = None
    top_eigenvalue: np.ndarray | None = None
    params: dict[str, tuple[str, ...]] = field(default_factory=dict)
    loss: float = math.nan
    quantizer: str = "symmetric"
    granularity: str = "tensor"
    metric: str = "both"
    curvature: str = "hessian"
    trace_method: str = "xtrace"
    num_samples: int = 0
    num_matvecs: dict[str, int] = field(default_factory=dict)
    interaction: np.ndarray | None = field(default=None, repr=False)
    group_size: int | None = None

    def __post_init__(self) -> None:
        shape = (len(self.layers), len(self.bits))
        nan = np.full(len(self.layers), np.nan)
        for name in ("trace", "trace_stderr", "top_eigenvalue"):
            value = getattr(self, name)
            object.__setattr__(self, name, nan.copy() if value is None else np.asarray(value))
        object.__setattr__(self, "num_params", np.asarray(self.num_params, dtype=np.int64))
        for name in ("error", "gradient_term", "quadratic_term"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != shape:
                raise ValueError(f"Expected {name} of shape {shape}; got {value.shape}.")
            object.__setattr__(self, name, value)

    # -- derived quantities ----------------------------------------------------------------
    def joint_prediction(self, assignment: Mapping[str, int]) -> float:
        """Second-order prediction of the loss increase with several layers quantized together.

        ``sum_i g_i . dW_i + 1/2 sum_{i,j} dW_i^T H_ij dW_j`` over the layers of
        ``assignment`` (``layer -> bits``; other layers stay in full precision): the
        single-layer direct predictions plus the cross-layer terms. Exact for a loss
        quadratic in the weights.

        Raises
        ------
        ValueError
            Without :attr:`interaction`, or for unknown layers or bit widths.
        """
        if self.interaction is None:
            raise ValueError("Expected a sensitivity with its interaction matrix (from "
                             "quantization_sensitivity); this one has none.")
        rows = []
        for layer, b in assignment.items():
            if layer not in self.layers:
                raise ValueError(f"Expected layers among {list(self.layers)}; got {layer!r}.")
            rows.append(self.layers.index(layer) * len(self.bits) + self._bit_index(b))
        flat = self.gradient_term.reshape(-1)
        return float(flat[rows].sum() + 0.5 * self.interaction[np.ix_(rows, rows)].sum())


    @property
    def average_trace(self) -> np.ndarray:
        """``Tr(H_ii) / n_i``, shape ``(L,)`` (HAWQ-v2's average Hessian eigenvalue)."""
        return self.trace / self.num_params

    @property
    def average_trace_stderr(self) -> np.ndarray:
        """Standard error of :attr:`average_trace`, shape ``(L,)``."""
        return self.trace_stderr / self.num_params

    @property
    def predicted(self) -> dict[str, np.ndarray]:
        """``predictor -> (L, B)`` predicted loss increases (see the module docstring)."""
        return {name: self.predictions(name) for name in PREDICTORS}

    def predictions(self, predictor: str = "direct") -> np.ndarray:
        """Predicted loss increases of one predictor, shape ``(L, B)``.

        Parameters
        ----------
        predictor : {"direct", "trace", "eigenvalue"}

        Returns
        -------
        numpy.ndarray of shape (L, B)
            ``nan`` where the curvature summary was not computed.
        """
        if predictor == "direct":
            return self.gradient_term + self.quadratic_term
        if predictor == "trace":
            return 0.5 * self.average_trace[:, None] * self.error
        if predictor == "eigenvalue":
            return 0.5 * self.top_eigenvalue[:, None] * self.error
        raise ValueError(f"Expected predictor in {PREDICTORS}; got {predictor!r}.")

    def prediction_stderr(self, predictor: str = "direct") -> np.ndarray:
        """Standard errors of :meth:`predictions`, shape ``(L, B)`` (0: exact products)."""
        if predictor == "trace":
            return 0.5 * self.average_trace_stderr[:, None] * self.error
        if predictor in PREDICTORS:
            return np.zeros_like(self.error)
        raise ValueError(f"Expected predictor in {PREDICTORS}; got {predictor!r}.")

    def ranking(self, predictor: str = "direct", bits: int | None = None) -> list[str]:
        """Layers from most to least sensitive by one predictor at one bit width.

        Parameters
        ----------
        predictor : {"direct", "trace", "eigenvalue"}
        bits : int, optional
            Default: the smallest of :attr:`bits` (the largest perturbations).
        """
        j = self._bit_index(self.bits[0] if bits is None else bits)
        values = self.predictions(predictor)[:, j]
        order = sorted(range(len(self.layers)), key=lambda i: -_sortable(values[i]))
        return [self.layers[i] for i in order]

    def _bit_index(self, bits: int) -> int:
        if bits not in self.bits:
            raise ValueError(f"Expected bits among {self.bits}; got {bits!r}.")
        return self.bits.index(bits)

    def rank_correlation(
        self, measured: QuantizationMeasurement, predictors: Sequence[str] | None = None
    ) -> dict[str, dict[int, float]]:
        """Spearman rho across layers between predicted and measured increases, per bit width.

        Parameters
        ----------
        measured : QuantizationMeasurement
            From :func:`measure_quantization` on the same model, data and layers.
        predictors : sequence of str, optional
            Default: every predictor that was computed.

        Returns
        -------
        dict[str, dict[int, float]]
            ``predictor -> {bits -> rho}`` over the bit widths both results hold (``nan``
            when a side is constant or has fewer than two layers).
        """
        from scipy.stats import spearmanr

        if list(measured.layers) != list(self.layers):
            raise ValueError(
                f"Expected a measurement of the same layers {list(self.layers)}; got "
                f"{list(measured.layers)}. Pass the same layers= to measure_quantization."
            )
        if predictors is None:
            predictors = [p for p in PREDICTORS if np.isfinite(self.predictions(p)).all()]
        out: dict[str, dict[int, float]] = {}
        for name in predictors:
            pred = self.predictions(name)
            out[name] = {}
            for b in self.bits:
                if b not in measured.bits:
                    continue
                x, y = pred[:, self.bits.index(b)], measured.increase[:, measured.bits.index(b)]
                rho = math.nan
                if len(x) >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
                    rho = float(spearmanr(x, y).statistic)
                out[name][b] = rho
        return out

    # -- export ------------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per (layer, bit width), layers in rank order (the CSV rows)."""
        rank = {name: r for r, name in enumerate(self.ranking(), start=1)}
        pred = self.predicted
        out = []
        for i in sorted(range(len(self.layers)), key=lambda i: rank[self.layers[i]]):
            for j, b in enumerate(self.bits):
                out.append({
                    "layer": self.layers[i], "rank": rank[self.layers[i]],
                    "num_params": int(self.num_params[i]), "bits": b,
                    "trace": self.trace[i], "trace_stderr": self.trace_stderr[i],
                    "average_trace": self.average_trace[i],
                    "average_trace_stderr": self.average_trace_stderr[i],
                    "top_eigenvalue": self.top_eigenvalue[i], "error": self.error[i, j],
                    "gradient_term": self.gradient_term[i, j],
                    "quadratic_term": self.quadratic_term[i, j],
                    "predicted_direct": pred["direct"][i, j],
                    "predicted_trace": pred["trace"][i, j],
                    "predicted_trace_stderr": self.prediction_stderr("trace")[i, j],
                    "predicted_eigenvalue": pred["eigenvalue"][i, j],
                })  # fmt: skip
        return [{k: plain(v) for k, v in row.items()} for row in out]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: settings, and one entry per layer (in rank order) with per-bit rows.

        ``nan`` (a quantity that was not computed) becomes ``None``.
        """
        layers = []
        for row in self.rows():
            if not layers or layers[-1]["layer"] != row["layer"]:
                keys = (
                    "layer",
                    "rank",
                    "num_params",
                    "trace",
                    "trace_stderr",
                    "average_trace",
                    "average_trace_stderr",
                    "top_eigenvalue",
                )
                layers.append({k: row[k] for k in keys})
                layers[-1]["params"] = list(self.params.get(row["layer"], ()))
                layers[-1]["per_bits"] = []
            per_bit = {k: v for k, v in row.items() if k not in layers[-1] or k == "bits"}
            layers[-1]["per_bits"].append(per_bit)
        return {
            "bits": list(self.bits), "quantizer": self.quantizer,
            "granularity": self.granularity, "group_size": self.group_size,
            "metric": self.metric,
            "curvature": self.curvature, "trace_method": self.trace_method,
            "loss": plain(self.loss), "num_samples": self.num_samples,
            "num_matvecs": dict(self.num_matvecs), "layers": layers,
        }  # fmt: skip

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Return :meth:`to_dict` as JSON text; also write it to ``path`` when given."""
        from hessntk.report.tables import write_json

        return write_json(self.to_dict(), path)

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """Return :meth:`rows` as CSV text (empty cells for ``nan``); write it to ``path``."""
        from hessntk.report.tables import write_csv

        return write_csv(self.rows(), path)

    def table(self) -> str:
        """A plain-text table: one line per (layer, bit width), layers in rank order."""
        from hessntk.report.tables import sensitivity_table

        return sensitivity_table(self)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return (
            f"QuantizationSensitivity(layers={len(self.layers)}, bits={self.bits}, "
            f"metric={self.metric!r}, loss={self.loss:.6g})"
        )

    def plot(
        self,
        ax: Any = None,
        *,
        predictor: str = "direct",
        measured: QuantizationMeasurement | None = None,
        labels: Mapping[str, str] | None = None,
        path: str | os.PathLike | None = None,
    ) -> Any:
        """Bar chart of the predicted loss increase per layer and bit width (symlog scale).

        See :func:`hessntk.report.plots.plot_quantization`; ``measured`` overlays the measured
        increases, ``labels`` names the layers, ``path`` saves the figure. Returns the
        matplotlib figure.
        """
        from hessntk.report.plots import plot_quantization

        return plot_quantization(self, ax, predictor=predictor, measured=measured,
                                 labels=labels, path=path)


@dataclass(frozen=True, eq=False)
class QuantizationMeasurement:
    """Measured loss of quantizing each layer alone, per bit width.

    Attributes
    ----------
    layers : tuple of str
    params : dict[str, tuple of str]
    num_params : numpy.ndarray of shape (L,)
    bits : tuple of int
    error : numpy.ndarray of shape (L, B)
        ``||Q_b(W_i) - W_i||^2``.
    quantized_loss : numpy.ndarray of shape (L, B)
        Full-data mean loss with layer ``i`` quantized to ``bits[j]``, the others not.
    loss : float
        The unquantized loss.
    quantizer, granularity : str
    group_size : int or None
        Weights per group with ``granularity="group"``.
    """

    layers: tuple[str, ...]
    params: dict[str, tuple[str, ...]]
    num_params: np.ndarray
    bits: tuple[int, ...]
    error: np.ndarray
    quantized_loss: np.ndarray
    loss: float
    quantizer: str
    granularity: str
    group_size: int | None = None

    @property
    def increase(self) -> np.ndarray:
        """Measured loss increase ``quantized_loss - loss``, shape ``(L, B)``."""
        return self.quantized_loss - self.loss

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per (layer, bit width), in layer order."""
        return [
            {"layer": name, "num_params": int(self.num_params[i]), "bits": b,
             "error": float(self.error[i, j]), "quantized_loss": float(self.quantized_loss[i, j]),
             "increase": float(self.increase[i, j])}
            for i, name in enumerate(self.layers) for j, b in enumerate(self.bits)
        ]  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the settings and :meth:`rows`."""
        return {
            "bits": list(self.bits),
            "quantizer": self.quantizer,
            "granularity": self.granularity,
            "group_size": self.group_size,
            "loss": float(self.loss),
            "params": {k: list(v) for k, v in self.params.items()},
            "rows": self.rows(),
        }

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Return :meth:`to_dict` as JSON text; also write it to ``path`` when given."""
        from hessntk.report.tables import write_json

        return write_json(self.to_dict(), path)

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """Return :meth:`rows` as CSV text; also write it to ``path`` when given."""
        from hessntk.report.tables import write_csv

        return write_csv(self.rows(), path)

    def table(self) -> str:
        """A plain-text table of the measured increases (layers by bit widths)."""
        from hessntk.report.tables import measurement_table

        return measurement_table(self)

    def __str__(self) -> str:
        return self.table()


def _sortable(x: float) -> float:
    return -math.inf if math.isnan(x) else float(x)


def plain(x: Any) -> Any:
    """A JSON-safe scalar: numpy numbers to Python, ``nan``/``inf`` to ``None``."""
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x
