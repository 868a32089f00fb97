import numpy as np
import pytest
import torch

from hessntk.spectral import aslinearoperator, lanczos, slq
from hessntk.spectral.probes import rademacher
from tests.helpers import assert_close, marchenko_pastur_matrix, matrix_with_spectrum


def test_slq_exact_on_diagonal_with_rademacher_probes():
    # z^T f(D) z / n = tr f(D) / n for +-1 probes; breakdown makes the quadrature exact.
    d = np.repeat([0.5, 1.0, 2.0, 7.0], 25)
    dens = slq(aslinearoperator(np.diag(d)), num_probes=3, num_matvecs=10, seed=0)
    assert dens.exact.all()
    assert_close(dens.logdet().value, np.log(d).sum(), rtol=1e-12)
    assert_close(dens.trace(np.sqrt).value, np.sqrt(d).sum(), rtol=1e-12)
    c = dens.cdf([0.7, 1.5, 10.0])
    assert_close(c.value, np.array([0.25, 0.5, 1.0]), rtol=1e-12)
    assert_close(c.lower, c.upper, rtol=0)


def test_polynomials_of_degree_below_2m_equal_hutchinson():
    A = marchenko_pastur_matrix(300, 120, seed=0)
    m, P = 4, 5
    dens = slq(aslinearoperator(A), num_probes=P, num_matvecs=m, seed=11)
    Z = rademacher(120, P, 11)
    A7 = np.linalg.matrix_power(A, 7)
    hutch = np.mean(np.einsum("ip,ij,jp->p", Z, A7, Z))
    assert_close(dens.trace(lambda x: x**7).value, hutch, rtol=1e-10)


def test_logdet_and_trace_within_reported_error():
    A = marchenko_pastur_matrix(2000, 500, seed=5)
    lam = np.linalg.eigvalsh(A)
    dens = slq(aslinearoperator(A), num_probes=20, num_matvecs=40, seed=1)
    ld = dens.logdet()
    assert abs(ld.value - np.log(lam).sum()) <= 4 * ld.stderr
    tr = dens.trace()
    assert abs(tr.value - lam.sum()) <= 4 * tr.stderr
    assert ld.num_matvecs == 800


def test_cdf_brackets_contain_each_probe_measure():
    lam = np.linspace(-2.0, 3.0, 150) ** 3
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((150, 150)))
    A = (U * lam) @ U.T
    V = rng.standard_normal((150, 4))
    V /= np.linalg.norm(V, axis=0)
    dens = slq(aslinearoperator(A), num_matvecs=8, v0=V)
    x = np.linspace(-9.0, 28.0, 200)
    weights = (U.T @ V) ** 2  # probe measures: mass (u_i . v_l)^2 at lambda_i
    exact = np.array([[w[lam <= xi].sum() for xi in x] for w in weights.T]).mean(0)
    c = dens.cdf(x)
    assert np.all(c.lower <= exact + 1e-12) and np.all(exact <= c.upper + 1e-12)
    assert np.all(c.lower <= c.value) and np.all(c.value <= c.upper)


def test_density_plot_and_errors():
    A = matrix_with_spectrum(np.linspace(-0.1, 1.0, 100), seed=0)
    dens = slq(aslinearoperator(torch.tensor(A)), num_probes=4, num_matvecs=20, seed=0)
    x = np.linspace(-0.5, 1.5, 4001)
    assert_close(np.trapezoid(dens.density(x, sigma=0.02), x), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="positive definite"):
        dens.logdet()
    assert np.isfinite(dens.logdet(shift=0.1).value)
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ax = dens.plot()
    assert len(ax.lines) == 2 and "SpectralDensity" in repr(dens)
    assert ax.get_legend().get_texts()[0].get_text() == f"Gaussian smoothing, sd {0.011:.3g}"


def test_hessian_density_plot_is_smoothed_with_a_stated_width():
    """Issue 14 item 3: the plot was a histogram of quadrature nodes (spikes of the rule)."""
    pytest.importorskip("matplotlib")
    from hessntk.report import plot_hessian_esd

    lam = np.concatenate([-np.geomspace(1e-4, 1e-2, 30), np.geomspace(1e-5, 1.0, 170)])
    dens = slq(aslinearoperator(matrix_with_spectrum(lam, seed=1)), num_probes=3,
               num_matvecs=15, seed=0)
    fig = plot_hessian_esd(dens, [1.0], smoothing=0.5)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "SLQ, Gaussian smoothing sd 0.5 on this axis (x1.6 in |eigenvalue|)"
    (curve,) = ax.collections[:1]
    heights = curve.get_paths()[0].vertices[:, 1]
    assert np.isfinite(heights).all() and heights.max() < 1  # fractions of eigenvalues
    with pytest.raises(ValueError, match="smoothing"):
        plot_hessian_esd(dens, smoothing=0.0)


def test_same_seed_same_bits_and_lanczos_consistency():
    A = marchenko_pastur_matrix(100, 60, seed=0)
    d1 = slq(aslinearoperator(A), num_probes=3, num_matvecs=10, seed=4)
    d2 = slq(aslinearoperator(A), num_probes=3, num_matvecs=10, seed=4)
    np.testing.assert_array_equal(d1.nodes, d2.nodes)
    T = lanczos(aslinearoperator(A), 10, num_probes=3, seed=4)
    assert_close(d1.nodes[1], np.sort(T.eigh(1)[0]), rtol=1e-14)


def test_probe_groups_under_a_memory_cap_give_the_same_numbers():
    A = marchenko_pastur_matrix(100, 60, seed=0)
    whole = slq(aslinearoperator(A), num_probes=5, num_matvecs=10, seed=4)
    grouped = slq(aslinearoperator(A), num_probes=5, num_matvecs=10, seed=4,
                  max_basis_bytes=2 * 8 * 60 * 10)
    assert_close(grouped.nodes, whole.nodes, rtol=1e-13)
    assert grouped.num_matvecs == whole.num_matvecs == 50


def test_default_probe_groups_do_not_depend_on_the_free_memory(monkeypatch):
    # max_basis_bytes=None: groups of DEFAULT_GROUP_BYTES wherever a quarter of the free
    # memory holds them (the same bits under any load), smaller groups below that (the same
    # numbers to rounding), one probe up to that quarter, and a probe beyond it refused.
    import hessntk._memory
    from hessntk import MemoryBudgetError
    from hessntk.spectral import CountingOperator

    A = marchenko_pastur_matrix(100, 60, seed=0)
    per_probe = 8 * 60 * 10  # float64 basis of 10 steps
    monkeypatch.setattr(hessntk._memory, "DEFAULT_GROUP_BYTES", 2 * per_probe)
    groups = {}

    class Groups(CountingOperator):
        def _matmat(self, V):
            groups.setdefault(run, set()).add(V.shape[1])
            return super()._matmat(V)

    runs = {}
    for run, free in (("ample", 10**9), ("more", 10**10), ("tight", 4 * per_probe + 3)):
        monkeypatch.setattr(hessntk._memory, "host_memory", lambda free=free: free)
        runs[run] = slq(Groups(aslinearoperator(A)), num_probes=5, num_matvecs=10, seed=4)
    assert groups == {"ample": {2, 1}, "more": {2, 1}, "tight": {1}}  # 2 + 2 + 1; 1 each
    np.testing.assert_array_equal(runs["ample"].nodes, runs["more"].nodes)
    np.testing.assert_array_equal(runs["ample"].weights, runs["more"].weights)
    assert_close(runs["tight"].nodes, runs["ample"].nodes, rtol=1e-13)
    monkeypatch.setattr(hessntk._memory, "DEFAULT_GROUP_BYTES", per_probe // 2)
    alone = slq(aslinearoperator(A), num_probes=5, num_matvecs=10, seed=4)  # beyond the cap
    assert_close(alone.nodes, runs["ample"].nodes, rtol=1e-13)
    monkeypatch.setattr(hessntk._memory, "host_memory", lambda: 4 * per_probe - 4)
    with pytest.raises(MemoryBudgetError, match="a quarter of the free memory") as info:
        slq(aslinearoperator(A), num_probes=5, num_matvecs=10, seed=4)
    assert (info.value.need, info.value.budget, info.value.source) == (
        per_probe, per_probe - 1, "slq")
    assert "reorth='none'" in str(info.value)
    assert slq(aslinearoperator(A), num_matvecs=10, reorth="none").num_probes == 16


def test_block_slq_is_slq_of_every_diagonal_block_in_one_pass():
    from hessntk.spectral import CountingOperator, block_slq

    rng = np.random.default_rng(3)
    A = rng.standard_normal((30, 30))
    A = A + A.T
    blocks = [np.r_[0:6, 20:24], np.arange(6, 20), np.arange(24, 30)]  # not all contiguous
    counted = CountingOperator(aslinearoperator(A))
    dens = block_slq(counted, blocks, num_probes=3, num_matvecs=8, seed=2)
    calls = []
    for ix, d in zip(blocks, dens, strict=True):
        sub = A[np.ix_(ix, ix)]
        ref = slq(aslinearoperator(sub), num_probes=3, num_matvecs=min(8, len(ix)), seed=2)
        np.testing.assert_allclose(d.nodes, ref.nodes, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(d.weights, ref.weights, rtol=1e-9, atol=1e-12)
        assert d.n == len(ix) and d.num_matvecs == ref.num_matvecs
        calls.append(ref.num_matvecs)
    # One lockstep pass: as many products as the blocks' runs together.
    assert counted.num_matvecs == sum(calls)
    # 8 steps exhaust the 6-coordinate block: exact rules, nodes its eigenvalues.
    lam = np.linalg.eigvalsh(A[24:, 24:])
    assert dens[2].exact.all()
    assert np.abs(dens[2].nodes[..., None] - lam).min(axis=-1).max() < 1e-8


def test_rademacher_probes_are_the_seeds_bits_in_every_dtype():
    Z = rademacher(1000, 4, seed=3)
    Z32 = rademacher(1000, 4, seed=3, dtype=np.float32)
    assert Z.dtype == np.float64 and Z32.dtype == np.float32 and np.array_equal(Z, Z32)
    assert set(np.unique(Z)) == {-1.0, 1.0} and np.all((Z**2).sum(axis=0) == 1000)
    assert Z.flags.f_contiguous  # each probe contiguous: the rows products work on
    # probe j holds bits j n ... (j + 1) n - 1 of the seed's bytes, so fewer probes are a prefix
    np.testing.assert_array_equal(rademacher(1000, 2, seed=3), Z[:, :2])
    bits = np.unpackbits(np.frombuffer(np.random.default_rng(3).bytes(500), np.uint8))
    np.testing.assert_array_equal(Z.T.ravel(), 2.0 * bits - 1.0)
    assert not np.array_equal(rademacher(1000, 4, seed=4), Z)
    # balanced: each sign with probability 1/2 (4000 draws: 5 standard deviations = 158)
    assert abs(int(Z.sum())) < 158
    from hessntk.spectral._backend import TorchBackend

    t = TorchBackend().from_numpy(Z)  # the backend keeps the layout: rows without a copy
    assert t.T.is_contiguous() and np.array_equal(t.numpy(), Z)
