"""The analyses behind the commands: each builds one operator, computes, and fills a report.

Every analysis returns the JSON section of ``report.json`` and adds its summary rows, tables
and plots to the :class:`hessntk.report.Report`; the numbers come from the public API
(:mod:`hessntk.hessian`, :mod:`hessntk.ntk`, :mod:`hessntk.criteria`, :mod:`hessntk.spectral`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from hessntk.cli.text import CLIError, cli_words, fmt, one_line, pm, timed

#: Confidence of the intervals in summaries.
CONFIDENCE = 0.95
#: Smoothing of the Hessian density plot (sd of a Gaussian on its symmetric-log axis).
SMOOTHING = 0.4

__all__ = ["data_key", "hessian_analysis", "iic_analysis", "iic_options", "ntk_analysis",
           "quantization_analysis", "tail_dict"]


@contextlib.contextmanager
def memory_in_flags(flag: str, value: Any, what: str, fix: str,
                    source: str | tuple[str, ...] = "") -> Iterator[None]:
    """A computation refused for memory (:class:`hessntk.MemoryBudgetError`), in the words
    of the flag that sized it; with ``source``, only a refusal of that function (or of
    those, a tuple; others pass on to an outer context)."""
    from hessntk._memory import DEFAULT_BUDGET, MemoryBudgetError, format_bytes

    try:
        yield
    except MemoryBudgetError as err:  # the CLI leaves every budget at its default
        if source and err.source not in ((source,) if isinstance(source, str) else source):
            raise
        raise CLIError(
            f"{flag} {value}: {what} would hold {format_bytes(err.need)} at once, more than "
            f"{DEFAULT_BUDGET} ({format_bytes(err.budget)}); {fix}") from err


def trace_memory_in_flags(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """A trace estimate refused for memory, in the words of ``--trace-matvecs``."""
    return memory_in_flags("--trace-matvecs", args.trace_matvecs, "the trace estimate",
                           "lower --trace-matvecs", source="trace")


def slq_memory_in_flags(steps: int, reorth: str, per_layer: bool = False
                        ) -> contextlib.AbstractContextManager:
    """An SLQ Lanczos basis refused for memory, in the words of ``--steps`` and
    ``--reorth`` (``per_layer``: the ``--per-layer`` spectra, which keep a basis)."""
    if per_layer:
        what, fix = ("the Lanczos basis of the --per-layer spectra",
                     "lower --steps or leave out --per-layer")
    elif reorth != "none":
        what, fix = (f"the --reorth {reorth} Lanczos basis of one SLQ probe",
                     "use --reorth none (16 n bytes per probe; the density stays accurate) "
                     "or lower --steps")
    else:
        what, fix = ("the Lanczos vectors of one SLQ probe",
                     "run on a device with more free memory")
    return memory_in_flags("--steps", steps, what, fix, source=("slq", "lanczos"))


def tail_dict(fit: Any) -> dict[str, Any]:
    """The JSON of a :class:`hessntk.criteria.TailFit`."""
    return {"alpha": fit.alpha, "stderr": fit.stderr, "cutoff": fit.cutoff,
            "ks_distance": fit.ks_distance, "num_points": fit.num_points, "mass": fit.mass,
            "mass_below_floor": fit.mass_below_floor, "floor": fit.floor, "method": fit.method,
            "density_exponent": fit.density_exponent}


def data_key(data: Any) -> dict[str, Any]:
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


def hessian_analysis(report: Any, problem: Any, args: argparse.Namespace, store: Any,
                     timings: dict[str, float]) -> dict[str, Any]:
    """Top eigenvalues, trace, per-layer traces, SLQ density and lower-tail exponent.

    One operator (per-layer blocks) serves every estimate: one pass over the data to check
    it, then only products.
    """
    from hessntk import hessian
    from hessntk.criteria import lower_tail_exponent
    from hessntk.report import fingerprint, plot_hessian_esd, smoothed_density
    from hessntk.spectral import slq

    model, loss_fn, data = problem.model, problem.loss_fn, problem.data
    curvature = getattr(args, "curvature", "hessian")
    op_cls = hessian.HessianOperator if curvature == "hessian" else hessian.GGNOperator
    op = op_cls(model, loss_fn, problem.local_data, blocks="layer", **problem.outputs,
                **problem.parallel)
    n = op.shape[0]
    k = min(args.k, n)
    for flag, value in (("--k", args.k), ("--steps", args.steps)):
        if value > n:  # capped, and said so
            report.notes.append(f"{flag} {value} is more than the model's n = {n} "
                                f"parameters: {n} used.")
    with memory_in_flags("--k", args.k, "the Krylov basis of the top eigenvalues",
                         "run on a device with more free memory", source="eigsh"):
        top = timed(timings, "hessian_top", lambda: hessian.top_eigenvalues(
            op, k=k, tol=args.tol, seed=args.seed))
    with trace_memory_in_flags(args):
        tr = timed(timings, "hessian_trace", lambda: hessian.trace(
            op, num_matvecs=args.trace_matvecs, seed=args.seed))
        layers = timed(timings, "hessian_layer_traces", lambda: hessian.block_traces(
            op, num_matvecs=args.trace_matvecs, seed=args.seed))
    steps = min(args.steps, n)
    key = {"curvature": curvature, "params": fingerprint(dict(model.state_dict())),
           "loss": float(f"{op.loss:.12g}"), "data": data_key(data),
           "dtype": str(op.dtype), "device": str(op.device)}
    reorth = getattr(args, "reorth", "partial")
    with slq_memory_in_flags(steps, reorth):
        dens = timed(timings, "hessian_slq", lambda: slq(
            op, num_probes=args.probes, num_matvecs=steps, seed=args.seed,
            probes_per_group=args.probes_per_group, store=store.slq_groups(curvature, key),
            reorth=reorth))
    negative, neg_lo, neg_hi = _negative_fraction(dens)
    if dens.num_probes > 1:
        interval_of, noise = f"{CONFIDENCE:.0%} interval from the quadrature", " and probe noise"
    else:
        interval_of, noise = "quadrature", " (1 probe: probe noise not covered)"
    slq_trace = dens.trace()
    try:
        fit = lower_tail_exponent(dens)
        tail: dict[str, Any] = tail_dict(fit)
        tail_text = (pm(fit.alpha, fit.stderr),
                     f"cutoff {fit.cutoff:.3g}, {fit.mass:.0%} of the mass; {fit.method}")
    except ValueError as err:
        tail = {"error": one_line(err)}
        tail_text = ("undetermined", one_line(err, 90))
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
                    "negative_mass": {
                        "interval": [neg_lo, neg_hi],
                        "confidence": CONFIDENCE if dens.num_probes > 1 else None,
                        "bracket": [float(negative.lower[0]), float(negative.upper[0])],
                        "value": float(negative.value[0]),
                        "probe_stderr": float(negative.stderr[0]),
                        "below": -dens.rounding_level},
                    "trace": {"value": slq_trace.value, "stderr": slq_trace.stderr},
                    "nodes": dens.nodes, "weights": dens.weights, "exact": dens.exact},
        "lower_tail": tail,
    }
    name = "Hessian" if curvature == "hessian" else "GGN"
    vals = ", ".join(fmt(v) for v in top.eigenvalues)
    rows = [
        ("top eigenvalues", vals, f"eigsh, {top.num_matvecs} products"
         + ("" if top.converged else ", NOT converged")),
        ("trace", pm(tr.value, tr.stderr), f"{tr.method}, {tr.num_matvecs} products"),
        ("SLQ density", f"[{dens.nodes.min():.3g}, {dens.nodes.max():.3g}]",
         f"{dens.num_probes} probes x {steps} steps; SLQ trace "
         + pm(slq_trace.value, slq_trace.stderr)),
        ("negative eigenvalues", f"[{neg_lo:.3f}, {neg_hi:.3f}]",
         f"fraction < 0: {interval_of} bracket [{negative.lower[0]:.3f}, "
         f"{negative.upper[0]:.3f}]{noise} (Gauss point estimate {negative.value[0]:.3f})"),
        ("lower-tail exponent", *tail_text),
    ]
    rows += [(f"trace of layer {layer or '<root>'}", pm(e.value, e.stderr),
              f"{sizes[layer]} parameters") for layer, e in layers.items()]
    report.add_section(f"{name} of the mean loss ({n} parameters, {op.num_samples} samples)",
                       rows)
    report.add_summary(
        f"{name}: top eigenvalue {fmt(float(top.eigenvalues[0]))} ("
        + ("converged" if top.converged else "NOT converged: raise --k's budget or --tol")
        + f"); trace {pm(tr.value, tr.stderr)}; the fraction of negative eigenvalues lies in "
        f"[{neg_lo:.3f}, {neg_hi:.3f}]"
        + (f" ({CONFIDENCE:.0%})" if dens.num_probes > 1 else " (1 probe: no probe noise)")
        + ("; a wide interval means the spectrum near 0 is not resolved by "
           f"{steps} steps" if neg_hi - neg_lo > 0.2 else "") + ".")
    smoothing = getattr(args, "smoothing", SMOOTHING)
    curve = smoothed_density(dens, smoothing, top.eigenvalues)
    out["density"]["smoothed"] = {"smoothing": smoothing, "axis_linear_below": curve["lin"],
                                  "x": curve["x"], "mass": curve["mass"]}
    blocks = None
    if getattr(args, "per_layer", False):
        blocks, out["layers"] = _per_layer(report, op, model, args, steps, timings)
    report.add_plot("hessian_esd.png", lambda: plot_hessian_esd(
        dens, top.eigenvalues, smoothing=smoothing, layers=blocks,
        title=f"{name} spectral density (SLQ, {dens.num_probes} probes x {steps} steps)"),
        f"{name} eigenvalue density (SLQ, each quadrature node smoothed by a Gaussian of sd "
        f"{smoothing:g} on the symmetric-log axis), with the top eigenvalues from eigsh"
        + ("; lines: each layer's block, scaled by its share of the parameters"
           if blocks else ""))
    return out


def _negative_fraction(d: Any) -> tuple[Any, float, float]:
    """The CDF just below zero (eigenvalues within the nodes' rounding level of zero are not
    negative) and its interval: 95% with several probes, the quadrature bracket with one."""
    neg = d.cdf(-d.rounding_level)
    if d.num_probes > 1:
        lo, hi = (float(b[0]) for b in neg.interval(CONFIDENCE))
    else:
        lo, hi = float(neg.lower[0]), float(neg.upper[0])
    return neg, lo, hi


def _per_layer(report: Any, op: Any, model: Any, args: argparse.Namespace, steps: int,
               timings: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The SLQ density of each layer's diagonal block (``--per-layer``) and its JSON."""
    from hessntk.hessian import block_density

    with slq_memory_in_flags(steps, "partial", per_layer=True):
        blocks = timed(timings, "hessian_layer_slq", lambda: block_density(
            op, num_probes=args.probes, num_matvecs=steps, seed=args.seed))
    labels = layer_labels(model, blocks)
    rows, infos = [], {}
    for layer, d in blocks.items():
        neg, lo, hi = _negative_fraction(d)
        tr = d.trace()
        infos[layer] = {"n": d.n, "min": float(d.nodes.min()), "max": float(d.nodes.max()),
                        "negative_mass": {"interval": [lo, hi], "value": float(neg.value[0])},
                        "trace": {"value": tr.value, "stderr": tr.stderr},
                        "nodes": d.nodes, "weights": d.weights}
        rows.append((f"layer {labels[layer]}", f"[{d.nodes.min():.3g}, {d.nodes.max():.3g}]",
                     f"{d.n} parameters; negative fraction in [{lo:.3f}, {hi:.3f}]; SLQ trace "
                     + pm(tr.value, tr.stderr)))
    report.add_section(f"Per-layer spectra (diagonal blocks, {args.probes} probes x "
                       f"{steps} steps)", rows)
    return blocks, infos


def ntk_analysis(report: Any, model: Any, inputs: Any, outputs: str,
                 timings: dict[str, float], **output_options: Any) -> dict[str, Any]:
    """NTK Gram ``J J^T`` on ``inputs``, its eigenvalues and lower-tail exponent."""
    import torch

    from hessntk._model import batch_size
    from hessntk.criteria import lower_tail_exponent
    from hessntk.ntk import gram, structural_nullity
    from hessntk.report import plot_ntk_cdf
    from hessntk.spectral import gram_floor

    def build() -> np.ndarray:
        K = gram(model, inputs, outputs=outputs, **output_options)  # float64 accumulation
        return torch.linalg.eigvalsh(K.double()).cpu().numpy()

    lam = timed(timings, "ntk", build)
    dtype = next(model.parameters()).dtype  # the Jacobians' precision
    floor = gram_floor(float(np.abs(lam).max()), torch.finfo(dtype).eps)
    try:
        fit = lower_tail_exponent(lam, floor=floor)
        tail: dict[str, Any] = tail_dict(fit)
        tail_text = (pm(fit.alpha, fit.stderr),
                     f"cutoff {fit.cutoff:.3g}, {fit.num_points} eigenvalues; {fit.method}")
    except ValueError as err:
        fit, tail = None, {"error": one_line(err)}
        tail_text = ("undetermined", one_line(err, 90))
    n_samples = batch_size(inputs)
    below = int((lam <= floor).sum())
    exact_zeros = structural_nullity(n_samples, outputs)  # probabilities: one per sample
    if below - exact_zeros > 0.05 * lam.size:  # a material share of the spectrum is noise
        fix = (" Run with --dtype float64 for a floor of 10 eps_64 lambda_max."
               if dtype != torch.float64 else "")
        report.notes.append(
            f"NTK: {below} of {lam.size} eigenvalues are at or below the floor {floor:.2g} "
            f"(rounding of {str(dtype).replace('torch.', '')} Jacobians) and are left out of "
            f"the tail fit.{fix}")
    out = {"outputs": outputs, "prior": "identity", "num_samples": n_samples,
           "size": int(lam.size), "trace": float(lam.sum()), "max": float(lam.max()),
           "min": float(lam.min()), "floor": floor,
           "num_below_floor": int((lam <= floor).sum()), "eigenvalues": lam, "lower_tail": tail}
    report.add_section(f"NTK Gram J J^T ({outputs}, {n_samples} samples, {lam.size} x "
                       f"{lam.size})", [
        ("eigenvalue range", f"[{lam.min():.3g}, {lam.max():.3g}]",
         f"{out['num_below_floor']} at or below the floor {floor:.2g}"),
        ("trace", fmt(float(lam.sum())), "exact (dense eigenvalues)"),
        ("lower-tail exponent", *tail_text),
    ])
    report.add_summary(
        f"NTK Gram ({lam.size} x {lam.size}): exact eigenvalues in [{lam.min():.3g}, "
        f"{lam.max():.3g}]; {below} at or below the floor {floor:.2g} are zero at this "
        f"precision ({exact_zeros} structural); lower-tail exponent {tail_text[0]}.")
    report.add_plot("ntk_cdf.png", lambda: plot_ntk_cdf(
        lam, fit, title=f"NTK Gram eigenvalues ({outputs}, {lam.size} x {lam.size})"),
        "NTK Gram eigenvalue CDF on log-log axes with the lower-tail power-law fit")
    return out


def iic_options(args: argparse.Namespace, problem: Any) -> dict[str, Any]:
    """The :func:`hessntk.criteria.iic` options of the ``iic`` and ``compare`` commands."""
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
        res = timed(timings, "iic", lambda: iic(problem.model, problem.local_data, **options,
                                                **problem.outputs, **problem.parallel))
    for message in dict.fromkeys(one_line(w.message) for w in caught):
        report.notes.append(f"IIC: {message}")
    if not math.isfinite(res.value):  # never a silent nan: say why and what to try
        why = cli_words("; ".join(res.reasons)) or "a term is not finite"
        hint = "" if options.get("soft") else " Try --soft KAPPA (a finite noise precision)."
        report.notes.append(f"IIC: the value is undefined ({res.value}): {why}.{hint}")
    out = res.to_dict()
    out["settings"] = options
    if res.eigenvalues is not None:
        out["eigenvalues"] = res.eigenvalues
    rows = [
        ("IIC", fmt(res.value), "valid" if res.valid else "NOT valid: " + cli_words(
            "; ".join(res.reasons))),
        ("log(R* - R0)", fmt(res.regularization), "regularization"),
        ("(1/N) log det K_H", pm(res.sharpness, res.sharpness_stderr),
         f"sharpness ({res.method}{', soft ' + fmt(res.soft) if res.soft else ''})"),
        ("curvature", fmt(res.curvature), "(1/N)(log det H* - log det H0)"),
        ("-log N", fmt(res.correction), f"N = {res.num_constraints} constraints, "
         f"P = {res.num_params} parameters"),
    ]
    if res.train_error is not None:
        rows.append(("training error", fmt(res.train_error), "interpolation check"))
    else:
        rows.append(("relative residual", fmt(res.residual), "interpolation check"))
    if res.tail is not None:
        rows.append(("tail exponent of K_H", pm(res.tail.alpha, res.tail.stderr),
                     f"cutoff {res.tail.cutoff:.3g}"))
    report.add_section(f"IIC ({res.observations}, prior {res.prior}, lower is better)", rows)
    report.add_summary(f"IIC {fmt(res.value)}: " + (
        "theory-valid (the model interpolates and the kernel is non-singular)." if res.valid
        else "NOT theory-valid: " + cli_words("; ".join(res.reasons) or "a term is not "
                                              "finite") + "."))
    if res.eigenvalues is not None and res.tail is not None and res.tail.x is not None:
        report.add_plot("iic_kernel_cdf.png", lambda: plot_ntk_cdf(
            res.eigenvalues, res.tail, title=f"Spectrum of K_H = J S J^T ({res.observations}, "
            f"prior {res.prior})"), "Eigenvalue CDF of the IIC kernel K_H with its tail fit")
    return out


def quantization_analysis(report: Any, problem: Any, args: argparse.Namespace,
                          timings: dict[str, float]) -> dict[str, Any]:
    """Per-layer quantization sensitivity (predicted), measured losses and their agreement.

    One layer-blocked operator serves the predictions and the measurements.
    """
    from hessntk.criteria import measure_quantization, quantization_sensitivity
    from hessntk.hessian import layer_operator
    from hessntk.report.plots import _figure

    curvature = getattr(args, "curvature", "hessian")
    op = layer_operator(problem.model, problem.loss_fn, problem.local_data,
                        curvature=curvature, **problem.outputs, **problem.parallel)
    bits = tuple(args.bits)
    scheme = {"quantizer": args.quantizer, "granularity": args.granularity,
              "group_size": getattr(args, "group_size", 128)}
    with memory_in_flags("--metric", args.metric, "the Krylov basis of a layer's top "
                         "eigenvalue", "use --metric trace, or a device with more free memory",
                         source="eigsh"), trace_memory_in_flags(args):
        sens = timed(timings, "quantization", lambda: quantization_sensitivity(
            op, bits=bits, metric=args.metric, num_matvecs=args.trace_matvecs,
            seed=args.seed, **scheme))
    out: dict[str, Any] = {"sensitivity": sens.to_dict()}
    meas = None
    if args.measure:
        meas = timed(timings, "quantization_measured", lambda: measure_quantization(
            op, bits=bits, **scheme))
        out["measured"] = meas.to_dict()
        out["rank_correlation"] = {p: {str(b): r for b, r in v.items()}
                                   for p, v in sens.rank_correlation(meas).items()}
    labels = layer_labels(problem.model, sens.layers)
    low = sens.bits[0]
    j = sens.bits.index(low)
    pred = sens.predictions("direct")[:, j]
    rows = []
    for layer in sens.ranking("direct", low):
        i = sens.layers.index(layer)
        note = f"{int(sens.num_params[i])} weights; avg tr H {fmt(sens.average_trace[i])}"
        if meas is not None:
            note = f"measured {fmt(meas.increase[i, j])}; " + note
        rows.append((f"layer {labels[layer]} at {low} bits", fmt(pred[i]), note))
    if meas is not None and len(sens.layers) >= 3:  # with two layers rho is always +-1
        for p, by_bits in out["rank_correlation"].items():
            rows.append((f"Spearman rho ({p})", ", ".join(
                f"{b} bits: {fmt(r, 3)}" for b, r in by_bits.items()),
                "predicted vs measured ranking over layers"))
    report.add_section(f"Quantization sensitivity (predicted loss increase, {args.quantizer}, "
                       f"{args.granularity}; most sensitive first)", rows)
    table_rows = []
    for r in sens.rows():
        if meas is not None:
            i, k = sens.layers.index(r["layer"]), meas.bits.index(r["bits"])
            r["measured_increase"] = float(meas.increase[i, k])
        table_rows.append({**r, "layer": labels[r["layer"]]})
    report.add_table("Quantization sensitivity per layer and bit width", sens.table(),
                     rows=table_rows, csv="quantization_sensitivity.csv",
                     columns=["layer", "bits", "num_params", "error", "gradient_term",
                              "quadratic_term", "predicted_direct", "predicted_trace",
                              "predicted_eigenvalue", "measured_increase"])
    most = sens.ranking("direct", low)[0]
    report.add_summary(
        f"Quantization: the most sensitive layer at {low} bits is {labels[most]} (direct "
        "second-order prediction" + (", checked by measurement" if meas is not None else "")
        + "); the quadratic model under-predicts low-bit damage, so trust measured values "
        "at 2-3 bits.")

    def make() -> Any:
        fig, ax = _figure(max(6.0, 1.2 * len(sens.layers) + 2.0), 4.0)
        sens.plot(ax=ax, measured=meas, labels=labels)
        return fig

    report.add_plot("quantization_sensitivity.png", make,
                    "Predicted loss increase of quantizing each layer alone (bars) and the "
                    "measured increase (markers)")
    budget = {"average_bits": getattr(args, "average_bits", None),
              "budget_bits": getattr(args, "bit_budget", None)}
    if any(v is not None for v in budget.values()):
        out["allocation"] = _allocation(report, op, bits, scheme, budget, timings)
    return out


def layer_labels(model: Any, layers: Any) -> dict[str, str]:
    """``layer -> "name (ModuleType)"`` for tables and plots (``<root>`` for the model)."""
    out = {}
    for layer in layers:
        try:
            kind = type(model.get_submodule(layer)).__name__
        except AttributeError:  # an explicit group of parameters, not a module
            kind = "group"
        out[layer] = f"{layer or '<root>'} ({kind})"
    return out


def _allocation(report: Any, op: Any, bits: tuple[int, ...], scheme: dict[str, Any],
                budget: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    """Per-layer widths for the budget, measured against uniform (``mixed_precision``)."""
    from hessntk.criteria import mixed_precision

    given = {k: v for k, v in budget.items() if v is not None}
    flag = {"average_bits": "--average-bits", "budget_bits": "--bit-budget"}[next(iter(given))]
    try:
        alloc = timed(timings, "quantization_allocation", lambda: mixed_precision(
            op, choices=bits, **given, **scheme))
    except ValueError as err:  # a budget below the smallest width, in the CLI's words
        raise CLIError(f"{flag}: {one_line(err)} (the widths are --bits "
                       f"{' '.join(map(str, bits))})") from err
    rows = [(f"layer {layer or '<root>'}", f"{b} bits", "") for layer, b in alloc.bits.items()]
    rows += [
        ("size", f"{alloc.average_bits:.3g} bits/weight",
         f"{alloc.size_bits} bits of {alloc.budget_bits:.6g} allowed"),
        ("measured increase", fmt(alloc.measured_increase),
         f"every layer quantized together; uniform {alloc.uniform['bits']}-bit: "
         f"{fmt(alloc.uniform['measured_increase'])}"),
    ]
    rows += [("note", note, "") for note in alloc.notes]
    report.add_section("Mixed-precision allocation (checked on the measured loss)", rows)
    report.add_summary(
        f"Mixed precision at {alloc.average_bits:.3g} bits/weight: measured loss increase "
        f"{fmt(alloc.measured_increase)} against {fmt(alloc.uniform['measured_increase'])} for "
        f"uniform {alloc.uniform['bits']}-bit (every layer quantized together).")
    return alloc.to_dict()
