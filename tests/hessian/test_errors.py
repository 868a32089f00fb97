"""Bad input is refused at construction with a message that says what to change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hessntk import hessian
from hessntk.hessian import GGNOperator, HessianOperator
from tests.hessian.models import DT, case, mlp


def _data(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g, dtype=DT), torch.randn(n, 2, generator=g, dtype=DT)


@pytest.mark.parametrize("layer", [lambda: nn.Dropout(0.2), lambda: nn.BatchNorm1d(5)])
@pytest.mark.parametrize("cls", [HessianOperator, GGNOperator])
def test_train_mode_with_dropout_or_batchnorm(layer, cls: type) -> None:
    model = nn.Sequential(nn.Linear(3, 5), layer(), nn.Tanh(), nn.Linear(5, 2)).to(DT)
    with pytest.raises(ValueError, match=r"model\.eval\(\).*allow_train_mode=True"):
        cls(model, nn.MSELoss(), _data())
    n = sum(p.numel() for p in model.parameters())
    op = cls(model, nn.MSELoss(), _data(), allow_train_mode=True)  # accepted on request
    assert op.shape == (n, n)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    HV = op.matmat(torch.eye(n, dtype=DT)[:, :3])  # runs; dropout: one mask for all columns
    assert HV.shape == (n, 3) and bool(torch.isfinite(HV).all())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert cls(model.eval(), nn.MSELoss(), _data()).shape == (n, n)


def test_non_scalar_loss_names_the_batch() -> None:
    x, y = _data(8)

    def per_sample(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (out - t).square().mean(dim=1).squeeze()  # scalar only for one sample

    with pytest.raises(ValueError, match=r"scalar mean loss; got \(7,\) for batch 1.*reduction"):
        HessianOperator(mlp(), per_sample, [(x[:1], y[:1]), (x[1:], y[1:])])


def test_non_finite_loss_names_the_batch() -> None:
    x, y = _data(8)
    y[5, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="loss of batch 1"):
        HessianOperator(mlp(), nn.MSELoss(), [(x[:4], y[:4]), (x[4:], y[4:])])


@pytest.mark.parametrize("cls", [HessianOperator, GGNOperator])
def test_non_finite_parameters_are_refused_by_name(cls: type) -> None:
    # an infinite weight into a saturating tanh gives a finite loss and finite products
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)
    with torch.no_grad():
        model[0].weight[1, 2] = float("inf")
    with pytest.raises(FloatingPointError, match=r"parameter '0\.weight'.*1 non-finite of 15"):
        cls(model, nn.MSELoss(), _data())


def test_a_failing_forward_names_the_batch_and_its_shapes() -> None:
    # torch's own "mat1 and mat2 shapes cannot be multiplied" / "Target 4 is out of bounds"
    # used to arrive without saying which batch or what it held
    x, y = _data(8)
    with pytest.raises(RuntimeError, match=r"loss of batch 1 failed: mat1 and mat2 shapes.*"
                                           r"inputs \(4, 2\) and targets \(4, 2\)"):
        HessianOperator(mlp(), nn.MSELoss(), [(x[:4], y[:4]), (x[4:, :2], y[4:])])
    labels = torch.tensor([0, 1, 4, 1, 0, 1])
    with pytest.raises(IndexError, match=r"loss of batch 0 failed: Target 4 is out of bounds\. "
                                         r"Check that the inputs \(6, 3\) and targets \(6,\)"):
        HessianOperator(mlp(), nn.CrossEntropyLoss(), (_data()[0], labels))


def test_non_finite_product_names_the_batch() -> None:
    # finite loss, infinite curvature: sqrt has an infinite second derivative at 0
    model, (x, y) = mlp(), _data(4)
    op = HessianOperator(model, lambda out, t: (out - out.detach()).abs().sqrt().mean(), (x, y))
    for method in ("graph", "func"):
        op.method = method
        with pytest.raises(FloatingPointError, match="product of batch 0"):
            op.matmat(torch.ones(op.shape[0], 2, dtype=DT))


def test_empty_data_and_empty_batches() -> None:
    with pytest.raises(ValueError, match="empty data"):
        HessianOperator(mlp(), nn.MSELoss(), [])
    x, y = _data()
    with pytest.raises(ValueError, match="0 samples in batch 0"):
        HessianOperator(mlp(), nn.MSELoss(), (x[:0], y[:0]))
    with pytest.raises(ValueError, match="batch size 6.*batch 0"):
        HessianOperator(mlp(), nn.MSELoss(), (x, y[:5]))
    with pytest.raises(TypeError, match="re-iterable"):
        HessianOperator(mlp(), nn.MSELoss(), ((x, y) for _ in range(2)))


def test_parameter_selection_errors() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="at least one parameter"):
        HessianOperator(mlp(), nn.MSELoss(), (x, y), params=[])
    with pytest.raises(ValueError, match="unknown names"):
        HessianOperator(mlp(), nn.MSELoss(), (x, y), params=["0.wieght"])
    model = mlp()
    model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        GGNOperator(model, nn.MSELoss(), (x, y), params=["0.weight"])
    assert HessianOperator(model, nn.MSELoss(), (x, y)).layout.names == [
        "0.bias",
        "2.weight",
        "2.bias",
    ]


def test_dtype_mismatches() -> None:
    x, y = _data()
    with pytest.raises(TypeError, match="float32 in batch 0.*Cast"):
        HessianOperator(mlp(), nn.MSELoss(), (x.float(), y))
    with pytest.raises(TypeError, match="targets.*float32"):
        HessianOperator(mlp(), nn.MSELoss(), (x, y.float()))
    with pytest.raises(TypeError, match="dtype error on batch 0 with inputs of dtype int64"):
        HessianOperator(mlp(), nn.MSELoss(), (x.long(), y))
    with pytest.raises(TypeError, match="targets"):
        HessianOperator(mlp(), nn.CrossEntropyLoss(), (x, torch.zeros(6, 2, dtype=torch.long)))


def test_output_and_option_errors() -> None:
    model, loss, batches, _ = case("transformer")
    with pytest.raises(TypeError, match="output_key="):
        HessianOperator(model, loss, batches)
    with pytest.raises(ValueError, match="keys"):
        HessianOperator(model, loss, batches, output_key="logit")
    x, y = _data()
    with pytest.raises(ValueError, match="method"):
        GGNOperator(mlp(), nn.MSELoss(), (x, y), method="jvp")
    with pytest.raises(ValueError, match="chunk_size"):
        HessianOperator(mlp(), nn.MSELoss(), (x, y), chunk_size=0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        HessianOperator(lambda t: t, nn.MSELoss(), (x, y))
    with pytest.raises(TypeError, match="loss_fn"):
        HessianOperator(mlp(), "mse", (x, y))
    with pytest.raises(TypeError, match="iterable of batches"):
        hessian.trace(mlp(), nn.MSELoss(), x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shuffle": True, "drop_last": True},
         r"RandomSampler \(shuffle=True\) and drop_last=True \(another subset"),
        ({"shuffle": True}, r"RandomSampler \(shuffle=True\)\. Operators walk"),
    ],
)
def test_a_shuffling_loader_is_refused(kwargs, match) -> None:
    """Issue 14 case 4: every product used other batches (trace 3.750, then 3.851)."""
    from torch.utils.data import DataLoader, TensorDataset

    x, y = _data(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, **kwargs)
    with pytest.raises(ValueError, match=match + ".*shuffle=False"):
        HessianOperator(mlp(), nn.MSELoss(), loader)
    with pytest.raises(ValueError, match=match):
        hessian.trace(mlp(), nn.MSELoss(), loader, num_matvecs=6)
    sequential = DataLoader(TensorDataset(x, y), batch_size=4, drop_last=kwargs.get("drop_last",
                                                                                     False))
    assert HessianOperator(mlp(), nn.MSELoss(), sequential).num_samples == (
        8 if kwargs.get("drop_last") else 10)


class RandomForward(nn.Module):
    """``F.dropout(x, training=True)``: random in eval mode too."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(nn.functional.dropout(torch.tanh(self.a(x)), 0.3, training=True))


@pytest.mark.parametrize("cls", [HessianOperator, GGNOperator])
def test_a_random_forward_is_refused(cls: type) -> None:
    """Issue 14 case 4: one random mask was frozen (or drawn anew) silently."""
    torch.manual_seed(0)
    model = RandomForward().to(DT).eval()
    with pytest.raises(ValueError, match=r"deterministic model.*F\.dropout\(x, training=True\)"):
        cls(model, nn.MSELoss(), _data())


@pytest.mark.parametrize("num_batches", [1, 3])
def test_an_operator_refuses_products_after_the_weights_change(num_batches: int) -> None:
    """Issue 14 case 9: one batch raised autograd's in-place error, several batches mixed the
    new weights with the old loss and batch weights silently."""
    from hessntk.ntk import GramOperator

    model = mlp()
    x, y = _data(6)
    step = 6 // num_batches
    data = [(x[i : i + step], y[i : i + step]) for i in range(0, 6, step)]
    ops = [HessianOperator(model, nn.MSELoss(), data), GGNOperator(model, nn.MSELoss(), data),
           HessianOperator(model, nn.MSELoss(), data, method="graph", cache_graph=True),
           GramOperator(model, data=data)]
    for op in ops:
        op.matvec(torch.ones(op.shape[0], dtype=DT))  # fine before
    with torch.no_grad():
        next(model.parameters()).add_(0.1)  # e.g. optimizer.step()
    for op in ops:
        with pytest.raises(RuntimeError, match=r"'0\.weight' was updated in place.*build a new"):
            op.matvec(torch.ones(op.shape[0], dtype=DT))
    with pytest.raises(RuntimeError, match="updated in place"):
        ops[0].gradient()
    with pytest.raises(RuntimeError, match="updated in place"):
        ops[0].block(ops[0].blocks[0])
    fresh = HessianOperator(model, nn.MSELoss(), data)  # the new weights: fine
    assert fresh.loss != ops[0].loss


def test_a_summing_loss_is_refused() -> None:
    """Issue 14 case 7: reduction="sum" was accepted under a "mean loss" header (64x off)."""
    for loss in (nn.MSELoss(reduction="sum"), nn.CrossEntropyLoss(reduction="sum")):
        with pytest.raises(ValueError, match=r"reduction='sum'.*reduction='mean'"):
            HessianOperator(mlp(), loss, _data())
