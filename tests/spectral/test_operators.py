import numpy as np
import pytest
import torch

from hessntk.spectral import (
    CountingOperator,
    DenseOperator,
    LinearOperator,
    aslinearoperator,
    check_symmetric,
)
from tests.helpers import assert_close


def test_dense_numpy_and_torch_products():
    A = np.arange(9.0).reshape(3, 3)
    A = A + A.T
    for M in (A, torch.tensor(A)):
        op = aslinearoperator(M)
        assert isinstance(op, DenseOperator)
        assert op.shape == (3, 3)
        v = M[:, 0] * 0 + 1
        assert_close(op @ v, A @ np.ones(3))
        assert_close(op.matmat(M), A @ A)
    assert aslinearoperator(torch.eye(2)).backend == "torch"
    assert aslinearoperator(np.eye(2)).backend == "numpy"


def test_callable_matvec_and_matmat():
    op = aslinearoperator(lambda v: 3.0 * v, n=4, dtype=np.float64)
    assert_close(op.matmat(np.ones((4, 2))), 3.0 * np.ones((4, 2)))
    op2 = aslinearoperator(None, matmat=lambda V: 2.0 * V, n=4, dtype=torch.float32)
    assert op2.backend == "torch"
    assert_close(op2 @ torch.ones(4), 2.0 * np.ones(4))
    with pytest.raises(ValueError, match="n= and dtype="):
        aslinearoperator(lambda v: v)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="square"):
        aslinearoperator(np.ones((3, 4)))
    with pytest.raises(TypeError, match="Expected a LinearOperator"):
        aslinearoperator("matrix")
    op = aslinearoperator(np.eye(3))
    with pytest.raises(ValueError, match=r"Expected V of shape \(3, k\)"):
        op.matmat(np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"Expected v of shape \(3,\)"):
        op.matvec(np.ones(2))


def test_check_symmetric_dense_and_callable():
    A = np.array([[1.0, 2.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="symmetric"):
        aslinearoperator(A, check_symmetric=True)
    with pytest.raises(ValueError, match="asymmetry"):
        check_symmetric(aslinearoperator(lambda v: A @ v, n=2, dtype=np.float64))
    S = np.array([[2.0, 1.0], [1.0, 3.0]])
    assert check_symmetric(aslinearoperator(lambda v: S @ v, n=2, dtype=np.float64)) < 1e-15
    assert check_symmetric(aslinearoperator(S)) == 0.0


def test_counting_and_block_size_split():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((7, 7))
    A = A + A.T
    base = CountingOperator(aslinearoperator(A))
    base.block_size = 2
    V = rng.standard_normal((7, 5))
    assert_close(base.matmat(V), A @ V)
    assert base.num_matvecs == 5


class _Diag(LinearOperator):
    def __init__(self, d):
        super().__init__(len(d), torch.float64, backend="torch")
        self.d = d
        self.calls = 0

    def _matmat(self, V):
        self.calls += 1
        return self.d[:, None] * V


def test_subclass_only_needs_matmat_and_repr_is_readable():
    op = _Diag(torch.arange(1.0, 4.0, dtype=torch.float64))
    block = op.block_size = 2
    out = op.matmat(torch.ones(3, 5, dtype=torch.float64))
    assert op.calls == 3 and block == 2
    assert_close(out[:, 0], np.arange(1.0, 4.0))
    assert_close(op.matvec(torch.ones(3, dtype=torch.float64)), np.arange(1.0, 4.0))
    assert "n=3" in repr(op) and "torch" in repr(op)
