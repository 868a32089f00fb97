"""Lanczos tridiagonalisation with full, partial or no reorthogonalisation, several probes
in lockstep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg import eigh_tridiagonal

from hessntk._checks import count, refuse_low_precision
from hessntk._memory import MemoryBudgetError, format_bytes, host_memory, operator_budget
from hessntk._progress import progress
from hessntk.spectral._backend import Array, itemsize
from hessntk.spectral._threads import single_threaded_host_blas
from hessntk.spectral.layout import even_bounds
from hessntk.spectral.operators import LinearOperator, matmat_checked, matmat_float64
from hessntk.spectral.orthogonality import OmegaRecurrence
from hessntk.spectral.probes import RademacherStream, Seed

# Lanczos breaks down (the Krylov space is invariant) when beta_j <= BREAKDOWN_FACTOR * eps *
# ||A||, with eps the machine epsilon of the product dtype: products carry errors of that size.
BREAKDOWN_FACTOR = 100.0


@dataclass(frozen=True)
class Tridiagonal:
    """Lanczos tridiagonal matrices ``T`` of one or more probes.

    Attributes
    ----------
    alpha : numpy.ndarray of shape (num_probes, m)
        Diagonals (float64). Entries past ``num_steps[i]`` are zero.
    beta : numpy.ndarray of shape (num_probes, m)
        ``beta[i, j]`` couples steps ``j`` and ``j + 1``; ``beta[i, num_steps[i] - 1]`` is the
        residual norm after the last step (0 after a breakdown). Float64.
    num_steps : numpy.ndarray of shape (num_probes,)
        Steps (products) taken per probe; fewer than ``m`` after a breakdown.
    breakdown : numpy.ndarray of shape (num_probes,)
        True where the Krylov space became invariant: that probe's quadrature is exact.
    num_matvecs : int
        Total products over all probes.
    num_reorth : int
        Steps at which new vectors were reorthogonalised against the basis (every step
        with ``reorth="full"``, none with ``"none"``, some with ``"partial"``: those where
        at least one probe was).
    basis : array of shape (num_probes, m, n) or None
        Orthonormal Lanczos vectors (in the ``basis_dtype`` of :func:`lanczos`, on the
        operator's backend), if requested; rows past ``num_steps[i]`` are zero.
    """

    alpha: np.ndarray
    beta: np.ndarray
    num_steps: np.ndarray
    breakdown: np.ndarray
    num_matvecs: int
    basis: Any = None
    num_reorth: int = 0

    @property
    def num_probes(self) -> int:
        return self.alpha.shape[0]

    def matrix(self, i: int = 0) -> np.ndarray:
        """Return the dense ``(m_i, m_i)`` tridiagonal matrix of probe ``i``."""
        m = int(self.num_steps[i])
        off = self.beta[i, : m - 1]
        return np.diag(self.alpha[i, :m]) + np.diag(off, 1) + np.diag(off, -1)

    def eigh(self, i: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Return the Ritz values (ascending) and eigenvectors of probe ``i``'s ``T``."""
        m = int(self.num_steps[i])
        if m == 1:
            return self.alpha[i, :1].copy(), np.ones((1, 1))
        return eigh_tridiagonal(self.alpha[i, :m], self.beta[i, : m - 1])

    def __repr__(self) -> str:
        return (
            f"Tridiagonal(num_probes={self.num_probes}, num_steps={self.num_steps.tolist()}, "
            f"num_matvecs={self.num_matvecs}, breakdowns={int(self.breakdown.sum())})"
        )


@single_threaded_host_blas
def lanczos(
    op: LinearOperator,
    num_matvecs: int,
    *,
    v0: Array | np.ndarray | None = None,
    num_probes: int = 1,
    seed: Seed = 0,
    return_basis: bool = False,
    max_steps: Any = None,
    reorth: str = "full",
    basis_dtype: str = "operator",
    basis_device: Any = None,
    shard_basis: bool = False,
    max_basis_bytes: int | None = None,
) -> Tridiagonal:
    """Run Lanczos from one or several start vectors, with or without reorthogonalisation.

    All probes advance in lockstep: each step is one ``op.matmat`` over the probes that have
    not broken down. Products run in the operator's dtype; the coefficients and the
    reorthogonalisation (classical Gram-Schmidt, twice) are float64 on the operator's device
    (the stored basis may be in the operator's dtype: ``basis_dtype``).
    A breakdown (invariant Krylov space) stops that probe early: its quadrature is exact.

    ``reorth="none"`` keeps only the three-term recurrence: two vectors per probe instead of
    the ``m`` of the basis, and no ``O(m n)`` work per step. The basis then loses
    orthogonality as Ritz values converge and "ghost" copies of them appear, which shifts
    weight between copies of one eigenvalue but keeps Gauss quadrature of smooth functions
    accurate (Greenbaum 1989; Knizhnerman 1996): fine for densities and traces of smooth
    functions (tested against exact spectra), not for eigenvectors, single eigenvalues or
    breakdown detection (a lost-orthogonality probe never breaks down).

    ``reorth="partial"`` keeps the basis but reads it only when Simon's omega recurrence
    (:class:`hessntk.spectral.orthogonality.OmegaRecurrence`, host work ``O(j)`` per step)
    estimates that some ``|q_i . q_{j+1}|`` exceeds ``sqrt(eps)`` of the products; then the
    new vector of that probe is reorthogonalised at that step and the next (each probe by
    its own estimate: the others' basis is not read).
    Semi-orthogonality gives the Ritz values, breakdowns and quadrature of full
    reorthogonalisation to ``eps ||A||`` (Simon 1984), tested against exact spectra; the
    stored basis is orthogonal to ``sqrt(eps)``, not to ``eps``.

    Parameters
    ----------
    op : LinearOperator
        Symmetric operator of size ``n``.
    num_matvecs : int
        Lanczos steps (= products) per probe, ``1 <= num_matvecs <= n``.
    v0 : array of shape (n,) or (n, num_probes), optional
        Start vector(s), normalised internally. Default: ``num_probes`` Rademacher vectors.
    num_probes : int
        Number of random start vectors when ``v0`` is None.
    seed : int or numpy.random.Generator
        Seed for the random start vectors.
    return_basis : bool
        Keep the Lanczos vectors in the result (``num_probes * m * n`` entries of
        ``basis_dtype``).
    max_steps : sequence of int, optional
        Steps of each probe, at most ``num_matvecs`` (e.g. the size of the subspace a probe
        lives in: :func:`hessntk.spectral.block_slq`). Default ``num_matvecs`` for all.
    reorth : {"full", "partial", "none"}
        Reorthogonalisation against the stored basis at every step, at the steps where the
        omega recurrence asks for it (both: memory ``s n m`` bytes per probe, ``s`` bytes per
        entry of ``basis_dtype``), or never (memory ``16 n`` bytes per probe).
    basis_dtype : {"operator", "float64"}
        Precision of the stored basis: the operator's dtype (default; for a float32
        operator half the memory and reads of float64, and as orthogonal as its products
        are accurate: the Ritz values and quadrature of a float64 basis to the products'
        rounding, tested against exact spectra) or float64. The coefficients, the
        recurrence and the current vectors stay float64 either way.
        The recurrence itself stays float64: in float32 its dot products over large ``n``
        lose more than the products' accuracy (measured: Ritz values 1e-4 off at
        ``n = 2e5``).
    basis_device : torch device or str, optional
        Where the stored basis lives (torch operators): default the operator's device;
        ``"cpu"`` keeps a CUDA operator's basis in host memory (pinned), so a basis larger
        than the GPU's memory fits. The reorthogonalisation then streams the basis to the
        device in blocks of at most ``BASIS_BLOCK_BYTES`` (one pass per Gram-Schmidt sweep),
        and reads it at host-to-device bandwidth: pair it with ``reorth="partial"``.
    shard_basis : bool
        For a data-parallel operator (one with a ``communicator``: built with ``group=``),
        keep on each rank only its slice of every Lanczos vector (entries ``[r n // W,
        (r + 1) n // W)`` of rank ``r`` of ``W``): the recurrence, the stored basis and
        the reorthogonalisation work on slices, so their memory and work per rank are
        divided by ``W``. Per step the next vectors are gathered once for the product (in
        the operator's dtype, the cast the product makes anyway: ``k n`` numbers), and the
        inner products are all-reduced (``k`` numbers, ``k j`` per Gram-Schmidt sweep).
        The numbers equal the unsharded run's to rounding (the inner products are summed
        in another order). A returned basis holds this rank's slice. What stays whole on
        every rank: the start vectors, the gathered next vectors and the product (``k n``
        each, transient), so a step needs ``~3 k n`` numbers beside the slices.
    max_basis_bytes : int, optional
        Memory allowed for the stored basis (``k m n s`` bytes with ``s`` bytes per entry of
        ``basis_dtype``, ``n`` the slice with ``shard_basis``; none with ``reorth="none"``
        unless ``return_basis``). Default: a quarter of the free memory where the basis
        lives (the operator's device, or the host for ``basis_device="cpu"``; the least over
        the ranks of a data-parallel operator). A basis that does not fit is refused up
        front, naming the fixes (:func:`hessntk.spectral.slq` runs its probes in groups
        that fit instead).

    Returns
    -------
    Tridiagonal

    Raises
    ------
    ValueError
        If ``num_matvecs`` is not in ``[1, n]``, ``v0`` has the wrong shape, or
        ``basis_device`` is given for a non-torch operator.
    hessntk.MemoryBudgetError
        A ``ValueError`` for a basis that does not fit in ``max_basis_bytes``.
    FloatingPointError
        If a product is not finite (the step and probe are named).

    Examples
    --------
    >>> import numpy as np
    >>> from hessntk.spectral import aslinearoperator
    >>> op = aslinearoperator(np.diag(np.arange(1.0, 6.0)))
    >>> T = lanczos(op, 5)
    >>> np.round(T.eigh()[0], 8)
    array([1., 2., 3., 4., 5.])
    """
    n = op.shape[0]
    m = _check_num_matvecs(num_matvecs, n)
    xp = op._xp
    refuse_low_precision(xp.eps(op.dtype), op.dtype, "Lanczos and SLQ")
    if reorth not in REORTH:
        raise ValueError(f"Expected reorth in {REORTH}; got {reorth!r}.")
    stored = basis_storage(op, basis_dtype)
    on = basis_device_of(op, basis_device)
    shard = basis_shard(op, shard_basis)
    width = n if shard is None else shard.width
    full = reorth == "full"
    V0 = _start_vectors(op, v0, num_probes, seed)
    k = V0.shape[1]
    keep_basis = reorth != "none" or return_basis
    if keep_basis:
        _check_basis_memory(op, k, m, width, stored, on, max_basis_bytes)
    # Rows are written before they are read (no zeroing pass over k m n entries); those past
    # a probe's last step are zeroed on return.
    basis = None if not keep_basis else (
        xp.empty((k, m, width), stored) if on is None else
        xp.empty_on((k, m, width), stored, on))
    omega = OmegaRecurrence(k, m, xp.eps(op.dtype)) if reorth == "partial" else None
    forced = np.zeros(k, dtype=bool)  # probes whose previous step found orthogonality lost
    num_reorth = 0
    q = xp.transpose(V0)  # (k, n), float64
    q = q / xp.norm(q, axis=1)[:, None]
    if shard is not None:  # each rank keeps its slice of every Lanczos vector
        q = q[:, shard.cols]
    first = q  # for the symmetry check of the second step
    q_prev = None  # the previous Lanczos vector of each active probe
    alpha = np.zeros((k, m))
    beta = np.zeros((k, m))
    num_steps = np.zeros(k, dtype=np.int64)
    breakdown = np.zeros(k, dtype=bool)
    active = np.arange(k)
    norm_est = np.zeros(k)  # running lower bound on ||A|| seen by each probe
    limits = np.full(k, m) if max_steps is None else np.minimum(
        np.asarray(max_steps, dtype=np.int64).reshape(k), m)
    tol = BREAKDOWN_FACTOR * xp.eps(op.dtype)
    total = 0
    # The casts to and from the products' dtype write into the previous step's arrays, which
    # are no longer read: a fresh (k, n) array per step costs its page faults (10 x 5M
    # entries: a float32 -> float64 cast took 74 ms into fresh memory, 26 ms into a reused
    # array; the float64 -> float32 one 50 and 21 ms).
    reuse = shard is None and op.dtype != xp.float64
    q_op = spare = None
    for j in progress(range(m), "Lanczos steps"):
        # q in the products' dtype, made once: the product's input and, for a basis in that
        # dtype, the stored row
        if shard is not None:
            q_op = shard.whole(q, op.dtype)
        elif reuse and _same_shape(q_op, q):
            q_op = xp.cast_into(q_op, q)
        else:
            q_op = xp.cast(q, op.dtype)
        row = q_op if shard is None and stored == op.dtype else xp.cast(q, stored)
        w = _apply(op, q_op, j, active, out=spare if reuse else None)
        total += len(active)
        if shard is not None:
            w = w[:, shard.cols]
        b_prev_host = beta[active, j - 1] if j > 0 else np.zeros(len(active))
        b_prev = xp.from_numpy(b_prev_host, xp.float64)
        # u.(A w) of the first two vectors, checked against beta_0 once ||A|| is estimated
        symmetry = xp.to_numpy(_dots(xp, first, w, shard)) if j == 1 else None
        if full and xp.name == "jax" and len(active) == k and stored == xp.float64 and (
                shard is None):
            basis, a, w, b = xp.lanczos_step(basis, q, w, b_prev, j)
        else:
            # Index the stored basis by a slice while every probe is active (a view, no copy).
            rows = slice(None) if len(active) == k else xp.from_numpy(active)
            if on is not None and len(active) < k:
                rows = xp.from_numpy(active).to(on)
            if basis is not None and on is not None:
                basis[rows, j] = row.to(on)
            elif basis is not None and xp.name == "jax" and len(active) == k:
                basis = xp.store_row(basis, j, row)
            elif basis is not None:
                basis = xp.set_index(basis, (rows, j), row)
            # w is ours when the product was cast to float64 (a new array): update in place
            a, w = xp.recurrence(q, w, q_prev if j > 0 else None, b_prev,
                                 reduce=None if shard is None else shard.sum,
                                 owned=op.dtype != xp.float64)
            if full:
                w = _reorthogonalise(xp, basis[rows, : j + 1], w, on is not None, shard=shard)
            b = _norms(xp, w, shard)
        alpha[active, j] = xp.to_numpy(a)
        b_host = xp.to_numpy(b)
        beta[active, j] = b_host
        # ||A q_j||^2 = b_prev^2 + a^2 + b^2 for orthonormal q (local orthogonality holds in
        # finite precision, Paige 1976): a lower bound on ||A|| without reading A q_j again.
        norm_est[active] = np.maximum(norm_est[active], np.sqrt(
            b_prev_host**2 + alpha[active, j] ** 2 + b_host**2))
        if symmetry is not None:
            check_symmetry_step(op, symmetry, beta[active, 0], norm_est[active], "Lanczos")
        if omega is not None:
            over = omega.advance(active, j, alpha, beta, norm_est[active])
            need = over | forced[active]  # each probe's own estimate, and the step after
            forced[:] = False
            forced[active] = over
            if need.all() and xp.name == "jax" and len(active) == k:
                w = xp.reorthogonalise_all(basis, w)  # rows past j are zero
            elif need.all():
                w = _reorthogonalise(xp, basis[rows, : j + 1], w, on is not None, shard=shard)
            else:
                for i in np.flatnonzero(need):
                    p = int(active[i])  # one probe's rows of the basis: a view, no gather
                    w = xp.set_index(w, i, _reorthogonalise(
                        xp, basis[p : p + 1, : j + 1], w[i : i + 1], on is not None,
                        shard=shard)[0])
            if need.any():
                b = _norms(xp, w, shard)
                b_host = xp.to_numpy(b)
                beta[active, j] = b_host
                omega.reset(active[need], j)
                num_reorth += 1
        elif full:
            num_reorth += 1
        num_steps[active] = j + 1
        broke = b_host <= tol * np.maximum(norm_est[active], np.finfo(np.float64).tiny)
        if broke.any():
            beta[active[broke], j] = 0.0
            breakdown[active[broke]] = True
        if j == m - 1:
            break
        keep = ~broke & (limits[active] > j + 1)
        if not keep.any():
            break
        if keep.all():  # no copies while every probe goes on (w is ours by now)
            retired = q_prev  # no longer read: the next product's float64 home
            q_prev, q = q, xp.divide_rows(w, b)
            spare = retired
        else:
            spare = None
            keep_dev = xp.from_numpy(np.flatnonzero(keep))
            q_prev = q[keep_dev]
            first = first[keep_dev] if j == 0 else first
            q = w[keep_dev] / b[keep_dev][:, None]
        active = active[keep]
    return Tridiagonal(
        alpha=alpha,
        beta=beta,
        num_steps=num_steps,
        breakdown=breakdown,
        num_matvecs=total,
        basis=_zero_unwritten(xp, basis, num_steps, m) if return_basis else None,
        num_reorth=num_reorth,
    )


def _zero_unwritten(xp: Any, basis: Array, num_steps: np.ndarray, m: int) -> Array:
    """The basis with the rows past each probe's last step set to zero (never written)."""
    for p in np.flatnonzero(num_steps < m):
        basis = xp.set_index(basis, (int(p), slice(int(num_steps[p]), None)), 0.0)
    return basis


def _check_basis_memory(op: LinearOperator, k: int, m: int, width: int, stored: Any,
                        on: Any, max_basis_bytes: int | None) -> None:
    """Refuse a stored Lanczos basis beyond ``max_basis_bytes`` (default a quarter of the
    free memory where it lives)."""
    need = k * m * width * itemsize(stored)
    budget, allowed = basis_budget(op, on, max_basis_bytes)
    if need <= budget:
        return
    raise MemoryBudgetError(
        f"Lanczos keeps a basis of {k} probe(s) x {m} steps x {width} entries "
        f"({itemsize(stored)} bytes each): {format_bytes(need)}, more than max_basis_bytes = "
        f"{format_bytes(budget)} ({allowed}). Use reorth='none' (no basis; densities and "
        "smooth traces stay accurate), fewer probes or num_matvecs, basis_device='cpu' for "
        "a CUDA operator, shard_basis=True for a data-parallel one, or a larger "
        "max_basis_bytes if the memory is there.", need, budget, "lanczos")


def basis_budget(op: LinearOperator, on: Any, max_basis_bytes: int | None) -> tuple[int, str]:
    """Bytes a Lanczos basis may take (``max_basis_bytes``, or a quarter of the free memory
    where it lives: the operator's device, or the host for ``basis_device="cpu"``; for a
    data-parallel operator the least over its ranks, so that all size and refuse alike) and
    how a refusal names that budget (:func:`hessntk._memory.operator_budget`)."""
    on_host = on is not None and on.type == "cpu"
    return operator_budget(op, max_basis_bytes, host_memory if on_host else None,
                           "max_basis_bytes")


#: Reorthogonalisation options of :func:`lanczos` and :func:`hessntk.spectral.slq`.
REORTH = ("full", "partial", "none")


def check_symmetry_step(op: LinearOperator, uAw: np.ndarray, wAu: np.ndarray,
                        norm: np.ndarray, where: str) -> None:
    """Refuse a non-symmetric operator from two Krylov coefficients (no extra product).

    With ``w = A u / ||.||`` after the first step, ``u^T (A w)`` (second product) must equal
    ``w^T (A u) = beta_0`` up to rounding: ``sqrt(eps) ||A||``, with ``eps`` at least
    float32's (float64 models often compute parts in float32: transformers' losses and
    norms), so it catches gross asymmetry only; :func:`check_symmetric` is the strict check.
    Set ``op.assume_symmetric = True`` to skip it.
    """
    if op.assume_symmetric:
        return
    eps = max(op._xp.eps(op.dtype), float(np.finfo(np.float32).eps))
    tol = np.sqrt(eps) * np.maximum(norm, np.finfo(np.float64).tiny)
    bad = np.abs(uAw - wAu) > tol
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"Expected a symmetric operator; got u.(A w) = {uAw[i]:.6g} and w.(A u) = "
            f"{wAu[i]:.6g} for the first two {where} vectors (difference {abs(uAw[i] - wAu[i]):.3g}"
            f" > {tol[i]:.3g}). Lanczos, SLQ and eigsh give wrong numbers for "
            "a non-symmetric operator: check it with hessntk.spectral.check_symmetric, or set "
            "op.assume_symmetric = True to skip this check (it costs one dot product per probe, "
            "no extra product)."
        )


def _check_num_matvecs(num_matvecs: int, n: int) -> int:
    m = count(num_matvecs, "num_matvecs")
    if m > n:
        raise ValueError(
            f"Expected 1 <= num_matvecs <= n = {n}; got {num_matvecs}. More Lanczos steps "
            "than the dimension add nothing: num_matvecs = n already gives the exact spectrum."
        )
    return m


def _start_vectors(
    op: LinearOperator, v0: Array | np.ndarray | None, num_probes: int, seed: Seed
) -> Array:
    """Return float64 start vectors of shape (n, k) on the operator's backend."""
    xp = op._xp
    n = op.shape[0]
    if v0 is None:
        return xp.rademacher(RademacherStream(n, seed), count(num_probes, "num_probes"),
                             xp.float64)
    if isinstance(v0, np.ndarray):
        V0 = xp.from_numpy(v0.astype(np.float64))
    else:
        V0 = xp.cast(v0, xp.float64)
    if V0.ndim == 1:
        V0 = V0[:, None]
    if V0.ndim != 2 or V0.shape[0] != n:
        raise ValueError(f"Expected v0 of shape ({n},) or ({n}, k); got {tuple(v0.shape)}.")
    norms = xp.to_numpy(xp.norm(V0, axis=0))
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("Expected non-zero, finite start vectors v0; got a zero or non-finite.")
    return V0


def _apply(op: LinearOperator, q: Array, step: int, active: np.ndarray,
           out: Array | None = None) -> Array:
    """Return ``A q`` for rows ``q`` (k, n), float64 or in the products' dtype, as float64
    (written into ``out``, a float64 (k, n) array of the caller's, when given)."""
    xp = op._xp
    where = f"Lanczos step {step} (probes {active.tolist()})"
    if out is None or not _same_shape(out, q):
        return xp.transpose(matmat_float64(op, xp.transpose(q), where))
    return xp.cast_into(out, xp.transpose(matmat_checked(op, xp.transpose(q), where)))


def _same_shape(a: Array | None, b: Array) -> bool:
    return a is not None and tuple(a.shape) == tuple(b.shape)


BASIS_DTYPES = ("float64", "operator")


def basis_storage(op: LinearOperator, basis_dtype: str) -> Any:
    """The dtype a Lanczos basis is stored in (``basis_dtype`` of :func:`lanczos`)."""
    if basis_dtype not in BASIS_DTYPES:
        raise ValueError(f"Expected basis_dtype in {BASIS_DTYPES}; got {basis_dtype!r}.")
    return op._xp.float64 if basis_dtype == "float64" else op.dtype


#: Largest block of an off-device basis moved to the device at once (:func:`lanczos`).
BASIS_BLOCK_BYTES = 2**28


def basis_device_of(op: LinearOperator, basis_device: Any) -> Any:
    """The torch device of an off-device basis, or None for the operator's own device."""
    if basis_device is None:
        return None
    if op.backend != "torch":
        raise ValueError(
            f"Expected basis_device=None for a {op.backend} operator; got {basis_device!r}. "
            "An off-device basis is for torch operators on CUDA; use reorth='partial' or "
            "'none', or basis_dtype='operator', to make the basis fit."
        )
    import torch

    return torch.device(basis_device)


@dataclass(frozen=True)
class BasisShard:
    """This rank's slice ``cols`` of every Lanczos vector, and the ranks' collectives."""

    communicator: Any
    cols: slice
    counts: tuple[int, ...]

    @property
    def width(self) -> int:
        return self.cols.stop - self.cols.start

    def sum(self, x: Array) -> Array:
        """Partial sums (dot products over this rank's slice) summed over the ranks."""
        return self.communicator.sum(x, "a Lanczos inner product")

    def whole(self, q: Array, dtype: Any) -> Array:
        """The rows ``q`` gathered from their slices, in ``dtype`` (the product's: the
        cast the product would make anyway, so no precision is lost on the wire)."""
        return self.communicator.gather(q.to(dtype), self.counts, "the next Lanczos vector",
                                        dim=1)


def _dots(xp: Any, a: Array, b: Array, shard: BasisShard | None) -> Array:
    """Row-wise dot products of (possibly sharded) rows."""
    d = xp.row_dots(a, b)
    return d if shard is None else shard.sum(d)


def _norms(xp: Any, w: Array, shard: BasisShard | None) -> Array:
    """Row norms of (possibly sharded) rows."""
    return xp.norm(w, axis=1) if shard is None else _dots(xp, w, w, shard) ** 0.5


def basis_shard(op: LinearOperator, shard_basis: bool) -> BasisShard | None:
    """The slice of a sharded basis this rank keeps (``shard_basis`` of :func:`lanczos`)."""
    if not shard_basis:
        return None
    comm = getattr(op, "communicator", None)
    if comm is None or op.backend != "torch":
        raise ValueError(
            f"Expected a data-parallel torch operator (built with group=) for "
            f"shard_basis=True; got {type(op).__name__} without a communicator. Build it with "
            "group=torch.distributed.group.WORLD, or use shard_basis=False."
        )
    n, size = op.shape[0], comm.size
    bounds = even_bounds(n, size)
    counts = tuple(bounds[r + 1] - bounds[r] for r in range(size))
    return BasisShard(comm, slice(bounds[comm.rank], bounds[comm.rank + 1]), counts)


def _reorthogonalise(xp: Any, Q: Array, w: Array, streamed: bool = False,
                     block_bytes: int | None = None, shard: BasisShard | None = None) -> Array:
    """Remove from each row ``w[i]`` its components along ``Q[i]`` (k, j, n).

    Classical Gram-Schmidt, repeated once more only where the first pass cancelled much of
    ``w`` (the Daniel-Gragg-Kaufman-Stewart criterion, ``||w'|| < ||w|| / sqrt(2)``): "twice
    is enough", and once is enough when nothing cancelled. The products are ordered so that
    the stored basis is read contiguously. ``streamed``: ``Q`` lives on another device and
    is moved to ``w``'s in blocks of basis vectors of at most ``block_bytes``
    (:data:`BASIS_BLOCK_BYTES`); classical Gram-Schmidt's coefficients depend on ``w``
    only, so each block is used once per sweep. ``shard``: ``Q`` and ``w`` hold this rank's
    slices; the partial inner products are summed over the ranks (one all-reduce of ``k j``
    numbers per sweep, per block when streamed), the correction stays local.
    """
    before = xp.to_numpy(_norms(xp, w, shard))
    # Sharded: the widest slice sets the block, so every rank makes the same collectives.
    width = Q.shape[2] if shard is None else max(shard.counts)
    per_vector = Q.shape[0] * width * Q.element_size() if streamed else 1
    step = max(1, (block_bytes or BASIS_BLOCK_BYTES) // per_vector) if streamed else Q.shape[1]
    for sweep in range(2):
        v = xp.cast(w, Q.dtype)  # no-op unless the basis is in the operator's dtype
        correction = None
        for start in range(0, Q.shape[1], step):
            block = Q[:, start : start + step]
            if streamed:
                block = block.to(w.device, non_blocking=True)
            coeffs = v[:, None, :] @ xp.transpose(block)  # (k, 1, j)
            if shard is not None:
                coeffs = shard.sum(coeffs)
            part = (coeffs @ block)[:, 0, :]
            correction = part if correction is None else correction + part
        w = w - xp.cast(correction, w.dtype)
        if sweep == 0 and np.all(xp.to_numpy(_norms(xp, w, shard)) >= before / np.sqrt(2.0)):
            break
    return w
