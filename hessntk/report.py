"""Report folders of the ``hessntk`` command line: JSON, plots, HTML, and resumable partial results.

Everything is written atomically (a temporary file in the same folder, then ``os.replace``), so
an interrupted run leaves either the previous file or the new one, never a truncated one.
Long computations keep their partial results in ``<folder>/partial/`` (:class:`PartialStore`):
SLQ probe groups (:func:`resumable_slq`) and checkpoint evaluations; a rerun with ``resume``
skips what is there and gives the same numbers as an uninterrupted run.

Examples
--------
>>> import json, tempfile
>>> folder = tempfile.mkdtemp()
>>> rep = Report(folder, "example", {"value": 1.5, "missing": float("nan")})
>>> rep.add_section("numbers", [("value", "1.5", "")])
>>> paths = rep.write()
>>> doc = json.loads(paths["json"].read_text())
>>> doc["value"], doc["missing"], doc["schema"]
(1.5, None, 'hessntk.report/1')
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import io
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hessntk._io import atomic_write
from hessntk._progress import progress
from hessntk.spectral import LinearOperator, SpectralDensity, Tridiagonal, lanczos, rademacher

__all__ = [
    "PartialStore",
    "Report",
    "ResumeError",
    "atomic_write",
    "plot_hessian_esd",
    "plot_ntk_cdf",
    "plot_ranking",
    "plot_sensitivity",
    "resumable_slq",
    "to_jsonable",
]

SCHEMA = "hessntk.report/1"


# -- atomic files ----------------------------------------------------------------------------


def to_jsonable(obj: Any) -> Any:
    """Convert results to strict JSON values: non-finite floats become ``None``.

    Handles dicts, sequences, numpy arrays and scalars, torch tensors, dataclasses (their
    fields) and paths.

    Examples
    --------
    >>> to_jsonable({"a": np.float32(0.5), "b": np.array([1.0, np.inf]), "c": (1, "x")})
    {'a': 0.5, 'b': [1.0, None], 'c': [1, 'x']}
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
                            if f.repr})
    if type(obj).__module__.startswith("torch"):
        return to_jsonable(obj.detach().cpu().numpy() if hasattr(obj, "detach") else str(obj))
    return str(obj)


def dumps(obj: Any) -> str:
    """Strict JSON text of ``obj`` (see :func:`to_jsonable`), indented."""
    return json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Render a matplotlib figure to PNG in memory, then write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write(path, buf.getvalue())


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able values, arrays and tensors (e.g. model parameters).

    Examples
    --------
    >>> fingerprint({"a": 1}) == fingerprint({"a": 1}) != fingerprint({"a": 2})
    True
    """
    h = hashlib.sha256()
    for part in parts:
        _hash_into(h, part)
    return h.hexdigest()[:16]


def _hash_into(h: Any, obj: Any) -> None:
    if isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            _hash_into(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _hash_into(h, v)
    elif hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a torch tensor
        import torch

        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        h.update(f"{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    else:
        h.update(json.dumps(to_jsonable(obj), sort_keys=True).encode())


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (identifies a checkpoint across runs)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- partial results and resume --------------------------------------------------------------


class ResumeError(ValueError):
    """Partial results in the output folder were computed with other settings."""


class PartialStore:
    """Partial results of a long run, kept in ``<folder>/partial/`` to resume from.

    Every item is saved with a ``key`` (the settings and input fingerprints it depends on).
    With ``resume=False`` the store starts empty (old items are deleted); with
    ``resume=True`` items are reused, and an item saved under another key raises
    :class:`ResumeError`, since merging it would mix two different runs.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> store = PartialStore(folder, resume=False)
    >>> store.save_json("a", {"value": 2.0}, key={"seed": 0})
    >>> PartialStore(folder, resume=True).load_json("a", key={"seed": 0})
    {'value': 2.0}
    """

    MARKER = ".hessntk-partial"

    def __init__(self, folder: str | os.PathLike, *, resume: bool) -> None:
        self.path = Path(folder) / "partial"
        self.resume = bool(resume)
        self.reused = 0
        if self.path.exists() and not (self.path / self.MARKER).exists():
            # Never delete or mix with a folder that hessntk did not create.
            raise ResumeError(f"{self.path} exists and was not written by hessntk; choose "
                              "another --out folder")
        if not self.resume and self.path.exists():
            shutil.rmtree(self.path)

    def _ensure(self) -> None:
        if not self.path.exists():
            self.path.mkdir(parents=True)
            (self.path / self.MARKER).touch()

    def _file(self, name: str, ext: str) -> Path:
        return self.path / f"{name}.{ext}"

    def _check(self, name: str, saved: Any, key: Any) -> None:
        want = to_jsonable(key)
        if saved != want:
            diff = _first_difference(saved, want)
            raise ResumeError(
                f"cannot resume: partial result {name!r} in {self.path} was computed with "
                f"other settings or inputs ({diff}); rerun without --resume, or use another "
                "--out folder"
            )

    def load_json(self, name: str, key: Any) -> Any:
        """Return the saved value of ``name`` (None when absent or not resuming)."""
        f = self._file(name, "json")
        if not self.resume or not f.exists():
            return None
        try:
            saved = json.loads(f.read_text())
        except (OSError, ValueError) as err:
            raise ResumeError(f"cannot resume: {f} is unreadable ({err}); rerun without "
                              "--resume") from err
        self._check(name, saved.get("key"), key)
        self.reused += 1
        return saved["value"]

    def save_json(self, name: str, value: Any, key: Any) -> None:
        """Save ``value`` (JSON-able) under ``name`` with its ``key``."""
        self._ensure()
        atomic_write(self._file(name, "json"), dumps({"key": key, "value": value}))

    def load_arrays(self, name: str, key: Any) -> dict[str, np.ndarray] | None:
        """Return the saved arrays of ``name`` (None when absent or not resuming)."""
        f = self._file(name, "npz")
        if not self.resume or not f.exists():
            return None
        try:
            with np.load(f, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            saved = json.loads(str(arrays.pop("__key__")))
        except (OSError, ValueError, KeyError) as err:
            raise ResumeError(f"cannot resume: {f} is unreadable ({err}); rerun without "
                              "--resume") from err
        self._check(name, saved, key)
        self.reused += 1
        return arrays

    def save_arrays(self, name: str, key: Any, **arrays: np.ndarray) -> None:
        """Save numpy ``arrays`` under ``name`` with its ``key``."""
        self._ensure()
        buf = io.BytesIO()
        np.savez(buf, __key__=np.array(json.dumps(to_jsonable(key), sort_keys=True)), **arrays)
        atomic_write(self._file(name, "npz"), buf.getvalue())


def _first_difference(saved: Any, want: Any, where: str = "") -> str:
    if isinstance(saved, dict) and isinstance(want, dict):
        for k in sorted(set(saved) | set(want)):
            if saved.get(k) != want.get(k):
                return _first_difference(saved.get(k), want.get(k), f"{where}{k}")
    return f"{where or 'key'}: saved {saved!r}, now {want!r}"


def resumable_slq(
    op: LinearOperator,
    *,
    num_probes: int,
    num_matvecs: int,
    seed: int = 0,
    probes_per_group: int | None = None,
    store: PartialStore | None = None,
    name: str = "slq",
    key: Any = None,
) -> SpectralDensity:
    """Run SLQ in groups of probes, saving each group's Lanczos coefficients to ``store``.

    The ``num_probes`` Rademacher probes are drawn once from ``seed`` (as
    :func:`hessntk.spectral.slq` draws them) and split into groups; group ``g`` always gets
    the same columns, so a resumed run (finished groups loaded, the rest computed) gives the
    same numbers as an uninterrupted one. With one group the result is that of
    ``slq(op, num_probes=num_probes, num_matvecs=num_matvecs, seed=seed)``.

    Parameters
    ----------
    op : LinearOperator
    num_probes, num_matvecs : int
        As for :func:`hessntk.spectral.slq` (``num_matvecs`` is capped at ``n``).
    seed : int
    probes_per_group : int, optional
        Probes advancing together in one Lanczos run (default: all, one group).
    store : PartialStore, optional
        Where finished groups are saved and, when resuming, loaded from.
    name : str
        Prefix of the saved items.
    key : JSON-able, optional
        What the result depends on besides the SLQ settings (e.g. a fingerprint of the model
        and data); a saved group with another key is refused.

    Returns
    -------
    SpectralDensity

    Examples
    --------
    >>> from hessntk.spectral import aslinearoperator, slq
    >>> A = aslinearoperator(np.diag(np.linspace(1.0, 2.0, 30)))
    >>> d = resumable_slq(A, num_probes=4, num_matvecs=10, probes_per_group=2)
    >>> bool(np.allclose(d.nodes, slq(A, num_probes=4, num_matvecs=10).nodes))
    True
    """
    n = op.shape[0]
    m = min(int(num_matvecs), n)
    P = int(num_probes)
    if P < 1:
        raise ValueError(f"Expected num_probes >= 1; got {num_probes}.")
    group = P if probes_per_group is None else max(1, min(int(probes_per_group), P))
    V = rademacher(n, P, seed)
    full_key = {"n": n, "num_matvecs": m, "num_probes": P, "seed": seed,
                "probes_per_group": group, "input": key}
    parts = []
    starts = range(0, P, group)
    for g, start in enumerate(progress(starts, f"{name}: SLQ probe groups")):
        item = f"{name}-group{g:03d}"
        saved = store.load_arrays(item, full_key) if store is not None else None
        if saved is not None:
            T = Tridiagonal(alpha=saved["alpha"], beta=saved["beta"],
                            num_steps=saved["num_steps"], breakdown=saved["breakdown"],
                            num_matvecs=int(saved["num_matvecs"]))
        else:
            T = lanczos(op, m, v0=V[:, start : start + group])
            if store is not None:
                store.save_arrays(item, full_key, alpha=T.alpha, beta=T.beta,
                                  num_steps=T.num_steps, breakdown=T.breakdown,
                                  num_matvecs=np.array(T.num_matvecs))
        parts.append(SpectralDensity.from_tridiagonal(T, n))
    return SpectralDensity.concatenate(parts)


# -- plots -----------------------------------------------------------------------------------


def _figure(width: float = 6.0, height: float = 4.0) -> tuple[Any, Any]:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("Plots need matplotlib: pip install 'hessntk[plot]'.") from err
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def plot_hessian_esd(
    density: SpectralDensity, top: Sequence[float] = (), *, num_bins: int = 60,
    title: str = "Hessian spectral density (SLQ)",
) -> Any:
    """Plot an SLQ spectral density as mass per bin on a symmetric-log eigenvalue axis.

    Hessian spectra mix a few large outliers, a bulk near zero and small negative values; a
    symmetric-log axis (linear within ``1e-4 max|lambda|`` of zero) shows all three. Bins are
    uniform on that axis; the height of a bin is the quadrature estimate of the fraction of
    eigenvalues in it. ``top`` eigenvalues (e.g. from ``eigsh``) are drawn as lines.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _figure()
    keep = density.weights > 0
    x = density.nodes[keep]
    w = density.weights[keep] / density.num_probes
    scale = float(max(np.abs(x).max(), *(abs(t) for t in top), np.finfo(float).tiny))
    lin = 10.0 ** math.floor(math.log10(1e-3 * scale))  # a power of ten: clean ticks

    def fwd(v: np.ndarray) -> np.ndarray:
        return np.sign(v) * np.log1p(np.abs(v) / lin)

    def inv(t: np.ndarray) -> np.ndarray:
        return np.sign(t) * lin * np.expm1(np.abs(t))

    pts = np.concatenate([x, np.asarray(top, dtype=np.float64)])
    lo, hi = float(fwd(pts.min())), float(fwd(pts.max()))
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    edges = inv(np.linspace(lo, hi + 1e-9 * (hi - lo), num_bins + 1))
    mass, _ = np.histogram(x, bins=edges, weights=w)
    shown = np.where(mass > 0, mass, np.nan)
    ax.stairs(shown, edges, fill=True, alpha=0.6, label="SLQ mass per bin")
    for i, t in enumerate(top):
        ax.axvline(t, color="C3", ls="--", lw=0.8, label="top eigenvalues" if i == 0 else None)
    ax.set_xscale("symlog", linthresh=lin)
    ax.set_yscale("log")
    ax.set_xlabel(f"eigenvalue (symmetric log axis, linear below {lin:.1g})")
    ax.set_ylabel("fraction of eigenvalues")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
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


# -- the report ------------------------------------------------------------------------------


class Report:
    """A report folder: ``report.json`` (every number), PNG plots and ``report.html``.

    Parameters
    ----------
    folder : path
        Created if needed.
    title : str
    data : dict
        The JSON payload (numbers, settings, versions); sections and plots are added to it.

    Attributes
    ----------
    sections : list of (title, rows)
        The human summary: rows of ``(quantity, value, note)``.
    plots : dict
        ``file name -> caption`` of the plots saved so far.
    notes : list of str
    """

    def __init__(self, folder: str | os.PathLike, title: str, data: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.data = data
        self.sections: list[tuple[str, list[tuple[str, str, str]]]] = []
        self.plots: dict[str, str] = {}
        self.tables: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def add_section(self, title: str, rows: Sequence[tuple[str, str, str]]) -> None:
        """Add a block of ``(quantity, value, note)`` rows to the summary."""
        self.sections.append((title, [tuple(map(str, r)) for r in rows]))

    def add_table(self, title: str, text: str) -> None:
        """Add a preformatted table (shown as is in the summary and the HTML)."""
        self.tables.append((title, text))

    def add_plot(self, name: str, make: Any, caption: str) -> Path | None:
        """Save the figure ``make()`` as ``<folder>/<name>`` (PNG); note it if impossible.

        ``make`` is called here, so a missing matplotlib only skips the plot.
        """
        try:
            fig = make()
        except ImportError as err:
            self.notes.append(f"plot {name} skipped: {err}")
            return None
        path = save_figure(fig, self.folder / name)
        self.plots[name] = caption
        return path

    def text(self) -> str:
        """The printed summary."""
        out = [self.title, ""]
        for title, rows in self.sections:
            out.append(title)
            width = max([len(r[0]) for r in rows] + [10])
            for name, value, note in rows:
                line = f"  {name:<{width}}  {value}"
                out.append(f"{line:<{width + 36}}  {note}".rstrip() if note else line)
            out.append("")
        for title, table in self.tables:
            out += [title, table, ""]
        for note in self.notes:
            out.append(f"note: {note}")
        return "\n".join(out).rstrip() + "\n"

    def payload(self) -> dict[str, Any]:
        """The JSON document (``report.json``)."""
        return to_jsonable({"schema": SCHEMA, "title": self.title, **self.data,
                            "plots": dict(self.plots), "notes": list(self.notes)})

    def html(self) -> str:
        """A self-contained HTML page showing the summary, tables and plots."""
        e = html.escape
        parts = [
            "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
            f"<title>{e(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin-bottom:1em}td,th{padding:.2em .8em;"
            "border-bottom:1px solid #ddd;text-align:left}td.v{font-family:monospace}"
            "pre{background:#f6f6f6;padding:.8em;overflow-x:auto}"
            "figure{margin:1em 0}img{max-width:100%}</style></head><body>",
            f"<h1>{e(self.title)}</h1>",
        ]
        for title, rows in self.sections:
            parts.append(f"<h2>{e(title)}</h2><table>")
            parts.append("<tr><th>quantity</th><th>value</th><th>note</th></tr>")
            for name, value, note in rows:
                parts.append(f"<tr><td>{e(name)}</td><td class='v'>{e(value)}</td>"
                             f"<td>{e(note)}</td></tr>")
            parts.append("</table>")
        for title, table in self.tables:
            parts.append(f"<h2>{e(title)}</h2><pre>{e(table)}</pre>")
        for name, caption in self.plots.items():
            parts.append(f"<figure><img src='{e(name)}' alt='{e(caption)}'>"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
        for note in self.notes:
            parts.append(f"<p><em>note: {e(note)}</em></p>")
        parts.append("<p>Every number, with its standard error and the settings: "
                     "<a href='report.json'>report.json</a>.</p></body></html>")
        return "\n".join(parts) + "\n"

    def write(self) -> dict[str, Path]:
        """Write ``report.json`` and ``report.html`` (atomically); return their paths."""
        paths = {"json": self.folder / "report.json", "html": self.folder / "report.html"}
        atomic_write(paths["json"], json.dumps(self.payload(), indent=2, allow_nan=False)
                     + "\n")
        atomic_write(paths["html"], self.html())
        return paths
