"""Lanczos and SLQ without reorthogonalisation (issue 16): the same densities and traces as
full reorthogonalisation against exact spectra, memory stated and refused up front."""

from __future__ import annotations

import numpy as np
import pytest

from hessntk.spectral import aslinearoperator, lanczos, slq
from tests.helpers import matrix_with_spectrum


def _w1(density, lam):
    """Wasserstein-1 distance between the SLQ measure and the exact spectral measure."""
    nodes, w = density.nodes.ravel(), density.weights.ravel() / density.num_probes
    pts = np.sort(np.concatenate([nodes[w > 0], lam]))
    order = np.argsort(nodes)
    F_slq = np.cumsum(w[order])[np.searchsorted(nodes[order], pts, side="right") - 1]
    F_slq = np.where(pts < nodes.min(), 0.0, F_slq)
    F_exact = np.searchsorted(np.sort(lam), pts, side="right") / lam.size
    return float(np.sum(np.abs(F_slq - F_exact)[:-1] * np.diff(pts)))


def _spectra():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1200, 600))
    return {
        "outliers": np.concatenate([-np.abs(rng.standard_normal(120)) * 0.05,
                                    np.abs(rng.standard_normal(474)) * 0.1,
                                    rng.uniform(5, 50, 6)]),
        "power_law": np.linspace(0, 1, 600) ** 3,
        "marchenko_pastur": np.linalg.eigvalsh(X.T @ X / 1200),
    }


@pytest.mark.parametrize("name", ["outliers", "power_law", "marchenko_pastur"])
def test_no_reorthogonalisation_keeps_densities_and_traces(name):
    lam = _spectra()[name]
    A = aslinearoperator(matrix_with_spectrum(lam, seed=1))
    full = slq(A, num_probes=10, num_matvecs=120, seed=0)
    none = slq(A, num_probes=10, num_matvecs=120, seed=0, reorth="none")
    scale = float(np.abs(lam).max())
    w_full, w_none = _w1(full, lam), _w1(none, lam)
    assert w_none <= 1.1 * w_full + 1e-4 * scale, (w_full, w_none)
    assert w_none <= 1e-2 * scale
    for f in (lambda x: x**2, lambda x: np.exp(-x / scale)):
        est, exact = none.trace(f), float(f(lam).sum())
        assert abs(est.value - exact) <= 4 * est.stderr + 1e-9 * abs(exact)
        assert est.value == pytest.approx(full.trace(f).value, rel=1e-6)


def test_no_reorthogonalisation_equals_full_before_orthogonality_is_lost():
    A = aslinearoperator(matrix_with_spectrum(np.linspace(1.0, 2.0, 200), seed=0))
    a = lanczos(A, 6, num_probes=3)
    b = lanczos(A, 6, num_probes=3, reorth="none")
    np.testing.assert_allclose(b.alpha, a.alpha, rtol=1e-12)
    np.testing.assert_allclose(b.beta, a.beta, rtol=1e-10)
    assert b.basis is None and lanczos(A, 6, reorth="none", return_basis=True).basis is not None


def test_memory_per_probe_is_refused_up_front_with_the_fixes():
    A = aslinearoperator(np.diag(np.linspace(1.0, 2.0, 500)))
    with pytest.raises(ValueError, match="reorth='none'") as info:
        slq(A, num_probes=2, num_matvecs=100, max_basis_bytes=100_000)
    assert "8 bytes x n = 500 x 100 steps" in str(info.value)
    d = slq(A, num_probes=2, num_matvecs=100, max_basis_bytes=100_000, reorth="none")
    assert d.num_probes == 2
    with pytest.raises(ValueError, match="reorth in"):
        slq(A, reorth="partial")
    with pytest.raises(ValueError, match="reorth in"):
        lanczos(A, 3, reorth="nope")


def test_basis_in_the_operator_dtype_for_a_float32_operator():
    import torch

    lam = _spectra()["outliers"]
    A32 = torch.tensor(matrix_with_spectrum(lam, seed=1), dtype=torch.float32)
    op = aslinearoperator(A32)
    ref = slq(op, num_probes=8, num_matvecs=100, seed=0)
    low = slq(op, num_probes=8, num_matvecs=100, seed=0, basis_dtype="operator")
    scale = float(np.abs(lam).max())
    assert _w1(low, lam) <= 1.1 * _w1(ref, lam) + 1e-4 * scale
    # the outliers (converged Ritz values) agree to the float32 products' accuracy
    np.testing.assert_allclose(low.nodes[:, -3:], ref.nodes[:, -3:], rtol=1e-4)
    T = lanczos(op, 30, num_probes=2, basis_dtype="operator", return_basis=True)
    assert T.basis.dtype == torch.float32 and np.isfinite(T.alpha).all()
    # 4 bytes per entry: the memory statement and the refusal follow the stored dtype
    with pytest.raises(ValueError, match="4 bytes x n = 600 x 100 steps"):
        slq(op, num_matvecs=100, basis_dtype="operator", max_basis_bytes=100_000)
    with pytest.raises(ValueError, match="basis_dtype in"):
        lanczos(op, 3, basis_dtype="float16")
