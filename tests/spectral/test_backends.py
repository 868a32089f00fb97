"""The same operator as numpy, torch and jax arrays gives the same numbers (same seed)."""

import numpy as np
import pytest
import torch

from hessntk.spectral import aslinearoperator, eigsh, lanczos, slq, trace
from tests.helpers import assert_close, marchenko_pastur_matrix

A = marchenko_pastur_matrix(300, 120, seed=0)


def _jax_matrix():
    jax = pytest.importorskip("jax", reason="jax not installed (pip install 'hessntk[jax]')")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    return jnp.asarray(A)


@pytest.fixture(params=["numpy", "torch", "jax"])
def matrix(request):
    if request.param == "numpy":
        return A
    if request.param == "torch":
        return torch.tensor(A)
    return _jax_matrix()


def test_same_numbers_on_every_backend(matrix):
    op = aslinearoperator(matrix)
    ref = aslinearoperator(A)
    T, Tref = lanczos(op, 15, num_probes=3, seed=2), lanczos(ref, 15, num_probes=3, seed=2)
    assert_close(T.alpha, Tref.alpha, rtol=1e-12)
    assert_close(T.beta, Tref.beta, rtol=1e-12)
    assert_close(eigsh(op, k=3, seed=1).eigenvalues, eigsh(ref, k=3, seed=1).eigenvalues,
                 rtol=1e-12)
    for method in ("xtrace", "xnystrace", "hutchpp", "hutchinson"):
        assert_close(trace(op, num_matvecs=30, method=method, seed=3).value,
                     trace(ref, num_matvecs=30, method=method, seed=3).value, rtol=1e-10)
    assert_close(slq(op, num_probes=2, num_matvecs=10, seed=0).nodes,
                 slq(ref, num_probes=2, num_matvecs=10, seed=0).nodes, rtol=1e-12)


def test_block_traces_on_every_backend(matrix):
    blocks = [slice(0, 40), np.arange(40, 120)]
    got = trace(aslinearoperator(matrix), num_matvecs=30, seed=0, blocks=blocks)
    want = trace(aslinearoperator(A), num_matvecs=30, seed=0, blocks=blocks)
    assert_close(got.values, want.values, rtol=1e-10)


def test_eigenvectors_stay_on_the_operator_backend(matrix):
    vecs = eigsh(aslinearoperator(matrix), k=2).eigenvectors
    assert type(vecs).__module__.split(".")[0] == type(matrix).__module__.split(".")[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_operator_matches_cpu():
    op = aslinearoperator(torch.tensor(A, device="cuda"))
    assert_close(eigsh(op, k=3).eigenvalues, eigsh(aslinearoperator(A), k=3).eigenvalues,
                 rtol=1e-10)
    assert_close(trace(op, num_matvecs=30).value, trace(aslinearoperator(A), num_matvecs=30).value,
                 rtol=1e-10)
    assert slq(op, num_probes=2, num_matvecs=10).nodes.shape == (2, 10)
