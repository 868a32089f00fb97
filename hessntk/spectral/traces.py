"""Randomised trace, block-trace and diagonal estimators (docs/theory.md section 4).

All estimators draw Rademacher probes from :func:`hessntk.spectral.probes.rademacher`, apply
the operator with one ``matmat`` per stage, and do the small projected linear algebra on the
host in float64. Per-block traces (a partition of the coordinates, e.g. the parameter tensors
of a model) come from the same products as the total: for a coordinate projector ``D_b``,
``tr(D_b A) = tr(D_b A Q Q^T) + tr(P D_b A P)`` with ``P = I - Q Q^T`` for any orthonormal ``Q``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from hessntk._checks import count
from hessntk._memory import MemoryBudgetError, format_bytes, group_size, operator_budget
from hessntk.spectral._backend import Array, Backend, itemsize
from hessntk.spectral._threads import single_threaded_host_blas
from hessntk.spectral.operators import LinearOperator, matmat_checked, matmat_float64
from hessntk.spectral.probes import RademacherStream, Seed, as_generator
from hessntk.spectral.qr import tall_qr
from hessntk.spectral.results import (
    BlockEstimate,
    Estimate,
    mean_block_estimate,
)

TRACE_METHODS = ("xtrace", "xnystrace", "hutchpp", "hutchinson", "exact")
_MIN_MATVECS = {"xtrace": 4, "xnystrace": 2, "hutchpp": 3, "hutchinson": 1, "exact": 0}

Blocks = Sequence[slice | np.ndarray | Sequence[int]]


@dataclass(frozen=True)
class DiagonalEstimate:
    """Estimate of ``diag(A)``.

    Attributes
    ----------
    values : numpy.ndarray of shape (n,)
    stderrs : numpy.ndarray of shape (n,)
    num_matvecs : int
    method : str
    """

    values: np.ndarray
    stderrs: np.ndarray
    num_matvecs: int
    method: str

    def __repr__(self) -> str:
        return (
            f"DiagonalEstimate(n={self.values.size}, num_matvecs={self.num_matvecs}, "
            f"method={self.method!r})"
        )


@single_threaded_host_blas
def trace(
    op: LinearOperator,
    *,
    num_matvecs: int,
    method: str = "xtrace",
    seed: Seed = 0,
    blocks: Blocks | None = None,
    max_memory: int | None = None,
) -> Estimate | BlockEstimate:
    """Estimate ``tr(A)``, or the traces of diagonal blocks ``tr(A_bb)``, from products.

    Parameters
    ----------
    op : LinearOperator
        Symmetric operator of size ``n``.
    num_matvecs : int
        Product budget, ``<= n`` (with ``n`` products use ``method="exact"``).
    method : {"xtrace", "xnystrace", "hutchpp", "hutchinson", "exact"}
        ``"xtrace"`` (Epperly, Tropp and Webber 2024; any symmetric ``A``; the default),
        ``"xnystrace"`` (same paper; positive semi-definite ``A`` only, single pass),
        ``"hutchpp"`` (Meyer, Musco, Musco and Woodruff 2021), ``"hutchinson"``
        (Girard-Hutchinson), or ``"exact"`` (``n`` products with unit vectors).
    seed : int or numpy.random.Generator
        Seed of the Rademacher probes.
    blocks : sequence of slices or 1-D integer index arrays, optional
        Disjoint coordinate sets; returns the trace of each diagonal block, all estimated
        from the same products as the total.
    max_memory : int, optional
        Bytes the estimator's vectors of length ``n`` may take at once (probes, sketches and
        their products; the operator's own memory comes on top). Default: a quarter of the
        free memory of the operator's device (``MemAvailable`` on the host,
        ``torch.cuda.mem_get_info`` on CUDA; the least over the ranks of a data-parallel
        operator). "hutchinson" (and "exact", by unit vectors)
        takes its probes in groups of at most ``max_memory`` bytes, or with the default of
        at most ``hessntk._memory.DEFAULT_GROUP_BYTES`` (2 GiB) where a quarter of the free
        memory allows it: a fixed size, so the numbers do not move with the free memory
        wherever 8 GiB are free (other groupings agree to the products' rounding). The others
        hold, with ``s`` bytes per entry of the operator's dtype: "xtrace" ``2 m n s``
        bytes (four ``n x m/2`` arrays), "hutchpp" about ``4/3 m n s``, "xnystrace"
        ``32 m n`` (float64), and are refused with the fixes when that exceeds
        ``max_memory``.
        (A 124M-parameter float32 model with ``num_matvecs=100``: 99 GB for "xtrace",
        2 x 496 MB per Hutchinson probe.)

    Returns
    -------
    Estimate
        ``value``, ``stderr`` and ``num_matvecs`` (products actually used). ``stderr`` is
        the sample standard deviation of the per-probe estimates over ``sqrt(#probes)``:
        exact for "hutchinson" (iid probes) and for the residual part of "hutchpp"; for
        "xtrace"/"xnystrace" the per-probe leave-one-out estimates are exchangeable but
        correlated, and this (the paper's) error estimate measured 1.1-2x too small on test
        spectra: judge these with about 4 standard errors. 0 for "exact".
    BlockEstimate
        When ``blocks`` is given: per-block values and standard errors.

    Notes
    -----
    The range sketches of "xtrace" and "hutchpp" are orthonormalised by CholeskyQR (one pass
    when its loss of orthogonality is below the products' unit roundoff, else two), or by
    Householder QR when the sketch is too ill-conditioned for it
    (:func:`hessntk.spectral.qr.tall_qr`). The total of "xtrace" uses the symmetry of ``A``:
    ``Omega^T A Q = (A Omega)^T Q = R^T``, one Gram product fewer than the paper's algorithm.
    Probes, sketches and ``Q`` of "xtrace" and "hutchpp" are in the operator's dtype, with
    float64 Grams: for a float32 model half the memory of float64 sketches and no float64
    copies, with the same estimates to the products' rounding (tested on real
    architectures). Below float32 they are float64.

    Raises
    ------
    ValueError
        For an unknown method, a budget too small for the method or larger than ``n``,
        overlapping or out-of-range blocks, or (xnystrace) an operator that is not PSD.
    hessntk.MemoryBudgetError
        A ``ValueError`` for vectors that do not fit in ``max_memory`` (it names the fixes).

    References
    ----------
    Epperly, Tropp, Webber, "XTrace: making the most of every sample in stochastic trace
    estimation", SIMAX 45(1), 2024. Meyer, Musco, Musco, Woodruff, "Hutch++", SOSA 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from hessntk.spectral import aslinearoperator
    >>> A = np.outer(np.arange(10.0), np.arange(10.0))  # rank one: XTrace is exact
    >>> round(trace(aslinearoperator(A), num_matvecs=4).value, 8)
    285.0
    """
    if method not in TRACE_METHODS:
        raise ValueError(f"Expected method in {TRACE_METHODS}; got {method!r}.")
    n = op.shape[0]
    m = n if method == "exact" else count(num_matvecs, "num_matvecs")
    if method != "exact" and not _MIN_MATVECS[method] <= m <= n:
        raise ValueError(
            f"Expected {_MIN_MATVECS[method]} <= num_matvecs <= n = {n} for method "
            f"{method!r}; got {num_matvecs}. With n products use method='exact'."
        )
    index = _as_blocks(blocks, n)
    rng = as_generator(seed)
    xp = op._xp
    budget, allowed = operator_budget(op, max_memory)
    per = 2 * n * itemsize(xp.float64 if method == "exact" else op.dtype)
    group = 1
    if method in ("hutchinson", "exact"):  # probes or unit vectors in groups
        cap = m if method == "hutchinson" else (op.block_size or 64)
        group = min(cap, group_size(m, per, 0, max_memory, budget))
    _check_memory(op, method, m, budget, allowed)
    if method == "exact":
        samples = _exact(op, index, group)
        values = samples[:, 0]
        stderrs = np.zeros_like(values)
        result = BlockEstimate(values, stderrs, n, method)
    else:
        if method == "hutchinson":  # probes in groups that fit the budget
            samples, used, offset = _hutchinson(op, xp, m, rng, index, group)
        else:  # the others hold their sketches whole (checked above)
            fn = {"hutchpp": _hutchpp, "xtrace": _xtrace, "xnystrace": _xnystrace}[method]
            samples, used, offset = fn(op, xp, m, rng, index)
        result = mean_block_estimate(samples, used, method)
        result = BlockEstimate(result.values + offset, result.stderrs, used, method)
    if blocks is None:
        return Estimate(float(result.values[0]), float(result.stderrs[0]), result.num_matvecs,
                        method)
    return result


@single_threaded_host_blas
def diagonal(
    op: LinearOperator, *, num_matvecs: int, method: str = "hutchpp", seed: Seed = 0,
    max_memory: int | None = None,
) -> DiagonalEstimate:
    """Estimate ``diag(A)`` from products.

    ``"hutchinson"``: mean of ``z * (A z)`` over Rademacher ``z``. ``"hutchpp"``: the exact
    ``diag(A Q Q^T)`` of a rank-``m/3`` range sketch plus a Hutchinson estimate of
    ``diag(A (I - Q Q^T))`` (unbiased; Baston and Nakatsukasa 2022, "Stochastic diagonal
    estimation").

    Parameters
    ----------
    op : LinearOperator
    num_matvecs : int
        Product budget, ``<= n``.
    method : {"hutchpp", "hutchinson"}
    seed : int or numpy.random.Generator
    max_memory : int, optional
        Bytes the estimator's arrays of ``n`` entries may take at once (the operator's own
        memory comes on top). Default: a quarter of the free memory of the operator's device
        (the least over the ranks of a data-parallel operator). Both hold 10 float64
        vectors of length ``n`` for the running mean and variance (the groups' moments
        over row blocks of at most ``n`` float64 entries, merged; only these ``n``-vectors
        come back to the host). "hutchinson" takes its probes in
        groups as :func:`trace` does (of ``max_memory``, or of 2 GiB by default where the
        free memory allows; groupings agree to the products' rounding), ``3 b n`` bytes
        per probe (the probe, its product and their entrywise product, ``b`` bytes per
        entry of the operator's dtype); "hutchpp" holds its sketch whole,
        ``max(3 s, s + 4 g) b n`` bytes with ``s = num_matvecs // 3`` sketch vectors (the
        probes, ``Q`` and ``A Q``) and ``g = num_matvecs - 2 s`` residual probes (``Q``,
        the probes, their projections, its products and the entrywise products), and is
        refused with the fixes when that exceeds ``max_memory``.

    Returns
    -------
    DiagonalEstimate

    Raises
    ------
    ValueError
        For an unknown method or a budget outside ``[1, n]`` (``[3, n]`` for "hutchpp").
    hessntk.MemoryBudgetError
        A ``ValueError`` for arrays that do not fit in ``max_memory`` (it names the fixes).

    Examples
    --------
    >>> import numpy as np
    >>> from hessntk.spectral import aslinearoperator
    >>> A = np.diag([1.0, 2.0, 3.0])  # diagonal: z * (A z) = diag(A) for +-1 probes
    >>> d = diagonal(aslinearoperator(A), num_matvecs=2, method="hutchinson")
    >>> np.round(d.values, 12)
    array([1., 2., 3.])
    """
    if method not in ("hutchpp", "hutchinson"):
        raise ValueError(f"Expected method 'hutchpp' or 'hutchinson'; got {method!r}.")
    n = op.shape[0]
    m = count(num_matvecs, "num_matvecs")
    lo = 3 if method == "hutchpp" else 1
    if not lo <= m <= n:
        raise ValueError(f"Expected {lo} <= num_matvecs <= n = {n}; got {num_matvecs}.")
    xp = op._xp
    rng = as_generator(seed)
    budget, allowed = operator_budget(op, max_memory)
    group = _check_diagonal_memory(op, method, m, budget, allowed, max_memory)
    moments = _RunningMoments(xp, n)
    if method == "hutchpp":
        s = m // 3
        Q, AQ = _range_sketch(op, xp, s, rng)
        exact = xp.concat([xp.sum(xp.cast(AQ[rows] * Q[rows], xp.float64), axis=1)
                           for rows in _vector_blocks(xp, Q)])
        del AQ
        G = _probes(xp, n, m - 2 * s, rng, Q.dtype)
        # out of place: the estimator needs both G and (I - Q Q^T) G
        AG = _apply(op, xp, G - Q @ xp.from_numpy(xp.gram(Q, G), Q.dtype))
        moments.add(G * AG)
        values = xp.to_numpy(exact + moments.mean)
    else:
        stream = RademacherStream(n, rng)
        for start in range(0, m, group):
            Z = xp.rademacher(stream, min(group, m - start), op.dtype)
            # z_i (A z)_i is exact in the products' dtype
            moments.add(Z * matmat_checked(op, Z, "diagonal estimation"))
            del Z  # before the next group's probes
        values = xp.to_numpy(moments.mean)
    k = moments.count
    stderrs = (np.sqrt(xp.to_numpy(moments.m2) / (k - 1) / k) if k > 1
               else np.full(n, np.nan))
    return DiagonalEstimate(values, stderrs, m, method)


class _RunningMoments:
    """Per-row count, mean and sum of squared deviations of samples that arrive in groups of
    columns, float64 on the backend: each group batched over row blocks (:func:`_vector_blocks`,
    so that no float64 temporary exceeds one ``n``-vector), merged by Chan, Golub and
    LeVeque's update ("Updating formulae and a pairwise algorithm for computing sample
    variances", 1979)."""

    def __init__(self, xp: Backend, n: int) -> None:
        self.xp, self.count = xp, 0
        self.mean = self.m2 = xp.zeros((n,))

    def add(self, samples: Array) -> None:
        xp = self.xp
        g = samples.shape[1]
        means, m2s = [], []
        for rows in _vector_blocks(xp, samples):
            x = xp.cast(samples[rows], xp.float64)
            means.append(xp.sum(x, axis=1) / g)
            x = x - means[-1][:, None]
            m2s.append(xp.sum(x * x, axis=1))
            del x
        mean, m2 = xp.concat(means), xp.concat(m2s)
        del means, m2s
        total = self.count + g
        delta = mean - self.mean
        del mean
        self.mean = self.mean + delta * (g / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * g / total)
        self.count = total


def _vector_blocks(xp: Backend, X: Array) -> Any:
    """Row slices of (n, g) ``X`` whose float64 blocks take at most one float64 ``n``-vector
    (and the backend's block size): the temporaries of a row-wise reduction stay within the
    memory statement of :func:`diagonal` whatever ``g`` and the device."""
    return xp._row_blocks(X, X, limit=8 * X.shape[0])


#: Float64 vectors of length n that :func:`diagonal` holds besides its probes and sketches:
#: the running mean and variance, a group's moments (block results and their concatenation),
#: three row blocks of at most one vector each, the merge's temporaries and Hutch++'s exact
#: part (9 at the measured peak).
_DIAGONAL_VECTORS = 10


def _check_diagonal_memory(op: LinearOperator, method: str, m: int, budget: int,
                           allowed: str, max_memory: int | None) -> int:
    """Refuse a diagonal estimator that does not fit in ``budget`` bytes; return the
    Hutchinson probes per group."""
    n = op.shape[0]
    size = itemsize(op.dtype if method == "hutchinson" else _sketch_dtype(op))
    per_probe, fixed = 3 * size * n, _DIAGONAL_VECTORS * 8 * n
    group = group_size(m, per_probe, fixed, max_memory, budget)
    if method == "hutchinson":  # its groups are sized within the budget
        need = per_probe + fixed
        what, fixes = "one probe, its product and their entrywise product", "Give"
    else:
        s, g = m // 3, m - 2 * (m // 3)
        need = max(3 * s, s + 4 * g) * size * n + fixed
        what = f"the sketch and residual probes of num_matvecs={m}"
        fixes = ("Use method='hutchinson' (it takes its probes in groups that fit), fewer "
                 "num_matvecs, or give")
    if need <= budget:
        return group
    raise MemoryBudgetError(
        f"diagonal(method={method!r}) holds {format_bytes(need)} of arrays of n = {n} "
        f"entries for {what} and {_DIAGONAL_VECTORS} float64 vectors of running moments, "
        f"more than max_memory = {format_bytes(budget)} ({allowed}). {fixes} a larger "
        "max_memory if the memory is there.", need, budget, "diagonal")


# -- estimators: each returns per-block per-probe samples (B, k), products used, offset -----


def _hutchinson(op, xp, m, rng, index, group):
    n = op.shape[0]
    stream = RademacherStream(n, rng)
    samples = []
    for start in range(0, m, group):
        Z = xp.rademacher(stream, min(group, m - start), op.dtype)  # A Z needs no cast
        samples.append(_block_dots(xp, Z, matmat_checked(op, Z, "trace estimation"), index))
        del Z  # before the next group's probes
    return np.concatenate(samples, axis=1), m, 0.0


def _hutchpp(op, xp, m, rng, index):
    s = m // 3
    Q, AQ = _range_sketch(op, xp, s, rng)
    G = _probes(xp, op.shape[0], m - 2 * s, rng, Q.dtype)
    X = xp.subtract_matmul(G, Q, xp.from_numpy(xp.gram(Q, G), G.dtype))  # (I - Q Q^T) G
    AX = _apply(op, xp, X)
    exact = _block_dots(xp, Q, AQ, index).sum(axis=1)
    return _block_dots(xp, X, AX, index), m, exact


def _xtrace(op, xp, m, rng, index):
    # Exchangeable leave-one-out estimator (Epperly, Tropp, Webber 2024, Sec. 2): for each
    # probe i, Q_(i) spans A Omega without column i; Q_(i) Q_(i)^T = Q (I - s_i s_i^T) Q^T with
    # s_i the unit vector orthogonal to R's other columns (Y = A Omega = Q R).
    s = m // 2
    Om = _probes(xp, op.shape[0], s, rng, _sketch_dtype(op))
    Y = _apply(op, xp, Om)
    Q, R, qr_method = _orthonormalise(op, xp, Y)
    Z = _apply(op, xp, Q)
    S = _leave_one_out_directions(R)
    if _is_whole(index):
        # For symmetric A the Grams of Y and of Om against Z follow from R: Q^T Y = R and
        # Om^T Z = (A Om)^T Q = R^T; and Q^T Om = R^-T Y^T Om when R is well conditioned
        # (CholeskyQR is used only then).
        OY = xp.gram(Om, Y)
        if qr_method == "householder":
            W = xp.gram(Q, Om)
        else:
            W = scipy.linalg.solve_triangular(R, OY.T, trans="T")
        grams = [(OY, R.T, R, xp.gram(Q, Z))]
    else:
        W = xp.gram(Q, Om)  # w_i = Q^T omega_i
        grams = _block_grams(xp, index, (Om, Y), (Om, Z), (Q, Y), (Q, Z))
    c = np.sum(S * W, axis=0)
    Vm = W - S * c  # v_i = w_i - (s_i . w_i) s_i, so Q_(i) Q_(i)^T omega_i = Q v_i
    samples = []
    for OY, OZ, QY, C in grams:
        t = np.trace(C) - _diag_quad(S, C, S)
        t += np.diag(OY) - _diag_quad(np.eye(s), OZ, Vm) - _diag_quad(Vm, QY, np.eye(s))
        t += _diag_quad(Vm, C, Vm)
        samples.append(t)
    return np.array(samples), 2 * s, 0.0


def _xnystrace(op, xp, m, rng, index):
    # Leave-one-out Nystrom (Epperly, Tropp, Webber 2024, Sec. 3) of A + nu I, whose trace
    # is tr(A) + n nu; nu is a tiny stabilising shift subtracted exactly at the end.
    n = op.shape[0]
    Om = _probes(xp, n, m, rng, xp.float64)  # float64: the shift nu is below float32's rounding
    Y = matmat_float64(op, Om, "trace estimation")
    nu = np.sqrt(n) * np.finfo(np.float64).eps * float(xp.to_numpy(xp.norm(Y.reshape(-1), 0)))
    Y = Y + nu * Om
    G = xp.to_numpy(xp.transpose(Om) @ Y)
    G = (G + G.T) / 2
    try:
        L = scipy.linalg.cholesky(G, lower=True)
    except np.linalg.LinAlgError as err:
        raise ValueError(
            "Expected a positive semi-definite operator for method='xnystrace'; "
            "Omega^T A Omega is not positive definite. Use method='xtrace'."
        ) from err
    # Stable form (Tropp et al.'s Nystrom, B = Y L^{-T}): A_nu's Nystrom is B B^T, and with
    # F = L^{-1}, u_i = F e_i / ||F e_i||, the leave-one-out terms are
    # T_i = ||B||_F^2 - ||B u_i||^2 + (omega_i . B u_i) / ||F e_i||.
    F = scipy.linalg.solve_triangular(L, np.eye(m), lower=True)
    Fn = np.linalg.norm(F, axis=0)
    U = F / Fn
    B = Y @ xp.from_numpy(np.ascontiguousarray(F.T), xp.float64)
    samples, offsets = [], []
    for BB, OB, size in _block_grams(xp, index, (B, B), (Om, B), sizes=True):
        t = np.trace(BB) - _diag_quad(U, BB, U) + _diag_quad(np.eye(m), OB, U) / Fn
        samples.append(t)
        offsets.append(-nu * size)
    return np.array(samples), m, np.array(offsets)


def _exact(op: LinearOperator, index: list[Any], b: int) -> np.ndarray:
    xp = op._xp
    n = op.shape[0]
    diag = np.zeros(n)
    for i in range(0, n, b):
        cols = np.arange(i, min(i + b, n))
        E = np.zeros((n, len(cols)))
        E[cols, np.arange(len(cols))] = 1.0
        diag[cols] = xp.to_numpy(_apply(op, xp, xp.from_numpy(E)))[cols, np.arange(len(cols))]
    return np.array([[diag[ix].sum()] for ix in index])


# -- helpers ------------------------------------------------------------------------------


def _check_memory(op: LinearOperator, method: str, m: int, budget: int, allowed: str
                  ) -> None:
    """Refuse an estimator whose vectors of length ``n`` do not fit in ``budget`` bytes
    (Hutchinson and exact: one probe or unit vector and its product; their groups are
    sized within the budget)."""
    n = op.shape[0]
    s, g = m // 3, m - 2 * (m // 3)  # Hutch++'s sketch and residual probes
    vectors = {"hutchinson": 2, "hutchpp": max(3 * s, 2 * s + 2 * g), "xtrace": 4 * (m // 2),
               "xnystrace": 4 * m, "exact": 2}[method]
    dtype = {"xnystrace": op._xp.float64, "exact": op._xp.float64,
             "hutchinson": op.dtype}.get(method, _sketch_dtype(op))
    need = vectors * n * itemsize(dtype)
    if need <= budget:
        return
    what, fixes = {
        "hutchinson": ("one probe and its product", "Give"),
        "exact": ("one unit vector and its product", "Use method='hutchinson', or give"),
    }.get(method, (f"num_matvecs={m}", "Use method='hutchinson' (it takes its probes in "
                   "groups that fit), fewer num_matvecs, or give"))
    raise MemoryBudgetError(
        f"trace(method={method!r}) holds {vectors} vectors of n = {n} entries in "
        f"{_dtype_name(dtype)} for {what}: {format_bytes(need)}, more than max_memory = "
        f"{format_bytes(budget)} ({allowed}). {fixes} a larger max_memory if the memory is "
        "there.", need, budget, "trace")


def _dtype_name(dtype: Any) -> str:
    return str(dtype).rsplit(".", 1)[-1].replace("'>", "")


def _sketch_dtype(op: LinearOperator) -> Any:
    """The dtype of probes, sketches and their products: the operator's (a float32 operator's
    products round their inputs to float32 anyway; its ``Q`` is orthonormal to float32
    rounding), float64 below float32."""
    xp = op._xp
    return op.dtype if xp.eps(op.dtype) <= np.finfo(np.float32).eps else xp.float64


def _probes(xp: Backend, n: int, k: int, rng: np.random.Generator, dtype: Any) -> Array:
    return xp.rademacher(RademacherStream(n, rng), k, dtype)


def _apply(op: LinearOperator, xp: Backend, X: Array) -> Array:
    """``A X`` in the dtype of the sketch ``X`` (:func:`_sketch_dtype`)."""
    return xp.cast(matmat_checked(op, X, "trace estimation"), X.dtype)


def _range_sketch(op, xp, s, rng):
    Om = _probes(xp, op.shape[0], s, rng, _sketch_dtype(op))
    Q, _, _ = _orthonormalise(op, xp, _apply(op, xp, Om))
    return Q, _apply(op, xp, Q)


def _orthonormalise(op, xp, Y):
    """Thin QR of a sketch, orthonormal to the unit roundoff of the operator's products."""
    return tall_qr(xp, Y, xp.eps(op.dtype) / 2)


def _is_whole(index: list[Any]) -> bool:
    return len(index) == 1 and isinstance(index[0], slice) and index[0] == slice(None)


def _as_blocks(blocks: Blocks | None, n: int) -> list[Any]:
    if blocks is None:
        return [slice(None)]
    if len(blocks) == 0:
        raise ValueError("Expected at least one block; got an empty sequence.")
    counts = np.zeros(n, dtype=np.int64)
    out = []
    for b in blocks:
        if isinstance(b, slice):
            ix = np.arange(n)[b]
            out.append(b)
        else:
            ix = np.asarray(b)
            if ix.ndim != 1 or not np.issubdtype(ix.dtype, np.integer):
                raise ValueError(f"Expected blocks as slices or 1-D integer arrays; got {b!r}.")
            if ix.size and (ix.min() < -n or ix.max() >= n):
                raise ValueError(f"Expected block indices in [0, {n}); got {ix.min()}..{ix.max()}.")
            ix = ix % n
            out.append(ix)
        np.add.at(counts, ix, 1)
    if counts.max() > 1:
        raise ValueError(
            f"Expected disjoint blocks; coordinate {int(np.argmax(counts > 1))} is in more "
            "than one block."
        )
    return out


def _block_rows(xp: Backend, X: Array, ix: Any) -> Array:
    if isinstance(ix, slice):
        return X[ix]
    return X[xp.from_numpy(ix)]


def _block_dots(xp: Backend, X: Array, Y: Array, index: list[Any]) -> np.ndarray:
    """Per-block column dots of ``X`` and ``Y`` (n, k) -> (num_blocks, k), float64."""
    return np.stack([xp.column_dots(_block_rows(xp, X, ix), _block_rows(xp, Y, ix))
                     for ix in index])


def _block_grams(xp: Backend, index: list[Any], *pairs: tuple[Array, Array], sizes=False):
    """Yield, per block, the host matrices ``X_b^T Y_b`` for each ``(X, Y)`` pair."""
    for ix in index:
        grams = []
        for X, Y in pairs:
            Xb, Yb = _block_rows(xp, X, ix), _block_rows(xp, Y, ix)
            grams.append(xp.gram(Xb, Yb))
        if sizes:
            grams.append(_block_rows(xp, X, ix).shape[0])
        yield grams


def _diag_quad(A: np.ndarray, C: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Return ``diag(A^T C B)`` without forming the product."""
    return np.einsum("pi,pq,qi->i", A, C, B)


def _leave_one_out_directions(R: np.ndarray) -> np.ndarray:
    """Columns ``s_i``: unit vectors orthogonal to every column of ``R`` but the ``i``-th.

    ``s_i`` is proportional to ``R^{-T} e_i``. When ``R`` is numerically singular (a low-rank
    operator) the triangular solve is meaningless; an SVD of ``R`` without column ``i`` then
    gives a unit vector orthogonal to the other columns.
    """
    s = R.shape[1]
    d = np.abs(np.diag(R))
    if d.min() > 1e3 * s * np.finfo(np.float64).eps * max(d.max(), np.finfo(float).tiny):
        S = scipy.linalg.solve_triangular(R, np.eye(s), trans="T")
        norms = np.linalg.norm(S, axis=0)
        if np.all(np.isfinite(norms)) and np.all(norms > 0):
            return S / norms
    S = np.empty((s, s))
    for i in range(s):
        U, _, _ = np.linalg.svd(np.delete(R, i, axis=1), full_matrices=True)
        S[:, i] = U[:, -1]
    return S
