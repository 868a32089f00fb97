"""Rank the checkpoints of one training run by the IIC, as ``hessntk compare`` does.

Trains an MLP 64-w-10 (tanh) with Adam on a split of ``sklearn.datasets.load_digits``, saving
a checkpoint (``.pt`` state dict) every few steps to a temporary folder, then ranks the
checkpoints with :func:`hessntk.criteria.compare`: the finite-penalty IIC (``soft``) of every
checkpoint, with the same probes for all (common random numbers). Prints the ranking table next
to each checkpoint's training accuracy and test loss, and saves the ranking plot (default
``<tempdir>/compare_checkpoints.png``) when matplotlib is installed.

The same ranking from the command line, given a function returning ``(model, loss_fn, data)``:
``hessntk compare mymodule:build ckpt/*.pt --soft 1000``.

Run: ``python examples/compare_checkpoints.py`` (about 15 s), or
``python examples/compare_checkpoints.py --n-train 60 --steps 90 --every 30`` (seconds, CI).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau
from sklearn.datasets import load_digits
from torch import nn

from hessntk.criteria import compare


def digits(n_train: int, seed: int = 0):
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    perm = np.random.default_rng(seed).permutation(len(X))
    tr, te = perm[:n_train], perm[n_train:]
    as_t = lambda a, dt: torch.tensor(a, dtype=dt)  # noqa: E731
    return ((as_t(X[tr], torch.float64), as_t(y[tr], torch.long)),
            (as_t(X[te], torch.float64), as_t(y[te], torch.long)))


def build(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, 10)).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=150)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=400, help="Adam steps in total")
    parser.add_argument("--every", type=int, default=80, help="steps between checkpoints")
    parser.add_argument("--soft", type=float, default=1e3, help="IIC noise precision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=os.path.join(tempfile.gettempdir(),
                                                       "compare_checkpoints.png"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    train, test = digits(args.n_train, args.seed)
    net = build(args.width)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()

    folder = Path(tempfile.mkdtemp(prefix="hessntk-checkpoints-"))
    stats = {}
    for step in range(1, args.steps + 1):
        opt.zero_grad()
        loss_fn(net(train[0]), train[1]).backward()
        opt.step()
        if step % args.every == 0:
            name = f"step{step:05d}.pt"
            torch.save(net.state_dict(), folder / name)  # a plain tensor state dict
            with torch.no_grad():
                acc = float((net(train[0]).argmax(1) == train[1]).double().mean())
                stats[name] = (acc, float(loss_fn(net(test[0]), test[1])))
    print(f"saved {len(stats)} checkpoints to {folder}")

    start = time.perf_counter()
    # Files are read with torch.load(weights_only=True): untrusted pickles are refused.
    ranking = compare(sorted(folder.glob("*.pt")), lambda: build(args.width), train,
                      observations="logits", soft=args.soft, seed=args.seed)
    elapsed = time.perf_counter() - start
    print(f"\nIIC (soft = {args.soft:g}, logits, N = {10 * args.n_train}) in {elapsed:.1f} s; "
          "lower is better")
    print(ranking.table())
    print(f"\n{'checkpoint':<14}{'rank':>5}{'train acc':>11}{'test loss':>11}{'IIC':>10}")
    iic_values, test_losses = [], []
    for row in sorted(ranking.rows, key=lambda r: r["name"]):
        acc, test_loss = stats[row["name"]]
        iic_values.append(row["value"])
        test_losses.append(test_loss)
        print(f"{row['name']:<14}{row['rank']:>5}{acc:>11.3f}{test_loss:>11.4f}"
              f"{row['value']:>10.4f}")
    if len(iic_values) >= 3:
        tau = kendalltau(iic_values, test_losses)[0]
        print(f"\nKendall tau between the IIC and the test loss over checkpoints: {tau:.3f}")

    try:
        from hessntk.report import plot_ranking, save_figure

        fig = plot_ranking(ranking.rows)
    except ImportError:
        print("matplotlib not installed: skipping the plot")
        return
    save_figure(fig, args.plot)
    print(f"saved {args.plot}")


if __name__ == "__main__":
    main()
