"""Power-law tail exponents of spectra (docs/theory.md section 2).

Convention: the **lower-tail exponent** ``alpha`` is the CDF exponent,
``P(lambda <= x) ~ c x^alpha`` as ``x -> 0``; the density then behaves like ``x^(alpha - 1)``,
so the *density* exponent is ``alpha - 1``. The **upper-tail** fit follows WeightWatcher and
Clauset-Shalizi-Newman: a Pareto *density* ``rho(lambda) ~ lambda^(-alpha)`` above ``xmin``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hessntk.spectral import SpectralDensity
from hessntk.spectral.probes import Seed, as_generator

LOWER_METHODS = ("mle", "regression", "hill")
MIN_POINTS = 20  # smallest tail sample a cutoff may leave (Clauset et al. use similar minima)
NUM_BOOTSTRAP = 200
# SLQ resolves CDF levels down to about 2 / m (docs/theory.md 2.4): a cutoff must hold at least
# RESOLUTION_FACTOR / m of the mass, and the fit ignores levels below 3 / m.
RESOLUTION_FACTOR = 10.0


@dataclass(frozen=True)
class TailFit:
    """A power-law tail fit.

    Attributes
    ----------
    alpha : float
        Lower tail: the CDF exponent (``P(lambda <= x) ~ c x^alpha``; density exponent
        ``alpha - 1``). Upper tail: the Pareto density exponent (``rho ~ lambda^-alpha``).
    stderr : float
        Standard error of ``alpha``: bootstrap (over probes for SLQ input, over eigenvalues for
        the regression method) or the asymptotic ``alpha / sqrt(k)`` for mle/hill, which
        ignores eigenvalue repulsion (docs/theory.md 2.3: usually conservative).
    cutoff : float
        Lower tail: ``x_max``, the top of the fitted window. Upper tail: ``xmin``.
    ks_distance : float
        Kolmogorov-Smirnov distance between the fitted and empirical tail CDFs.
    num_points : int or None
        Eigenvalues in the fit (None for SLQ input).
    mass : float
        Fraction of the spectral mass in the fitted window.
    mass_below_floor : float
        Fraction of the spectrum at or below ``floor`` (structural or numerical zeros,
        negative eigenvalues), excluded from the lower-tail fit.
    floor : float
        Values at or below it are excluded.
    method : str
    tail : {"lower", "upper"}
    """

    alpha: float
    stderr: float
    cutoff: float
    ks_distance: float
    num_points: int | None
    mass: float
    mass_below_floor: float
    floor: float
    method: str
    tail: str = "lower"
    x: np.ndarray = field(default=None, repr=False)
    cdf: np.ndarray = field(default=None, repr=False)
    scale: float = field(default=float("nan"), repr=False)

    @property
    def density_exponent(self) -> float:
        """Lower tail: the exponent of the density near zero, ``alpha - 1``."""
        return self.alpha - 1.0 if self.tail == "lower" else -self.alpha

    def plot(self, ax: Any = None) -> Any:
        """Plot the empirical tail CDF on log-log axes with the fitted power law.

        See :func:`hessntk.report.plots.plot_tail`.
        """
        from hessntk.report.plots import plot_tail

        return plot_tail(self, ax)


def lower_tail_exponent(
    spectrum: np.ndarray | SpectralDensity,
    *,
    method: str = "mle",
    cutoff: str | float = "ks",
    floor: float | None = None,
    seed: Seed = 0,
) -> TailFit:
    """Fit the lower-tail exponent ``alpha`` of a spectrum: ``P(lambda <= x) ~ c x^alpha``.

    Parameters
    ----------
    spectrum : array of eigenvalues, or SpectralDensity
        Exact eigenvalues (any order), or an SLQ result (a weighted fit on its nodes and
        weights, with uncertainty from a bootstrap over probes).
    method : {"mle", "regression", "hill"}
        ``"mle"``: truncated power-law maximum likelihood on ``(floor, x_max]``,
        ``alpha = k / sum log(x_max / lambda_i)`` (docs/theory.md 2.2 E2; weighted for SLQ).
        ``"hill"``: the same with ``x_max`` the ``(k+1)``-th smallest eigenvalue (E1; exact
        eigenvalues only). ``"regression"``: slope of the log empirical CDF against
        ``log x`` (E3), robust to the hard edge; its error is bootstrapped.
    cutoff : "ks" or float
        ``x_max``. ``"ks"`` chooses it by the smallest Kolmogorov-Smirnov distance between
        the fit and the data below it (Clauset, Shalizi, Newman 2009, mirrored to the lower
        tail), among windows with at least 20 eigenvalues (SLQ: enough mass to resolve).
    floor : float, optional
        Values at or below it are excluded and their mass reported (zeros, negative values,
        numerical noise). Default ``10 * eps * max|lambda|`` with float64 ``eps``; pass the
        resolution of your computation (e.g. ``10 * 1.2e-7 * lambda_max`` for float32).
    seed : int or numpy.random.Generator
        Seed of the bootstrap.

    Returns
    -------
    TailFit

    Raises
    ------
    ValueError
        Too few points above the floor, an unknown method, or (SLQ input) a cutoff below the
        resolution of the Lanczos steps (the message says how many steps are needed).

    Examples
    --------
    >>> import numpy as np
    >>> lam = ((np.arange(1, 2001) - 0.5) / 2000) ** (1 / 0.5)  # exact exponent 0.5
    >>> fit = lower_tail_exponent(lam, cutoff=0.1)
    >>> round(fit.alpha, 2)
    0.5
    """
    if method not in LOWER_METHODS:
        raise ValueError(f"Expected method in {LOWER_METHODS}; got {method!r}.")
    if isinstance(spectrum, SpectralDensity):
        return _lower_tail_slq(spectrum, method, cutoff, floor, as_generator(seed))
    lam = np.asarray(spectrum, dtype=np.float64).ravel()
    if lam.size == 0 or not np.all(np.isfinite(lam)):
        raise ValueError("Expected a non-empty array of finite eigenvalues.")
    if floor is None:
        floor = 10 * np.finfo(np.float64).eps * float(np.abs(lam).max())
    x = np.sort(lam[lam > floor])
    n_total = lam.size
    below = 1.0 - x.size / n_total
    if x.size < MIN_POINTS + 1:
        raise ValueError(
            f"Expected at least {MIN_POINTS + 1} eigenvalues above the floor {floor:.3g}; got "
            f"{x.size} of {n_total}. Lower the floor or compute more eigenvalues."
        )
    logx = np.log(x)
    if cutoff == "ks":
        k = _ks_choose_k(logx, method)
    else:
        x_max = float(cutoff)
        k = int(np.searchsorted(x, x_max, side="right"))
        if method == "hill":
            k -= 1  # Hill's threshold is the (k+1)-th point, which must be <= x_max
        if k < 2:
            raise ValueError(
                f"Expected at least 2 eigenvalues in (floor, cutoff] = ({floor:.3g}, {x_max:.3g}]; "
                f"got {k}. Raise the cutoff."
            )
    x_max = float(x[k]) if (method == "hill" or cutoff == "ks") else float(cutoff)
    alpha = _fit(logx[:k], np.log(x_max), method)
    if method == "regression":
        rng = as_generator(seed)
        boots = []
        for _ in range(NUM_BOOTSTRAP):
            sample = np.sort(rng.choice(logx[:k], size=k, replace=True))
            boots.append(_fit(sample, np.log(x_max), method))
        stderr = float(np.std(boots, ddof=1))
    else:
        stderr = alpha / np.sqrt(k)
    ks = _ks_distance(logx[:k], np.log(x_max), alpha)
    F = (np.arange(1, x.size + 1) / n_total) + below
    # fitted curve: P(lambda <= x) ~ F(x_max) (x / x_max)^alpha, plus the excluded mass
    scale = (k / n_total) / x_max**alpha
    return TailFit(alpha=float(alpha), stderr=float(stderr), cutoff=x_max, ks_distance=ks,
                   num_points=int(k), mass=k / n_total, mass_below_floor=below,
                   floor=float(floor), method=method, x=x[:k], cdf=F[:k] - below, scale=scale)


def upper_tail_exponent(
    eigenvalues: np.ndarray, *, xmin: str | float = "ks", min_points: int = 10
) -> TailFit:
    """Fit a Pareto upper tail ``rho(lambda) ~ lambda^-alpha`` above ``xmin`` (WeightWatcher).

    For each candidate ``xmin`` (each sorted eigenvalue leaving at least ``min_points``
    above it), ``alpha = 1 + k / sum log(lambda_i / xmin)`` over the ``k`` eigenvalues
    ``>= xmin``; the ``xmin`` with the smallest KS distance wins (docs/theory.md 2.7). Standard
    error ``(alpha - 1) / sqrt(k)``.

    Examples
    --------
    >>> import numpy as np
    >>> lam = (1 - (np.arange(4000) + 0.5) / 4000) ** (-1 / 1.5)  # Pareto, alpha = 2.5
    >>> round(upper_tail_exponent(lam, xmin=1.0).alpha, 1)
    2.5
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
    lam = lam[lam > 0]
    if lam.size < min_points + 1:
        raise ValueError(
            f"Expected at least {min_points + 1} positive eigenvalues; got {lam.size}."
        )
    if xmin == "ks":
        candidates = range(0, lam.size - min_points)
    else:
        candidates = [int(np.searchsorted(lam, float(xmin), side="left"))]
    best = None
    for i in candidates:
        tail = lam[i:]
        k = tail.size
        s = np.log(tail / tail[0]).sum()
        if k < 2 or s <= 0:
            continue
        alpha = 1.0 + k / s
        emp = np.arange(k) / k  # empirical CDF of the tail just below each point
        model = 1.0 - (tail / tail[0]) ** (1.0 - alpha)
        d = float(np.max(np.maximum(np.abs(emp - model), np.abs(emp + 1.0 / k - model))))
        if best is None or d < best[0]:
            best = (d, i, alpha, k)
    if best is None:
        raise ValueError("Expected a tail with distinct eigenvalues above xmin; got none.")
    d, i, alpha, k = best
    tail = lam[i:]
    ccdf = 1.0 - np.arange(k) / k
    return TailFit(alpha=float(alpha), stderr=float((alpha - 1) / np.sqrt(k)),
                   cutoff=float(lam[i]), ks_distance=d, num_points=int(k), mass=k / lam.size,
                   mass_below_floor=0.0, floor=0.0, method="mle", tail="upper", x=tail,
                   cdf=ccdf, scale=float(lam[i] ** (alpha - 1)))


# -- exact eigenvalues -----------------------------------------------------------------------


def _fit(logx: np.ndarray, log_xmax: float, method: str) -> float:
    """Exponent from the k smallest log-eigenvalues (sorted) below log(x_max)."""
    k = logx.size
    if method == "regression":
        # log F(x_(i)) ~ alpha log x_(i) + c, with plotting positions (i - 1/2) / k
        y = np.log((np.arange(1, k + 1) - 0.5) / k)
        xc = logx - logx.mean()
        return float((xc @ (y - y.mean())) / (xc @ xc))
    s = k * log_xmax - logx.sum()
    # (k - 1) / s is unbiased for an exact power law (Renyi representation, docs/theory.md 2.2)
    return float((k - 1) / s)


def _ks_distance(logx: np.ndarray, log_xmax: float, alpha: float) -> float:
    k = logx.size
    model = np.exp(alpha * (logx - log_xmax))
    hi = np.arange(1, k + 1) / k
    return float(np.max(np.maximum(np.abs(hi - model), np.abs(hi - 1.0 / k - model))))


def _ks_choose_k(logx: np.ndarray, method: str) -> int:
    """Window size minimising the KS distance over a log-spaced grid of candidates."""
    n = logx.size
    ks = np.unique(np.geomspace(MIN_POINTS, n - 1, num=min(200, n - MIN_POINTS)).astype(int))
    best_k, best_d = ks[0], np.inf
    for k in ks:
        log_xmax = logx[k]  # the (k+1)-th smallest point bounds the window
        alpha = _fit(logx[:k], log_xmax, method)
        d = _ks_distance(logx[:k], log_xmax, alpha)
        if d < best_d:
            best_k, best_d = int(k), d
    return best_k


# -- SLQ input ------------------------------------------------------------------------------


def _lower_tail_slq(
    dens: SpectralDensity, method: str, cutoff: str | float, floor: float | None,
    rng: np.random.Generator,
) -> TailFit:
    if method == "hill":
        raise ValueError(
            "Expected method 'mle' or 'regression' for an SLQ SpectralDensity; 'hill' needs "
            "exact eigenvalues (its threshold is an order statistic)."
        )
    nodes, weights = dens.nodes, dens.weights / dens.num_probes
    m = nodes.shape[1]
    if floor is None:  # nodes are known to about eps ||A|| in the operator's dtype
        floor = 10 * dens.eps * float(np.abs(nodes).max())
    keep = (nodes > floor) & (weights > 0)
    below = float(weights[(nodes <= floor) & (weights > 0)].sum())
    theta, w = nodes[keep], weights[keep]
    order = np.argsort(theta)
    theta, w = theta[order], w[order]
    F = np.cumsum(w)  # mass in (floor, theta]
    resolved = RESOLUTION_FACTOR / m
    if cutoff == "ks":
        candidates = np.unique(theta[F >= resolved])
        if candidates.size == 0:
            raise ValueError(f"Expected SLQ nodes above the floor {floor:.3g}; got none.")
        candidates = candidates[np.unique(np.linspace(0, candidates.size - 1, 100).astype(int))]
        def score(c: float) -> float:
            try:
                return _slq_fit(theta, w, c, m, method)[1]
            except ValueError:
                return np.inf

        x_max = min(candidates, key=score)
    else:
        x_max = float(cutoff)
        mass = float(w[theta <= x_max].sum())
        if mass < resolved:
            need = int(np.ceil(RESOLUTION_FACTOR / max(mass, 1e-300)))
            raise ValueError(
                f"The cutoff x_max = {x_max:.3g} holds {mass:.3g} of the spectral mass, below "
                f"what {m} Lanczos steps resolve ({resolved:.3g}): about num_matvecs >= {need} "
                "steps are needed, or raise the cutoff."
            )
    alpha, ks = _slq_fit(theta, w, x_max, m, method)
    boots = []
    P = dens.num_probes
    for _ in range(NUM_BOOTSTRAP):
        pick = rng.integers(0, P, size=P)
        bn, bw = nodes[pick], dens.weights[pick] / P
        sel = (bn > floor) & (bw > 0)
        o = np.argsort(bn[sel])
        try:
            boots.append(_slq_fit(bn[sel][o], bw[sel][o], x_max, m, method)[0])
        except ValueError:
            continue
    stderr = float(np.std(boots, ddof=1)) if len(boots) > 1 else float("nan")
    in_fit = theta <= x_max
    mass = float(w[in_fit].sum())
    return TailFit(alpha=alpha, stderr=stderr, cutoff=float(x_max), ks_distance=ks,
                   num_points=None, mass=mass, mass_below_floor=below, floor=float(floor),
                   method=method, x=theta[in_fit], cdf=F[in_fit],
                   scale=mass / float(x_max) ** alpha)


def _slq_fit(theta, w, x_max, m, method) -> tuple[float, float]:
    """Weighted fit on sorted nodes ``theta`` with weights ``w``; returns (alpha, KS)."""
    sel = theta <= x_max
    t, ww = theta[sel], w[sel]
    mass = ww.sum()
    if t.size < 2 or mass <= 0:
        raise ValueError(f"Expected SLQ nodes below the cutoff {x_max:.3g}; got {t.size}.")
    F = np.cumsum(ww) / mass
    if method == "mle":
        # weighted truncated power-law MLE (docs/theory.md 2.4)
        spread = float(np.sum(ww * np.log(x_max / t)))
        if not spread > 0:
            raise ValueError(f"Expected SLQ nodes spread below the cutoff {x_max:.3g}.")
        alpha = mass / spread
    else:
        ok = np.cumsum(ww) >= 3.0 / m  # levels SLQ resolves
        lx, ly = np.log(t[ok]), np.log(F[ok])
        if lx.size < 2:
            raise ValueError("Expected at least two resolved CDF levels below the cutoff.")
        xc = lx - lx.mean()
        alpha = float((xc @ (ly - ly.mean())) / (xc @ xc))
    model = (t / x_max) ** alpha
    d = float(np.max(np.maximum(np.abs(F - model), np.abs(F - ww / mass - model))))
    return alpha, d
