"""Every bad input raises a clear error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hessntk import hessian
from hessntk.ntk import GramOperator, gram, jacobian
from tests.ntk.models import DT, DictOut, mlp


def _x(n=4, d=4):
    torch.manual_seed(0)
    return torch.randn(n, d, dtype=DT)


def test_gram_too_big_for_budget_names_size_and_operator():
    with pytest.raises(ValueError, match=r"= 1\.15 kB.*GramOperator"):
        gram(mlp(c=3), _x(n=4), max_memory=1000)  # (12, 12) float64 = 1152 bytes
    with pytest.raises(ValueError, match="GramOperator"):
        jacobian(mlp(c=3), _x(n=4), max_memory=1000)


def test_mismatched_inputs():
    model = mlp()
    with pytest.raises(ValueError, match="match the first"):
        gram(model, _x(), _x(d=5))
    with pytest.raises(ValueError, match="same leading"):
        gram(DictOut().to(DT), (torch.zeros(4, 3, dtype=DT), torch.zeros(3, 2, dtype=DT)),
             output_key="logits")
    with pytest.raises(ValueError, match="match the first"):
        GramOperator(model, [_x(), _x(d=5)])
    with pytest.raises(ValueError, match="no inputs2"):
        gram(model, _x(), _x(), mode="diagonal")


def test_non_finite_outputs():
    x = _x()
    x[2, 0] = float("nan")
    for method in ("auto", "jacobian", "ntk_vp"):
        with pytest.raises(FloatingPointError, match="non-finite"):
            gram(mlp(), x, method=method)
    with pytest.raises(FloatingPointError):
        GramOperator(mlp(), [_x(), x]) @ torch.ones(24, dtype=DT)


def test_train_mode_with_dropout_is_refused():
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).to(DT).train()
    for call in (lambda: gram(model, _x()), lambda: GramOperator(model, _x()),
                 lambda: jacobian(model, _x())):
        with pytest.raises(ValueError, match=r"model\.eval\(\)"):
            call()
    assert gram(model, _x(), allow_train_mode=True).shape == (12, 12)  # explicit opt-in


def test_no_parameters():
    with pytest.raises(ValueError, match="at least one parameter"):
        gram(nn.Sequential(nn.Tanh()), _x())
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        GramOperator(frozen, _x())


def test_bad_options():
    model, x = mlp(), _x()
    with pytest.raises(ValueError, match="mode"):
        gram(model, x, mode="diag")
    with pytest.raises(ValueError, match="method"):
        gram(model, x, method="fast")
    with pytest.raises(ValueError, match="outputs="):
        gram(model, x, outputs="softmax")
    with pytest.raises(ValueError, match="c >= 2"):
        gram(mlp(c=1), x, outputs="probabilities")
    with pytest.raises(ValueError, match="prior keys"):
        gram(model, x, prior={"nope": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        gram(model, x, prior=-1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        gram(model, x, chunk_size=0)
    with pytest.raises(ValueError, match="positive max_memory"):
        gram(model, x, max_memory=0)
    with pytest.raises(ValueError, match="exactly one of"):
        GramOperator(model)


def test_outputs_not_per_sample():
    class Reduce(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Linear(4, 2)

        def forward(self, x):
            return self.f(x).sum(0)

    with pytest.raises(ValueError, match="per-sample outputs"):
        gram(Reduce().to(DT), _x())
    with pytest.raises(TypeError, match="output_key"):
        gram(DictOut().to(DT), (torch.zeros(4, 3, dtype=DT), torch.zeros(4, 2, dtype=DT)))


class Centering(nn.Module):
    """``x - x.mean(0)``: every sample's outputs depend on the whole batch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x - x.mean(0)))


def test_a_model_that_mixes_samples_is_refused_on_every_path():
    """Issue 14 case 8: method="jacobian" gave a Gram 22x off, "structured" another value."""
    model = Centering().to(DT).eval()
    calls = [lambda m=m: gram(model, _x(), method=m)
             for m in ("auto", "structured", "jacobian", "ntk_vp")]
    calls += [lambda: gram(model, _x(), mode="diagonal"), lambda: GramOperator(model, _x()),
              lambda: jacobian(model, _x())]
    for call in calls:
        with pytest.raises(ValueError, match=r"mixes samples.*x - x\.mean\(0\)"):
            call()


def test_inputs_of_another_dtype_and_meta_parameters_get_clear_errors():
    """Issue 14 case 8: torch's raw dtype error, and a raw .item() error on the meta device."""
    net = mlp()  # float64
    for x, shown in ((torch.randn(5, 4), "float32"), (torch.randint(0, 3, (5, 4)), "int64")):
        with pytest.raises(TypeError, match=rf"dtype error on inputs with inputs of dtype "
                                            rf"{shown} \(parameters: torch.float64\).*x\.to"):
            gram(net, x)
    meta = nn.Linear(4, 2, device="meta")
    for call in (lambda: gram(meta, torch.randn(3, 4, device="meta")),
                 lambda: hessian.HessianOperator(meta, nn.MSELoss(),
                                                 (torch.randn(3, 4, device="meta"),
                                                  torch.randn(3, 2, device="meta")))):
        with pytest.raises(ValueError, match="meta device.*to_empty"):
            call()
