"""Model entry points for the command-line tests (``tests/cli_models.py:build``).

``build`` returns ``(model, loss_fn, data)``: a small tanh MLP on 40 standardised
``load_digits`` images (float64); ``train`` fits it to interpolation and saves checkpoints.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

N_TRAIN = 40


def data(n: int = N_TRAIN) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    return torch.tensor(X[:n], dtype=torch.float64), torch.tensor(y[:n])


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double().eval()


def build() -> tuple[nn.Module, nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """The entry point: model, loss and data."""
    return model(), nn.CrossEntropyLoss(), data()


def build_dict() -> dict:
    """The documented equivalent: a dict with keys model, loss_fn, data."""
    net, loss_fn, batch = build()
    return {"model": net, "loss_fn": loss_fn, "data": [batch]}


def build_regression() -> tuple[nn.Module, nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """A regression problem (raw outputs)."""
    torch.manual_seed(0)
    x = torch.randn(24, 5, dtype=torch.float64)
    y = torch.randn(24, 1, dtype=torch.float64)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).double().eval()
    return net, nn.MSELoss(), (x, y)


def not_a_triple() -> int:
    return 3


def exits() -> None:
    """A build() that ends the process instead of returning."""
    import sys

    sys.exit(0)


def chatty() -> tuple[nn.Module, nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """A build() that prints, from Python and straight to file descriptor 1 (as C code does)."""
    import os

    print("loading the model ...")
    os.write(1, b"a line from C code\n")
    return build()


def train(steps: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Train ``model(seed)`` with Adam for ``steps`` steps; return its state dict."""
    net = model(seed).train()
    x, y = data()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def accuracy(state: dict[str, torch.Tensor]) -> float:
    net = model()
    net.load_state_dict(state)
    x, y = data()
    with torch.no_grad():
        return float(np.mean((net(x).argmax(1) == y).numpy()))


class _DiesOnRankOne(nn.Module):
    """The MLP; its third forward call (the first product) kills rank 1 (a rank gone mid-run)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = model()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os

        self.calls += 1
        if self.calls == 3 and os.environ.get("RANK") == "1":  # after the data check
            os._exit(3)
        return self.net(x)


def dies_on_rank_one() -> tuple[nn.Module, nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """``build``'s problem, but under torchrun rank 1 dies during the first products."""
    return _DiesOnRankOne().double().eval(), nn.CrossEntropyLoss(), data()
