"""Tests of the shared torch-model plumbing in hessntk._model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hessntk._model import (
    ParamLayout,
    batch_size,
    call_model,
    check_batch,
    check_eval_mode,
    check_finite,
    is_single_batch,
    iter_batches,
    select_params,
    to_device,
)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


# -- select_params ---------------------------------------------------------------------------


def test_select_all_names_modules_predicate() -> None:
    net = mlp()
    assert list(select_params(net)) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(select_params(net, ["2.bias", "0.weight"])) == ["0.weight", "2.bias"]
    assert list(select_params(net, "2.bias")) == ["2.bias"]
    assert list(select_params(net, net[0])) == ["0.weight", "0.bias"]
    assert list(select_params(net, [net[2], net[0]])) == list(select_params(net))
    assert list(select_params(net, lambda n, p: p.ndim == 1)) == ["0.bias", "2.bias"]


def test_select_default_skips_frozen() -> None:
    net = mlp()
    net[0].weight.requires_grad_(False)
    assert "0.weight" not in select_params(net)


def test_tied_weights_counted_once_and_alias_resolves() -> None:
    model = Tied()
    assert list(select_params(model)) == ["embed.weight"]
    assert list(select_params(model, ["head.weight"])) == ["embed.weight"]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (["nope"], "unknown names"),
        ([], "at least one"),
        (lambda n, p: False, "at least one"),
        ([1, 2], "list of names"),
        (3.0, "Expected params="),
    ],
)
def test_select_errors(spec: object, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        select_params(mlp(), spec)


def test_select_frozen_and_foreign_module_errors() -> None:
    net = mlp()
    net[0].bias.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        select_params(net, ["0.bias"])
    with pytest.raises(ValueError, match="belong to the model"):
        select_params(net, nn.Linear(2, 2))
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=True"):
        select_params(net)


# -- ParamLayout -----------------------------------------------------------------------------


def test_layout_roundtrip_and_batches() -> None:
    net = mlp()
    layout = ParamLayout(select_params(net))
    assert layout.n == 12 + 4 + 8 + 2
    assert layout.slices["0.bias"] == slice(12, 16)
    params = dict(net.named_parameters())
    flat = layout.flatten(params)
    back = layout.unravel(flat)
    for name, p in params.items():
        assert torch.equal(back[name], p)
    assert back["0.weight"].data_ptr() == flat.data_ptr()  # a view, not a copy
    assert torch.equal(layout.flatten(list(params.values())), flat)
    # leading batch dims
    V = torch.arange(3 * layout.n, dtype=torch.float64).reshape(3, layout.n)
    parts = layout.unravel(V)
    assert parts["0.weight"].shape == (3, 4, 3)
    assert torch.equal(layout.flatten(parts, batch_ndim=1), V)
    # trailing batch dim: columns of an (n, k) block
    cols = layout.unravel(V.T.contiguous(), dim=0)
    assert cols["2.weight"].shape == (2, 4, 3)
    assert torch.equal(cols["2.weight"][..., 1], parts["2.weight"][1])


def test_layout_groups_index_and_errors() -> None:
    net = mlp()
    layout = ParamLayout(select_params(net))
    assert layout.layer_groups() == {"0": ["0.weight", "0.bias"], "2": ["2.weight", "2.bias"]}
    assert layout.index(["2.weight", "2.bias"]) == slice(16, 26)
    idx = layout.index(["0.bias", "2.bias"])
    assert np.array_equal(idx, [12, 13, 14, 15, 24, 25])
    assert ParamLayout(select_params(nn.Linear(2, 2))).layer_groups() == {"": ["weight", "bias"]}
    with pytest.raises(ValueError, match="entries along dim"):
        layout.unravel(torch.zeros(5))
    with pytest.raises(ValueError, match="missing"):
        layout.flatten({"0.weight": torch.zeros(4, 3)})
    with pytest.raises(ValueError, match="one dtype"):
        ParamLayout({"a": torch.zeros(2), "b": torch.zeros(2, dtype=torch.float64)})


# -- eval mode, model calls ----------------------------------------------------------------


@pytest.mark.parametrize(
    "layer",
    [
        nn.Dropout(0.1),
        nn.BatchNorm1d(3),
        nn.MultiheadAttention(3, 1, dropout=0.1),
        nn.InstanceNorm1d(3, track_running_stats=True),
    ],
)
def test_check_eval_mode_refuses_train_mode(layer: nn.Module) -> None:
    net = nn.Sequential(nn.Linear(3, 3), layer)
    with pytest.raises(ValueError, match=r"model\.eval\(\).*allow_train_mode=True"):
        check_eval_mode(net)
    check_eval_mode(net, allow_train_mode=True)
    check_eval_mode(net.eval())
    check_eval_mode(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Dropout(0.0)))


class DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2).double()
        self.register_buffer("shift", torch.full((2,), 10.0, dtype=torch.float64))

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
        return {"logits": scale * self.lin(x) + self.shift, "aux": x}


def test_call_model_inputs_outputs_and_buffers() -> None:
    model = DictModel()
    x = torch.randn(4, 3, dtype=torch.float64)
    w = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    ref = model.lin.bias + 10.0
    out = call_model(model, {"lin.weight": w}, x, output_key="logits")
    assert torch.allclose(out, ref.expand(4, 2))
    out.sum().backward()
    assert torch.allclose(w.grad, x.sum(0).expand(2, 3))
    assert model.lin.bias.grad is None  # unselected parameters are constants
    out2 = call_model(model, {}, {"x": x, "scale": 2.0}, outputs_fn=lambda o: o["logits"])
    out3 = call_model(model, {}, (x, 2.0), output_key="logits")
    assert torch.equal(out2, out3)
    bufs = {"shift": torch.zeros(2, dtype=torch.float64)}
    out4 = call_model(model, {}, x, buffers=bufs, output_key="logits")
    assert torch.allclose(out4, model.lin(x))
    with pytest.raises(TypeError, match="output_key="):
        call_model(model, {}, x)
    with pytest.raises(ValueError, match="keys"):
        call_model(model, {}, x, output_key="nope")


def test_call_model_tied_weights() -> None:
    model = Tied()
    ids = torch.tensor([[0, 1], [2, 3]])
    w = torch.zeros(5, 3)
    assert torch.equal(call_model(model, {"embed.weight": w}, ids), torch.zeros(2, 2, 5))


# -- data ---------------------------------------------------------------------------------


def test_iter_batches_rules() -> None:
    x, y = torch.zeros(4, 3), torch.zeros(4)
    assert is_single_batch((x, y)) and is_single_batch([{"a": x}, y])
    assert not is_single_batch([(x, y), (x, y)])
    assert len(list(iter_batches((x, y)))) == 1
    assert len(list(iter_batches([(x, y)] * 3))) == 1 * 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    assert [batch_size(i) for i, _ in iter_batches(loader)] == [3, 1]
    assert len(list(iter_batches([((x, x), y)]))) == 1
    with pytest.raises(ValueError, match="empty data"):
        list(iter_batches([]))
    with pytest.raises(ValueError, match="pair"):
        list(iter_batches([x, x, x]))
    with pytest.raises(TypeError, match="one"):
        list(iter_batches(x))
    with pytest.raises(TypeError, match="re-iterable"):
        list(iter_batches(((x, y) for _ in range(2)), reiterable=True))


def test_check_batch_and_batch_size() -> None:
    x, y = torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    assert check_batch(x, y, 0, torch.float64) == 4
    assert check_batch({"ids": torch.zeros(4, 2, dtype=torch.long)}, None, 0, torch.float32) == 4
    with pytest.raises(ValueError, match="batch 2"):
        check_batch(x, torch.zeros(3), 2)
    with pytest.raises(ValueError, match="0 samples"):
        check_batch(torch.zeros(0, 3), torch.zeros(0), 1)
    with pytest.raises(TypeError, match="float32 in batch 0"):
        check_batch(x.float(), y, 0, torch.float64)
    with pytest.raises(ValueError, match="leading batch"):
        batch_size({"a": 1})


def test_check_finite_and_to_device() -> None:
    check_finite(torch.ones(3), "x")
    with pytest.raises(FloatingPointError, match="loss of batch 3"):
        check_finite(torch.tensor(float("nan")), "loss of batch 3")
    tree = {"a": (torch.ones(1), 2)}
    moved = to_device(tree, torch.device("cpu"))
    assert moved["a"][1] == 2 and torch.equal(moved["a"][0], torch.ones(1))
