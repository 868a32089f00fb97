"""Mixed-precision allocation on the measured loss, against uniform and HAWQ-v2 (issue 17).

Run: ``python benchmarks/bench_mixed_precision.py [--models mlp2,mlp4,cnn,transformer]``.
Trains each model on 1,000 ``load_digits`` images (Adam), then, per average budget (3 and 4
bits, choices 2/3/4/8, symmetric per-tensor round-to-nearest, weights only), measures the
train cross-entropy increase with every layer quantized together for:

- uniform: every layer at the budget's width;
- direct: ``allocate_bits`` on the direct second-order predictions (layers independent);
- HAWQ-v2: ``allocate_bits`` on the average-trace proxy;
- mixed_precision: measured single-layer increases + cross-layer terms, verified jointly.

Then Spearman rho of each predictor with the measured single-layer increases per width.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from hessntk.criteria import (
    allocate_bits,
    measure_quantization,
    mixed_precision,
    quantization_sensitivity,
    quantized_loss,
)

CHOICES = (2, 3, 4, 8)


class Transformer(nn.Module):
    """Digits as 8 tokens of 8 pixels: embedding, one encoder layer, mean pool, head."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.zeros(8, d))
        self.block = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(-1, 8, 8)) + self.pos
        return self.head(self.block(h).mean(1))


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "mlp2":
        return nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                             nn.Linear(512, 10))
    if name == "mlp4":
        return nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(),
                             nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(),
                             nn.Linear(64, 10))
    if name == "cnn":
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1),
                             nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 32), nn.ReLU(),
                             nn.Linear(32, 10))
    if name == "transformer":
        return Transformer()
    raise ValueError(name)


def data(n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    perm = np.random.default_rng(0).permutation(len(X))[:n]
    return torch.tensor(X[perm], dtype=torch.float32), torch.tensor(y[perm])


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp2,mlp4,cnn,transformer")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = data()
    loss_fn = nn.CrossEntropyLoss()
    rows, rhos = [], []
    for name in args.models.split(","):
        model = train(build(name), x, y)
        t0 = time.perf_counter()
        sens = quantization_sensitivity(model, loss_fn, (x, y), bits=CHOICES, metric="both")
        meas = measure_quantization(model, loss_fn, (x, y), bits=CHOICES)
        t_sens = time.perf_counter() - t0
        base = float(meas.loss)
        n_params = int(sens.num_params.sum())
        for avg in (3, 4):
            result = {"model": name, "params": n_params, "layers": len(sens.layers),
                      "loss": base, "avg": avg}
            result["uniform"] = quantized_loss(model, loss_fn, (x, y),
                                               dict.fromkeys(sens.layers, avg)) - base
            for label, predictor in (("direct", "direct"), ("hawq_v2", "trace")):
                alloc = allocate_bits(sens, average_bits=avg, choices=CHOICES,
                                      predictor=predictor)
                result[label] = quantized_loss(model, loss_fn, (x, y), alloc) - base
            t1 = time.perf_counter()
            mp = mixed_precision(model, loss_fn, (x, y), average_bits=avg, choices=CHOICES)
            result["mixed"] = mp.measured_increase
            result["mixed_bits"] = "/".join(str(b) for b in mp.bits.values())
            result["mixed_s"] = time.perf_counter() - t1
            result["sens_s"] = t_sens
            rows.append(result)
        for predictor, per_bits in sens.rank_correlation(meas).items():
            rhos.append((name, predictor, per_bits))
    print(f"\n{'model':<12}{'params':>8}{'L':>3}{'avg':>4}{'uniform':>11}{'direct':>11}"
          f"{'HAWQ-v2':>11}{'mixed':>11}  {'mixed bits':<14}{'mixed/unif':>10}{'time':>7}")
    for r in rows:
        print(f"{r['model']:<12}{r['params']:>8}{r['layers']:>3}{r['avg']:>4}"
              f"{r['uniform']:>11.3g}{r['direct']:>11.3g}{r['hawq_v2']:>11.3g}"
              f"{r['mixed']:>11.3g}  {r['mixed_bits']:<14}"
              f"{r['mixed'] / r['uniform'] if r['uniform'] else float('nan'):>10.2f}"
              f"{r['mixed_s']:>6.1f}s")
    print("\nSpearman rho with the measured single-layer increases, per width")
    print(f"{'model':<12}{'predictor':<12}" + "".join(f"{b:>8}" for b in CHOICES))
    for name, predictor, per_bits in rhos:
        print(f"{name:<12}{predictor:<12}" + "".join(f"{per_bits.get(b, float('nan')):>8.2f}"
                                                    for b in CHOICES))


if __name__ == "__main__":
    main()
