"""Host BLAS on one thread while a torch or jax operator does the products.

numpy's and scipy's OpenBLAS keep their worker threads spinning for a while after each
call. The spectral core's host-side linear algebra (Ritz values, tridiagonal eigenproblems,
XTrace's small factorisations) calls them between products, so on a machine with few cores
the spinning workers take the cores the products need: on 2 cores ``eigsh(k=10)`` on the
301k-parameter MLP Hessian spent 4.5 s in its 114 products instead of 1.55 s. The host
matrices are at most ``ncv x ncv`` or ``m x m``, where threads gain nothing, so the
algorithms run them on one thread (numpy operators are left alone: their products are that
BLAS).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@functools.cache
def _controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a dependency; without it only speed suffers
        return None
    return ThreadpoolController()


def single_threaded_host_blas(fn: F) -> F:
    """Run ``fn(op, ...)`` with numpy/scipy BLAS on one thread unless ``op`` is a numpy
    operator (whose products use that BLAS)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        op = args[0] if args else kwargs.get("op")
        controller = _controller()
        quiet = controller is not None and getattr(op, "backend", "numpy") != "numpy"
        with controller.limit(limits=1, user_api="blas") if quiet else nullcontext():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
