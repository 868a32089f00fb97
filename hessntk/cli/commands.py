"""The commands on a user's model: ``spectrum``, ``iic``, ``quantization`` and ``compare``."""

from __future__ import annotations

import argparse
import copy
import os
import warnings
from collections.abc import Sequence
from typing import Any

from hessntk.cli.analyses import (
    data_key,
    hessian_analysis,
    iic_analysis,
    iic_options,
    ntk_analysis,
    quantization_analysis,
)
from hessntk.cli.text import CLIError, cli_words, fmt, timed
from hessntk.report import to_jsonable

__all__ = ["cmd_compare", "cmd_iic", "cmd_quantization", "cmd_spectrum"]


def _load(args: argparse.Namespace, checkpoint: str | None = None, group: Any = None) -> Any:
    from hessntk.cli.entrypoints import DTYPES, device_of, load_problem, load_weights, place

    device = device_of(args.device)
    problem = load_problem(args.model)
    if checkpoint is not None:
        load_weights(problem.model, checkpoint)
    problem.model.eval()
    if args.loss == "model":
        problem.loss_fn = None
    if args.output_key is not None:
        key = args.output_key
        problem.output_key = int(key) if key.lstrip("-").isdigit() else key
    sharded = False
    if group is not None:  # before place(), which turns a loader into a list of batches
        from hessntk.distributed import check_sampler
        from hessntk.distributed.sharding import has_distributed_sampler

        check_sampler(problem.data, group)
        sharded = has_distributed_sampler(problem.data)
    problem = place(problem, device, DTYPES[args.dtype] if args.dtype else None)
    problem.group, problem.sharded = group, sharded
    return problem


def _model_section(report: Any, problem: Any, checkpoint: str | None) -> dict[str, Any]:
    from hessntk._model import iter_batches

    n_batches = sum(1 for _ in iter_batches(problem.data))
    param = next(problem.model.parameters())
    info = {"entry_point": problem.entry, "checkpoint": checkpoint,
            "class": type(problem.model).__name__, "num_params": problem.num_params,
            "num_batches": n_batches, "dtype": str(param.dtype), "device": str(param.device),
            "loss_fn": ("the model's own (outputs.loss)" if problem.loss_fn is None
                        else type(problem.loss_fn).__name__), "output_key": problem.output_key}
    report.add_section("Model", [
        ("model", f"{info['class']} from {problem.entry}",
         f"{problem.num_params} parameters, {info['dtype']}, {info['device']}"),
        ("weights", checkpoint or "as built", f"loss {info['loss_fn']}, {n_batches} batch(es)"),
    ])
    return info


def _start(args: argparse.Namespace, ctx: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Load the model with its checkpoint, title the report and describe the model."""
    problem = _load(args, args.checkpoint, ctx.get("group"))
    ctx["report"].title = f"hessntk {args.command}: {problem.entry}"
    return problem, {"model": _model_section(ctx["report"], problem, args.checkpoint)}


def cmd_spectrum(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    """Hessian (or GGN) spectrum, and with ``--ntk-samples`` the NTK Gram spectrum."""
    from hessntk.cli.entrypoints import take_inputs

    problem, out = _start(args, ctx)
    report, timings = ctx["report"], ctx["timings"]
    out["hessian"] = hessian_analysis(report, problem, args, ctx["store"], timings)
    if args.ntk_samples:
        if problem.sharded:
            raise CLIError("--ntk-samples under torchrun takes the first samples of the data "
                           "set, but a DistributedSampler gives each rank only its shard: "
                           "return the data as one batch or a list of batches (hessntk "
                           "shards it), or drop --ntk-samples")
        outputs = args.ntk_outputs
        if outputs == "auto":
            outputs = "logits" if problem.classification else "raw"
        inputs = take_inputs(problem.data, args.ntk_samples)
        out["ntk"] = ntk_analysis(report, problem.model, inputs, outputs, timings,
                                  **problem.outputs)
    return out


def cmd_iic(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    """The IIC of the model with every term."""
    problem, out = _start(args, ctx)
    out["iic"] = iic_analysis(ctx["report"], problem, iic_options(args, problem),
                              ctx["timings"])
    return out


def cmd_quantization(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    """Per-layer quantization sensitivity, predicted and measured."""
    problem, out = _start(args, ctx)
    out["quantization"] = quantization_analysis(ctx["report"], problem, args, ctx["timings"])
    return out


def _checkpoint_names(paths: Sequence[str]) -> list[str]:
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) < len(names):  # fall back to the paths as given
        names = [os.path.normpath(p) for p in paths]
    if len(set(names)) < len(names):
        raise ValueError("the same checkpoint was given twice: " + ", ".join(
            sorted({n for n in names if names.count(n) > 1})))
    return names


def cmd_compare(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    """Rank checkpoints by the IIC with :func:`hessntk.criteria.compare`, resumably."""
    from hessntk import criteria
    from hessntk.report import file_digest, plot_ranking, ranking_table

    report, store, timings = ctx["report"], ctx["store"], ctx["timings"]
    names = _checkpoint_names(args.checkpoints)
    for path in args.checkpoints:
        if not os.path.exists(path):
            raise ValueError(f"checkpoint {path!r} does not exist")
    problem = _load(args, group=ctx.get("group"))
    report.title = f"hessntk compare: {len(names)} checkpoints of {problem.entry}"
    options = iic_options(args, problem)
    data = data_key(problem.data)
    paths = dict(zip(names, args.checkpoints, strict=True))
    # "format": results saved as IICResult.to_dict() (an older hessntk saved other fields).
    keys = {name: {"format": 2, "checkpoint": file_digest(path), "iic": options, "data": data,
                   "dtype": args.dtype, "device": args.device} for name, path in paths.items()}

    def item(name: str) -> str:
        return f"compare-{keys[name]['checkpoint'][:16]}"

    known = {}
    for name in names:
        saved = store.load_json(item(name), keys[name])
        if saved is not None:
            known[name] = saved

    def save(name: str, result: Any) -> None:
        store.save_json(item(name), result.to_dict(), keys[name])

    pending = {name: paths[name] for name in names if name not in known}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # reported as reasons
        ranking = timed(timings, "compare", lambda: criteria.compare(
            pending, lambda: copy.deepcopy(problem.model), problem.local_data, known=known,
            on_result=save, **options, **problem.outputs, **problem.parallel))
    results = {name: to_jsonable(r if isinstance(r, dict) else r.to_dict())
               for name, r in ranking.results.items()}
    rows = [{**r, "checkpoint": paths[r["name"]]} for r in to_jsonable(list(ranking.rows))]
    table = ranking_table(rows)
    best = rows[0]
    report.add_section(f"Ranking by IIC ({options['observations']}, prior {options['prior']}; "
                       "lower is better)", [
        ("best", str(best["name"]), f"IIC {fmt(best['value'])}"
         + ("" if best["valid"] else " (not valid)")),
        ("checkpoints", str(len(rows)), f"{store.reused} reused from {store.path}"
         if store.reused else "all evaluated in this run"),
    ])
    report.add_table("Ranking", cli_words(table), rows=[
        {**r, "reasons": [cli_words(str(x)) for x in r["reasons"]]} for r in rows],
        csv="ranking.csv", columns=["rank", "name", "value", "regularization", "sharpness",
                                    "curvature", "correction", "valid", "reasons"])
    valid = [r for r in rows if r["valid"]]
    report.add_summary(f"Best checkpoint: {best['name']} (IIC {fmt(best['value'])}"
                       + (")." if best["valid"] else ", not theory-valid).")
                       + f" {len(valid)} of {len(rows)} checkpoints have a theory-valid IIC; "
                       "lower is better, and only valid values are comparable.")
    for r in rows:
        if not r["valid"]:
            report.add_summary(f"{r['name']} is not valid: "
                               + cli_words("; ".join(map(str, r["reasons"])) or "undefined"))
    report.add_plot("ranking.png", lambda: plot_ranking(rows),
                    "IIC per checkpoint, best on top (hollow markers: not theory-valid)")
    return {"settings_iic": options, "rows": rows, "results": results, "table": table,
            "ranking_csv": "ranking.csv"}
