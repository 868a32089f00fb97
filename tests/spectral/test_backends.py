"""The same operator as numpy, torch and jax arrays gives the same numbers (same seed)."""

import numpy as np
import pytest
import torch

from hessntk.spectral import _backend, aslinearoperator, eigsh, lanczos, slq, trace
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


@pytest.mark.parametrize("layout", ["F", "C"])
def test_torch_casts_and_tall_products_keep_values_and_layout(layout):
    # Probes and their products are column-major: casts and tall products keep that layout.
    from hessntk.spectral._backend import TorchBackend

    xp = TorchBackend()
    X32 = torch.from_numpy(np.asarray(np.random.default_rng(0).standard_normal((20000, 40)),
                                      dtype=np.float32, order=layout))
    X = xp.cast(X32, torch.float64)
    assert X.dtype == torch.float64 and torch.equal(X, X32.to(torch.float64))
    assert X.stride() == X32.stride()
    B = torch.from_numpy(np.random.default_rng(1).standard_normal((40, 40)))
    P = xp.matmul(X, B)
    assert P.shape == (20000, 40) and torch.allclose(P, X @ B, rtol=1e-13, atol=1e-13)
    assert (P.stride(0) == 1) == (layout == "F")
    assert torch.equal(xp.cast(X32, torch.bfloat16), X32.to(torch.bfloat16))


def test_combine_rows_on_every_backend(matrix, monkeypatch):
    # x[:r] = s^T x[:j] in column blocks of 7 (the last one short); rows from r on are kept.
    monkeypatch.setattr(_backend, "GRAM_BLOCK_BYTES", 8 * 5 * 7)
    xp = aslinearoperator(matrix)._xp
    X = np.ascontiguousarray(A[:6])  # (6, 300) rows
    S = A[:5, 10:13]  # (5, 3): three combinations of the first five rows
    for dtype, rtol in ((np.float64, 1e-13), (np.float32, 1e-5)):
        mine = xp.from_numpy(X.astype(dtype))
        got = xp.to_numpy(xp.combine_rows(mine, xp.from_numpy(S.astype(dtype))))
        assert got.dtype == dtype
        assert_close(got, np.concatenate([S.T @ X[:5], X[3:]]), rtol=rtol)


def test_row_blocks_are_cache_sized_on_the_host_and_large_on_accelerators(matrix):
    # Host blocks of GRAM_BLOCK_BYTES float64 entries; on an accelerator (a torch "meta"
    # device stands in for CUDA: only shapes are used) DEVICE_BLOCK_BYTES, few launches.
    xp = aslinearoperator(matrix)._xp
    assert xp.on_host()
    n, k = 10_000_000, 50
    a = torch.empty((n, k), device="meta")
    host = list(_backend.TorchBackend()._row_blocks(a, a))
    device = list(_backend.TorchBackend("meta")._row_blocks(a, a))
    assert not _backend.TorchBackend("meta").on_host()
    assert host[0] == slice(0, _backend.GRAM_BLOCK_BYTES // (8 * k))
    assert device[0] == slice(0, _backend.DEVICE_BLOCK_BYTES // (8 * k))
    assert len(device) == -(-n // (_backend.DEVICE_BLOCK_BYTES // (8 * k))) < len(host) / 50


def test_float32_gram_sums_in_float64_on_every_backend(matrix, monkeypatch):
    # Blocks of 7 rows (the last one short): the float64 Gram of the float32 entries, to
    # float64 rounding; a float32 product would be off by about 5 eps32.
    monkeypatch.setattr(_backend, "GRAM_BLOCK_BYTES", 8 * 5 * 7)
    xp = aslinearoperator(matrix)._xp
    X32, Y32 = A[:, :5].astype(np.float32), A[:, 5:10].astype(np.float32)
    X, Y = xp.from_numpy(X32), xp.from_numpy(Y32)
    X64, Y64 = X32.astype(np.float64), Y32.astype(np.float64)
    assert_close(xp.gram(X, Y), X64.T @ Y64, rtol=1e-14)
    assert_close(xp.gram(X, X), X64.T @ X64, rtol=1e-14)


def test_gram_and_subtract_matmul_on_every_backend(matrix):
    xp = aslinearoperator(matrix)._xp
    X, Y, B = A[:, :5], A[:, 5:10], A[:5, :5]
    assert_close(xp.gram(xp.from_numpy(X), xp.from_numpy(Y)), X.T @ Y, rtol=1e-13)
    C = xp.from_numpy(Y.copy())
    assert_close(xp.to_numpy(xp.subtract_matmul(C, xp.from_numpy(X), xp.from_numpy(B))),
                 Y - X @ B, rtol=1e-13)


def test_recurrence_in_place_equals_the_copying_one_on_every_backend(matrix):
    # owned=True updates the caller's w in place (torch; numpy and jax return a new array):
    # the numbers are the same to the bit, and divide_rows scales rows alike.
    xp = aslinearoperator(matrix)._xp
    q, q_prev, w = (xp.from_numpy(np.ascontiguousarray(A[i : i + 3])) for i in (0, 3, 6))
    b_prev = xp.from_numpy(np.array([0.5, 1.5, 2.5]))
    a_copy, w_copy = xp.recurrence(q, w, q_prev, b_prev)
    np.testing.assert_array_equal(xp.to_numpy(w), A[6:9])  # the copying step left w alone
    a_own, w_own = xp.recurrence(q, xp.from_numpy(A[6:9].copy()), q_prev, b_prev, owned=True)
    np.testing.assert_array_equal(xp.to_numpy(a_own), xp.to_numpy(a_copy))
    np.testing.assert_array_equal(xp.to_numpy(w_own), xp.to_numpy(w_copy))
    expected = xp.to_numpy(w_copy) / np.array([2.0, 4.0, 8.0])[:, None]
    scaled = xp.divide_rows(w_own, xp.from_numpy(np.array([2.0, 4.0, 8.0])))
    np.testing.assert_array_equal(xp.to_numpy(scaled), expected)
    if isinstance(w_own, torch.Tensor):
        mine = torch.tensor(A[6:9])
        _, out = xp.recurrence(q, mine, q_prev, b_prev, owned=True)
        assert out.data_ptr() == mine.data_ptr()
        assert xp.divide_rows(out, b_prev).data_ptr() == mine.data_ptr()


def test_row_dots_and_column_dots_on_every_backend(matrix, monkeypatch):
    # column_dots of float32 arrays rounds each product once in float32 and sums in float64
    # (blocks of 7 rows here, the last one short): within eps32 / 2 of sum |x y|, and exact
    # to float64 rounding for +-1 probes; a float32 sum would be off by a few eps32.
    monkeypatch.setattr(_backend, "GRAM_BLOCK_BYTES", 8 * 3 * 7)
    xp = aslinearoperator(matrix)._xp
    X, Y = np.ascontiguousarray(A[:4]), np.ascontiguousarray(A[4:8])
    assert_close(xp.to_numpy(xp.row_dots(xp.from_numpy(X), xp.from_numpy(Y))),
                 np.sum(X * Y, axis=1), rtol=1e-13)
    rng = np.random.default_rng(0)
    Z, W = (np.asfortranarray(rng.standard_normal((300, 3)) * 1e3) for _ in range(2))
    assert_close(xp.column_dots(xp.from_numpy(Z), xp.from_numpy(W)), np.sum(Z * W, axis=0),
                 rtol=1e-13)
    Z32, W32 = Z.astype(np.float32), W.astype(np.float32)
    got = xp.column_dots(xp.from_numpy(Z32), xp.from_numpy(W32))
    assert got.dtype == np.float64
    P = Z32.astype(np.float64) * W32.astype(np.float64)
    bound = 0.5 * np.finfo(np.float32).eps * np.abs(P).sum(axis=0)
    assert np.all(np.abs(got - P.sum(axis=0)) <= bound * (1 + 1e-6))
    S32 = np.sign(Z32)
    got = xp.column_dots(xp.from_numpy(S32), xp.from_numpy(W32))
    assert_close(got, np.sum(S32.astype(np.float64) * W32, axis=0), rtol=1e-14)


def test_matmul_inplace_on_every_backend(matrix, monkeypatch):
    # Row blocks of 7 (the last one short), written over the caller's array where allowed.
    monkeypatch.setattr(_backend, "GRAM_BLOCK_BYTES", 8 * 5 * 7)
    xp = aslinearoperator(matrix)._xp
    X, B = np.asfortranarray(A[:, :5]), A[:5, :5]
    mine = xp.from_numpy(X.copy())
    out = xp.matmul_inplace(mine, xp.from_numpy(B))
    assert_close(xp.to_numpy(out), X @ B, rtol=1e-13)
    if xp.name != "jax":
        assert out is mine


def test_free_memory_on_the_host(matrix, monkeypatch):
    import hessntk._memory

    monkeypatch.setattr(hessntk._memory, "host_memory", lambda: 12345)
    assert aslinearoperator(matrix)._xp.free_memory() == 12345  # a host device: its memory


def test_probes_are_the_same_on_every_backend(matrix):
    from hessntk.spectral.probes import RademacherStream, rademacher

    xp = aslinearoperator(matrix)._xp
    stream = RademacherStream(300, seed=4)
    first, second = xp.rademacher(stream, 3, xp.float64), xp.rademacher(stream, 5, xp.float64)
    assert tuple(first.shape) == (300, 3) and first.dtype == xp.float64
    got = np.hstack([xp.to_numpy(first), xp.to_numpy(second)])
    assert np.array_equal(got, rademacher(300, 8, seed=4))


def test_cast_into_on_every_backend(matrix):
    xp = aslinearoperator(matrix)._xp
    out = xp.from_numpy(np.zeros(A[:3].shape, np.float32))
    got = xp.cast_into(out, xp.from_numpy(A[:3]))
    assert got.dtype == out.dtype and tuple(got.shape) == A[:3].shape
    assert np.array_equal(xp.to_numpy(got), A[:3].astype(np.float32))
    if xp.name != "jax":
        assert got is out  # written over the caller's array
