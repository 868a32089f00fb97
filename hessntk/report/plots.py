"""Plots of spectra, tail fits, quantization sensitivity, bit allocations and rankings.

matplotlib only, imported when a plot is drawn (``pip install 'hessntk[plot]'``). The result
types' ``plot`` methods call these.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hessntk._checks import positive
from hessntk._io import atomic_write

__all__ = [
    "plot_density",
    "plot_frontier",
    "plot_hessian_esd",
    "smoothed_density",
    "plot_ntk_cdf",
    "plot_quantization",
    "plot_ranking",
    "plot_sensitivity",
    "plot_tail",
    "save_figure",
]


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Render a matplotlib figure to PNG in memory, then write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write(path, buf.getvalue())



def _figure(width: float = 6.0, height: float = 4.0) -> tuple[Any, Any]:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("Plots need matplotlib: pip install 'hessntk[plot]'.") from err
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def smoothed_density(density: Any, smoothing: float = 0.4, extra: Sequence[float] = (),
                     num_points: int = 1200) -> dict[str, Any]:
    """An SLQ density smoothed on a symmetric-log eigenvalue axis (what the plots draw).

    The axis is ``u = sign(lambda) log(1 + |lambda| / lin)``, ``lin`` a power of ten near
    ``1e-3 max |lambda|`` (of the nodes and ``extra`` values), linear within ``lin`` of zero.
    Each quadrature node becomes a Gaussian of standard deviation ``smoothing`` in ``u`` (a
    factor ``exp(smoothing)`` in ``|lambda|`` away from zero).

    Returns
    -------
    dict
        ``x`` (eigenvalues of the grid), ``mass`` (fraction of eigenvalues per ``smoothing``
        of the axis), ``lin``, ``smoothing`` and ``floor`` (a tenth of one eigenvalue's
        smoothed peak: below it nothing is resolved).

    Examples
    --------
    >>> import numpy as np
    >>> from hessntk.spectral import aslinearoperator, slq
    >>> d = slq(aslinearoperator(np.diag(np.linspace(-1.0, 2.0, 50))), num_probes=2,
    ...         num_matvecs=10)
    >>> curve = smoothed_density(d, 0.5)
    >>> curve["x"].shape, bool(curve["mass"].max() < 1)
    ((1200,), True)
    """
    smoothing = positive(smoothing, "smoothing")
    keep = density.weights > 0
    x = density.nodes[keep]
    w = density.weights[keep] / density.num_probes
    scale = float(max(np.abs(x).max(), *(abs(t) for t in extra), np.finfo(float).tiny))
    lin = 10.0 ** math.floor(math.log10(1e-3 * scale))  # a power of ten: clean ticks
    pts = np.concatenate([x, np.asarray(extra, dtype=np.float64)])
    u = _symlog(pts, lin)
    grid = np.linspace(float(u.min()) - 3 * smoothing, float(u.max()) + 3 * smoothing,
                       num_points)
    z = (grid[:, None] - _symlog(x, lin)[None, :]) / smoothing
    mass = (np.exp(-0.5 * z * z) * w).sum(1) / math.sqrt(2 * math.pi)
    return {"x": np.sign(grid) * lin * np.expm1(np.abs(grid)), "mass": mass, "lin": lin,
            "smoothing": smoothing, "floor": 0.1 / (density.n * math.sqrt(2 * math.pi)),
            "nodes": x}


def _symlog(v: np.ndarray, lin: float) -> np.ndarray:
    return np.sign(v) * np.log1p(np.abs(v) / lin)


def plot_hessian_esd(
    density: Any, top: Sequence[float] = (), *, smoothing: float = 0.4,
    title: str = "Hessian spectral density (SLQ)", layers: Mapping[str, Any] | None = None,
) -> Any:
    """Plot an SLQ spectral density, smoothed, on a symmetric-log eigenvalue axis.

    Hessian spectra mix a few large outliers, a bulk near zero and small negative values; the
    symmetric-log axis of :func:`smoothed_density` shows all three. The quadrature nodes are
    point masses, whose spikes are artefacts of the rule, not structure of the spectrum; each
    is drawn as a Gaussian of standard deviation ``smoothing`` on that axis, stated in the
    legend, with the nodes as a rug below. The height is the fraction of eigenvalues per
    ``smoothing`` of the axis, drawn down to a tenth of one eigenvalue's peak. ``top``
    eigenvalues (e.g. from ``eigsh``) are drawn as lines; ``layers`` (``name -> density`` of
    diagonal blocks) are drawn as lines over the whole.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _figure()
    curve = smoothed_density(density, smoothing, top)
    floor, mass = curve["floor"], curve["mass"]
    ax.fill_between(curve["x"], np.where(mass >= floor, mass, np.nan), floor, alpha=0.6,
                    label=f"SLQ, Gaussian smoothing sd {smoothing:g} on this axis "
                          f"(x{math.exp(smoothing):.2g} in |eigenvalue|)")
    for name, block in (layers or {}).items():
        part = smoothed_density(block, smoothing, top)
        share = block.n / density.n  # a block's fraction of all eigenvalues
        y = part["mass"] * share
        ax.plot(part["x"], np.where(y >= floor, y, np.nan), lw=1, label=f"layer {name}")
    ax.plot(curve["nodes"], np.full(curve["nodes"].size, floor), "|", color="k", ms=6,
            alpha=0.3, label="quadrature nodes")
    for i, t in enumerate(top):
        ax.axvline(t, color="C3", ls="--", lw=0.8, label="top eigenvalues" if i == 0 else None)
    ax.set_xscale("symlog", linthresh=curve["lin"])
    ax.set_yscale("log")
    ax.set_ylim(floor * 0.7, max(float(mass.max()), floor) * 3)
    ax.set_xlabel(f"eigenvalue (symmetric log axis, linear below {curve['lin']:.1g})")
    ax.set_ylabel(f"fraction of eigenvalues per {smoothing:g} of the axis")
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=7, ncol=2)
    return fig


def plot_ntk_cdf(eigenvalues: np.ndarray, fit: Any = None, *,
                 title: str = "NTK Gram eigenvalues") -> Any:
    """Plot the empirical eigenvalue CDF on log-log axes, with the lower-tail power-law fit.

    ``fit`` is a :class:`hessntk.criteria.TailFit` of the same eigenvalues: the fitted line
    ``P(lambda <= x) = scale x^alpha`` is drawn over the fitted window (solid) and beyond it
    (dotted), with the cutoff ``x_max``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _figure()
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
    floor = fit.floor if fit is not None else 10 * np.finfo(float).eps * np.abs(lam).max()
    above = lam[lam > floor]
    below = 1.0 - above.size / lam.size
    cdf = np.arange(1, above.size + 1) / lam.size
    ax.loglog(above, cdf, ".", ms=2.5, color="C0", label="empirical P(lambda <= x)")
    if fit is not None and math.isfinite(fit.alpha):
        grid = np.geomspace(above.min(), above.max(), 200)
        line = below + fit.scale * grid**fit.alpha
        inside = grid <= fit.cutoff
        ax.loglog(grid[inside], line[inside], "-", color="C3",
                  label=f"fit alpha = {fit.alpha:.3g} +- {fit.stderr:.2g}")
        ax.loglog(grid[~inside], line[~inside], ":", color="C3")
        ax.axvline(fit.cutoff, color="gray", ls=":", lw=0.8, label="cutoff x_max")
        ax.set_ylim(max(cdf.min() * 0.5, 1e-12), 1.5)
    ax.set_xlabel("eigenvalue x")
    ax.set_ylabel("fraction of eigenvalues <= x")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_sensitivity(layers: Sequence[str], values: Mapping[str, Sequence[float]], *,
                     ylabel: str = "sensitivity",
                     title: str = "Per-layer quantization sensitivity") -> Any:
    """Grouped bars: one group per layer, one bar per series (e.g. per bit width).

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _figure(max(6.0, 0.9 * len(layers) + 2.0), 4.0)
    k = max(1, len(values))
    width = 0.8 / k
    x = np.arange(len(layers))
    positive = True
    for i, (label, vals) in enumerate(values.items()):
        v = np.array([np.nan if a is None else a for a in vals], dtype=float)
        positive &= bool(np.all(v[np.isfinite(v)] > 0))
        ax.bar(x + (i - (k - 1) / 2) * width, v, width, label=str(label))
    if positive:
        ax.set_yscale("log")
    ax.set_xticks(x, [str(layer) for layer in layers], rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if k > 1:
        ax.legend(fontsize=8)
    return fig


def plot_ranking(rows: Sequence[Mapping[str, Any]], *,
                 title: str = "Checkpoints ranked by IIC (lower is better)") -> Any:
    """Dot plot of the IIC per checkpoint, best on top, with +-2 standard error bars.

    The IIC drops an additive constant, so values are shown as points, not bars from zero.
    Invalid values (not interpolating, singular kernel, ...) are hollow grey points.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _figure(6.0, max(2.5, 0.45 * len(rows) + 1.2))
    names = [f"{r['rank']}. {r['name']}" for r in rows]
    y = np.arange(len(rows))[::-1]
    undefined = 0
    for yi, r in zip(y, rows, strict=True):
        v = r.get("value")
        if v is None or not math.isfinite(v):
            undefined += 1
            continue
        e = r.get("sharpness_stderr") or 0.0
        ok = bool(r.get("valid"))
        ax.errorbar(v, yi, xerr=2 * e if e > 0 else None, fmt="o", ms=7, capsize=3,
                    color="C0" if ok else "0.5", mfc="C0" if ok else "none")
    ax.set_yticks(y, names)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.grid(axis="x", alpha=0.3)
    note = f" ({undefined} undefined, not drawn)" if undefined else ""
    ax.set_xlabel("IIC (hollow: not theory-valid)" + note)
    ax.set_title(title)
    return fig


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Plotting needs matplotlib: pip install 'hessntk[plot]'.") from err
    return plt


def _finish(ax: Any, path: str | os.PathLike | None) -> Any:
    fig = ax.figure
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def plot_quantization(sens: Any, ax: Any = None, *, predictor: str = "direct",
                      measured: Any = None, labels: Mapping[str, str] | None = None,
                      path: str | os.PathLike | None = None) -> Any:
    """Bar chart of a sensitivity's predicted loss increase per layer and bit width (symlog).

    Parameters
    ----------
    sens : hessntk.criteria.QuantizationSensitivity
    ax : matplotlib Axes, optional
    predictor : {"direct", "trace", "eigenvalue"}
    measured : hessntk.criteria.QuantizationMeasurement, optional
        Overlay the measured increases as black markers.
    labels : dict, optional
        ``layer -> tick label`` (e.g. with the module type, ``"0 (Linear)"``).
    path : str or path, optional
        Save the figure there.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(max(5.0, 1.2 * len(sens.layers)), 3.5))
    labels = dict(labels or {})
    pred = sens.predictions(predictor)
    x = np.arange(len(sens.layers))
    width = 0.8 / len(sens.bits)
    for j, b in enumerate(sens.bits):
        pos = x - 0.4 + (j + 0.5) * width
        ax.bar(pos, pred[:, j], width, label=f"{b} bits ({predictor})")
        if measured is not None and b in measured.bits:
            y = measured.increase[:, measured.bits.index(b)]
            ax.plot(pos, y, "k_", markersize=10, label="measured" if j == 0 else None)
    values = pred if measured is None else np.concatenate([pred.ravel(),
                                                           measured.increase.ravel()])
    positive = np.abs(values[np.isfinite(values) & (values != 0)])
    linthresh = float(positive.min()) if positive.size else 1e-12
    ax.set_yscale("symlog", linthresh=linthresh)
    _sparse_symlog_ticks(ax, linthresh, float(positive.max()) if positive.size else 1.0)
    ax.set_xticks(x, [labels.get(name, name or "<root>") for name in sens.layers],
                  rotation=30, ha="right")
    ax.set_ylabel("loss increase")
    ax.set_title("Predicted loss increase of quantizing one layer")
    ax.legend(fontsize="small")
    return _finish(ax, path)


def _sparse_symlog_ticks(ax: Any, linthresh: float, top: float, most: int = 4) -> None:
    """At most ``most`` labelled decades on each side of a symlog axis (no overlapping)."""
    # decades from the top down, none within 10x of linthresh (they would crowd the zero tick)
    lo = math.floor(math.log10(linthresh)) + 1
    hi = max(math.ceil(math.log10(max(top, linthresh))), lo)
    step = max(1, math.ceil((hi - lo + 1) / most))
    decades = [10.0 ** d for d in range(hi, lo - 1, -step)]
    ymin, ymax = ax.get_ylim()
    ticks = [0.0] + [t for t in decades if t <= ymax * 1.01] + [
        -t for t in decades if -t >= ymin * 1.01]
    ax.set_yticks(sorted(ticks))
    ax.yaxis.set_minor_locator(_null_locator())


def _null_locator() -> Any:
    from matplotlib.ticker import NullLocator

    return NullLocator()


def plot_frontier(alloc: Any, ax: Any = None, *, path: str | os.PathLike | None = None) -> Any:
    """The Pareto frontier of a bit allocation (average bits vs predicted increase).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(5, 3.5))
    x = [p["average_bits"] for p in alloc.frontier]
    y = [p["predicted_increase"] for p in alloc.frontier]
    ax.step(x, y, where="post", marker="o", label="Pareto frontier")
    ax.plot([alloc.average_bits], [alloc.predicted_increase], "r*", markersize=12,
            label="chosen")
    ax.set_xlabel("average bits per quantized weight")
    ax.set_ylabel(f"predicted loss increase ({alloc.predictor})")
    nonzero = np.abs([v for v in y if v != 0])
    if nonzero.size and min(y) > 0:
        ax.set_yscale("log")
    elif nonzero.size:  # negative predictions (gradient terms): log-like on both sides
        ax.set_yscale("symlog", linthresh=float(nonzero.min()))
    ax.legend(fontsize="small")
    return _finish(ax, path)


def plot_tail(fit: Any, ax: Any = None) -> Any:
    """The empirical tail CDF of a :class:`~hessntk.criteria.TailFit` with the power law.

    Returns
    -------
    matplotlib.axes.Axes
    """
    if ax is None:
        _, ax = _pyplot().subplots()
    ax.loglog(fit.x, fit.cdf, ".", ms=3, label="empirical")
    grid = np.geomspace(fit.x.min(), fit.x.max(), 100)
    if fit.tail == "lower":
        line = fit.scale * grid**fit.alpha
        ax.set_ylabel("P(lambda <= x)")
        ax.axvline(fit.cutoff, color="gray", ls=":", label="cutoff")
    else:
        line = fit.scale * grid ** (1.0 - fit.alpha)
        ax.set_ylabel("P(lambda > x)")
    ax.loglog(grid, line, "-", label=f"alpha = {fit.alpha:.3f} +- {fit.stderr:.2g}")
    ax.set_xlabel("x")
    ax.legend()
    return ax


def plot_density(density: Any, ax: Any = None, *, num_points: int = 1000,
                 sigma: float | None = None) -> Any:
    """The smoothed density of a :class:`~hessntk.spectral.SpectralDensity`, nodes as a rug.

    Returns
    -------
    matplotlib.axes.Axes
    """
    if ax is None:
        _, ax = _pyplot().subplots()
    lo, hi = float(density.nodes.min()), float(density.nodes.max())
    pad = 0.05 * (hi - lo if hi > lo else 1.0)
    grid = np.linspace(lo - pad, hi + pad, num_points)
    sigma = density.default_sigma if sigma is None else sigma
    ax.plot(grid, density.density(grid, sigma), label=f"Gaussian smoothing, sd {sigma:.3g}")
    ax.legend(fontsize=8)
    ax.plot(density.nodes.ravel(), np.zeros(density.nodes.size), "|", color="k", alpha=0.3)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    return ax
