"""Stochastic Lanczos quadrature (SLQ): spectral densities, traces of matrix functions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hessntk._checks import count, positive, refuse_low_precision
from hessntk._memory import MemoryBudgetError, format_bytes, group_size
from hessntk._progress import progress
from hessntk.spectral._backend import itemsize
from hessntk.spectral._threads import single_threaded_host_blas
from hessntk.spectral.krylov import (
    REORTH,
    Tridiagonal,
    _check_num_matvecs,
    _start_vectors,
    basis_budget,
    basis_device_of,
    basis_shard,
    basis_storage,
    lanczos,
)
from hessntk.spectral.operators import CallableOperator, LinearOperator
from hessntk.spectral.probes import Seed, rademacher
from hessntk.spectral.results import Estimate, mean_estimate


@dataclass(frozen=True)
class CDFEstimate:
    """SLQ estimate of the spectral CDF ``F(x) = #{lambda_i <= x} / n``.

    Lead with :meth:`interval`: it covers the quadrature's bias (the brackets) and the probe
    noise, and holds the truth at its stated rate (tested against exact spectra). ``value`` is
    the Gauss-quadrature point estimate; ``stderr`` is its probe noise *only*: the quadrature
    bias can be many standard errors (e.g. 0.18 +- 0.011 for an exact 0.22 with 12 probes x 80
    steps), and ``value +- stderr`` is not an interval for ``F(x)``.

    Attributes
    ----------
    x : numpy.ndarray
        Points where the CDF was evaluated.
    value : numpy.ndarray
        Gauss-quadrature estimate, mean over probes of each probe's quadrature CDF.
    lower, upper : numpy.ndarray
        Chebyshev-Markov-Stieltjes brackets: for every probe, its probe-weighted spectral
        measure satisfies ``lower <= psi((-inf, x]) <= upper`` exactly; these are the means
        over probes. They bound the quadrature error, not the sampling error over probes.
    stderr : numpy.ndarray
        Standard error of ``value`` over probes: probe noise only, not the quadrature bias.
    lower_stderr, upper_stderr : numpy.ndarray
        Standard errors of ``lower`` and ``upper`` over probes (used by :meth:`interval`).
    num_probes : int
    """

    x: np.ndarray
    value: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    stderr: np.ndarray
    lower_stderr: np.ndarray
    upper_stderr: np.ndarray
    num_probes: int

    def interval(self, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """An interval that covers ``F(x)`` with probability at least ``confidence``.

        Every probe's bracket holds its probe-weighted measure exactly, and those measures
        average to the spectral measure (``E psi_l = mu_A``), so the mean lower bracket minus
        ``t`` of its standard errors, and the mean upper bracket plus ``t`` of its standard
        errors, each fail with probability at most ``(1 - confidence) / 2`` (``t``: Student's
        quantile with ``num_probes - 1`` degrees of freedom). Clipped to ``[0, 1]``.

        Raises
        ------
        ValueError
            If ``confidence`` is not in (0, 1), or with fewer than 2 probes (no estimate of
            the probe noise).

        Examples
        --------
        >>> import numpy as np
        >>> from hessntk.spectral import aslinearoperator, slq
        >>> A = aslinearoperator(np.diag(np.linspace(-1.0, 3.0, 200)))
        >>> lo, hi = slq(A, num_probes=8, num_matvecs=20).cdf(0.0).interval()
        >>> bool(lo[0] <= 0.25 <= hi[0])  # 50 of the 200 eigenvalues are <= 0
        True
        """
        from scipy.stats import t as student

        confidence = float(confidence)
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"Expected confidence in (0, 1); got {confidence!r}.")
        if self.num_probes < 2:
            raise ValueError("An interval needs the probe noise, estimated from 2 or more "
                             f"probes; got {self.num_probes}. Use num_probes >= 2 (or read "
                             "the brackets lower, upper alone).")
        q = float(student.ppf(0.5 + confidence / 2, self.num_probes - 1))
        lo = np.clip(self.lower - q * self.lower_stderr, 0.0, 1.0)
        hi = np.clip(self.upper + q * self.upper_stderr, 0.0, 1.0)
        return lo, hi


#: Quadrature nodes are known to about ``eps ||A||`` (Paige: Ritz values of the rounded
#: Lanczos process); nodes within ``RESOLUTION`` times that of zero count as zero.
RESOLUTION = 16


@dataclass(frozen=True)
class SpectralDensity:
    """Per-probe Gauss quadrature rules of a symmetric operator's spectral measure.

    For probe ``l`` (a unit vector ``v_l``) Lanczos gives nodes ``theta_lj`` and weights
    ``tau_lj = S_1j^2`` (summing to 1) such that ``v_l^T f(A) v_l ~ sum_j tau_lj f(theta_lj)``,
    exactly for polynomials of degree ``< 2 m``. The spectral measure
    ``mu_A = (1/n) sum_i delta_{lambda_i}`` is estimated by the mean of these rules
    (docs/theory.md section 3.1).

    Attributes
    ----------
    nodes : numpy.ndarray of shape (num_probes, m)
        Ritz values per probe (ascending; padded with the last node after a breakdown).
    weights : numpy.ndarray of shape (num_probes, m)
        Quadrature weights per probe (padding has weight 0). Rows sum to 1.
    n : int
        Dimension of the operator.
    num_matvecs : int
        Products used in total.
    exact : numpy.ndarray of shape (num_probes,)
        True where Lanczos broke down: that probe's rule is its exact spectral measure.
    eps : float
        Machine epsilon of the operator's dtype: nodes are known to about ``eps ||A||``.
    """

    nodes: np.ndarray
    weights: np.ndarray
    n: int
    num_matvecs: int
    exact: np.ndarray
    eps: float = float(np.finfo(np.float64).eps)

    @property
    def num_probes(self) -> int:
        return self.nodes.shape[0]

    @property
    def default_sigma(self) -> float:
        """The smoothing width of :meth:`density` by default: 1% of the node range (or 1)."""
        span = float(self.nodes.max() - self.nodes.min())
        return 0.01 * span if span > 0 else 1.0

    @property
    def rounding_level(self) -> float:
        """``RESOLUTION * eps * max |node|``: nodes within it of zero are zero at this precision.

        E.g. the fraction of negative eigenvalues is ``cdf(-rounding_level)``.
        """
        return RESOLUTION * self.eps * float(np.abs(self.nodes[self.weights > 0]).max())

    @classmethod
    def from_tridiagonal(cls, T: Tridiagonal, n: int, eps: float | None = None) -> SpectralDensity:
        """Build the quadrature rules from Lanczos coefficients (``eps``: of the operator)."""
        m = T.alpha.shape[1]
        nodes = np.zeros((T.num_probes, m))
        weights = np.zeros((T.num_probes, m))
        for i in range(T.num_probes):
            theta, S = T.eigh(i)
            mi = len(theta)
            nodes[i, :mi] = theta
            nodes[i, mi:] = theta[-1]
            weights[i, :mi] = S[0] ** 2
        eps = float(np.finfo(np.float64).eps) if eps is None else float(eps)
        return cls(nodes, weights, n, T.num_matvecs, T.breakdown.copy(), eps)

    @classmethod
    def concatenate(cls, parts: Sequence[SpectralDensity]) -> SpectralDensity:
        """Pool the probes of several SLQ runs on one operator into one density.

        Probes are independent, so runs over disjoint groups of probe vectors pool into the
        run over all of them (e.g. a long run saved and resumed group by group). Rules with
        fewer nodes are padded as after a breakdown (last node repeated, weight 0).

        Raises
        ------
        ValueError
            If ``parts`` is empty or the runs are of operators of different sizes.

        Examples
        --------
        >>> import numpy as np
        >>> from hessntk.spectral import aslinearoperator, rademacher
        >>> A = aslinearoperator(np.diag(np.arange(1.0, 9.0)))
        >>> V = rademacher(8, 4, seed=0)
        >>> halves = [slq(A, v0=V[:, :2], num_matvecs=5), slq(A, v0=V[:, 2:], num_matvecs=5)]
        >>> pooled = SpectralDensity.concatenate(halves)
        >>> whole = slq(A, v0=V, num_matvecs=5)
        >>> pooled.num_probes, bool(np.allclose(pooled.nodes, whole.nodes))
        (4, True)
        """
        parts = list(parts)
        if not parts:
            raise ValueError("Expected at least one SpectralDensity; got none.")
        sizes = sorted({p.n for p in parts})
        if len(sizes) > 1:
            raise ValueError(f"Expected densities of one operator size; got sizes {sizes}.")
        m = max(p.nodes.shape[1] for p in parts)
        nodes, weights = [], []
        for p in parts:
            pad = m - p.nodes.shape[1]
            nodes.append(np.concatenate([p.nodes, np.repeat(p.nodes[:, -1:], pad, axis=1)], 1))
            weights.append(np.pad(p.weights, ((0, 0), (0, pad))))
        return cls(np.concatenate(nodes), np.concatenate(weights), sizes[0],
                   sum(p.num_matvecs for p in parts), np.concatenate([p.exact for p in parts]),
                   max(p.eps for p in parts))

    # -- traces ---------------------------------------------------------------------------
    def trace(self, f: Callable[[np.ndarray], np.ndarray] | None = None) -> Estimate:
        """Estimate ``tr f(A)`` (default ``f(x) = x``) with its standard error over probes.

        ``f`` is applied elementwise to numpy float64 arrays of nodes.

        Examples
        --------
        >>> import numpy as np
        >>> from hessntk.spectral import aslinearoperator, slq
        >>> d = slq(aslinearoperator(np.diag([1.0, 2.0, 3.0])), num_probes=2, num_matvecs=3)
        >>> round(d.trace(np.square).value, 10)
        14.0
        """
        fx = self.nodes if f is None else np.asarray(f(self.nodes), dtype=np.float64)
        if not np.all(np.isfinite(fx[self.weights > 0])):
            raise FloatingPointError(
                "f returned non-finite values at quadrature nodes; check its domain "
                f"(nodes span [{self.nodes.min():.3g}, {self.nodes.max():.3g}])."
            )
        per_probe = self.n * np.sum(self.weights * np.where(self.weights > 0, fx, 0.0), axis=1)
        return mean_estimate(per_probe, self.num_matvecs, "slq")

    def logdet(self, shift: float = 0.0) -> Estimate:
        """Estimate ``log det(A + shift * I)`` for a symmetric positive definite operator.

        Raises
        ------
        ValueError
            If a quadrature node of ``A + shift I`` is at or below the rounding level of the
            nodes, ``RESOLUTION * eps * max |node|``: the operator is singular (or not positive
            definite) at this precision, and the value would be decided by rounding errors
            (``-inf`` in exact arithmetic). Pass ``shift > 0`` for ``log det(A + shift I)``
            (the regularised log-determinant), use more Lanczos steps or a float64 operator.
        """
        smallest = float(self.nodes[self.weights > 0].min()) + shift
        level = self.rounding_level
        if smallest <= level:
            raise ValueError(
                f"Expected a positive definite operator; got a quadrature node "
                f"{smallest:.3g} of A + {shift:g} I at or below the rounding level "
                f"{level:.3g} of the nodes ({RESOLUTION} x eps {self.eps:.2g} x max |node|): "
                "A is singular at this precision and its log-determinant is -inf or "
                "undefined. Use logdet(shift=delta) with delta > 0 for log det(A + delta I), "
                "or a float64 operator."
            )
        return self.trace(lambda x: np.log(np.maximum(x + shift, np.finfo(float).tiny)))

    # -- distribution -------------------------------------------------------------------------
    def cdf(self, x: float | np.ndarray) -> CDFEstimate:
        """Estimate the spectral CDF at ``x`` with rigorous quadrature brackets.

        Examples
        --------
        >>> import numpy as np
        >>> from hessntk.spectral import aslinearoperator, slq
        >>> d = slq(aslinearoperator(np.diag([1.0, 2.0, 3.0, 4.0])), num_probes=2, num_matvecs=4)
        >>> round(float(d.cdf(2.5).value[0]), 12)
        0.5
        """
        x = np.atleast_1d(np.asarray(x, dtype=np.float64))
        if np.isnan(x).any():
            raise ValueError("Expected x without NaN (the CDF at -inf is 0, at inf 1); got NaN.")
        P = self.num_probes
        value = np.zeros((P, x.size))
        lower = np.zeros((P, x.size))
        upper = np.zeros((P, x.size))
        for i in range(P):
            keep = self.weights[i] > 0
            th, w = self.nodes[i, keep], self.weights[i, keep]
            cum = np.concatenate([[0.0], np.cumsum(w)])
            # j = number of nodes <= x; Gauss rule CDF = cum[j].
            j = np.searchsorted(th, x, side="right")
            value[i] = cum[j]
            if self.exact[i]:
                lower[i] = upper[i] = cum[j]
            else:
                # Chebyshev-Markov-Stieltjes: psi((-inf, x]) >= sum_{nodes < theta_j} tau
                # (theta_j the largest node <= x) and <= sum_{nodes <= theta_{j+1}} tau.
                lower[i] = cum[np.maximum(j - 1, 0)]
                upper[i] = cum[np.minimum(j + 1, len(th))]
        def se(a: np.ndarray) -> np.ndarray:
            return a.std(axis=0, ddof=1) / np.sqrt(P) if P > 1 else np.full(x.size, np.nan)

        return CDFEstimate(x, value.mean(0), lower.mean(0), upper.mean(0), se(value), se(lower),
                           se(upper), P)

    def density(self, x: np.ndarray, sigma: float | None = None) -> np.ndarray:
        """Gaussian-smoothed spectral density at ``x`` (for plots only).

        ``sigma`` defaults to 1% of the node range. Never fit tails to this curve: below a few
        ``sigma`` it is flat (docs/theory.md section 2.4).
        """
        x = np.asarray(x, dtype=np.float64)
        if sigma is not None:
            sigma = positive(sigma, "sigma")
        if sigma is None:
            sigma = self.default_sigma
        z = (x[..., None, None] - self.nodes) / sigma
        g = np.exp(-0.5 * z * z) / (sigma * np.sqrt(2 * np.pi))
        return (g * self.weights).sum(axis=(-1, -2)) / self.num_probes

    def plot(self, ax: Any = None, *, num_points: int = 1000, sigma: float | None = None) -> Any:
        """Plot the smoothed density (and the nodes as a rug) with matplotlib.

        See :func:`hessntk.report.plots.plot_density`.
        """
        from hessntk.report.plots import plot_density

        return plot_density(self, ax, num_points=num_points, sigma=sigma)

    def __repr__(self) -> str:
        return (
            f"SpectralDensity(n={self.n}, num_probes={self.num_probes}, "
            f"m={self.nodes.shape[1]}, range=[{self.nodes.min():.4g}, {self.nodes.max():.4g}], "
            f"num_matvecs={self.num_matvecs})"
        )


@single_threaded_host_blas
def slq(
    op: LinearOperator,
    *,
    num_probes: int = 16,
    num_matvecs: int = 100,
    seed: Seed = 0,
    v0: Any = None,
    max_basis_bytes: int | None = None,
    probes_per_group: int | None = None,
    store: GroupStore | None = None,
    reorth: str = "partial",
    basis_dtype: str = "operator",
    basis_device: Any = None,
    shard_basis: bool = False,
) -> SpectralDensity:
    """Run stochastic Lanczos quadrature with Rademacher probes advancing in lockstep.

    Parameters
    ----------
    op : LinearOperator
        Symmetric operator of size ``n``.
    num_probes : int
        Number of random probes (independent quadrature rules).
    num_matvecs : int
        Lanczos steps per probe (``m``); total products ``<= num_probes * m``.
    seed : int or numpy.random.Generator
        Seed of the probes.
    v0 : array of shape (n, num_probes), optional
        Explicit probe vectors (e.g. shared between operators for common random numbers).
    max_basis_bytes : int, optional
        Memory allowed for the Lanczos bases of the probes advancing together (``s * n *
        m`` bytes per probe with a basis of ``s``-byte entries, ``16 * n`` with
        ``reorth="none"``). Probes beyond it run in successive groups, with the same
        numbers to the products' rounding (every probe's run is independent; products of
        ``k`` vectors are not bitwise those of fewer). One probe that does not fit is
        refused up front, naming the fixes. Default: groups of at most
        ``hessntk._memory.DEFAULT_GROUP_BYTES`` (2 GiB) where a quarter of the free memory
        where the basis lives (the operator's device, or the host for
        ``basis_device="cpu"``) allows it, a fixed size so that the numbers do not move
        with the free memory wherever 8 GiB are free; smaller groups below that; one
        probe may take up to that quarter (the least over the ranks of a data-parallel
        operator).
    probes_per_group : int, optional
        Probes advancing together, instead of the groups ``max_basis_bytes`` implies: group
        ``g`` always holds probes ``g * probes_per_group, ...`` (the unit of ``store``).
    store : GroupStore, optional
        Where finished groups are saved and from where they are loaded (``load(g,
        settings)`` returns the group's :class:`Tridiagonal` or None; ``save(g, settings,
        T)``), so that an interrupted run resumes with the same numbers as an uninterrupted
        one. ``settings`` holds ``n``, ``num_matvecs``, ``num_probes``, ``probes_per_group``,
        ``seed``, ``reorth`` and ``basis_dtype``.
    reorth : {"partial", "full", "none"}
        Lanczos reorthogonalisation (:func:`lanczos`). ``"partial"`` (default): against the
        stored basis only at the steps where Simon's omega recurrence finds orthogonality
        lost beyond ``sqrt(eps)``, which gives full reorthogonalisation's nodes and weights
        to rounding (tested against exact spectra) for a fraction of its basis reads (on the
        301k-parameter MLP Hessian, 23 of 100 steps). ``"full"``: at every step. ``"none"``:
        the plain three-term recurrence, memory ``16 n`` bytes per probe and no ``O(m n)``
        work per step, for operators whose basis does not fit; densities and traces of
        smooth functions stay accurate (Wasserstein-1 error against exact spectra tested),
        while ghost copies of converged outliers shift weight between copies.
    basis_dtype : {"operator", "float64"}
        The stored basis in the operator's dtype (default) or in float64 (:func:`lanczos`):
        for a float32 operator the default takes half the memory and reads of float64.
    basis_device : torch device or str, optional
        ``"cpu"`` keeps a CUDA operator's basis in pinned host memory (:func:`lanczos`).
    shard_basis : bool
        For a data-parallel operator (built with ``group=``): each rank stores its slice of
        every basis vector (:func:`lanczos`), so ``max_basis_bytes`` is per rank and a
        probe's basis costs ``1 / W`` of it on each of ``W`` ranks.

    Returns
    -------
    SpectralDensity

    Raises
    ------
    ValueError
        Bad counts, or an unknown ``reorth`` or ``basis_dtype``.
    hessntk.MemoryBudgetError
        A ``ValueError`` for one probe's basis larger than ``max_basis_bytes`` (it names
        the fixes).

    References
    ----------
    Ubaru, Chen, Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature",
    SIMAX 38(4), 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from hessntk.spectral import aslinearoperator
    >>> A = np.diag(np.linspace(1.0, 2.0, 50))
    >>> d = slq(aslinearoperator(A), num_probes=4, num_matvecs=20)
    >>> bool(abs(d.logdet().value - np.log(np.diag(A)).sum()) < 1e-8)
    True
    """
    n = op.shape[0]
    m = _check_num_matvecs(num_matvecs, n)
    refuse_low_precision(op._xp.eps(op.dtype), op.dtype, "Lanczos and SLQ")  # before sizing
    V0 = _start_vectors(op, v0, num_probes, seed)
    k = V0.shape[1]
    if reorth not in REORTH:
        raise ValueError(f"Expected reorth in {REORTH}; got {reorth!r}.")
    size = itemsize(basis_storage(op, basis_dtype))
    shard = basis_shard(op, shard_basis)
    width = n if shard is None else shard.width
    per_probe = size * width * m if reorth != "none" else 16 * n
    # without a basis, the recurrence's vectors live on the operator's device
    on = basis_device_of(op, basis_device) if reorth != "none" else None
    budget, allowed = basis_budget(op, on, max_basis_bytes)
    if per_probe > budget:
        smaller = ("basis_dtype='operator' (half the memory), "
                   if reorth != "none" and size > itemsize(op.dtype) else "")
        raise MemoryBudgetError(
            f"One probe's Lanczos basis needs {format_bytes(per_probe)} ({size} bytes x "
            f"{'n' if shard is None else 'the slice'} = {width} x {m} steps), more than "
            f"max_basis_bytes = {format_bytes(budget)} ({allowed}). Use "
            + ("reorth='none' (16 n bytes per probe; densities and smooth traces stay "
               "accurate), " if reorth != "none" else "")
            + f"{smaller}fewer num_matvecs, or a larger max_basis_bytes if the memory is "
            "there.", per_probe, budget, "slq")
    if probes_per_group is not None:
        group = min(count(probes_per_group, "probes_per_group"), k)
    else:
        group = group_size(k, per_probe, 0, max_basis_bytes, budget)
        group = -(-k // -(-k // group))  # balance the groups: 10 probes in 5 + 5, not 8 + 2
    settings = {"n": n, "num_matvecs": m, "num_probes": k, "probes_per_group": group,
                "seed": int(seed) if isinstance(seed, (int, np.integer)) and v0 is None else None,
                "reorth": reorth, "basis_dtype": basis_dtype}
    densities = []
    for g, start in enumerate(progress(range(0, k, group), "SLQ probe groups")):
        T = store.load(g, settings) if store is not None else None
        if T is None:
            T = lanczos(op, m, v0=V0[:, start : start + group], reorth=reorth,
                        basis_dtype=basis_dtype, basis_device=basis_device,
                        shard_basis=shard_basis, max_basis_bytes=max(
                            budget, group * per_probe))  # checked above
            if store is not None:
                store.save(g, settings, T)
        densities.append(SpectralDensity.from_tridiagonal(T, n, op._xp.eps(op.dtype)))
    return densities[0] if len(densities) == 1 else SpectralDensity.concatenate(densities)


@single_threaded_host_blas
def block_slq(
    op: LinearOperator,
    blocks: Sequence[Any],
    *,
    num_probes: int = 16,
    num_matvecs: int = 100,
    seed: Seed = 0,
    max_basis_bytes: int | None = None,
) -> list[SpectralDensity]:
    """SLQ of every diagonal block ``A_bb`` of ``op`` in one lockstep Lanczos pass.

    A probe supported on block ``b``'s coordinates stays there under the block-diagonal part
    ``blkdiag(A_bb)`` of ``A``, and ``blkdiag(A_bb) v = (A v)`` restricted to block ``b`` for
    such a ``v``: so the Lanczos runs of all blocks advance together, each step one
    ``matmat`` of the full operator over ``len(blocks) * num_probes`` columns, instead of one
    run (and one restricted operator) per block. Block ``b``'s probes are
    ``rademacher(n_b, num_probes, seed)`` on its coordinates; its steps are
    ``min(num_matvecs, n_b)``.

    Parameters
    ----------
    op : LinearOperator
    blocks : sequence of slices or 1-D integer index arrays
        Disjoint coordinate sets (e.g. ``HessianOperator.block_slices``).
    num_probes, num_matvecs, seed
        As for :func:`slq`, per block.
    max_basis_bytes : int, optional
        Memory allowed for the pass's Lanczos basis, ``s n m k B`` bytes for ``B`` blocks of
        ``k`` probes (``s`` bytes per entry of the operator's dtype); default a quarter of
        the free memory (:func:`lanczos`). Refused up front when it does not fit.

    Returns
    -------
    list of SpectralDensity
        One per block, of dimension ``n_b``, with ``min(num_matvecs, n_b)`` nodes per probe.

    Examples
    --------
    >>> import numpy as np
    >>> from hessntk.spectral import aslinearoperator
    >>> A = aslinearoperator(np.diag(np.arange(1.0, 7.0)))
    >>> low, high = block_slq(A, [slice(0, 3), slice(3, 6)], num_probes=2, num_matvecs=3)
    >>> round(low.trace().value, 10), round(high.trace().value, 10)  # exact: 3 nodes
    (6.0, 15.0)
    """
    from hessntk.spectral.traces import _as_blocks

    n = op.shape[0]
    index = _as_blocks(blocks, n)
    rows = [np.arange(n)[ix] for ix in index]
    k = count(num_probes, "num_probes")
    V0 = np.zeros((n, len(rows) * k))
    owner = np.repeat(np.arange(len(rows)), k)  # the block of every column
    for b, r in enumerate(rows):
        V0[r, b * k : (b + 1) * k] = rademacher(len(r), k, seed)
    steps = np.array([min(int(num_matvecs), len(r)) for r in rows])
    m = _check_num_matvecs(int(steps.max()), n)
    xp = op._xp
    mask = np.zeros((n, len(rows)))
    for b, r in enumerate(rows):
        mask[r, b] = 1.0
    mask_dev = xp.from_numpy(mask, xp.float64)

    def matmat(V: Any) -> Any:
        # Columns keep their block's coordinates only: blkdiag(A) V for block-supported V.
        col = np.argmax(xp.to_numpy(_block_norms(xp, V, mask_dev)), axis=0)
        return op.matmat(V) * xp.cast(mask_dev[:, xp.from_numpy(col)], op.dtype)

    blockwise = CallableOperator(n, op.dtype, op.device, matmat=matmat, backend=op.backend)
    eps = xp.eps(op.dtype)
    T = lanczos(blockwise, m, v0=V0, max_steps=np.repeat(steps, k),
                max_basis_bytes=max_basis_bytes)
    out = []
    for b, r in enumerate(rows):
        cols = owner == b
        dens = SpectralDensity.from_tridiagonal(_probes_of(T, cols), len(r))
        out.append(SpectralDensity(dens.nodes[:, : steps[b]], dens.weights[:, : steps[b]],
                                   len(r), dens.num_matvecs, dens.exact, eps))
    return out


def _block_norms(xp: Any, V: Any, mask: Any) -> Any:
    """``(num_blocks, k)``: the squared norm of every column of ``V`` within every block."""
    V64 = xp.cast(V, xp.float64)
    return xp.transpose(mask) @ (V64 * V64)


def _probes_of(T: Tridiagonal, cols: np.ndarray) -> Tridiagonal:
    """The tridiagonal matrices of some probes (products counted for those probes)."""
    return Tridiagonal(alpha=T.alpha[cols], beta=T.beta[cols], num_steps=T.num_steps[cols],
                       breakdown=T.breakdown[cols], num_matvecs=int(T.num_steps[cols].sum()))


class GroupStore(Protocol):
    """Where :func:`slq` keeps finished probe groups (e.g. a command line's resume folder)."""

    def load(self, group: int, settings: dict[str, Any]) -> Tridiagonal | None:
        """The saved Lanczos coefficients of ``group`` (None when there are none)."""

    def save(self, group: int, settings: dict[str, Any], T: Tridiagonal) -> None:
        """Keep the Lanczos coefficients of a finished ``group``."""
