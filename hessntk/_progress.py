"""Progress bars for long loops, silent unless the command line turns them on.

The library never prints. :func:`progress` hands its iterable back unchanged (no wrapper, no
cost) unless a :func:`reporting` context is active *and* the bar's stream is a terminal; the
``hessntk`` command line enters that context unless ``--quiet`` is given. Long loops
(Lanczos steps, eigsh products, SLQ probe groups, checkpoints) call :func:`progress` once each.

Examples
--------
>>> list(progress(range(3), "steps"))  # no reporting context: the iterable itself
[0, 1, 2]
>>> import io
>>> out = io.StringIO()
>>> with reporting(file=out, force=True):
...     total = sum(progress(range(3), "steps"))
>>> total, "steps" in out.getvalue()
(3, True)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, TypeVar

T = TypeVar("T")

__all__ = ["active", "progress", "reporting"]


@dataclass
class _State:
    enabled: bool = False
    file: IO[str] | None = None  # None: sys.stderr at the time of the call
    force: bool = False  # draw bars even when the stream is not a terminal (tests)


_STATE = _State()


@contextmanager
def reporting(
    enabled: bool = True, *, file: IO[str] | None = None, force: bool = False
) -> Iterator[None]:
    """Turn progress bars on (process-wide) for the duration of the ``with`` block.

    Parameters
    ----------
    enabled : bool
        False keeps every bar off (``--quiet``); contexts nest and restore the previous state.
    file : text stream, optional
        Where bars are drawn; default ``sys.stderr``.
    force : bool
        Draw bars even when ``file`` is not a terminal (by default a pipe or a log file gets
        no bars).

    Examples
    --------
    >>> with reporting(enabled=False):
    ...     active()
    False
    """
    previous = (_STATE.enabled, _STATE.file, _STATE.force)
    _STATE.enabled, _STATE.file, _STATE.force = bool(enabled), file, bool(force)
    try:
        yield
    finally:
        _STATE.enabled, _STATE.file, _STATE.force = previous


def active() -> bool:
    """Return True when :func:`progress` would draw a bar now.

    Examples
    --------
    >>> active()
    False
    """
    if not _STATE.enabled:
        return False
    if _STATE.force:
        return True
    stream = _STATE.file if _STATE.file is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress(
    iterable: Iterable[T] | int, desc: str, *, total: int | None = None, min_total: int = 2
) -> Iterable[T]:
    """Wrap a loop in a progress bar when reporting is active; otherwise return it as is.

    Parameters
    ----------
    iterable : iterable or int
        The loop's iterable; an int ``n`` means ``range(n)``.
    desc : str
        The bar's label, e.g. ``"Lanczos steps"``.
    total : int, optional
        Number of items when ``iterable`` has no ``len``.
    min_total : int
        Loops shorter than this get no bar (a bar for one item is noise).

    Returns
    -------
    iterable
        ``iterable`` itself, or a generator over a ``tqdm`` bar that closes the bar when the
        loop ends, breaks or raises.

    Examples
    --------
    >>> for j in progress(2, "Lanczos steps"):
    ...     print(j)
    0
    1
    """
    if isinstance(iterable, int):
        iterable = range(iterable)
    if not active():
        return iterable
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if total is not None and total < min_total:
        return iterable
    from tqdm import tqdm  # imported only when a bar is drawn

    bar = tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
               file=_STATE.file if _STATE.file is not None else sys.stderr)
    return _closing(bar)


def _closing(bar: Any) -> Iterator[Any]:
    # A generator's ``finally`` runs when the loop finishes, breaks (the generator is closed
    # when dropped) or raises, so no half-drawn bar is left behind.
    try:
        yield from bar
    finally:
        bar.close()
