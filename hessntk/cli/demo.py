"""``hessntk demo``: an MLP trained on ``load_digits`` in seconds, and every analysis of it."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from hessntk._progress import progress
from hessntk.cli.analyses import hessian_analysis, iic_analysis, ntk_analysis, quantization_analysis
from hessntk.cli.parser import FULL, QUICK
from hessntk.cli.text import CLIError, timed

__all__ = ["cmd_demo"]


def _digits(n_train: int, seed: int, dtype: Any, device: Any) -> tuple[Any, Any]:
    import torch

    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("the demo trains on sklearn's load_digits: pip install "
                          "scikit-learn") from err
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    perm = np.random.default_rng(seed).permutation(len(X))
    if not 10 <= n_train < len(X):
        raise ValueError(f"--n-train must be in [10, {len(X) - 1}]; got {n_train}")

    def t(idx: np.ndarray) -> tuple[Any, Any]:
        return (torch.tensor(X[idx], dtype=dtype, device=device),
                torch.tensor(y[idx], device=device))

    return t(perm[:n_train]), t(perm[n_train:])


def _train(width: int, train: tuple[Any, Any], seed: int, max_steps: int = 3000) -> tuple[Any,
                                                                                           dict]:
    """Train an MLP 64-width-10 (tanh) with Adam to 100% training accuracy (loss < 1e-3)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    X, y = train
    net = nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, 10))
    net = net.to(dtype=X.dtype, device=X.device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    step = 0
    # No total: training stops early at interpolation, so a bar to max_steps would stall.
    steps = progress(iter(range(max_steps)), f"training (until interpolation, <= {max_steps} "
                     "steps)", min_total=0)
    for step in steps:  # noqa: B007 - reported below
        opt.zero_grad()
        out = net(X)
        loss = loss_fn(out, y)
        if bool((out.argmax(1) == y).all()) and loss.item() < 1e-3:
            break
        loss.backward()
        opt.step()
    return net.eval(), {"steps": step, "optimizer": "Adam(lr=1e-2)", "final_loss": loss.item(),
                        "stop": "train accuracy 1 and loss < 1e-3, or 3000 steps"}


def cmd_demo(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    import torch

    from hessntk.cli.entrypoints import DTYPES, Problem, device_of

    preset = QUICK if args.quick else FULL
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.measure = True
    args.quantizer, args.granularity, args.metric = "symmetric", "tensor", "both"
    device = device_of(args.device) or torch.device("cpu")
    dtype = DTYPES[args.dtype or "float64"]
    report, store, timings = ctx["report"], ctx["store"], ctx["timings"]
    if args.ntk_samples > args.n_train:
        raise CLIError(f"--ntk-samples {args.ntk_samples} exceeds --n-train {args.n_train}; "
                       f"use --ntk-samples {args.n_train} or fewer, or a larger --n-train")
    train, test = timed(timings, "data", lambda: _digits(args.n_train, args.seed, dtype,
                                                          device))
    model, info = timed(timings, "train", lambda: _train(args.width, train, args.seed))
    loss_fn = torch.nn.CrossEntropyLoss()
    with torch.no_grad():
        train_acc = float((model(train[0]).argmax(1) == train[1]).double().mean())
        test_acc = float((model(test[0]).argmax(1) == test[1]).double().mean())
        test_loss = float(loss_fn(model(test[0]), test[1]))
    n_params = sum(p.numel() for p in model.parameters())
    report.title = (f"hessntk demo: MLP 64-{args.width}-10 (tanh, {str(dtype)[6:]}, {n_params} "
                    f"parameters) on {args.n_train} load_digits images")
    model_info = {"architecture": f"Linear(64, {args.width}) - Tanh - Linear({args.width}, 10)",
                  "num_params": n_params, "dtype": str(dtype), "device": str(device),
                  "dataset": "sklearn.datasets.load_digits, standardised",
                  "num_train": args.n_train, "num_test": int(test[1].shape[0]),
                  "train_accuracy": train_acc, "test_accuracy": test_acc,
                  "test_loss": test_loss, "training": info}
    report.add_section("Model", [
        ("training", f"{info['steps']} Adam steps", f"final loss {info['final_loss']:.3g}"),
        ("train accuracy", f"{train_acc:.3f}", f"{args.n_train} images"),
        ("test accuracy", f"{test_acc:.3f}", f"test loss {test_loss:.3f}, "
         f"{int(test[1].shape[0])} images"),
    ])
    problem = Problem(model, loss_fn, train, "demo")
    out: dict[str, Any] = {"model": model_info}
    out["hessian"] = hessian_analysis(report, problem, args, store, timings)
    out["ntk"] = ntk_analysis(report, model, train[0][: args.ntk_samples], "logits", timings)
    options = {"observations": "logits", "prior": "init", "soft": None, "method": "auto",
               "seed": args.seed, "num_probes": args.probes, "num_matvecs": args.steps}
    out["iic"] = iic_analysis(report, problem, options, timings)
    out["quantization"] = quantization_analysis(report, problem, args, timings)
    return out
