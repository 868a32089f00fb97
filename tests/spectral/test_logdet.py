"""The public SLQ log-determinant: Jacobi preconditioning, the exact path, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from hessntk.spectral import CountingOperator, aslinearoperator, logdet
from tests.helpers import matrix_with_spectrum


def _badly_scaled(n=300, seed=0):
    """``D^1/2 C D^1/2``: C well conditioned (eigenvalues in [0.5, 2]), D over 1e-3..1e3."""
    rng = np.random.default_rng(seed)
    C = matrix_with_spectrum(np.linspace(0.5, 2.0, n), seed=seed)
    s = np.sqrt(np.logspace(-3, 3, n)[rng.permutation(n)])
    return s[:, None] * C * s[None, :]


def test_jacobi_removes_the_diagonal_scales_error_and_stderr_honest():
    A = _badly_scaled()
    exact = np.linalg.slogdet(A)[1]
    jac_err, plain_err = [], []
    for seed in range(8):
        j = logdet(A, num_probes=10, num_matvecs=15, seed=seed, method="slq")
        p = logdet(A, num_probes=10, num_matvecs=15, seed=seed, method="slq",
                   preconditioner=None)
        assert j.method == "slq-jacobi" and p.method == "slq" and j.num_matvecs == 150
        assert abs(j.value - exact) <= 4 * j.stderr + 1e-9 * abs(exact)
        jac_err.append(abs(j.value - exact))
        plain_err.append(abs(p.value - exact))
    # condition 1e6 defeats 15 Lanczos steps; the Jacobi-scaled matrix has condition 4
    assert np.median(jac_err) * 100 < np.median(plain_err)


def test_logdet_passes_its_basis_budget_to_slq():
    # max_basis_bytes groups the probes (same numbers) and refuses one that does not fit
    from hessntk.spectral import logdet_difference

    A = _badly_scaled(n=100)
    whole = logdet(A, num_probes=4, num_matvecs=10, method="slq")
    grouped = logdet(A, num_probes=4, num_matvecs=10, method="slq", max_basis_bytes=8 * 100 * 10)
    assert grouped.value == pytest.approx(whole.value, rel=1e-12)
    for kwargs in ({}, {"preconditioner": None}):
        with pytest.raises(ValueError, match="max_basis_bytes"):
            logdet(A, num_probes=4, num_matvecs=10, method="slq", max_basis_bytes=8, **kwargs)
    with pytest.raises(ValueError, match="max_basis_bytes"):
        logdet_difference(A, A + np.eye(100), num_probes=2, num_matvecs=10, max_basis_bytes=8)


def test_logdet_is_exact_when_the_budget_reaches_n():
    A = matrix_with_spectrum(np.logspace(-5, 0, 200), seed=3)
    exact = np.linalg.slogdet(A)[1]
    op = CountingOperator(aslinearoperator(A))
    est = logdet(op, num_probes=10, num_matvecs=20)
    assert est.method == "exact" and est.stderr == 0.0 and op.num_matvecs == 200
    assert est.value == pytest.approx(exact, rel=1e-10)
    shifted = logdet(A, method="exact", shift=0.5)
    assert shifted.value == pytest.approx(np.log(np.linalg.eigvalsh(A) + 0.5).sum(), rel=1e-12)
    singular = matrix_with_spectrum(np.r_[0.0, np.ones(9)], seed=0)
    with pytest.raises(ValueError, match="shift > 0"):
        logdet(singular, method="exact")


def test_ntk_gram_of_condition_1e5():
    """Issue 16's case: an NTK Gram, n = 512, condition 1e5 (a trained digits MLP's)."""
    torch = pytest.importorskip("torch")
    from sklearn.datasets import load_digits

    import hessntk

    X, _ = load_digits(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / (X.std(0) + 1e-8), dtype=torch.float64)[:512]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(),
                              torch.nn.Linear(64, 1)).double()
    K = hessntk.ntk.gram(net, X).numpy()
    lam = np.linalg.eigvalsh(K)
    K = K + (lam[-1] - 1e5 * lam[0]) / (1e5 - 1) * np.eye(512)  # condition exactly 1e5
    exact = np.linalg.slogdet(K)[1]
    est = logdet(K, num_probes=8, num_matvecs=250)  # 2,000 products allowed: 512 used
    assert est.method == "exact" and est.num_matvecs == 512
    assert abs(est.value - exact) <= 1e-10 * abs(exact)


def test_bad_input_is_refused_with_the_fix():
    A = np.diag(np.linspace(1.0, 2.0, 50))
    with pytest.raises(ValueError, match="preconditioner in"):
        logdet(A, preconditioner="ilu")
    with pytest.raises(ValueError, match="method in"):
        logdet(A, method="dense")
    op = aslinearoperator(lambda v: A @ v, n=50, dtype=np.float64)
    with pytest.raises(ValueError, match="diagonal=") as info:
        logdet(op, num_probes=2, num_matvecs=10, method="slq")
    assert "preconditioner=None" in str(info.value)
    est = logdet(op, num_probes=2, num_matvecs=10, method="slq", diagonal=np.diag(A))
    assert est.value == pytest.approx(np.log(np.diag(A)).sum(), rel=1e-10)
    with pytest.raises(ValueError, match="positive diagonal"):
        logdet(np.diag(np.r_[-1.0, np.ones(49)]), method="slq")
    with pytest.raises(ValueError, match="shape"):
        logdet(op, method="slq", diagonal=np.ones(3))


def test_shift_with_and_without_the_preconditioner():
    A = _badly_scaled(n=120, seed=1)
    exact = np.log(np.linalg.eigvalsh(A) + 2.0).sum()
    for pre in ("jacobi", None):
        est = logdet(A, num_probes=10, num_matvecs=60, seed=0, shift=2.0, method="slq",
                     preconditioner=pre)
        assert abs(est.value - exact) <= 4 * est.stderr + 1e-9 * abs(exact)


def test_low_precision_operators_are_refused_with_the_fix():
    # a bfloat16 operator was called "singular at this precision" (its dense matrix), or
    # reached Lanczos's refusal only on the SLQ path
    import torch

    A = torch.tensor(np.diag(np.linspace(1.0, 2.0, 50)), dtype=torch.bfloat16)
    for method in ("exact", "slq"):
        with pytest.raises(ValueError, match="Expected float32 or float64 products for logdet"):
            logdet(A, method=method, num_probes=2, num_matvecs=10)
