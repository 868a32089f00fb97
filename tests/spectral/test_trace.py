import numpy as np
import pytest
import torch

from hessntk.spectral import CountingOperator, aslinearoperator, diagonal, rademacher, trace
from tests.helpers import assert_close, matrix_with_spectrum, power_law_spectrum

METHODS = ["hutchinson", "hutchpp", "xtrace"]


@pytest.fixture(scope="module")
def indefinite():
    # a few large outliers and a bulk near zero of both signs, like a Hessian
    lam = np.concatenate([[50.0, 20.0, -8.0], power_law_spectrum(150, 0.7), -0.3 *
                          power_law_spectrum(47, 1.0)])
    return matrix_with_spectrum(lam, seed=0), lam


@pytest.mark.parametrize("method", METHODS + ["xnystrace"])
def test_within_four_reported_standard_errors(method, indefinite):
    A, lam = indefinite
    if method == "xnystrace":
        lam = np.abs(lam)
        A = matrix_with_spectrum(lam, seed=0)
    op = CountingOperator(aslinearoperator(A))
    est = trace(op, num_matvecs=60, method=method, seed=3)
    assert est.num_matvecs == op.num_matvecs == 60
    assert 0 < est.stderr and abs(est.value - lam.sum()) <= 4 * est.stderr


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp", "xtrace", "xnystrace"])
def test_reported_standard_error_is_calibrated(method):
    # Over 40 seeds, z = (estimate - truth) / stderr should have spread about 1.
    lam = np.abs(np.random.default_rng(1).standard_normal(120)) * np.linspace(0.1, 3, 120)
    A = matrix_with_spectrum(lam, seed=2)
    op = aslinearoperator(A)
    z = []
    for seed in range(40):
        est = trace(op, num_matvecs=24, method=method, seed=seed)
        z.append((est.value - lam.sum()) / est.stderr)
    z = np.array(z)
    assert abs(z.mean()) < 0.6  # unbiased: mean of 40 roughly standard normal z is ~ 0 +- 0.16
    # Hutchinson's per-probe samples are iid, so its stderr is exact. The X-methods report the
    # paper's heuristic (std of exchangeable, correlated leave-one-out terms / sqrt(m)), which
    # we measured to underestimate the error by 1.1-2x (documented in trace()).
    upper = 1.4 if method == "hutchinson" else 2.2
    assert 0.6 < z.std() < upper


@pytest.mark.parametrize("method,m,rank", [("hutchpp", 30, 9), ("xtrace", 30, 14),
                                           ("xnystrace", 20, 17)])
def test_exact_on_low_rank(method, m, rank):
    rng = np.random.default_rng(0)
    B = rng.standard_normal((200, rank))
    A = B @ B.T
    if method != "xnystrace":
        A = B @ np.diag(np.linspace(-1, 2, rank)) @ B.T
    est = trace(aslinearoperator(A), num_matvecs=m, method=method, seed=1)
    assert_close(est.value, np.trace(A), rtol=1e-9)


def test_exact_method_and_blocks_sum_to_total(indefinite):
    A, lam = indefinite
    op = aslinearoperator(A)
    blocks = [slice(0, 50), np.arange(50, 120), slice(120, 200)]
    exact = trace(op, num_matvecs=0, method="exact", blocks=blocks)
    assert_close(exact.values, np.array([np.trace(A[b][:, b]) for b in
                                         [slice(0, 50), slice(50, 120), slice(120, 200)]]))
    assert exact.num_matvecs == 200 and np.all(exact.stderrs == 0)
    for method in METHODS:
        blk = trace(op, num_matvecs=60, method=method, seed=5, blocks=blocks)
        tot = trace(op, num_matvecs=60, method=method, seed=5)
        assert_close(blk.values.sum(), tot.value, rtol=1e-10)
        assert np.all(np.abs(blk.values - exact.values) <= 4 * blk.stderrs)
        assert len(blk) == 3 and blk[1].method == method


def test_xnystrace_blocks_and_refuses_indefinite(indefinite):
    A, lam = indefinite
    P = matrix_with_spectrum(np.abs(lam), seed=0)
    blocks = [slice(0, 100), slice(100, 200)]
    blk = trace(aslinearoperator(P), num_matvecs=40, method="xnystrace", seed=0, blocks=blocks)
    truth = np.array([np.trace(P[:100, :100]), np.trace(P[100:, 100:])])
    assert np.all(np.abs(blk.values - truth) <= 4 * blk.stderrs)
    with pytest.raises(ValueError, match="positive semi-definite"):
        trace(aslinearoperator(-P), num_matvecs=40, method="xnystrace")


def test_diagonal_estimators():
    rng = np.random.default_rng(0)
    B = rng.standard_normal((100, 5))
    A = B @ B.T
    d = diagonal(aslinearoperator(A), num_matvecs=18, method="hutchpp", seed=0)
    assert_close(d.values, np.diag(A), rtol=1e-10)  # exact: rank 5 <= m / 3
    A = matrix_with_spectrum(np.linspace(0.5, 2.0, 100), seed=1)
    d = diagonal(aslinearoperator(A), num_matvecs=50, method="hutchinson", seed=0)
    z = (d.values - np.diag(A)) / d.stderrs
    assert np.mean(np.abs(z) <= 3) > 0.95


def test_hutchpp_diagonal_is_unbiased_on_a_full_rank_matrix():
    # A flat spectrum: the sketch's range is far from invariant, so an estimator of
    # diag((I - QQ^T) A (I - QQ^T)) in place of diag(A (I - QQ^T)) is biased (mean z about
    # -0.14 here, measured); the right one has mean z within 0.03 of 0 and z-scores that are
    # standard normal (4000 coordinates over 20 seeds: the mean's sd is about 0.017).
    A = matrix_with_spectrum(np.linspace(0.5, 2.0, 200), seed=1)
    z = np.concatenate([
        (d.values - np.diag(A)) / d.stderrs
        for d in (diagonal(aslinearoperator(A), num_matvecs=60, method="hutchpp", seed=s)
                  for s in range(20))])
    assert abs(np.mean(z)) < 0.07
    assert np.mean(np.abs(z) <= 3) > 0.98
    assert 0.9 < np.std(z) < 1.2


def test_bad_arguments_and_determinism(indefinite):
    A, _ = indefinite
    op = aslinearoperator(A)
    with pytest.raises(ValueError, match="method"):
        trace(op, num_matvecs=10, method="girard")
    with pytest.raises(ValueError, match="method='exact'"):
        trace(op, num_matvecs=201)
    with pytest.raises(ValueError, match="4 <= num_matvecs"):
        trace(op, num_matvecs=3, method="xtrace")
    with pytest.raises(ValueError, match="disjoint"):
        trace(op, num_matvecs=10, blocks=[slice(0, 10), np.arange(5, 12)])
    with pytest.raises(ValueError, match="num_matvecs"):
        diagonal(op, num_matvecs=2)
    a = trace(op, num_matvecs=20, seed=9)
    b = trace(op, num_matvecs=20, seed=9)
    assert a.value == b.value and a.stderr == b.stderr


@pytest.mark.parametrize("method", ["hutchpp", "hutchinson"])
def test_diagonal_of_a_float32_operator_matches_float64(method, indefinite):
    # Same probes; the float32 products, sketch and Q change every coordinate by at most
    # eps32 ||A||_2 / 2 (measured 0.07-0.16 of eps32 ||A||_2); other probes would move them
    # by about their standard errors, 1e4 times more.
    A, lam = indefinite
    d64 = diagonal(aslinearoperator(A), num_matvecs=60, method=method, seed=0)
    d32 = diagonal(aslinearoperator(torch.tensor(A, dtype=torch.float32)), num_matvecs=60,
                   method=method, seed=0)
    bound = 0.5 * np.finfo(np.float32).eps * np.abs(lam).max()
    assert d32.values.dtype == np.float64
    assert np.abs(d32.values - d64.values).max() <= bound
    assert np.abs(d32.stderrs - d64.stderrs).max() <= bound


@pytest.mark.parametrize("library", ["torch", "numpy"])
@pytest.mark.parametrize("method", METHODS)
def test_float32_operator_matches_float64(indefinite, method, library):
    # The same probes through float32 products, sketches and Q: within eps32 sum |lambda| of
    # the float64 estimate and its standard error, and so are the traces of index-array
    # blocks (the per-block Grams and dots); measured 0.004-0.17 of it for the totals and
    # 0.04-0.40 for the blocks, on torch and numpy.
    A, lam = indefinite
    A32 = torch.tensor(A, dtype=torch.float32) if library == "torch" else A.astype(np.float32)
    blocks = [np.arange(0, 200, 2), np.arange(1, 200, 2)]
    bound = np.finfo(np.float32).eps * np.abs(lam).sum()
    for kwargs in ({}, {"blocks": blocks}):
        e64 = trace(aslinearoperator(A), num_matvecs=40, method=method, seed=0, **kwargs)
        e32 = trace(aslinearoperator(A32), num_matvecs=40, method=method, seed=0, **kwargs)
        if kwargs:
            e64, e32 = (np.array([e.values, e.stderrs]) for e in (e64, e32))
        else:
            e64, e32 = (np.array([e.value, e.stderr]) for e in (e64, e32))
        assert np.all(np.abs(e32 - e64) <= bound)


@pytest.fixture
def qr_methods(monkeypatch):
    """The QR methods the trace estimators used, in call order."""
    import hessntk.spectral.traces as traces

    used, tall_qr = [], traces.tall_qr

    def recorded(*args):
        out = tall_qr(*args)
        used.append(out[2])
        return out

    monkeypatch.setattr(traces, "tall_qr", recorded)
    return used


@pytest.mark.parametrize("method", ["xtrace", "hutchpp"])
@pytest.mark.parametrize("spectrum,qr", [("flat", "cholesky2"), ("low rank", "householder")])
def test_total_equals_one_block_through_each_qr(qr_methods, method, spectrum, qr):
    # The total takes shortcuts (XTrace: Q^T Y = R, Om^T Z = R^T and Q^T Om from R; Hutch++:
    # column dots); a single block of all coordinates takes the general per-block Grams.
    lam = np.linspace(1.0, 2.0, 150) if spectrum == "flat" else np.r_[np.arange(1.0, 9.0),
                                                                       np.zeros(142)]
    A = matrix_with_spectrum(lam, seed=4)
    op = aslinearoperator(A)
    total = trace(op, num_matvecs=48, method=method, seed=2)
    block = trace(op, num_matvecs=48, method=method, seed=2, blocks=[np.arange(150)])
    assert qr_methods == [qr, qr]
    assert_close(total.value, block.values[0], rtol=1e-12)
    assert_close(total.stderr, block.stderrs[0], rtol=1e-9, atol=1e-12 * abs(total.value))
    if spectrum == "low rank":  # rank 8 < the sketch: both are exact
        assert_close(total.value, lam.sum(), rtol=1e-10)


def test_float32_operator_at_size_takes_one_cholesky_pass(qr_methods):
    # n = 20000: host arrays above 4 MiB, and a sketch of condition ~3: its float32 Q's
    # measured loss after one CholeskyQR pass, 0.48 eps32, is just below float32's unit
    # roundoff (0.5 eps32), so one pass; the float64 operator's bound asks for two.
    d = np.linspace(1.0, 3.0, 20000)

    def diagonal_operator(dtype):
        dd = torch.tensor(d, dtype=dtype)
        return aslinearoperator(None, n=d.size, dtype=dtype, backend="torch",
                                matmat=lambda V: dd[:, None] * V)

    ops = {dt: diagonal_operator(dt) for dt in (torch.float32, torch.float64)}
    e32 = trace(ops[torch.float32], num_matvecs=40, seed=0)
    e64 = trace(ops[torch.float64], num_matvecs=40, seed=0)
    assert qr_methods == ["cholesky", "cholesky2"]
    assert abs(e64.value - d.sum()) <= 4 * e64.stderr
    assert_close(e32.value, e64.value, rtol=1e-6)  # float32 products: ~1e-7 relative


# -- memory ------------------------------------------------------------------------------------


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_hutchinson_in_groups_that_fit_gives_the_same_numbers(indefinite, library):
    A, _ = indefinite
    op = aslinearoperator(A if library == "numpy" else torch.tensor(A))
    blocks = [slice(0, 70), np.arange(70, 200)]
    whole = trace(op, num_matvecs=50, method="hutchinson", seed=3, blocks=blocks)
    for group in (1, 7, 16):  # probes per group: 2 vectors of n float64 entries each
        counted = CountingOperator(op)
        parts = trace(counted, num_matvecs=50, method="hutchinson", seed=3, blocks=blocks,
                      max_memory=2 * 8 * 200 * group)
        assert counted.num_matvecs == 50
        # to the rounding of the products (those of k vectors are not bitwise those of fewer)
        assert_close(parts.values, whole.values, rtol=1e-13)
        assert_close(parts.stderrs, whole.stderrs, rtol=1e-13)


@pytest.mark.parametrize("method, vectors, dtype", [
    ("xtrace", 100, "float32"), ("hutchpp", 68, "float32"), ("xnystrace", 200, "float64"),
    ("hutchinson", 2, "float32"), ("exact", 2, "float64")])
def test_estimators_that_do_not_fit_are_refused_with_the_fixes(indefinite, method, vectors,
                                                                 dtype):
    from hessntk import MemoryBudgetError

    A, _ = indefinite
    op = CountingOperator(aslinearoperator(torch.tensor(A @ A, dtype=torch.float32)))  # PSD
    need = vectors * 200 * (4 if dtype == "float32" else 8)
    with pytest.raises(MemoryBudgetError, match=f"holds {vectors} vectors of n = 200 entries "
                       f"in {dtype}") as info:
        trace(op, num_matvecs=50, method=method, max_memory=need - 1)
    assert isinstance(info.value, ValueError) and op.num_matvecs == 0  # refused up front
    assert (info.value.need, info.value.budget) == (need, need - 1)
    assert info.value.source == "trace"
    assert "a larger max_memory" in str(info.value)
    if method not in ("hutchinson", "exact"):
        assert "method='hutchinson'" in str(info.value) and "fewer num_matvecs" in str(info.value)
    trace(op, num_matvecs=50, method=method, max_memory=need)  # just fits


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_diagonal_hutchinson_in_groups_that_fit_gives_the_same_numbers(indefinite, library):
    A, _ = indefinite
    op = aslinearoperator(A if library == "numpy" else torch.tensor(A))
    whole = diagonal(op, num_matvecs=50, method="hutchinson", seed=3)
    for group in (1, 7, 16):  # three float64 vectors per probe, 10 of running moments
        counted = CountingOperator(op)
        parts = diagonal(counted, num_matvecs=50, method="hutchinson", seed=3,
                         max_memory=(3 * 8 * group + 10 * 8) * 200)
        assert counted.num_matvecs == 50
        assert_close(parts.values, whole.values, rtol=1e-13, atol=1e-15)
        assert_close(parts.stderrs, whole.stderrs, rtol=1e-12)
    # the merged moments are the two-pass mean and standard error of the same samples
    Z = rademacher(200, 50, seed=3)
    samples = Z * (A @ Z)
    assert_close(whole.values, samples.mean(axis=1), rtol=1e-13, atol=1e-15)
    assert_close(whole.stderrs, samples.std(axis=1, ddof=1) / np.sqrt(50), rtol=1e-12)


@pytest.mark.parametrize("method, need", [
    ("hutchinson", (3 * 4 + 80) * 200),
    ("hutchpp", (max(3 * 16, 16 + 4 * 18) * 4 + 80) * 200)])
def test_diagonal_estimators_that_do_not_fit_are_refused_with_the_fixes(indefinite, method,
                                                                          need):
    from hessntk import MemoryBudgetError

    A, _ = indefinite
    op = CountingOperator(aslinearoperator(torch.tensor(A, dtype=torch.float32)))
    with pytest.raises(MemoryBudgetError, match=f"diagonal\\(method='{method}'\\) holds") as info:
        diagonal(op, num_matvecs=50, method=method, max_memory=need - 1)
    assert op.num_matvecs == 0 and (info.value.need, info.value.budget) == (need, need - 1)
    assert info.value.source == "diagonal"
    assert "a larger max_memory" in str(info.value)
    if method == "hutchpp":
        assert "method='hutchinson'" in str(info.value) and "fewer num_matvecs" in str(info.value)
    assert diagonal(op, num_matvecs=50, method=method, max_memory=need).num_matvecs == 50


def test_default_groups_do_not_depend_on_the_free_memory(indefinite, monkeypatch):
    # max_memory=None: groups of DEFAULT_GROUP_BYTES whatever the free memory (where a
    # quarter of it holds one), so the same seed gives the same bits; below, smaller groups
    # with the same numbers to the products' rounding.
    import hessntk._memory

    A, _ = indefinite
    op = aslinearoperator(A)
    monkeypatch.setattr(hessntk._memory, "DEFAULT_GROUP_BYTES", 2 * 8 * 200 * 7)  # 7 a group
    runs = []
    for free in (10**9, 10**10):
        monkeypatch.setattr(hessntk._memory, "host_memory", lambda free=free: free)
        runs.append((trace(op, num_matvecs=50, method="hutchinson", seed=3),
                     diagonal(op, num_matvecs=50, method="hutchinson", seed=3)))
    (t1, d1), (t2, d2) = runs
    assert (t1.value, t1.stderr) == (t2.value, t2.stderr)
    assert np.array_equal(d1.values, d2.values) and np.array_equal(d1.stderrs, d2.stderrs)
    monkeypatch.setattr(hessntk._memory, "host_memory", lambda: 4 * 2 * 8 * 200 * 7 - 4)
    tight = trace(CountingOperator(op), num_matvecs=50, method="hutchinson", seed=3)
    assert tight.value == pytest.approx(t1.value, rel=1e-13)


def test_default_memory_is_a_quarter_of_the_free_memory(indefinite, monkeypatch):
    import hessntk._memory

    A, lam = indefinite
    op = aslinearoperator(A)
    monkeypatch.setattr(hessntk._memory, "host_memory", lambda: 4 * 100 * 200 * 8 - 4)
    with pytest.raises(ValueError, match=r"\(a quarter of the free memory\)"):
        trace(op, num_matvecs=50, method="xtrace")  # 100 vectors: 160 kB > 40 kB
    exact = trace(op, num_matvecs=200, method="exact")  # unit vectors in groups that fit
    assert_close(exact.value, lam.sum(), rtol=1e-12)
    assert trace(op, num_matvecs=50, method="hutchinson").num_matvecs == 50


@pytest.mark.parametrize("method, m", [("hutchinson", 1), ("hutchinson", 30), ("hutchpp", 30)])
@pytest.mark.parametrize("device_blocks", [False, True])
def test_diagonal_holds_no_more_than_it_states(method, m, device_blocks, monkeypatch):
    # tracemalloc sees numpy's arrays: the peak of a run stays within the need that
    # _check_diagonal_memory states (an accelerator's larger row blocks included)
    import tracemalloc

    from hessntk import MemoryBudgetError
    from hessntk.spectral import traces
    from hessntk.spectral._backend import Backend

    if device_blocks:
        monkeypatch.setattr(Backend, "on_host", lambda self: False)
    n = 100_000
    d = (1.0 + np.random.default_rng(0).random(n)).astype(np.float32)
    op = aslinearoperator(lambda v: d * v, n=n, dtype=np.float32, backend="numpy",
                          matmat=lambda V: d[:, None] * V)
    need, check = [], traces._check_diagonal_memory

    def stated(op, method, m, budget, allowed, max_memory):
        with pytest.raises(MemoryBudgetError) as refused:  # its statement, from a refusal
            check(op, method, m, 1, allowed, max_memory)
        need.append(refused.value.need)
        return check(op, method, m, budget, allowed, max_memory)

    monkeypatch.setattr(traces, "_check_diagonal_memory", stated)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        diagonal(op, num_matvecs=m, method=method, seed=1, max_memory=10**9)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    if method == "hutchinson":  # the need of one probe; the run takes its m in one group
        need[0] += 3 * 4 * n * (m - 1)
    assert 0.5 * need[0] < peak <= need[0]
