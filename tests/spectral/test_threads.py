"""Host BLAS runs on one thread beside torch products, and is left alone for numpy ones."""

from __future__ import annotations

import numpy as np
import pytest

import hessntk.spectral.eigen as eigen
from hessntk.spectral import aslinearoperator, eigsh

threadpoolctl = pytest.importorskip("threadpoolctl")


def _blas_threads() -> set[int]:
    return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}


def test_eigsh_host_linear_algebra_is_single_threaded_beside_torch_products(monkeypatch):
    torch = pytest.importorskip("torch")
    seen = []
    ritz = eigen._ritz

    def recording(*args):
        seen.append(_blas_threads())
        return ritz(*args)

    monkeypatch.setattr(eigen, "_ritz", recording)
    before = _blas_threads()
    A = np.diag(np.linspace(1.0, 2.0, 100))
    top = eigsh(aslinearoperator(torch.tensor(A)), k=2, seed=0)
    np.testing.assert_allclose(top.eigenvalues, [2.0, 2.0 - 1 / 99], rtol=1e-8)
    assert seen and all(s == {1} for s in seen)
    assert _blas_threads() == before  # restored
    seen.clear()
    eigsh(aslinearoperator(A), k=2, seed=0)  # numpy products use that BLAS: not limited
    assert seen and all(s == before for s in seen)
