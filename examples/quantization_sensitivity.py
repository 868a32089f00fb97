"""Quantization sensitivity on digits: predicted vs measured loss increase, and bit allocation.

Trains two MLPs and a small CNN with cross-entropy on ``sklearn.datasets.load_digits`` (seeded,
full batch, float64), then for each model:

1. predicts the training-loss increase of quantizing each layer alone to 2, 3, 4 and 8 bits
   (:func:`hessntk.criteria.quantization_sensitivity`): the direct second-order form
   ``g . dW + 1/2 dW^T H dW``, HAWQ-v2's average-trace proxy ``1/2 Tr(H_ii)/n_i ||dW||^2`` and
   the top-eigenvalue bound ``1/2 lambda_max(H_ii) ||dW||^2``;
2. measures the real increase (:func:`hessntk.criteria.measure_quantization`);
3. prints Spearman's rho between each predictor and the measurement across layers, within one
   bit width (per model, and pooled over the layers of all models);
4. allocates bit widths per layer (``--choices``, default 2/3/4/8) at an average of 4 bits
   (:func:`hessntk.criteria.allocate_bits`, minimising the direct or the trace predictor) and
   compares the loss of that mixed-precision model with uniform 4-bit quantization.

Plots (sensitivity per layer with the measurement, Pareto frontiers) and JSON go to ``--out``.

Run: ``python examples/quantization_sensitivity.py`` (about a minute), or with ``--quick``
(seconds, as in the tests).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from torch import nn

from hessntk.criteria import (
    allocate_bits,
    measure_quantization,
    quantization_sensitivity,
    quantized_loss,
)

DT = torch.float64
PREDICTORS = ("direct", "trace", "eigenvalue")


def digits(n: int, seed: int):
    X, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(X))[:n]
    X = X[perm] / 16.0
    X = (X - X.mean(0)) / (X.std(0) + 0.1)
    return torch.tensor(X, dtype=DT), torch.tensor(y[perm], dtype=torch.long)


class SmallCNN(nn.Module):
    def __init__(self, c1: int, c2: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * 16, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv1(x.reshape(-1, 1, 8, 8)))
        h = nn.functional.avg_pool2d(torch.tanh(self.conv2(h)), 2)  # (n, c2, 4, 4)
        return self.fc2(torch.tanh(self.fc1(h.flatten(1))))


def mlp(widths: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def train(model: nn.Module, data, steps: int, weight_decay: float) -> nn.Module:
    X, y = data
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model.eval()


def models(quick: bool) -> dict[str, Callable[[], nn.Module]]:
    if quick:
        return {
            "mlp 64-16-16-10": lambda: mlp([64, 16, 16, 10]),
            "cnn 4-4-8": lambda: SmallCNN(4, 4, 8),
        }
    return {
        "mlp 64-64-64-64-10": lambda: mlp([64, 64, 64, 64, 10]),
        "mlp 64-128-32-32-32-10": lambda: mlp([64, 128, 32, 32, 32, 10]),
        "cnn 8-16-32": lambda: SmallCNN(8, 16, 32),
    }


def rho(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data and models (seconds)")
    parser.add_argument("--n-train", type=int, default=None, help="default 1000 (quick: 200)")
    parser.add_argument("--steps", type=int, default=None, help="Adam steps (quick: 60)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    parser.add_argument(
        "--choices",
        type=int,
        nargs="+",
        default=[2, 3, 4, 8],
        help="bit widths the allocation may use",
    )
    parser.add_argument("--average-bits", type=float, default=4.0, help="allocation budget")
    parser.add_argument("--num-matvecs", type=int, default=None, help="products per trace")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="./quantization_out", help="folder for plots and JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # tiny models: more threads only add contention
    n_train = args.n_train or (200 if args.quick else 1000)
    steps = args.steps or (60 if args.quick else 600)
    num_matvecs = args.num_matvecs or (12 if args.quick else 100)
    bits = tuple(sorted({2, 3, 4, 8} | set(args.choices)))
    os.makedirs(args.out, exist_ok=True)
    data = digits(n_train, args.seed)
    loss_fn = nn.CrossEntropyLoss()
    print(f"digits: {n_train} training points, bits {bits}, symmetric per-tensor quantizer")

    pooled = {p: {b: ([], []) for b in bits} for p in PREDICTORS}
    rho_rows, alloc_rows, report = [], [], {}
    for name, build in models(args.quick).items():
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        model = train(build().to(DT), data, steps, args.weight_decay)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        sens = quantization_sensitivity(
            model, loss_fn, data, bits=bits, num_matvecs=num_matvecs, seed=args.seed
        )
        t_sens = time.perf_counter() - t0
        meas = measure_quantization(model, loss_fn, data, bits=bits)
        with torch.no_grad():
            acc = float((model(data[0]).argmax(1) == data[1]).double().mean())
        print(f"\n== {name}: train loss {sens.loss:.4g}, accuracy {acc:.3f} "
              f"(trained in {t_train:.1f} s, sensitivity in {t_sens:.1f} s, "
              f"{sum(sens.num_matvecs.values())} products)")  # fmt: skip
        print(sens.table())
        print("measured loss increase:")
        print(meas.table())
        for p in PREDICTORS:
            pred = sens.predictions(p)
            for j, b in enumerate(bits):
                pooled[p][b][0].extend(pred[:, j])
                pooled[p][b][1].extend(meas.increase[:, j])
            row = [rho(pred[:, j], meas.increase[:, j]) for j in range(len(bits))]
            rho_rows.append((name, len(sens.layers), p, row))

        uniform = quantized_loss(model, loss_fn, data, {layer: 4 for layer in sens.layers})
        for predictor in ("direct", "trace"):
            alloc = allocate_bits(
                sens, average_bits=args.average_bits, choices=args.choices, predictor=predictor
            )
            mixed = quantized_loss(model, loss_fn, data, alloc)
            alloc_rows.append((name, predictor, alloc, mixed - sens.loss, uniform - sens.loss))
            slug = name.replace(" ", "_")
            if predictor == "direct" or not args.quick:
                alloc.plot(path=os.path.join(args.out, f"{slug}_frontier_{predictor}.png"))
        sens.plot(measured=meas, path=os.path.join(args.out, f"{slug}_sensitivity.png"))
        report[name] = {"sensitivity": sens.to_dict(), "measured": meas.to_dict(),
                        "allocation": alloc_rows[-2][2].to_dict()}  # fmt: skip
        import matplotlib.pyplot as plt

        plt.close("all")

    print("\nSpearman rho (predicted vs measured loss increase across layers, per bit width)")
    print(f"{'model':<24}{'layers':>7}  {'predictor':<11}" + "".join(f"{b:>7}b" for b in bits))
    for name, num_layers, p, row in rho_rows:
        cells = "".join(f"{r:>8.2f}" for r in row)
        print(f"{name:<24}{num_layers:>7}  {p:<11}{cells}")
    for p in PREDICTORS:
        cells = "".join(f"{rho(np.array(x), np.array(y)):>8.2f}" for x, y in pooled[p].values())
        print(f"{'all layers (pooled)':<24}{len(pooled[p][bits[0]][0]):>7}  {p:<11}{cells}")

    choices = "/".join(map(str, args.choices))
    print(f"\nLoss increase at an average budget of {args.average_bits:g} bits (choices "
          f"{choices}) vs uniform 4-bit")  # fmt: skip
    print(f"{'model':<24}{'predictor':<11}{'bits per layer':<22}{'allocated':>11}"
          f"{'uniform 4':>11}{'predicted':>11}")  # fmt: skip
    for name, predictor, alloc, mixed, uniform in alloc_rows:
        assignment = "/".join(str(b) for b in alloc.bits.values())
        print(f"{name:<24}{predictor:<11}{assignment:<22}{mixed:>11.4g}{uniform:>11.4g}"
              f"{alloc.predicted_increase:>11.4g}")  # fmt: skip
    with open(os.path.join(args.out, "quantization.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"\nplots and JSON in {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()
