"""Small text helpers of the command line: numbers, one-line errors, versions, timings."""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["CLIError", "fmt", "one_line", "pm", "settings", "timed", "versions"]


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


def one_line(err: BaseException, limit: int = 600) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
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
