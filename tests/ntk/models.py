"""Tiny float64 models and the dense reference Jacobian for the NTK tests."""

from __future__ import annotations

import torch
from torch import nn

DT = torch.float64


def reference_jacobian(model: nn.Module, x, params=None) -> torch.Tensor:
    """``(n c, P)`` Jacobian of the full-batch outputs by ``torch.func.jacrev`` (the oracle).

    Differentiates the whole batch at once (no per-sample vmap, no hooks), rows sample-major,
    columns in ``model.named_parameters()`` order restricted to ``params`` (names).
    """
    named = dict(model.named_parameters())
    names = list(named) if params is None else list(params)
    p = {k: named[k].detach() for k in names}
    args = x if isinstance(x, tuple) else (x,)

    def f(q):
        out = torch.func.functional_call(model, q, args)
        return out.reshape(out.shape[0], -1)

    J = torch.func.jacrev(f)(p)
    n, c = f(p).shape
    return torch.cat([J[k].reshape(n * c, -1) for k in names], dim=1)


class Seq(nn.Module):
    """Embedding (with padding) -> Linear over tokens -> Linear head: token-dim layers."""

    def __init__(self, vocab: int = 7, T: int = 5) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 4, padding_idx=0)
        self.lin = nn.Linear(4, 3)
        self.out = nn.Linear(3 * T, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.lin(self.emb(ids))).flatten(1))


class Reuse(nn.Module):
    """A module called twice and its weight used outside it (structured check must fail)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(torch.relu(self.a(x)))
        return self.b(h) + x @ self.a.weight[:2].T


class Twice(nn.Module):
    """A module called twice: its tokens are the two calls (structured path, T = 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(torch.tanh(self.a(x))))


class Tied(nn.Module):
    """Two Linear modules sharing one weight (generic path for it)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3, bias=False)
        self.b = nn.Linear(3, 3, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


class DictOut(nn.Module):
    """Two inputs, dict output: exercises tuple inputs and output_key."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Linear(3, 2)
        self.g = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.f(x) + self.g(z).sin(), "aux": x.sum(1)}


class Scale(nn.Module):
    """A bare parameter and a LayerNorm: no structured layer at all."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 2, dtype=DT))
        self.norm = nn.LayerNorm(2).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.tanh(x @ self.w))


class Attention(nn.Module):
    """``nn.MultiheadAttention`` (packed self-attention, or cross-attention / separate q, k, v
    weights) between a Linear embedding and a head: projections recorded as products."""

    def __init__(self, batch_first: bool = True, need_weights: bool = True,
                 cross: bool = False, kdim: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.mem = nn.Linear(3, kdim or 4) if (cross or kdim) else None
        self.head = nn.Linear(4, 2)
        self.batch_first, self.need_weights = batch_first, need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (n, T, 3)
        h = torch.tanh(self.embed(x))
        kv = h if self.mem is None else torch.tanh(self.mem(x.flip(1)))
        if not self.batch_first:  # self-attention needs query is key (packed projection)
            h = h.transpose(0, 1)
            kv = h if self.mem is None else kv.transpose(0, 1)
        a, _ = self.attn(h, kv, kv, need_weights=self.need_weights)
        if not self.batch_first:
            a = a.transpose(0, 1)
        return self.head(a).mean(1)


class Encoder(nn.Module):
    """``nn.TransformerEncoderLayer`` (sequence-first, no dropout): attention and Linear
    layers on ``(T, n, d)`` activations."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (n, T, 4)
        return self.head(self.layer(x.transpose(0, 1)).transpose(0, 1)).sum(1)


def mlp(c: int = 3, d: int = 4, h: int = 6, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(inplace=True), nn.Linear(h, c)).to(DT).eval()


def cases() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """name -> (model, inputs), all float64 and tiny."""
    torch.manual_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.Tanh(), nn.Conv2d(3, 2, 2), nn.Flatten(),
        nn.Linear(8, 2),
    )
    tokens = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Flatten(), nn.Linear(8, 2))
    out = {
        "mlp": (mlp(), torch.randn(5, 4)),
        "conv": (conv, torch.randn(4, 2, 6, 6)),
        "seq": (Seq(), torch.tensor([[1, 0, 2, 3, 1], [4, 4, 0, 6, 5], [2, 1, 1, 0, 0],
                                     [6, 5, 4, 3, 2]])),
        "tokens": (tokens, torch.randn(4, 2, 3)),
        "twice": (Twice(), torch.randn(4, 3)),
        "tied": (Tied(), torch.randn(4, 3)),
        "scale": (Scale(), torch.randn(4, 3)),
        "attention": (Attention(), torch.randn(4, 3, 3)),
        "attention_seq": (Attention(batch_first=False, need_weights=False), torch.randn(4, 3, 3)),
        "cross_attention": (Attention(cross=True), torch.randn(4, 3, 3)),
        "attention_kdim": (Attention(kdim=5), torch.randn(4, 3, 3)),
        "encoder": (Encoder(), torch.randn(3, 5, 4)),
    }
    return {
        k: (m.to(DT).eval(), x.to(DT) if x.is_floating_point() else x) for k, (m, x) in out.items()
    }
