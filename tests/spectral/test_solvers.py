"""Block conjugate gradients and paired SLQ log-determinant differences."""

import numpy as np
import pytest
import torch

from hessntk.spectral import aslinearoperator, cg, logdet_difference, slq
from tests.helpers import matrix_with_spectrum


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_cg_solves_spd_systems_to_tolerance(backend):
    lam = np.linspace(0.1, 10.0, 60)
    A = matrix_with_spectrum(lam, seed=1)
    B = np.random.default_rng(2).standard_normal((60, 3))
    X_true = np.linalg.solve(A, B)
    if backend == "torch":
        A, B = torch.from_numpy(A), torch.from_numpy(B)
    res = cg(A, B, tol=1e-12)
    X = res.x.numpy() if backend == "torch" else res.x
    assert res.converged and res.residuals.max() <= 1e-11
    np.testing.assert_allclose(X, X_true, rtol=1e-9, atol=1e-12)
    # condition number 100: CG needs far fewer than n iterations
    assert res.num_iterations < 60


def test_cg_single_vector_and_zero_column():
    A = np.diag([1.0, 2.0, 4.0])
    res = cg(A, np.array([1.0, 2.0, 4.0]))
    np.testing.assert_allclose(res.x, [1.0, 1.0, 1.0], rtol=1e-12)
    both = cg(A, np.array([[1.0, 0.0], [2.0, 0.0], [4.0, 0.0]]))
    np.testing.assert_allclose(both.x[:, 1], 0.0)


def test_cg_refuses_indefinite_and_reports_non_convergence():
    with pytest.raises(ValueError, match="positive definite"):
        cg(np.diag([1.0, -1.0]), np.array([1.0, 1.0]))
    A = matrix_with_spectrum(np.logspace(-6, 0, 50), seed=0)
    with pytest.raises(RuntimeError, match="max_iterations"):
        cg(A, np.ones(50), max_iterations=3)
    res = cg(A, np.ones(50), max_iterations=3, check=False)
    assert not res.converged and res.residuals.max() > 1e-10
    with pytest.raises(ValueError, match="shape"):
        cg(np.eye(3), np.ones(4))


def test_logdet_difference_within_reported_error_and_paired_is_tighter():
    n = 300
    rng = np.random.default_rng(0)
    lam_a = rng.uniform(0.5, 2.0, n)
    lam_b = lam_a * (1 + 0.05 * rng.uniform(size=n))
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A, B = (Q * lam_a) @ Q.T, (Q * lam_b) @ Q.T
    exact = np.log(lam_a).sum() - np.log(lam_b).sum()
    z = []
    for seed in range(6):
        d = logdet_difference(A, B, num_probes=8, num_matvecs=30, seed=seed)
        z.append((d.value - exact) / d.stderr)
        assert d.method == "slq-paired"
    assert np.max(np.abs(z)) < 4.0, z
    # the unpaired difference (independent probes) has a much larger standard error
    la = slq(aslinearoperator(A), num_probes=8, num_matvecs=30, seed=10).logdet()
    lb = slq(aslinearoperator(B), num_probes=8, num_matvecs=30, seed=11).logdet()
    unpaired = np.hypot(la.stderr, lb.stderr)
    assert d.stderr < unpaired / 5


def test_logdet_difference_of_equal_operators_is_exactly_zero():
    A = matrix_with_spectrum(np.linspace(1.0, 3.0, 40), seed=0)
    d = logdet_difference(A, A.copy(), num_probes=4, num_matvecs=10, seed=0)
    assert d.value == 0.0 and d.stderr == 0.0


def test_logdet_difference_refuses_non_spd_and_size_mismatch():
    with pytest.raises(ValueError, match="positive definite"):
        logdet_difference(np.diag([1.0, -2.0, 3.0]), np.eye(3), num_probes=2, num_matvecs=3)
    with pytest.raises(ValueError, match="same size"):
        logdet_difference(np.eye(3), np.eye(4))
