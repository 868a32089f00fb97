"""Per-sample Jacobians against jacrev of the full-batch outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hessntk.ntk import jacobian
from tests.helpers import assert_close
from tests.ntk.models import DT, cases, reference_jacobian

CASES = cases()


@pytest.mark.parametrize("name", list(CASES))
def test_jacobian_matches_reference(name):
    model, x = CASES[name]
    assert_close(jacobian(model, x), reference_jacobian(model, x))


def test_linear_jacobian_rows_are_sample_major():
    torch.manual_seed(0)
    X = torch.randn(3, 2, dtype=DT)
    net = nn.Linear(2, 2, bias=False).to(DT)
    J = jacobian(net, X)
    # Row i*c + j = d f_j(x_i) / d W: x_i in the columns of W's row j, zeros elsewhere.
    for i in range(3):
        for j in range(2):
            expected = torch.zeros(2, 2, dtype=DT)
            expected[j] = X[i]
            assert_close(J[i * 2 + j], expected.reshape(-1))


def test_chunked_equals_unchunked():
    model, x = CASES["conv"]
    full = jacobian(model, x, chunk_size=4)
    for chunk in (1, 3):
        assert_close(jacobian(model, x, chunk_size=chunk), full)


def test_jacobian_dtype_and_scalar_outputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)).to(DT)  # outputs of shape (n,)
    x = torch.randn(4, 3, dtype=DT)
    J = jacobian(net, x, dtype=torch.float32)
    assert J.shape == (4, 4) and J.dtype == torch.float32
    assert_close(J, reference_jacobian(net, x))
