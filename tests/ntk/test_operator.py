"""GramOperator products against explicit Grams."""

from __future__ import annotations

import numpy as np
import torch

from hessntk.ntk import GramOperator, gram
from hessntk.spectral import LinearOperator, check_symmetric, eigsh, rademacher
from tests.helpers import assert_close
from tests.ntk.models import DT, cases, mlp

CASES = cases()


def test_products_equal_gram_times_v_over_batches():
    model, x = CASES["seq"]
    K = gram(model, x, prior="init")
    op = GramOperator(model, [x[:1], x[1:3], x[3:]], prior="init")
    assert isinstance(op, LinearOperator) and op.shape == K.shape
    assert op.batch_sizes == [1, 2, 1] and (op.num_samples, op.num_outputs) == (4, 2)
    V = torch.from_numpy(rademacher(8, 3, seed=0))
    assert_close(op @ V, K @ V)
    assert_close(op.matvec(V[:, 0]), K @ V[:, 0])
    assert_close(op.diagonal(), K.diagonal())


def test_operator_on_conv_and_data_pairs():
    model, x = CASES["conv"]
    K = gram(model, x)
    y = torch.zeros(4)
    op = GramOperator(model, data=[(x[:2], y[:2]), (x[2:], y[2:])])
    V = torch.from_numpy(rademacher(8, 2, seed=1))
    assert_close(op.matmat(V), K @ V)
    assert check_symmetric(op) < 1e-12


def test_probability_operator_nullity_and_eigenvalues():
    torch.manual_seed(0)
    model, x = mlp(c=3, h=12), torch.randn(4, 4, dtype=DT)
    op = GramOperator(model, x, outputs="probabilities")
    assert op.structural_nullity == 4
    K = gram(model, x, outputs="probabilities")
    res = eigsh(op, k=2, which="LA", seed=0)
    top = torch.linalg.eigvalsh(K)[-2:].numpy()
    np.testing.assert_allclose(np.sort(np.asarray(res.eigenvalues)), top, rtol=1e-8)
    assert GramOperator(model, x, outputs="simplex").shape == (8, 8)


def test_jvp_and_batch_size_split():
    from tests.ntk.models import reference_jacobian

    model, x = CASES["twice"]
    J = reference_jacobian(model, x)
    op = GramOperator(model, x, batch_size=3)
    assert op.batch_sizes == [3, 1]
    t = torch.from_numpy(rademacher(J.shape[1], 1, seed=2)[:, 0])
    assert_close(op.jvp(t), J @ t)
    assert_close(op @ torch.ones(8, dtype=DT), J @ (J.T @ torch.ones(8, dtype=DT)))
