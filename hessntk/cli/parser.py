"""The ``hessntk`` argument parser: commands, options, their checks and help."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

__all__ = ["FULL", "PROG", "QUICK", "build_parser"]

PROG = "hessntk"

#: Settings of ``hessntk demo --quick`` and of the full demo.
QUICK = {"n_train": 100, "width": 32, "k": 3, "probes": 4, "steps": 20, "trace_matvecs": 20,
         "ntk_samples": 50, "probes_per_group": 2, "bits": [2, 4, 8]}
FULL = {"n_train": 300, "width": 64, "k": 5, "probes": 12, "steps": 80, "trace_matvecs": 60,
        "ntk_samples": 200, "probes_per_group": 4, "bits": [2, 3, 4, 8]}


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
_trace_matvecs = _number(int, lambda v: v >= 4, "an integer >= 4 (the smallest XTrace sketch)")


def _prior(text: str) -> str | float:
    if text == "init":
        return text
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'init' or a positive prior variance; got {text!r}") from None



CURVATURE_HELP = ("Hessian of the loss, or its Gauss-Newton part (GGN, positive "
                  "semi-definite) (default: %(default)s)")

#: ``--seed`` of each command: what it seeds.
SEED_HELP = {
    "demo": "seed of the demo's data split and training, and of the probes",
    "spectrum": "seed of the eigsh start vector and of the trace and SLQ probes",
    "iic": "seed of the SLQ probes (method slq)",
    "compare": "seed of the SLQ probes, the same for every checkpoint",
    "quantization": "seed of the block-trace probes and eigsh start vectors",
}


def _model_options(sub: argparse.ArgumentParser) -> None:
    """How to read the user's model: its loss and its output tensor."""
    g = sub.add_argument_group("model")
    g.add_argument("--loss", choices=("fn", "model"), default="fn",
                   help="fn: the entry point's loss_fn(outputs, targets); model: the model's "
                   "own loss, outputs.loss with labels= (Hugging Face) (default: %(default)s)")
    g.add_argument("--output-key", default=None, metavar="KEY",
                   help="the output tensor of a model returning a dict or tuple, e.g. logits "
                   "(default: the entry point's output_key; a Hugging Face output's logits)")


def _common(sub: argparse.ArgumentParser, command: str) -> None:
    g = sub.add_argument_group("output and runtime")
    g.add_argument("--out", default=f"hessntk-{command}", metavar="DIR",
                   help="report folder (default: %(default)s)")
    g.add_argument("--json", action="store_true",
                   help="print the report JSON on stdout instead of the summary (default: "
                   "off)")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars and no summary, errors only (default: off)")
    g.add_argument("--seed", type=_nonneg_int, default=0,
                   help=SEED_HELP.get(command, "seed of the random probes and start vectors")
                   + " (default: %(default)s)")
    g.add_argument("--device", default=None, metavar="DEV",
                   help="cpu, cuda or cuda:N (default: the model's own)")
    g.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="cast the model and floating data (default: as built)")
    g.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads of torch and BLAS (default: 1 for the demo, else "
                   "torch's choice)")
    g.add_argument("--debug", action="store_true",
                   help="show tracebacks on errors (default: off)")
    g.add_argument("--timeout", type=_positive_float, default=300.0, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before it stops "
                   "with an error (default: %(default)s)")


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
    g.add_argument("--trace-matvecs", type=_trace_matvecs, default=defaults.get("trace_matvecs"),
                   metavar="N", help="products of the trace estimates" + default("trace_matvecs"))
    g.add_argument("--resume", action="store_true",
                   help="reuse the partial results saved in --out by an interrupted run "
                   "(default: off, start afresh)")
    g.add_argument("--smoothing", type=_positive_float, default=0.4, metavar="SD",
                   help="width of the plotted and saved smoothed density: the sd of a "
                   "Gaussian per quadrature node on the symmetric-log axis, a factor exp(SD) "
                   "in |eigenvalue| (default: %(default)s)")
    g.add_argument("--reorth", choices=("partial", "full", "none"), default="partial",
                   help="Lanczos reorthogonalisation of the SLQ density: partial (a basis of "
                   "4 n --steps bytes per probe for a float32 model, 8 for float64, read "
                   "only where orthogonality is lost; the numbers of full to rounding), full "
                   "(read at every step) or none (16 n bytes; densities and traces stay "
                   "accurate, for models whose basis does not fit) (default: %(default)s)")
    g.add_argument("--per-layer", action="store_true",
                   help="also the SLQ spectrum of each layer's diagonal block, with the same "
                   "probes and steps (default: off)")


def _iic_group(sub: argparse.ArgumentParser) -> None:
    g = sub.add_argument_group("IIC")
    g.add_argument("--observations", choices=("auto", "outputs", "logits", "probabilities"),
                   default="auto", help="constraints: auto = logits for a classification loss "
                   "(cross-entropy, NLL, integer targets), else outputs (default: %(default)s)")
    g.add_argument("--prior", type=_prior, default="init",
                   help="Gaussian prior: 'init' (the initialisation's fan-in variances) or a "
                   "variance (default: %(default)s)")
    g.add_argument("--soft", type=_positive_float, default=None, metavar="KAPPA",
                   help="finite-penalty IIC with noise precision KAPPA, for a model that does "
                   "not interpolate exactly (default: off, the hard-constraint IIC)")
    g.add_argument("--method", choices=("auto", "exact", "slq"), default="auto",
                   help="log-determinant of the NTK Gram: exact (dense eigenvalues), slq "
                   "(matrix-free), auto = exact up to 4096 constraints (default: %(default)s)")
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
    g.add_argument("--quantizer", choices=("symmetric", "asymmetric"), default="symmetric",
                   help="round-to-nearest grid: symmetric about 0, or asymmetric (affine, a "
                   "zero point) (default: %(default)s)")
    g.add_argument("--granularity", choices=("tensor", "channel", "group"), default="tensor",
                   help="one grid per weight tensor, per output channel, or per --group-size "
                   "weights of an output channel (default: %(default)s)")
    g.add_argument("--group-size", type=_positive_int, default=128, metavar="N",
                   help="weights per group with --granularity group (default: %(default)s)")
    g.add_argument("--metric", choices=("trace", "eigenvalue", "both"), default="both",
                   help="curvature summaries next to the direct second-order prediction: "
                   "block traces (HAWQ-v2), top block eigenvalues (HAWQ-v1) or both "
                   "(default: %(default)s)")
    g.add_argument("--trace-matvecs", type=_trace_matvecs, default=100, metavar="N",
                   help="products of the block-trace estimate (default: %(default)s)")
    g.add_argument("--curvature", choices=("hessian", "ggn"), default="hessian",
                   help=CURVATURE_HELP)
    g.add_argument("--no-measure", dest="measure", action="store_false",
                   help="skip measuring the loss of each quantized layer (default: measure)")
    budget = g.add_mutually_exclusive_group()
    budget.add_argument("--average-bits", type=_positive_float, default=None, metavar="B",
                        help="choose per-layer widths among --bits for this average bits per "
                        "weight, checked on the measured loss against uniform (default: off)")
    budget.add_argument("--bit-budget", type=_positive_float, default=None, metavar="BITS",
                        help="the same for a total of BITS bits over the quantized weights "
                        "(default: off)")


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
    demo.add_argument("--quick", action="store_true",
                      help="tiny settings, a few seconds (default: off)")
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
    demo.set_defaults(curvature="hessian", threads=1)

    spectrum = sub.add_parser("spectrum", help="Hessian (and NTK) spectrum of your model",
                              description="Hessian (or GGN) top eigenvalues, trace, per-layer "
                              "traces, SLQ density and lower-tail exponent; with --ntk-samples "
                              "also the NTK Gram spectrum.")
    spectrum.add_argument("model", metavar="MODEL", help="module:function or file.py:function")
    spectrum.add_argument("--checkpoint", metavar="FILE",
                          help=".pt/.pth/.safetensors weights (default: as built)")
    spectrum.add_argument("--curvature", choices=("hessian", "ggn"), default="hessian",
                          help=CURVATURE_HELP)
    spectrum.add_argument("--ntk-samples", type=_nonneg_int, default=0, metavar="N",
                          help="samples of the NTK Gram (default 0: no NTK)")
    spectrum.add_argument("--ntk-outputs", default="auto",
                          choices=("auto", "raw", "logits", "probabilities", "simplex"),
                          help="NTK outputs: auto = logits for classification, else raw "
                          "(default: %(default)s)")
    _hessian_options(spectrum, {"k": 5, "probes": 8, "steps": 60, "probes_per_group": 4,
                                "trace_matvecs": 60})
    _model_options(spectrum)
    _common(spectrum, "spectrum")

    iic_p = sub.add_parser("iic", help="Interpolating Information Criterion of your model",
                           description="The IIC with every term and validity diagnostics.")
    iic_p.add_argument("model", metavar="MODEL", help="module:function or file.py:function")
    iic_p.add_argument("--checkpoint", metavar="FILE",
                       help=".pt/.pth/.safetensors weights (default: as built)")
    _iic_group(iic_p)
    _model_options(iic_p)
    _common(iic_p, "iic")

    cmp_p = sub.add_parser("compare", help="rank checkpoints by the IIC",
                           description="Rank checkpoints of one architecture by the IIC, with "
                           "common random numbers; writes ranking.csv and ranking.png.")
    cmp_p.add_argument("model", metavar="MODEL", help="module:function or file.py:function")
    cmp_p.add_argument("checkpoints", metavar="CHECKPOINT", nargs="+",
                       help=".pt/.pth/.safetensors files")
    cmp_p.add_argument("--resume", action="store_true",
                       help="reuse checkpoints already evaluated in --out (default: off)")
    _iic_group(cmp_p)
    _model_options(cmp_p)
    _common(cmp_p, "compare")

    q_p = sub.add_parser("quantization", help="per-layer quantization sensitivity",
                         description="Predicted (Hessian) and measured loss increase of "
                         "quantizing each layer alone, per bit width.")
    q_p.add_argument("model", metavar="MODEL", help="module:function or file.py:function")
    q_p.add_argument("--checkpoint", metavar="FILE",
                     help=".pt/.pth/.safetensors weights (default: as built)")
    _quant_group(q_p)
    _model_options(q_p)
    _common(q_p, "quantization")
    return parser


# -- main ------------------------------------------------------------------------------------
