"""Lanczos and SLQ with partial or no reorthogonalisation (issue 16): the same Ritz values,
densities and traces as full reorthogonalisation against exact spectra, memory stated and
refused up front."""

from __future__ import annotations

import numpy as np
import pytest

from hessntk.spectral import aslinearoperator, lanczos, rademacher, slq
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
        slq(A, reorth="selective")
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


@pytest.mark.parametrize("name", ["outliers", "power_law", "marchenko_pastur"])
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_partial_reorthogonalisation_keeps_full_accuracy_with_fewer_basis_reads(name, precision):
    import torch

    lam = _spectra()[name]
    dtype = getattr(torch, precision)
    op = aslinearoperator(torch.tensor(matrix_with_spectrum(lam, seed=1), dtype=dtype))
    eps = float(torch.finfo(dtype).eps)
    scale = float(np.abs(lam).max())
    m = 120
    full = lanczos(op, m, num_probes=3, seed=2)
    part = lanczos(op, m, num_probes=3, seed=2, reorth="partial", return_basis=True)
    assert full.num_reorth == m and 0 < part.num_reorth < m
    # semi-orthogonality, the guarantee of the omega recurrence
    for p in range(3):
        Q = part.basis[p].double().numpy()
        assert np.abs(Q @ Q.T - np.eye(m)).max() <= np.sqrt(eps)
    # Converged (extreme) Ritz values equal full's to eps ||A||. Unconverged ones depend on
    # the Krylov space itself, which rounding moves: to 1e-12 with float64 products, to 1e-4
    # (measured 6e-6) with float32 products.
    tol = (1e-12 if precision == "float64" else 1e-6) * scale
    loose = (1e-12 if precision == "float64" else 1e-4) * scale
    for p in range(3):
        ritz, ref = part.eigh(p)[0], full.eigh(p)[0]
        np.testing.assert_allclose(ritz[[0, 1, 2, -3, -2, -1]], ref[[0, 1, 2, -3, -2, -1]],
                                   rtol=0, atol=tol)
        np.testing.assert_allclose(ritz, ref, rtol=0, atol=loose)
    d_full = slq(op, num_probes=10, num_matvecs=m, seed=0)
    d_part = slq(op, num_probes=10, num_matvecs=m, seed=0, reorth="partial")
    assert _w1(d_part, lam) == pytest.approx(_w1(d_full, lam), rel=1e-3)


def test_partial_reorthogonalisation_reads_the_basis_rarely_on_a_smooth_spectrum():
    op = aslinearoperator(matrix_with_spectrum(np.linspace(0, 1, 600) ** 3, seed=1))
    T = lanczos(op, 120, num_probes=2, reorth="partial")
    assert T.num_reorth <= 12  # measured 4 (float64 products)


def test_partial_reorthogonalisation_detects_breakdowns_like_full():
    op = aslinearoperator(np.diag(np.repeat([1.0, 2.0, 3.0, 5.0, 8.0], 40)))
    T = lanczos(op, 30, num_probes=2, reorth="partial")
    assert T.breakdown.all() and (T.num_steps == 5).all()
    np.testing.assert_allclose(T.eigh(0)[0], [1.0, 2.0, 3.0, 5.0, 8.0], atol=1e-12)


@pytest.mark.parametrize("reorth", ["partial", "none"])
@pytest.mark.parametrize("basis_dtype", ["float64", "operator"])
def test_float32_operator_of_large_dimension_keeps_its_outliers(reorth, basis_dtype):
    """n = 2e5, float32 products: the float64 recurrence keeps the Ritz values of the
    outliers to the products' accuracy (a float32 recurrence put them 1e-4 off, and with
    partial reorthogonalisation above the largest eigenvalue)."""
    import torch

    rng = np.random.default_rng(0)
    lam = (rng.uniform(0, 1, 200_000) ** 4).astype(np.float32)
    lam[:4] = [50.0, 40.0, 30.0, 20.0]
    d = torch.from_numpy(lam)[:, None]
    op = aslinearoperator(lambda v: (d * v[:, None])[:, 0], n=lam.size, dtype=torch.float32,
                          matmat=lambda V: d * V)
    T = lanczos(op, 30, num_probes=1, seed=0, reorth=reorth, basis_dtype=basis_dtype)
    ritz = T.eigh(0)[0]
    assert ritz.max() <= 50.0 * (1 + 1e-6)
    for outlier in (50.0, 40.0):  # converged (with ghost copies when reorth="none")
        assert np.abs(ritz - outlier).min() <= 1e-6 * outlier


def test_basis_off_the_operator_device_gives_the_same_numbers():
    import torch

    from hessntk.spectral._backend import TorchBackend
    from hessntk.spectral.krylov import _reorthogonalise

    lam = _spectra()["outliers"]
    op = aslinearoperator(torch.tensor(matrix_with_spectrum(lam, seed=1)))
    ref = lanczos(op, 60, num_probes=3, seed=0, reorth="partial")
    host = lanczos(op, 60, num_probes=3, seed=0, reorth="partial", basis_device="cpu",
                   return_basis=True)
    np.testing.assert_allclose(host.alpha, ref.alpha, rtol=1e-12)
    np.testing.assert_allclose(host.beta, ref.beta, rtol=1e-12)
    assert host.basis.device.type == "cpu"
    # the streamed Gram-Schmidt (blocks of basis vectors moved one at a time) equals one pass
    Q = torch.linalg.qr(torch.randn(3, 600, 50, dtype=torch.float64))[0]  # (3, 600, 50)
    Q = Q.transpose(1, 2).contiguous()  # (k, j, n) rows orthonormal
    w = torch.randn(3, 600, dtype=torch.float64)
    one = _reorthogonalise(TorchBackend(), Q, w)
    streamed = _reorthogonalise(TorchBackend(), Q, w, streamed=True, block_bytes=7 * 3 * 600 * 8)
    torch.testing.assert_close(streamed, one, rtol=1e-12, atol=1e-12)
    assert float((Q @ streamed[:, :, None]).abs().max()) < 1e-12
    d = slq(op, num_probes=2, num_matvecs=30, seed=0, basis_device="cpu")
    np.testing.assert_allclose(d.nodes, slq(op, num_probes=2, num_matvecs=30, seed=0).nodes,
                               rtol=1e-12)
    with pytest.raises(ValueError, match="basis_device=None for a numpy operator"):
        lanczos(aslinearoperator(np.eye(5)), 3, basis_device="cpu")


def test_partial_reorthogonalisation_decides_for_each_probe_alone(monkeypatch):
    """Each probe is reorthogonalised by its own omega estimate: its coefficients in a
    lockstep run are those of a run of that probe alone, and the basis rows read are only
    those of the probes that need it."""
    from hessntk.spectral import krylov

    rows = []
    sweep = krylov._reorthogonalise

    def counted(xp, Q, w, *args, **kwargs):
        rows.append(w.shape[0])
        return sweep(xp, Q, w, *args, **kwargs)

    monkeypatch.setattr(krylov, "_reorthogonalise", counted)
    lam = _spectra()["outliers"]
    op = aslinearoperator(matrix_with_spectrum(lam, seed=1))
    V = rademacher(op.shape[0], 3, seed=5)
    V[:, 2] = np.linspace(-1.0, 1.0, op.shape[0])  # a start unlike the other two
    together = lanczos(op, 100, v0=V, reorth="partial")
    read, rows[:] = sum(rows), []
    steps = []
    for p in range(3):
        alone = lanczos(op, 100, v0=V[:, p], reorth="partial")
        np.testing.assert_allclose(together.alpha[p], alone.alpha[0], rtol=0,
                                   atol=1e-12 * float(np.abs(lam).max()))
        np.testing.assert_allclose(together.beta[p], alone.beta[0], rtol=0,
                                   atol=1e-12 * float(np.abs(lam).max()))
        steps.append(alone.num_reorth)
    # the probes need different steps (measured 46, 47, 46 of 100): the joint run
    # reorthogonalised each probe at its own steps only, and counts a step where any did
    assert read == sum(rows) == sum(steps) < 3 * together.num_reorth
    assert max(steps) <= together.num_reorth <= sum(steps)


def test_default_basis_is_stored_in_the_operator_dtype():
    import torch

    lam = np.linspace(1.0, 2.0, 300)
    op32 = aslinearoperator(torch.tensor(matrix_with_spectrum(lam, seed=0), dtype=torch.float32))
    op64 = aslinearoperator(torch.tensor(matrix_with_spectrum(lam, seed=0)))
    assert lanczos(op32, 5, return_basis=True).basis.dtype == torch.float32
    assert lanczos(op64, 5, return_basis=True).basis.dtype == torch.float64
    assert lanczos(op32, 5, return_basis=True, basis_dtype="float64").basis.dtype == torch.float64
    # the memory refusal states the default's 4 bytes per entry for a float32 operator
    with pytest.raises(ValueError, match="4 bytes x n = 300 x 100 steps"):
        slq(op32, num_matvecs=100, max_basis_bytes=100_000)
