"""Tiny float64 models and data for the Hessian tests, and dense references.

Every case is ``(model, loss_fn, batches, options)`` with ``options`` the operator keywords
(``output_key`` ...). The dense references call the model with
``torch.func.functional_call`` directly, independently of ``hessntk._model``, and
differentiate the flattened full-data loss with ``torch.autograd.functional.hessian``
(double backward). Not ``torch.func.hessian``: in torch 2.13 it gets the second derivatives
of ``layer_norm`` / ``instance_norm`` with affine weights wrong (see
``test_reference_is_right_where_torch_func_is_not``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=DT)


# -- models ------------------------------------------------------------------------------------


def mlp(act: type[nn.Module] = nn.Tanh, d_in: int = 3, width: int = 5, d_out: int = 2):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d_in, width), act(), nn.Linear(width, d_out)).to(DT)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


class LayerNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.lin2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(torch.tanh(self.norm(self.lin1(x))))


class TiedLM(nn.Module):
    """Embedding with the output projection tied to it (counted once)."""

    def __init__(self, vocab: int = 6, dim: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(ids))))


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.lin2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(torch.tanh(self.bn(self.lin1(x))))


class TinyBlock(nn.Module):
    """Transformer-style block: dict inputs (tokens and mask), dict outputs."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.out = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        scores = scores.masked_fill(~mask[:, None, :], -1e9)
        h = self.norm(x + self.proj(torch.softmax(scores, dim=-1) @ v))
        h = h + self.ff(h)
        return {"logits": self.out(h.mean(dim=1)), "hidden": h}


class InstanceNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 2)
        self.norm = nn.InstanceNorm1d(3, affine=True)
        self.fc = nn.Linear(9, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.norm(self.conv(x))).flatten(1))


class Encoder(nn.Module):
    """``nn.TransformerEncoderLayer`` (fused attention, LayerNorm) with mean pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x).mean(dim=1))


class HFOutput:
    """Mimics a HuggingFace ``ModelOutput``: attribute and item access."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, key)


class HFStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = mlp(nn.Tanh, 3, 4, 2)

    def forward(self, x: torch.Tensor) -> HFOutput:
        return HFOutput(self.body(x))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(2, 2)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.a(x1)) * self.b(x2)


# -- cases -------------------------------------------------------------------------------------


def _split(x: Any, y: torch.Tensor, sizes: list[int]) -> list[tuple[Any, torch.Tensor]]:
    out, start = [], 0
    for s in sizes:
        sl = slice(start, start + s)
        xs = {k: v[sl] for k, v in x.items()} if isinstance(x, dict) else x[sl]
        out.append((xs, y[sl]))
        start += s
    return out


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def case(name: str, sizes: list[int] | None = None) -> tuple[nn.Module, Callable, list, dict]:
    """Model, loss, list of batches (split as ``sizes``), operator options."""
    opts: dict[str, Any] = {}
    if name in ("mlp_tanh", "mlp_relu"):
        model = mlp(nn.Tanh if name == "mlp_tanh" else nn.ReLU)
        x, y = _randn(10, 3, seed=1), torch.randint(0, 2, (10,), generator=_gen(2))
        loss: Callable = nn.CrossEntropyLoss() if name == "mlp_relu" else nn.MSELoss()
        if name == "mlp_tanh":
            y = _randn(10, 2, seed=2)
    elif name == "cnn":
        torch.manual_seed(0)
        model = SmallCNN().to(DT)
        x, y = _randn(8, 1, 5, 5, seed=1), torch.randint(0, 3, (8,), generator=_gen(2))
        loss = nn.CrossEntropyLoss()
    elif name == "layernorm":
        torch.manual_seed(0)
        model = LayerNormNet().to(DT)
        x, y = _randn(9, 3, seed=1), _randn(9, 2, seed=2)
        loss = nn.MSELoss()
    elif name == "tied":
        torch.manual_seed(0)
        model = TiedLM().to(DT)
        x = torch.randint(0, 6, (7, 4), generator=_gen(1))
        y = torch.randint(0, 6, (7, 4), generator=_gen(2))
        loss = lm_loss
    elif name == "batchnorm":
        torch.manual_seed(0)
        model = BatchNormNet().to(DT)
        with torch.no_grad():  # non-trivial running statistics
            for s in range(3):
                model(3.0 * _randn(16, 3, seed=10 + s) + 1.0)
        model.eval()
        x, y = _randn(9, 3, seed=1), _randn(9, 2, seed=2)
        loss = nn.MSELoss()
    elif name == "transformer":
        torch.manual_seed(0)
        model = TinyBlock().to(DT)
        mask = torch.ones(6, 3, dtype=torch.bool)
        mask[::2, 2] = False
        x = {"x": _randn(6, 3, 4, seed=1), "mask": mask}
        y = torch.randint(0, 2, (6,), generator=_gen(2))
        loss = nn.CrossEntropyLoss()
        opts = {"output_key": "logits"}
    elif name == "instnorm":
        torch.manual_seed(0)
        model = InstanceNormNet().to(DT)
        x, y = _randn(7, 2, 4, seed=1), _randn(7, 2, seed=2)
        loss = nn.MSELoss()
    elif name == "encoder":
        torch.manual_seed(0)
        model = Encoder().to(DT).eval()
        x, y = _randn(5, 3, 4, seed=1), torch.randint(0, 2, (5,), generator=_gen(2))
        loss = nn.CrossEntropyLoss()
    elif name == "hf_style":
        torch.manual_seed(0)
        model = HFStyle().to(DT)
        x, y = _randn(8, 3, seed=1), torch.randint(0, 2, (8,), generator=_gen(2))
        loss = nn.CrossEntropyLoss()
        opts = {"output_key": "logits"}
    else:
        raise KeyError(name)
    n = y.shape[0]
    return model, loss, _split(x, y, sizes or [n]), opts


CASES = [
    "mlp_tanh",
    "mlp_relu",
    "cnn",
    "layernorm",
    "tied",
    "batchnorm",
    "transformer",
    "instnorm",
    "encoder",
    "hf_style",
]


# -- dense references ------------------------------------------------------------------------


def _call(model: nn.Module, params: dict, x: Any, output_key: Any = None) -> torch.Tensor:
    full = {k: v.detach() for k, v in model.named_parameters()}
    full.update(params)
    bufs = dict(model.named_buffers())
    if isinstance(x, dict):
        out = torch.func.functional_call(model, (full, bufs), (), x)
    elif isinstance(x, tuple):
        out = torch.func.functional_call(model, (full, bufs), x)
    else:
        out = torch.func.functional_call(model, (full, bufs), (x,))
    if output_key is not None:
        out = getattr(out, output_key) if hasattr(out, output_key) else out[output_key]
    return out


def _flat(names: list[str], model: nn.Module):
    params = dict(model.named_parameters())
    shapes = [params[k].shape for k in names]
    theta = torch.cat([params[k].detach().reshape(-1) for k in names])

    def unflat(v: torch.Tensor) -> dict[str, torch.Tensor]:
        out, o = {}, 0
        for k, s in zip(names, shapes, strict=True):
            m = s.numel()
            out[k] = v[o : o + m].reshape(s)
            o += m
        return out

    return theta, unflat


def dense_hessian(model, loss_fn, batches, names, output_key=None, func=False) -> torch.Tensor:
    """Hessian of the full-data mean loss (batches weighted by size) w.r.t. ``names``.

    By autograd double backward; ``func=True`` uses ``torch.func.hessian`` instead.
    """
    theta, unflat = _flat(names, model)
    total = sum(y.shape[0] for _, y in batches)

    def full_loss(v: torch.Tensor) -> torch.Tensor:
        p = unflat(v)
        return sum(
            y.shape[0] / total * loss_fn(_call(model, p, x, output_key), y) for x, y in batches
        )

    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernel has no double backward
        if func:
            return torch.func.hessian(full_loss)(theta)
        return torch.autograd.functional.hessian(full_loss, theta)


def dense_ggn(model, loss_fn, batches, names, output_key=None) -> torch.Tensor:
    """``sum_b (n_b / n) J_b^T Lambda_b J_b`` formed densely."""
    theta, unflat = _flat(names, model)
    total = sum(y.shape[0] for _, y in batches)
    G = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype)
    with sdpa_kernel(SDPBackend.MATH):
        return _dense_ggn(model, loss_fn, batches, theta, unflat, total, G, output_key)


def _dense_ggn(model, loss_fn, batches, theta, unflat, total, G, output_key):
    for x, y in batches:
        out = _call(model, unflat(theta), x, output_key)
        J = torch.func.jacrev(lambda v, x=x: _call(model, unflat(v), x, output_key))(theta)
        J = J.reshape(out.numel(), -1)
        L = torch.func.hessian(lambda o, y=y, s=out.shape: loss_fn(o.reshape(s), y))(
            out.reshape(-1)
        )
        G += y.shape[0] / total * J.T @ L @ J
    return G
