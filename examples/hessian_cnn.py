"""Hessian spectrum of a small CNN on 8x8 digits, in total and per layer.

Trains a small CNN for a few seconds on ``sklearn.datasets.load_digits``, then prints the top
Hessian eigenvalues, the trace, and a per-layer table (top eigenvalue and trace of each
diagonal block), and saves the SLQ spectral density to ``hessian_cnn_density.png`` when
matplotlib is installed. Runs in well under 20 s on a laptop CPU.

Run: ``python examples/hessian_cnn.py``
"""

from __future__ import annotations

import time

import torch
from sklearn.datasets import load_digits
from torch import nn

from hessntk import hessian

torch.manual_seed(0)
X, y = load_digits(return_X_y=True)
x = torch.tensor(X[:300] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
y = torch.tensor(y[:300])

model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
    nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
)  # fmt: skip
loss_fn = nn.CrossEntropyLoss()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(60):
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()
model.eval()

# Batches of 128 (the last one ragged, 44): products are those of the full-data mean loss.
data = [(x[i : i + 128], y[i : i + 128]) for i in range(0, 300, 128)]
start = time.perf_counter()
top = hessian.top_eigenvalues(model, loss_fn, data, k=3, tol=1e-3)
tr = hessian.trace(model, loss_fn, data, num_matvecs=40)
layers = hessian.block_traces(model, loss_fn, data, blocks="layer", num_matvecs=40)
layer_top = hessian.block_top_eigenvalues(model, loss_fn, data, k=1, blocks="layer", tol=1e-3)
dens = hessian.density(model, loss_fn, data, num_probes=4, num_matvecs=30)
elapsed = time.perf_counter() - start

n = sum(p.numel() for p in model.parameters())
print(f"CNN with {n} parameters, {len(y)} samples in {len(data)} batches")
print(f"top-3 eigenvalues: {top.eigenvalues.round(4)}  ({top.num_matvecs} products)")
print(f"trace: {tr.value:.4f} +- {tr.stderr:.2g}  ({tr.num_matvecs} products, {tr.method})")
print(f"\n{'layer':>6s} {'parameters':>11s} {'top eigenvalue':>15s} {'trace':>10s} {'+-':>8s}")
for name, est in layers.items():
    size = sum(model.get_parameter(p).numel() for p in [f"{name}.weight", f"{name}.bias"])
    lam = layer_top[name].eigenvalues[0]
    print(f"{name:>6s} {size:11d} {lam:15.4f} {est.value:10.4f} {est.stderr:8.2g}")
print(f"\nsum of layer traces {sum(e.value for e in layers.values()):.4f} "
      f"(total trace {tr.value:.4f}); all in {elapsed:.1f} s")  # fmt: skip

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib not installed: skipping the density plot")
else:
    ax = dens.plot()
    ax.set_title("Hessian spectral density (SLQ, 4 probes x 30 steps)")
    plt.savefig("hessian_cnn_density.png", dpi=100, bbox_inches="tight")
    print("saved hessian_cnn_density.png")
