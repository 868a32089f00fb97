"""Small text helpers of the command line: numbers, one-line errors, versions, timings."""

from __future__ import annotations

import argparse
import math
import platform
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["CLIError", "cli_words", "fmt", "one_line", "pm", "settings", "timed", "versions"]


class CLIError(Exception):
    """An error the command line reports as one line (``hessntk: error: ...``), exit code 2."""


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, (float, np.floating)):
        return "nan" if math.isnan(x) else f"{x:.{digits}g}"
    return str(x)


def pm(value: float, stderr: float | None) -> str:
    if stderr is None or not stderr or not math.isfinite(stderr):
        return fmt(value)
    return f"{fmt(value)} +- {stderr:.2g}"


#: Python-API advice in library messages, and its words on the command line.
CLI_WORDS = (
    (re.compile(r"\bsoft=kappa\b"), "--soft KAPPA"),
    (re.compile(r"\bsoft=\.\.\."), "--soft KAPPA"),
    (re.compile(r"\bscheme='asymmetric'"), "--quantizer asymmetric"),
    (re.compile(r"\bquantizer='(\w+)'"), r"--quantizer \1"),
    (re.compile(r"\bgranularity='(\w+)'"), r"--granularity \1"),
    (re.compile(r"\bmethod='(exact|slq|auto)'"), r"--method \1"),
    (re.compile(r"\bobservations='(\w+)'"), r"--observations \1"),
    (re.compile(r"\bprior='init'"), "--prior init"),
    (re.compile(r"\b(?:model\.double\(\)|dtype=torch\.float64)"), "--dtype float64"),
    (re.compile(r"\bmodel\.float\(\)(, or model\.to\(torch\.float32\) on a copy)?"),
     "--dtype float32"),
    (re.compile(r"\bfor loss_fn=None\b"), "for --loss model (or a loss_fn of None)"),
    (re.compile(r"\bPass loss_fn\(outputs, targets\) instead"),
     "Return a loss_fn(outputs, targets) from the entry point and leave out --loss model"),
)


def cli_words(text: str) -> str:
    """``text`` with the library's Python-API advice put in command-line flags.

    Examples
    --------
    >>> cli_words("not interpolating; try soft=kappa")
    'not interpolating; try --soft KAPPA'
    """
    for pattern, flag in CLI_WORDS:
        text = pattern.sub(flag, text)
    return text


def one_line(err: BaseException | str, limit: int = 600) -> str:
    """``err`` as one line in the command line's words (at most ``limit`` characters)."""
    text = cli_words(" ".join(str(err).split())) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def versions() -> dict[str, str]:
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


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("func",)}


def timed(timings: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        timings[name] = round(time.perf_counter() - t0, 3)
