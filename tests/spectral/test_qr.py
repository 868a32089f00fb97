"""Thin QR of tall sketches: CholeskyQR, CholeskyQR2 or Householder, each within its bound."""

import numpy as np
import pytest
import torch

from hessntk.spectral._backend import Backend, TorchBackend
from hessntk.spectral.qr import tall_qr

U64 = np.finfo(np.float64).eps / 2


def sketch(n, k, kappa, seed=0):
    """(n, k) matrix with singular values log-spaced from 1 down to 1 / kappa."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, k)))
    V, _ = np.linalg.qr(rng.standard_normal((k, k)))
    return np.asfortranarray((U * np.logspace(0, -np.log10(kappa), k)) @ V.T)


def orthogonality(Q):
    return np.linalg.norm(Q.T @ Q - np.eye(Q.shape[1]), 2)


# n = 2000, k = 20: the CholeskyQR2 condition 8 kappa sqrt((n k + k (k + 1)) u) <= 1 holds up
# to kappa ~ 5.9e4.
@pytest.mark.parametrize("kappa,tol,method", [
    (1.0, 1e-7, "cholesky"),  # one pass: its bound (5/64) delta^2 ~ 1e-10 is below tol
    (1.0, U64, "cholesky2"),
    (1e3, 1e-7, "cholesky2"),  # the one-pass bound, 2.3e-5, exceeds tol
    (1e6, U64, "householder"),  # beyond the CholeskyQR2 condition
    (1e14, U64, "householder"),
])
def test_method_and_accuracy(kappa, tol, method):
    n, k = 2000, 20
    Y = sketch(n, k, kappa)
    Q, R, used = tall_qr(Backend(), Y, tol)
    assert used == method
    assert np.allclose(R, np.triu(R), atol=0)
    assert np.linalg.norm(Q @ R - Y) <= 1e-14 * np.linalg.norm(Y)
    bound = {"cholesky": tol, "cholesky2": 6 * (n * k + k * (k + 1)) * U64,
             "householder": 1e-13}[method]
    assert orthogonality(Q) <= bound


def test_rank_deficient_sketch_takes_householder():
    Y = sketch(500, 10, 1.0)
    Y[:, 3] = Y[:, 0] + Y[:, 1]
    Q, R, used = tall_qr(Backend(), Y, 1e-7)
    assert used == "householder"
    assert np.linalg.norm(Q @ R - Y) <= 1e-14 * np.linalg.norm(Y)
    assert orthogonality(Q) <= 1e-13


@pytest.mark.parametrize("kappa", [1.0, 1e3, 1e6])
def test_same_factors_on_torch_and_jax(kappa):
    Y = sketch(3000, 12, kappa, seed=1)
    Q0, R0, m0 = tall_qr(Backend(), Y, U64)
    Q1, R1, m1 = tall_qr(TorchBackend(), torch.from_numpy(Y), U64)
    assert m1 == m0 and isinstance(Q1, torch.Tensor) and Q1.dtype == torch.float64
    signs = np.sign(np.diag(R0)) * np.sign(np.diag(R1))  # Householder's R may differ in sign
    assert np.allclose(R1 * signs[:, None], R0, rtol=0, atol=1e-12)
    assert np.allclose(Q1.numpy() * signs, Q0, rtol=0, atol=1e-10 * kappa)
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from hessntk.spectral._backend import JaxBackend

    Q2, R2, m2 = tall_qr(JaxBackend(), jax.numpy.asarray(Y), U64)
    assert m2 == m0
    assert np.linalg.norm(np.asarray(Q2) @ R2 - Y) <= 1e-14 * np.linalg.norm(Y)


@pytest.mark.parametrize("kappa,method", [(1.0, "cholesky"), (40.0, "cholesky2"),
                                          (1e3, "cholesky2"), (1e9, "householder")])
@pytest.mark.parametrize("xp", [Backend(), TorchBackend()], ids=["numpy", "torch"])
def test_float32_sketch_gives_a_float32_q_orthonormal_to_its_rounding(xp, kappa, method):
    # Float64 Grams of the float32 entries, Q = Y R^-1 in float32: one pass only where Q's
    # measured loss is below tol (at kappa 40 one pass would leave 4.5 eps32, though the
    # float64 bound allows it); orthonormal and reconstructing Y to float32 rounding
    # (measured 0.05-0.95 and 0.04-2.1 eps32).
    e32 = np.finfo(np.float32).eps
    Y = sketch(2000, 20, kappa).astype(np.float32)
    Q, R, used = tall_qr(xp, xp.from_numpy(Y), e32 / 2)
    Q = np.asarray(xp.to_numpy(Q))
    assert used == method and Q.dtype == np.float32
    Q = Q.astype(np.float64)
    assert orthogonality(Q) <= (e32 / 2 if used == "cholesky" else 2 * e32) * (1 + 1e-6)
    assert np.linalg.norm(Q @ R - Y, 2) <= 4 * e32 * np.linalg.norm(Y, 2)
