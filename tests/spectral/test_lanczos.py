import numpy as np
import pytest
import torch

from hessntk.spectral import CountingOperator, aslinearoperator, lanczos
from tests.helpers import assert_close, marchenko_pastur_matrix, matrix_with_spectrum


def test_full_depth_lanczos_gives_exact_eigenvalues():
    lam = np.linspace(-1.0, 3.0, 60) ** 3
    op = aslinearoperator(matrix_with_spectrum(lam, seed=1))
    T = lanczos(op, 60, seed=3)
    assert_close(np.sort(T.eigh()[0]), np.sort(lam), rtol=1e-11)


def test_m_steps_reproduce_moments_below_degree_2m():
    A = marchenko_pastur_matrix(200, 80, seed=0)
    v = np.random.default_rng(1).standard_normal(80)
    v /= np.linalg.norm(v)
    m = 6
    T = lanczos(aslinearoperator(A), m, v0=v)
    Tm = T.matrix()
    e1 = np.zeros(m)
    e1[0] = 1.0
    for k in range(2 * m):
        exact = v @ np.linalg.matrix_power(A, k) @ v
        assert_close(e1 @ np.linalg.matrix_power(Tm, k) @ e1, exact, rtol=1e-11)


def test_breakdown_is_an_exact_early_stop():
    d = np.repeat([1.0, 2.0, 5.0], 10)
    op = CountingOperator(aslinearoperator(np.diag(d)))
    T = lanczos(op, 12, num_probes=2, seed=0)
    assert T.breakdown.all()
    assert T.num_steps.tolist() == [3, 3]
    assert op.num_matvecs == T.num_matvecs == 6
    assert_close(T.eigh(0)[0], np.array([1.0, 2.0, 5.0]), rtol=1e-13)
    assert T.beta[0, 2] == 0.0


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_returned_basis_is_zero_past_a_breakdown(backend):
    # The basis is allocated uninitialised; the rows a probe never reached come back zero.
    d = np.repeat([1.0, 2.0, 5.0], 10)
    op = aslinearoperator(np.diag(d) if backend == "numpy" else torch.tensor(np.diag(d)))
    V0 = np.ones((30, 2))
    V0[:10, 1] = 0.0  # the second probe sees two eigenvalues: it stops after 2 steps
    T = lanczos(op, 12, v0=V0, return_basis=True)
    assert T.num_steps.tolist() == [3, 2]
    Q = np.asarray(T.basis)
    assert np.all(Q[0, 3:] == 0.0) and np.all(Q[1, 2:] == 0.0)
    for p, m in ((0, 3), (1, 2)):
        assert_close(Q[p, :m] @ Q[p, :m].T, np.eye(m), atol=1e-14, rtol=0)


def test_lockstep_probes_equal_separate_runs_and_count_products():
    A = marchenko_pastur_matrix(300, 100, seed=2)
    V = np.random.default_rng(0).standard_normal((100, 4))
    op = CountingOperator(aslinearoperator(A))
    T = lanczos(op, 20, v0=V)
    assert op.num_matvecs == T.num_matvecs == 80
    for i in range(4):
        Ti = lanczos(aslinearoperator(A), 20, v0=V[:, i])
        assert_close(T.alpha[i], Ti.alpha[0], rtol=1e-12)
        assert_close(T.beta[i], Ti.beta[0], rtol=1e-12)


def test_basis_is_orthonormal_and_same_seed_same_numbers():
    A = marchenko_pastur_matrix(300, 100, seed=2)
    T1 = lanczos(aslinearoperator(A), 40, num_probes=2, seed=7, return_basis=True)
    T2 = lanczos(aslinearoperator(A), 40, num_probes=2, seed=7)
    np.testing.assert_array_equal(T1.alpha, T2.alpha)
    Q = T1.basis[0]
    assert_close(Q @ Q.T, np.eye(40), atol=1e-13, rtol=0)


def test_float32_products_keep_float64_coefficients():
    lam = np.linspace(0.1, 2.0, 50)
    A = matrix_with_spectrum(lam, seed=0)
    T = lanczos(aslinearoperator(torch.tensor(A, dtype=torch.float32)), 50, seed=0)
    assert T.alpha.dtype == np.float64
    # float32 products: eigenvalues exact up to float32 rounding of the matrix
    assert_close(np.sort(T.eigh()[0]), lam, rtol=1e-5)


def test_non_finite_product_names_the_step():
    def bad(V):
        out = V.copy()
        out[0, 0] = np.nan
        return out

    op = aslinearoperator(None, matmat=bad, n=5, dtype=np.float64)
    with pytest.raises(FloatingPointError, match="step 0"):
        lanczos(op, 3)


def test_bad_arguments():
    op = aslinearoperator(np.eye(4))
    with pytest.raises(ValueError, match="num_matvecs <= n = 4"):
        lanczos(op, 5)
    with pytest.raises(ValueError, match="num_matvecs"):
        lanczos(op, 0)
    with pytest.raises(ValueError, match="v0 of shape"):
        lanczos(op, 2, v0=np.ones(3))
    with pytest.raises(ValueError, match="non-zero"):
        lanczos(op, 2, v0=np.zeros(4))


def test_a_basis_that_does_not_fit_is_refused_up_front(monkeypatch):
    import hessntk._memory
    from hessntk import MemoryBudgetError
    from hessntk.spectral import slq

    op = CountingOperator(aslinearoperator(np.diag(np.arange(1.0, 51.0))))
    need = 3 * 20 * 50 * 8  # 3 probes x 20 steps x n = 50 float64 entries
    with pytest.raises(MemoryBudgetError, match="basis of 3 probe\\(s\\) x 20 steps x 50") as e:
        lanczos(op, 20, num_probes=3, max_basis_bytes=need - 1)
    assert (e.value.need, e.value.budget) == (need, need - 1) and op.num_matvecs == 0
    assert e.value.source == "lanczos"
    assert "reorth='none'" in str(e.value) and "(as given)" in str(e.value)
    assert lanczos(op, 20, num_probes=3, max_basis_bytes=need).num_matvecs == 60
    monkeypatch.setattr(hessntk._memory, "host_memory", lambda: 4 * need - 4)  # a quarter
    with pytest.raises(ValueError, match="a quarter of the free memory"):
        lanczos(op, 20, num_probes=3, reorth="partial")
    T = lanczos(op, 20, num_probes=3, reorth="none")  # no basis: nothing to refuse
    assert T.num_matvecs == 60 and T.basis is None
    # slq runs its probes in groups that fit its own max_basis_bytes instead
    assert slq(op, num_probes=3, num_matvecs=20, max_basis_bytes=need).num_probes == 3
