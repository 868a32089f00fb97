"""The ``hessntk`` command line: curvature reports for the embedded demo or your own model.

Commands
--------
``hessntk demo``
    Train a small MLP on ``load_digits`` (seconds, seeded) and report its Hessian spectrum,
    NTK Gram spectrum, IIC and per-layer quantization sensitivity.
``hessntk spectrum MODEL``
    Hessian (or GGN) top eigenvalues, trace, per-layer traces, SLQ density and lower-tail
    exponent; with ``--ntk-samples N`` also the NTK Gram spectrum.
``hessntk iic MODEL``
    The Interpolating Information Criterion with every term.
``hessntk compare MODEL CHECKPOINT...``
    Rank checkpoints by the IIC (a table and a plot).
``hessntk quantization MODEL``
    Per-layer quantization sensitivity, predicted and measured.

``MODEL`` is ``package.module:function`` or ``path/to/file.py:function``, a function returning
``(model, loss_fn, data)`` (see :mod:`hessntk._entrypoints`). Every command writes a report
folder (``--out``): ``report.json`` (every number with its standard error, the settings,
versions and seeds), PNG plots and ``report.html``. Errors are one line on stderr with exit
code 2 (``--debug`` shows the traceback).

Examples
--------
>>> main(["demo", "--quick", "--quiet", "--out", "/tmp/hessntk-demo"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import io
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hessntk._progress import progress, reporting

__all__ = ["main"]

PROG = "hessntk"


# -- small helpers ---------------------------------------------------------------------------


def _number(cast: Callable[[str], Any], ok: Callable[[Any], bool], what: str
            ) -> Callable[[str], Any]:
    """An argparse ``type=`` that casts with ``cast`` and accepts only values with ``ok``."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")


def _prior(text: str) -> str | float:
    if text == "init":
        return text
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'init' or a positive prior variance; got {text!r}") from None


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, (float, np.floating)):
        return "nan" if math.isnan(x) else f"{x:.{digits}g}"
    return str(x)


def _pm(value: float, stderr: float | None) -> str:
    if stderr is None or not stderr or not math.isfinite(stderr):
        return _fmt(value)
    return f"{_fmt(value)} +- {stderr:.2g}"


def _one_line(err: BaseException, limit: int = 600) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _versions() -> dict[str, str]:
    import scipy
    import torch

    import hessntk

    out = {"hessntk": getattr(hessntk, "__version__", "unknown"), "torch": torch.__version__,
           "numpy": np.__version__, "scipy": scipy.__version__,
           "python": platform.python_version(), "platform": platform.platform(),
           "torch_threads": str(torch.get_num_threads())}
    for name in ("sklearn", "matplotlib"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = getattr(module, "__version__", "unknown")
    return out


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("func",)}


def _timed(timings: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        timings[name] = round(time.perf_counter() - t0, 3)


def _tail_dict(fit: Any) -> dict[str, Any]:
    return {"alpha": fit.alpha, "stderr": fit.stderr, "cutoff": fit.cutoff,
            "ks_distance": fit.ks_distance, "num_points": fit.num_points, "mass": fit.mass,
            "mass_below_floor": fit.mass_below_floor, "floor": fit.floor, "method": fit.method,
            "density_exponent": fit.density_exponent}


def _data_key(data: Any) -> dict[str, Any]:
    """Order-independent summary of the data (for resume checks): counts and sums."""
    import torch

    from hessntk._model import iter_batches, tensor_leaves

    n, sums = 0, [0.0, 0.0]
    for x, y in iter_batches(data):
        leaves = list(tensor_leaves(x))
        n += int(leaves[0].shape[0]) if leaves else 0
        for i, tree in enumerate((x, y)):
            for t in tensor_leaves(tree):
                sums[i] += float(t.detach().to(torch.float64).sum())
    return {"num_samples": n, "inputs_sum": float(f"{sums[0]:.10g}"),
            "targets_sum": float(f"{sums[1]:.10g}")}


# -- analyses shared by the commands ---------------------------------------------------------


def hessian_analysis(report: Any, problem: Any, args: argparse.Namespace, store: Any,
                     timings: dict[str, float]) -> dict[str, Any]:
    """Top eigenvalues, trace, per-layer traces, SLQ density and lower-tail exponent."""
    from hessntk import hessian
    from hessntk.criteria import lower_tail_exponent
    from hessntk.report import fingerprint, plot_hessian_esd, resumable_slq

    model, loss_fn, data = problem.model, problem.loss_fn, problem.data
    curvature = getattr(args, "curvature", "hessian")
    op_cls = hessian.HessianOperator if curvature == "hessian" else hessian.GGNOperator
    op = op_cls(model, loss_fn, data, blocks="layer")
    n = op.shape[0]
    k = min(args.k, n)
    top = _timed(timings, "hessian_top", lambda: hessian.top_eigenvalues(
        model, loss_fn, data, k=k, tol=args.tol, seed=args.seed, curvature=curvature))
    tr = _timed(timings, "hessian_trace", lambda: hessian.trace(
        model, loss_fn, data, num_matvecs=args.trace_matvecs, seed=args.seed,
        curvature=curvature))
    layers = _timed(timings, "hessian_layer_traces", lambda: hessian.block_traces(
        model, loss_fn, data, num_matvecs=args.trace_matvecs, seed=args.seed,
        curvature=curvature))
    steps = min(args.steps, n)
    key = {"curvature": curvature, "params": fingerprint(dict(model.state_dict())),
           "loss": float(f"{op.loss:.12g}"), "data": _data_key(data),
           "dtype": str(op.dtype), "device": str(op.device)}
    dens = _timed(timings, "hessian_slq", lambda: resumable_slq(
        op, num_probes=args.probes, num_matvecs=steps, seed=args.seed,
        probes_per_group=args.probes_per_group, store=store, name=curvature, key=key))
    negative = dens.cdf(0.0)
    slq_trace = dens.trace()
    try:
        fit = lower_tail_exponent(dens)
        tail: dict[str, Any] = _tail_dict(fit)
        tail_text = (_pm(fit.alpha, fit.stderr),
                     f"cutoff {fit.cutoff:.3g}, {fit.mass:.0%} of the mass; {fit.method}")
    except ValueError as err:
        tail = {"error": _one_line(err)}
        tail_text = ("undetermined", _one_line(err, 90))
    sizes = {name: int(sum(model.get_parameter(p).numel() for p in op.block_params[name]))
             for name in layers}
    out = {
        "curvature": curvature, "num_params": n, "num_samples": op.num_samples,
        "loss": op.loss,
        "top_eigenvalues": {"values": top.eigenvalues, "residual_norms": top.residual_norms,
                            "num_matvecs": top.num_matvecs, "converged": top.converged,
                            "tol": args.tol},
        "trace": {"value": tr.value, "stderr": tr.stderr, "num_matvecs": tr.num_matvecs,
                  "method": tr.method},
        "layer_traces": {name: {"value": e.value, "stderr": e.stderr, "num_params": sizes[name],
                                "num_matvecs": e.num_matvecs, "method": e.method}
                         for name, e in layers.items()},
        "density": {"num_probes": dens.num_probes, "num_matvecs_per_probe": steps,
                    "num_matvecs": dens.num_matvecs, "probes_per_group": args.probes_per_group,
                    "seed": args.seed, "min": float(dens.nodes.min()),
                    "max": float(dens.nodes.max()),
                    "negative_mass": {"value": float(negative.value[0]),
                                      "lower": float(negative.lower[0]),
                                      "upper": float(negative.upper[0]),
                                      "stderr": float(negative.stderr[0])},
                    "trace": {"value": slq_trace.value, "stderr": slq_trace.stderr},
                    "nodes": dens.nodes, "weights": dens.weights, "exact": dens.exact},
        "lower_tail": tail,
    }
    name = "Hessian" if curvature == "hessian" else "GGN"
    vals = ", ".join(_fmt(v) for v in top.eigenvalues)
    rows = [
        ("top eigenvalues", vals, f"eigsh, {top.num_matvecs} products"
         + ("" if top.converged else ", NOT converged")),
        ("trace", _pm(tr.value, tr.stderr), f"{tr.method}, {tr.num_matvecs} products"),
        ("SLQ density", f"[{dens.nodes.min():.3g}, {dens.nodes.max():.3g}]",
         f"{dens.num_probes} probes x {steps} steps; SLQ trace "
         + _pm(slq_trace.value, slq_trace.stderr)),
        ("negative mass", _pm(float(negative.value[0]), float(negative.stderr[0])),
         f"fraction of eigenvalues < 0, bracket [{negative.lower[0]:.3f}, "
         f"{negative.upper[0]:.3f}]"),
        ("lower-tail exponent", *tail_text),
    ]
    rows += [(f"trace of layer {layer or '<root>'}", _pm(e.value, e.stderr),
              f"{sizes[layer]} parameters") for layer, e in layers.items()]
    report.add_section(f"{name} of the mean loss ({n} parameters, {op.num_samples} samples)",
                       rows)
    report.add_plot("hessian_esd.png", lambda: plot_hessian_esd(
        dens, top.eigenvalues, title=f"{name} spectral density (SLQ, {dens.num_probes} probes x "
        f"{steps} steps)"), f"{name} eigenvalue density (SLQ) on a symmetric-log axis, with "
        "the top eigenvalues from eigsh")
    return out


def ntk_analysis(report: Any, model: Any, inputs: Any, outputs: str,
                 timings: dict[str, float]) -> dict[str, Any]:
    """NTK Gram ``J J^T`` on ``inputs``, its eigenvalues and lower-tail exponent."""
    import torch

    from hessntk.criteria import lower_tail_exponent
    from hessntk.ntk import gram
    from hessntk.report import plot_ntk_cdf

    def build() -> tuple[np.ndarray, torch.dtype]:
        K = gram(model, inputs, outputs=outputs)
        return torch.linalg.eigvalsh(K.double()).cpu().numpy(), K.dtype

    lam, dtype = _timed(timings, "ntk", build)
    floor = 10 * torch.finfo(dtype).eps * float(np.abs(lam).max()) * math.sqrt(lam.size)
    try:
        fit = lower_tail_exponent(lam, floor=floor)
        tail: dict[str, Any] = _tail_dict(fit)
        tail_text = (_pm(fit.alpha, fit.stderr),
                     f"cutoff {fit.cutoff:.3g}, {fit.num_points} eigenvalues; {fit.method}")
    except ValueError as err:
        fit, tail = None, {"error": _one_line(err)}
        tail_text = ("undetermined", _one_line(err, 90))
    n_samples = _batch_len(inputs)
    out = {"outputs": outputs, "prior": "identity", "num_samples": n_samples,
           "size": int(lam.size), "trace": float(lam.sum()), "max": float(lam.max()),
           "min": float(lam.min()), "floor": floor,
           "num_below_floor": int((lam <= floor).sum()), "eigenvalues": lam, "lower_tail": tail}
    report.add_section(f"NTK Gram J J^T ({outputs}, {n_samples} samples, {lam.size} x "
                       f"{lam.size})", [
        ("eigenvalue range", f"[{lam.min():.3g}, {lam.max():.3g}]",
         f"{out['num_below_floor']} at or below the floor {floor:.2g}"),
        ("trace", _fmt(float(lam.sum())), "exact (dense eigenvalues)"),
        ("lower-tail exponent", *tail_text),
    ])
    report.add_plot("ntk_cdf.png", lambda: plot_ntk_cdf(
        lam, fit, title=f"NTK Gram eigenvalues ({outputs}, {lam.size} x {lam.size})"),
        "NTK Gram eigenvalue CDF on log-log axes with the lower-tail power-law fit")
    return out


def _batch_len(inputs: Any) -> int:
    from hessntk._model import tensor_leaves

    return int(next(iter(tensor_leaves(inputs))).shape[0])


def iic_options(args: argparse.Namespace, problem: Any) -> dict[str, Any]:
    observations = args.observations
    if observations == "auto":
        observations = "logits" if problem.classification else "outputs"
    return {"observations": observations, "prior": args.prior, "soft": args.soft,
            "method": args.method, "seed": args.seed, "num_probes": args.probes,
            "num_matvecs": args.steps}


def iic_analysis(report: Any, problem: Any, options: dict[str, Any],
                 timings: dict[str, float]) -> dict[str, Any]:
    """The IIC with every term, its validity and the spectrum of ``K_H``."""
    from hessntk.criteria import iic
    from hessntk.report import plot_ntk_cdf

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", RuntimeWarning)  # hessntk's diagnostics
        res = _timed(timings, "iic", lambda: iic(problem.model, problem.data, **options))
    for message in dict.fromkeys(_one_line(w.message) for w in caught):
        report.notes.append(f"IIC: {message}")
    out = res.to_dict()
    out["settings"] = options
    if res.eigenvalues is not None:
        out["eigenvalues"] = res.eigenvalues
    rows = [
        ("IIC", _fmt(res.value), "valid" if res.valid else "NOT valid: " + "; ".join(res.reasons)),
        ("log(R* - R0)", _fmt(res.regularization), "regularization"),
        ("(1/N) log det K_H", _pm(res.sharpness, res.sharpness_stderr),
         f"sharpness ({res.method}{', soft ' + _fmt(res.soft) if res.soft else ''})"),
        ("curvature", _fmt(res.curvature), "(1/N)(log det H* - log det H0)"),
        ("-log N", _fmt(res.correction), f"N = {res.num_constraints} constraints, "
         f"P = {res.num_params} parameters"),
    ]
    if res.train_error is not None:
        rows.append(("training error", _fmt(res.train_error), "interpolation check"))
    else:
        rows.append(("relative residual", _fmt(res.residual), "interpolation check"))
    if res.tail is not None:
        rows.append(("tail exponent of K_H", _pm(res.tail.alpha, res.tail.stderr),
                     f"cutoff {res.tail.cutoff:.3g}"))
    report.add_section(f"IIC ({res.observations}, prior {res.prior}, lower is better)", rows)
    if res.eigenvalues is not None and res.tail is not None and res.tail.x is not None:
        report.add_plot("iic_kernel_cdf.png", lambda: plot_ntk_cdf(
            res.eigenvalues, res.tail, title=f"Spectrum of K_H = J S J^T ({res.observations}, "
            f"prior {res.prior})"), "Eigenvalue CDF of the IIC kernel K_H with its tail fit")
    return out


def quantization_analysis(report: Any, problem: Any, args: argparse.Namespace,
                          timings: dict[str, float]) -> dict[str, Any]:
    """Per-layer quantization sensitivity (predicted), measured losses and their agreement."""
    from hessntk.criteria import measure_quantization, quantization_sensitivity
    from hessntk.report import _figure

    model, loss_fn, data = problem.model, problem.loss_fn, problem.data
    bits = tuple(args.bits)
    sens = _timed(timings, "quantization", lambda: quantization_sensitivity(
        model, loss_fn, data, bits=bits, quantizer=args.quantizer,
        granularity=args.granularity, metric=args.metric, num_matvecs=args.trace_matvecs,
        seed=args.seed, curvature=getattr(args, "curvature", "hessian")))
    out: dict[str, Any] = {"sensitivity": sens.to_dict()}
    meas = None
    if args.measure:
        meas = _timed(timings, "quantization_measured", lambda: measure_quantization(
            model, loss_fn, data, bits, quantizer=args.quantizer, granularity=args.granularity))
        out["measured"] = meas.to_dict()
        out["rank_correlation"] = {p: {str(b): r for b, r in v.items()}
                                   for p, v in sens.rank_correlation(meas).items()}
    low = sens.bits[0]
    j = sens.bits.index(low)
    pred = sens.predictions("direct")[:, j]
    rows = []
    for layer in sens.ranking("direct", low):
        i = sens.layers.index(layer)
        note = f"{int(sens.num_params[i])} weights; avg tr H {_fmt(sens.average_trace[i])}"
        if meas is not None:
            note = f"measured {_fmt(meas.increase[i, j])}; " + note
        rows.append((f"layer {layer or '<root>'} at {low} bits", _fmt(pred[i]), note))
    if meas is not None and len(sens.layers) >= 3:  # with two layers rho is always +-1
        for p, by_bits in out["rank_correlation"].items():
            rows.append((f"Spearman rho ({p})", ", ".join(
                f"{b} bits: {_fmt(r, 3)}" for b, r in by_bits.items()),
                "predicted vs measured ranking over layers"))
    report.add_section(f"Quantization sensitivity (predicted loss increase, {args.quantizer}, "
                       f"{args.granularity}; most sensitive first)", rows)
    report.add_table("Quantization sensitivity per layer and bit width", sens.table())

    def make() -> Any:
        fig, ax = _figure(max(6.0, 1.2 * len(sens.layers) + 2.0), 4.0)
        sens.plot(ax=ax, measured=meas)
        return fig

    report.add_plot("quantization_sensitivity.png", make,
                    "Predicted loss increase of quantizing each layer alone (bars) and the "
                    "measured increase (markers)")
    return out


# -- commands --------------------------------------------------------------------------------


QUICK = {"n_train": 100, "width": 32, "k": 3, "probes": 4, "steps": 20, "trace_matvecs": 20,
         "ntk_samples": 50, "probes_per_group": 2, "bits": [2, 4, 8]}
FULL = {"n_train": 300, "width": 64, "k": 5, "probes": 12, "steps": 80, "trace_matvecs": 60,
        "ntk_samples": 200, "probes_per_group": 4, "bits": [2, 3, 4, 8]}


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
    for step in progress(range(max_steps), "training"):  # noqa: B007 - reported below
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

    from hessntk._entrypoints import DTYPES, Problem, device_of

    preset = QUICK if args.quick else FULL
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.measure = True
    args.quantizer, args.granularity, args.metric = "symmetric", "tensor", "both"
    device = device_of(args.device) or torch.device("cpu")
    dtype = DTYPES[args.dtype or "float64"]
    report, store, timings = ctx["report"], ctx["store"], ctx["timings"]
    train, test = _timed(timings, "data", lambda: _digits(args.n_train, args.seed, dtype,
                                                          device))
    model, info = _timed(timings, "train", lambda: _train(args.width, train, args.seed))
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


def _load(args: argparse.Namespace, checkpoint: str | None = None) -> Any:
    from hessntk._entrypoints import DTYPES, device_of, load_problem, load_weights, place

    device = device_of(args.device)
    problem = load_problem(args.model)
    if checkpoint is not None:
        load_weights(problem.model, checkpoint)
    problem.model.eval()
    return place(problem, device, DTYPES[args.dtype] if args.dtype else None)


def _model_section(report: Any, problem: Any, checkpoint: str | None) -> dict[str, Any]:
    from hessntk._model import iter_batches

    n_batches = sum(1 for _ in iter_batches(problem.data))
    param = next(problem.model.parameters())
    info = {"entry_point": problem.entry, "checkpoint": checkpoint,
            "class": type(problem.model).__name__, "num_params": problem.num_params,
            "num_batches": n_batches, "dtype": str(param.dtype), "device": str(param.device),
            "loss_fn": type(problem.loss_fn).__name__}
    report.add_section("Model", [
        ("model", f"{info['class']} from {problem.entry}",
         f"{problem.num_params} parameters, {info['dtype']}, {info['device']}"),
        ("weights", checkpoint or "as built", f"loss {info['loss_fn']}, {n_batches} batch(es)"),
    ])
    return info


def cmd_spectrum(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    from hessntk._entrypoints import take_inputs

    problem = _load(args, args.checkpoint)
    report, timings = ctx["report"], ctx["timings"]
    report.title = f"hessntk spectrum: {problem.entry}"
    out: dict[str, Any] = {"model": _model_section(report, problem, args.checkpoint)}
    out["hessian"] = hessian_analysis(report, problem, args, ctx["store"], timings)
    if args.ntk_samples:
        outputs = args.ntk_outputs
        if outputs == "auto":
            outputs = "logits" if problem.classification else "raw"
        inputs = take_inputs(problem.data, args.ntk_samples)
        out["ntk"] = ntk_analysis(report, problem.model, inputs, outputs, timings)
    return out


def cmd_iic(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    problem = _load(args, args.checkpoint)
    report = ctx["report"]
    report.title = f"hessntk iic: {problem.entry}"
    out: dict[str, Any] = {"model": _model_section(report, problem, args.checkpoint)}
    out["iic"] = iic_analysis(report, problem, iic_options(args, problem), ctx["timings"])
    return out


def cmd_quantization(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    problem = _load(args, args.checkpoint)
    report = ctx["report"]
    report.title = f"hessntk quantization: {problem.entry}"
    out: dict[str, Any] = {"model": _model_section(report, problem, args.checkpoint)}
    out["quantization"] = quantization_analysis(report, problem, args, ctx["timings"])
    return out


def _rank_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank as :func:`hessntk.criteria.compare` does: valid finite values first, ascending."""
    from hessntk.criteria.comparison import rank_key


    ranked = sorted(rows, key=lambda r: rank_key(bool(r.get("valid")), r.get("value")))
    return [{**r, "rank": i} for i, r in enumerate(ranked, start=1)]


_TABLE_COLUMNS = ("value", "regularization", "sharpness", "sharpness_stderr", "curvature",
                  "correction")


def _ranking_table(rows: Sequence[dict[str, Any]]) -> str:
    width = max([len(str(r["name"])) for r in rows] + [10])
    cols = {c: max(12, len(c) + 2) for c in _TABLE_COLUMNS}
    head = f"{'rank':>4}  {'name':<{width}}" + "".join(f"{c:>{w}}" for c, w in cols.items())
    lines = [head + f"{'valid':>7}"]
    for r in rows:
        cells = "".join(f"{_fmt(r.get(c), 6):>{w}}" for c, w in cols.items())
        lines.append(f"{r['rank']:>4}  {str(r['name']):<{width}}{cells}{str(r['valid']):>7}")
    return "\n".join(lines)


def _ranking_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    fields = ["rank", "name", *_TABLE_COLUMNS, "valid", "reasons", "checkpoint"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**{k: ("" if r.get(k) is None else r.get(k)) for k in fields},
                         "reasons": "; ".join(r.get("reasons") or [])})
    return buf.getvalue()


def _checkpoint_names(paths: Sequence[str]) -> list[str]:
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) < len(names):  # fall back to the paths as given
        names = [os.path.normpath(p) for p in paths]
    if len(set(names)) < len(names):
        raise ValueError("the same checkpoint was given twice: " + ", ".join(
            sorted({n for n in names if names.count(n) > 1})))
    return names


def cmd_compare(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    from hessntk._entrypoints import load_weights
    from hessntk.criteria import compare
    from hessntk.report import atomic_write, file_digest, plot_ranking, to_jsonable

    report, store, timings = ctx["report"], ctx["store"], ctx["timings"]
    names = _checkpoint_names(args.checkpoints)
    for path in args.checkpoints:
        if not os.path.isfile(path):
            raise ValueError(f"checkpoint {path!r} does not exist")
    problem = _load(args)
    report.title = f"hessntk compare: {len(names)} checkpoints of {problem.entry}"
    options = iic_options(args, problem)
    data_key = _data_key(problem.data)
    rows, results = [], {}
    t0 = time.perf_counter()
    for name, path in progress(list(zip(names, args.checkpoints, strict=True)), "checkpoints"):
        digest = file_digest(path)
        key = {"checkpoint": digest, "iic": options, "data": data_key,
               "dtype": args.dtype, "device": args.device}
        item = f"compare-{digest[:16]}"
        saved = store.load_json(item, key)
        if saved is None:
            model = copy.deepcopy(problem.model)
            load_weights(model, path)
            model.eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # reported as reasons
                c = compare({name: model}, lambda: copy.deepcopy(problem.model), problem.data,
                            **options)
            saved = {"row": c.rows[0], "result": c.results[name].to_dict()}
            store.save_json(item, saved, key)
            saved = to_jsonable(saved)  # as a resumed run reads it back
        row = {**saved["row"], "name": name, "checkpoint": path}
        rows.append(row)
        results[name] = saved["result"]
    timings["compare"] = round(time.perf_counter() - t0, 3)
    rows = _rank_rows(rows)
    table = _ranking_table(rows)
    best = rows[0]
    report.add_section(f"Ranking by IIC ({options['observations']}, prior {options['prior']}; "
                       "lower is better)", [
        ("best", str(best["name"]), f"IIC {_fmt(best['value'])}"
         + ("" if best["valid"] else " (not valid)")),
        ("checkpoints", str(len(rows)), f"{store.reused} reused from {store.path}"
         if store.reused else "all evaluated in this run"),
    ])
    report.add_table("Ranking", table)
    atomic_write(report.folder / "ranking.csv", _ranking_csv(rows))
    report.add_plot("ranking.png", lambda: plot_ranking(rows),
                    "IIC per checkpoint, best on top (hatched: not theory-valid)")
    return {"settings_iic": options, "rows": rows, "results": results, "table": table,
            "ranking_csv": "ranking.csv"}


# -- argument parsing ------------------------------------------------------------------------


def _common(sub: argparse.ArgumentParser, command: str) -> None:
    g = sub.add_argument_group("output and runtime")
    g.add_argument("--out", default=f"hessntk-{command}", metavar="DIR",
                   help="report folder (default: %(default)s)")
    g.add_argument("--json", action="store_true",
                   help="print the report JSON on stdout instead of the summary")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars and no summary (errors only)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of training (demo), probes and bootstraps (default: 0)")
    g.add_argument("--device", default=None, metavar="DEV",
                   help="cpu, cuda or cuda:N (default: the model's own)")
    g.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="cast the model and floating data (default: as built)")
    g.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads of torch and BLAS (default: 1 for the demo, else "
                   "torch's choice)")
    g.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def _hessian_options(sub: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    def default(name: str) -> str:
        if defaults:
            return f" (default: {defaults[name]})"
        return f" (default: {FULL[name]}; --quick: {QUICK[name]})"

    g = sub.add_argument_group("Hessian spectrum")
    g.add_argument("--k", type=_positive_int, default=defaults.get("k"), metavar="N",
                   help="top eigenvalues (eigsh)" + default("k"))
    g.add_argument("--tol", type=_positive_float, default=1e-6,
                   help="relative residual tolerance of eigsh (default: %(default)s)")
    g.add_argument("--probes", type=_positive_int, default=defaults.get("probes"), metavar="N",
                   help="SLQ probes" + default("probes"))
    g.add_argument("--steps", type=_positive_int, default=defaults.get("steps"), metavar="N",
                   help="Lanczos steps per SLQ probe" + default("steps"))
    g.add_argument("--probes-per-group", type=_positive_int, metavar="N",
                   default=defaults.get("probes_per_group"),
                   help="probes advancing together; each finished group is saved for --resume"
                   + default("probes_per_group"))
    g.add_argument("--trace-matvecs", type=_positive_int, default=defaults.get("trace_matvecs"),
                   metavar="N", help="products of the trace estimates" + default("trace_matvecs"))
    g.add_argument("--resume", action="store_true",
                   help="reuse the partial results saved in --out by an interrupted run")


def _iic_group(sub: argparse.ArgumentParser) -> None:
    g = sub.add_argument_group("IIC")
    g.add_argument("--observations", choices=("auto", "outputs", "logits", "probabilities"),
                   default="auto", help="constraints: auto = logits for a classification loss "
                   "(cross-entropy, NLL, integer targets), else outputs")
    g.add_argument("--prior", type=_prior, default="init",
                   help="Gaussian prior: 'init' (fan-in variances) or a variance")
    g.add_argument("--soft", type=_positive_float, default=None,
                   help="finite-penalty IIC with noise precision SOFT")
    g.add_argument("--method", choices=("auto", "exact", "slq"), default="auto")
    g.add_argument("--probes", type=_positive_int, default=16, metavar="N",
                   help="SLQ probes, method slq (default: %(default)s)")
    g.add_argument("--steps", type=_positive_int, default=100, metavar="N",
                   help="Lanczos steps, method slq (default: %(default)s)")


def _quant_group(sub: argparse.ArgumentParser, demo: bool = False) -> None:
    g = sub.add_argument_group("quantization sensitivity")
    g.add_argument("--bits", type=_positive_int, nargs="+", default=None if demo else [2, 3, 4, 8],
                   metavar="B", help="bit widths (default: 2 3 4 8" + ("; --quick: 2 4 8)"
                                                                       if demo else ")"))
    if demo:
        return
    g.add_argument("--quantizer", choices=("symmetric", "asymmetric"), default="symmetric")
    g.add_argument("--granularity", choices=("tensor", "channel"), default="tensor")
    g.add_argument("--metric", choices=("trace", "eigenvalue", "both"), default="both")
    g.add_argument("--trace-matvecs", type=_positive_int, default=100, metavar="N",
                   help="products of the block-trace estimate (default: %(default)s)")
    g.add_argument("--curvature", choices=("hessian", "ggn"), default="hessian")
    g.add_argument("--no-measure", dest="measure", action="store_false",
                   help="skip measuring the loss of each quantized layer")


def build_parser() -> argparse.ArgumentParser:
    """The ``hessntk`` argument parser."""
    import hessntk

    parser = argparse.ArgumentParser(
        prog=PROG, description="Curvature of neural networks: Hessian and NTK spectra, IIC, "
        "checkpoint ranking and quantization sensitivity, as report folders.",
        epilog="MODEL is package.module:function or path/to/file.py:function, a function "
        "returning (model, loss_fn, data) or a dict with those keys. Run 'hessntk demo' first.")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {getattr(hessntk, '__version__', '')}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="train an MLP on load_digits and report everything",
                          description="Train an MLP on sklearn's load_digits (seeded, seconds) "
                          "and report its Hessian spectrum, NTK Gram spectrum, IIC and "
                          "per-layer quantization sensitivity.")
    demo.add_argument("--quick", action="store_true", help="tiny settings (a few seconds)")
    demo.add_argument("--n-train", type=_positive_int, default=None, metavar="N",
                      help="training images (default: 300; --quick: 100)")
    demo.add_argument("--width", type=_positive_int, default=None, metavar="N",
                      help="hidden width (default: 64; --quick: 32)")
    demo.add_argument("--ntk-samples", type=_positive_int, default=None, metavar="N",
                      help="images in the NTK Gram (default: 200; --quick: 50)")
    _hessian_options(demo, {})
    _quant_group(demo, demo=True)
    _common(demo, "demo")
    # The demo's arrays are small: one thread is as fast, and extra BLAS threads spin-wait
    # on a busy machine (4x slower on a loaded 2-core machine).
    demo.set_defaults(func=cmd_demo, curvature="hessian", threads=1)

    spectrum = sub.add_parser("spectrum", help="Hessian (and NTK) spectrum of your model",
                              description="Hessian (or GGN) top eigenvalues, trace, per-layer "
                              "traces, SLQ density and lower-tail exponent; with --ntk-samples "
                              "also the NTK Gram spectrum.")
    spectrum.add_argument("model", metavar="MODEL", help="module:function or file.py:function")
    spectrum.add_argument("--checkpoint", metavar="FILE", help=".pt/.pth/.safetensors weights")
    spectrum.add_argument("--curvature", choices=("hessian", "ggn"), default="hessian")
    spectrum.add_argument("--ntk-samples", type=_nonneg_int, default=0, metavar="N",
                          help="samples of the NTK Gram (default 0: no NTK)")
    spectrum.add_argument("--ntk-outputs", default="auto",
                          choices=("auto", "raw", "logits", "probabilities", "simplex"),
                          help="NTK outputs: auto = logits for classification, else raw")
    _hessian_options(spectrum, {"k": 5, "probes": 8, "steps": 60, "probes_per_group": 4,
                                "trace_matvecs": 60})
    _common(spectrum, "spectrum")
    spectrum.set_defaults(func=cmd_spectrum)

    iic_p = sub.add_parser("iic", help="Interpolating Information Criterion of your model",
                           description="The IIC with every term and validity diagnostics.")
    iic_p.add_argument("model", metavar="MODEL", help="module:function or file.py:function")
    iic_p.add_argument("--checkpoint", metavar="FILE", help=".pt/.pth/.safetensors weights")
    _iic_group(iic_p)
    _common(iic_p, "iic")
    iic_p.set_defaults(func=cmd_iic)

    cmp_p = sub.add_parser("compare", help="rank checkpoints by the IIC",
                           description="Rank checkpoints of one architecture by the IIC, with "
                           "common random numbers; writes ranking.csv and ranking.png.")
    cmp_p.add_argument("model", metavar="MODEL", help="module:function or file.py:function")
    cmp_p.add_argument("checkpoints", metavar="CHECKPOINT", nargs="+",
                       help=".pt/.pth/.safetensors files")
    cmp_p.add_argument("--resume", action="store_true",
                       help="reuse checkpoints already evaluated in --out")
    _iic_group(cmp_p)
    _common(cmp_p, "compare")
    cmp_p.set_defaults(func=cmd_compare)

    q_p = sub.add_parser("quantization", help="per-layer quantization sensitivity",
                         description="Predicted (Hessian) and measured loss increase of "
                         "quantizing each layer alone, per bit width.")
    q_p.add_argument("model", metavar="MODEL", help="module:function or file.py:function")
    q_p.add_argument("--checkpoint", metavar="FILE", help=".pt/.pth/.safetensors weights")
    _quant_group(q_p)
    _common(q_p, "quantization")
    q_p.set_defaults(func=cmd_quantization)
    return parser


# -- main ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run a parsed command: compute, write the report folder, print the summary or JSON."""
    t0 = time.perf_counter()
    with _threads(args.threads):
        return _run(args, argv, t0)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Limit torch's and the BLAS libraries' CPU threads to ``n``; restore them afterwards.

    On a loaded machine, BLAS threads that outnumber the free cores spin-wait: a 1000 x 1000
    ``eigh`` can take 50x longer with 2 threads than with 1.
    """
    import torch

    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # numpy's BLAS keeps its threads
            yield
        else:
            with threadpool_limits(limits=n):
                yield
    finally:
        torch.set_num_threads(before)


def _run(args: argparse.Namespace, argv: Sequence[str], t0: float) -> int:
    from hessntk.report import PartialStore, Report

    out = Path(args.out)
    timings: dict[str, float] = {}
    report = Report(out, f"hessntk {args.command}", {})
    resume = bool(getattr(args, "resume", False))
    store = PartialStore(out, resume=resume)
    ctx = {"report": report, "store": store, "timings": timings}
    with reporting(enabled=not args.quiet):
        results = args.func(args, ctx)
    if store.reused:
        report.notes.append(f"resumed: {store.reused} partial result(s) reused from "
                            f"{store.path}")
    wall = time.perf_counter() - t0
    report.data = {
        "command": args.command, "argv": list(argv), "settings": _settings(args),
        "seeds": {"seed": args.seed, "torch_manual_seed": args.seed,
                  "probes": f"hessntk.spectral.rademacher(n, num_probes, seed={args.seed})"},
        "versions": _versions(), **results, "timings_s": timings, "wall_time_s": wall,
    }
    paths = report.write()
    if args.json:
        sys.stdout.write(paths["json"].read_text())
    elif not args.quiet:
        text = report.text()
        files = ", ".join(["report.json", *report.plots])
        text += f"\nreport: {paths['html']} ({files})\ndone in {wall:.1f} s\n"
        sys.stdout.write(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hessntk`` console script; returns the exit code.

    Errors are reported as one line, ``hessntk: error: ...``, with exit code 2 (``--debug``
    re-raises them with the traceback); an interrupt exits with 130 and keeps the partial
    results for ``--resume``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return run(args, argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; partial results are kept in {args.out} "
              "(rerun with --resume where supported)", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        from hessntk._entrypoints import CLIError

        prefix = "" if isinstance(err, (CLIError, ValueError, FileNotFoundError)) else (
            f"{type(err).__name__}: ")
        print(f"{PROG}: error: {prefix}{_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
