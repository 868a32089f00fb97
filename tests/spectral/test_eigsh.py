import numpy as np
import pytest
import torch

from hessntk.spectral import CountingOperator, aslinearoperator, eigsh
from tests.helpers import (
    assert_close,
    marchenko_pastur_matrix,
    matrix_with_spectrum,
    power_law_spectrum,
)


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_extreme_eigenvalues_of_indefinite_spectrum(which):
    lam = np.concatenate([power_law_spectrum(200, 0.5, 10.0), -power_law_spectrum(100, 1.0, 4.0)])
    A = matrix_with_spectrum(lam, seed=0)
    res = eigsh(aslinearoperator(A), k=5, which=which, tol=1e-10)
    assert res.converged
    if which == "LA":
        expected = np.sort(lam)[::-1][:5]
    elif which == "SA":
        expected = np.sort(lam)[:5]
    else:
        expected = lam[np.argsort(-np.abs(lam))][:5]
    assert_close(res.eigenvalues, expected, rtol=1e-10)
    Y = res.eigenvectors
    assert_close(Y.T @ Y, np.eye(5), atol=1e-10, rtol=0)
    R = A @ Y - Y * res.eigenvalues
    assert_close(np.linalg.norm(R, axis=0), res.residual_norms, atol=1e-9, rtol=0)


def test_thick_restart_converges_with_a_small_basis_and_counts_products():
    A = marchenko_pastur_matrix(400, 300, seed=1)
    op = CountingOperator(aslinearoperator(A))
    res = eigsh(op, k=4, ncv=10, tol=1e-9)
    assert res.converged and res.num_matvecs == op.num_matvecs > 10
    assert_close(res.eigenvalues, np.sort(np.linalg.eigvalsh(A))[::-1][:4], rtol=1e-10)


def _counting_norms(monkeypatch):
    from hessntk.spectral._backend import Backend

    norms = []
    real_norm = Backend.norm
    monkeypatch.setattr(Backend, "norm",
                        lambda self, x, axis: norms.append(1) or real_norm(self, x, axis))
    return norms


def test_full_reorthogonalisation_sweeps_once_per_step(monkeypatch):
    # The recurrence's own couplings are subtracted before the full sweep, so the DGKS test
    # rarely asks for a second sweep: two norms a step (before and after the one sweep), plus
    # a few second sweeps (always one after the restart), where subtracting everything in
    # one sweep needed two sweeps and three norms a step.
    norms = _counting_norms(monkeypatch)
    A = marchenko_pastur_matrix(400, 300, seed=1)
    res = eigsh(aslinearoperator(A), k=4, tol=1e-10, reorth="full")  # one thick restart
    assert res.converged and 40 < res.num_matvecs < 80
    assert len(norms) <= 2 * res.num_matvecs + 4
    assert_close(res.eigenvalues, np.sort(np.linalg.eigvalsh(A))[::-1][:4], rtol=1e-13)
    Y = res.eigenvectors
    assert_close(Y.T @ Y, np.eye(4), atol=1e-13, rtol=0)


SPECTRA = {
    "outliers": np.concatenate([np.linspace(0.0, 1.0, 590), [10.0, 9.0, 8.5, 8.0, 7.0, 6.0,
                                                             5.5, 5.0, 4.0, 3.0]]),
    "power law": power_law_spectrum(600, 0.5, 10.0),
    "Marchenko-Pastur": np.linalg.eigvalsh(marchenko_pastur_matrix(600, 400, seed=1)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spectrum", list(SPECTRA))
@pytest.mark.parametrize("k", [1, 6])
def test_partial_reorthogonalisation_matches_full_against_exact_spectra(spectrum, k, dtype):
    lam = SPECTRA[spectrum]
    A64 = matrix_with_spectrum(lam, seed=2)
    op = aslinearoperator(torch.tensor(A64, dtype=dtype))
    eps = torch.finfo(dtype).eps
    exact = np.sort(lam)[::-1][:k]
    runs = {r: eigsh(CountingOperator(op), k=k, tol=1e-8 if dtype == torch.float64 else 1e-5,
                     seed=0, reorth=r) for r in ("partial", "full")}
    for res in runs.values():
        assert res.converged
        np.testing.assert_allclose(res.eigenvalues, exact, rtol=0, atol=50 * eps * lam.max())
        Y = res.eigenvectors.numpy()
        assert np.abs(Y.T @ Y - np.eye(k)).max() < 100 * eps  # orthonormal, not semi-
        true = np.linalg.norm(A64 @ Y - Y * res.eigenvalues, axis=0)
        assert true.max() <= 2 * max(runs["full"].residual_norms.max(), 50 * eps * lam.max())
    assert runs["partial"].num_matvecs == runs["full"].num_matvecs


def test_partial_reorthogonalisation_reads_the_basis_less(monkeypatch):
    # Outliers converge inside the first ncv steps: the Ritz vectors come from a
    # semi-orthogonal basis through the Rayleigh-Ritz step, orthonormal and with the same
    # values as full reorthogonalisation's, for a fraction of its sweeps.
    norms = _counting_norms(monkeypatch)
    A = matrix_with_spectrum(SPECTRA["outliers"], seed=2)
    full = eigsh(aslinearoperator(A), k=3, ncv=60, tol=1e-10, reorth="full")
    full_norms = len(norms)
    partial = eigsh(aslinearoperator(A), k=3, ncv=60, tol=1e-10, reorth="partial")
    assert partial.num_matvecs == full.num_matvecs < 60  # no restart
    assert len(norms) - full_norms < 0.7 * full_norms
    assert_close(partial.eigenvalues, full.eigenvalues, rtol=1e-13)
    Y = partial.eigenvectors
    assert_close(Y.T @ Y, np.eye(3), atol=1e-14, rtol=0)
    assert_close(np.linalg.norm(A @ Y - Y * partial.eigenvalues, axis=0),
                 partial.residual_norms, rtol=1e-3, atol=1e-12)


def test_repeated_eigenvalues_found_after_breakdown():
    d = np.array([5.0, 5.0, 5.0, 1.0, 1.0, 0.5])
    res = eigsh(aslinearoperator(np.diag(d)), k=3, tol=1e-12)
    assert_close(res.eigenvalues, np.array([5.0, 5.0, 5.0]), rtol=1e-12)


def test_torch_float32_operator():
    lam = power_law_spectrum(300, 0.5, 2.0)
    A = torch.tensor(matrix_with_spectrum(lam), dtype=torch.float32)
    res = eigsh(aslinearoperator(A), k=3, tol=1e-5)
    assert isinstance(res.eigenvectors, torch.Tensor)
    assert_close(res.eigenvalues, np.sort(lam)[::-1][:3], rtol=1e-5)


def test_deterministic_and_bad_arguments():
    A = marchenko_pastur_matrix(100, 50, seed=3)
    r1 = eigsh(aslinearoperator(A), k=2, seed=4)
    r2 = eigsh(aslinearoperator(A), k=2, seed=4)
    np.testing.assert_array_equal(r1.eigenvalues, r2.eigenvalues)
    op = aslinearoperator(np.eye(5))
    with pytest.raises(ValueError, match="k < n = 5"):
        eigsh(op, k=5)
    with pytest.raises(ValueError, match="which"):
        eigsh(op, k=2, which="BE")
    with pytest.raises(ValueError, match="reorth in"):
        eigsh(op, k=2, reorth="selective")


def test_budget_exhausted_warns_and_flags():
    A = marchenko_pastur_matrix(400, 300, seed=1)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        res = eigsh(aslinearoperator(A), k=4, ncv=8, max_matvecs=12, tol=1e-12)
    assert not res.converged and res.num_matvecs == 12


def test_basis_in_the_operator_dtype_keeps_the_float32_products_accuracy():
    import torch

    from tests.helpers import matrix_with_spectrum

    lam = np.concatenate([np.linspace(0.0, 1.0, 395), [10.0, 9.0, 8.5, 8.0, 7.0]])
    A = torch.tensor(matrix_with_spectrum(lam, seed=4), dtype=torch.float32)
    op = aslinearoperator(A)
    ref = eigsh(op, k=4, seed=0, basis_dtype="float64")
    low = eigsh(op, k=4, seed=0, basis_dtype="operator")
    assert low.converged and low.eigenvectors.dtype == torch.float64
    np.testing.assert_allclose(low.eigenvalues, [10.0, 9.0, 8.5, 8.0], rtol=1e-5)
    np.testing.assert_allclose(low.eigenvalues, ref.eigenvalues, rtol=1e-5)
    Y = low.eigenvectors.numpy()
    assert np.abs(Y.T @ Y - np.eye(4)).max() < 1e-5
    R = A.double().numpy() @ Y - Y * low.eigenvalues
    assert np.linalg.norm(R, axis=0).max() < 1e-4 * 10.0


def test_a_basis_that_does_not_fit_is_refused_up_front():
    from hessntk import MemoryBudgetError

    op = CountingOperator(aslinearoperator(torch.tensor(np.diag(np.arange(1.0, 101.0)),
                                                        dtype=torch.float32)))
    need = 41 * 4 * 100 + 8 * 8 * 100  # ncv + 1 float32 basis vectors, eight float64 ones
    with pytest.raises(MemoryBudgetError, match="ncv \\+ 1 = 41 vectors of n = 100") as info:
        eigsh(op, k=3, max_memory=need - 1)
    assert (info.value.need, info.value.budget) == (need, need - 1) and op.num_matvecs == 0
    assert info.value.source == "eigsh"
    assert "a smaller ncv (at least k + 1 = 4" in str(info.value)
    assert "basis_dtype='operator'" not in str(info.value)  # the basis is float32 already
    with pytest.raises(ValueError, match="basis_dtype='operator' \\(half the memory\\)"):
        eigsh(op, k=3, basis_dtype="float64", max_memory=need)
    assert_close(eigsh(op, k=3, max_memory=need).eigenvalues, [100.0, 99.0, 98.0], rtol=1e-5)
