"""Memory budgets of the explicit Gram and Jacobian builders (torch and JAX alike).

Backend-free: the builders pass the free memory of their device (CUDA, a jax device) when
they know it; otherwise the host's ``MemAvailable`` is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

#: Fraction of the free memory that ``max_memory=None`` allows.
DEFAULT_MEMORY_FRACTION = 0.25


class MemoryBudgetError(ValueError):
    """Arrays an algorithm would hold at once exceed its memory budget (``max_memory``).

    Attributes
    ----------
    need, budget : int
        Bytes needed and allowed.
    source : str
        The function that refused (``"trace"``, ``"diagonal"``, ``"eigsh"``, ``"lanczos"``),
        so that a front end can name its own option that sized the arrays.
    """

    def __init__(self, message: str, need: int, budget: int, source: str = "") -> None:
        super().__init__(message)
        self.need, self.budget, self.source = need, budget, source


def host_memory() -> int:
    """Free host memory in bytes (``MemAvailable`` on Linux)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # pragma: no cover - non-Linux fallback
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 4 * 2**30


def memory_budget(max_memory: int | float | None, free: int | None = None,
                  name: str = "max_memory") -> int:
    """Resolve ``max_memory=`` (bytes, or None for a fraction of ``free`` / host memory).

    Raises
    ------
    TypeError, ValueError
        A budget that is not a positive number of bytes (named ``name``).
    """
    if max_memory is None:
        return int(DEFAULT_MEMORY_FRACTION * (host_memory() if free is None else free))
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, float)):
        raise TypeError(f"Expected {name} in bytes (int) or None; got {max_memory!r}.")
    if not max_memory > 0:
        raise ValueError(f"Expected a positive {name} in bytes; got {max_memory}.")
    return int(max_memory)


#: How a refusal names the default budget (DEFAULT_MEMORY_FRACTION of the free memory).
DEFAULT_BUDGET = "a quarter of the free memory"


def budget_of(max_memory: int | float | None, free: Callable[[], int],
              name: str = "max_memory", comm: Any = None) -> tuple[int, str]:
    """The budget in bytes (``free()`` is read only for the default) and how a refusal
    names it: :data:`DEFAULT_BUDGET` or "as given". With a data-parallel operator's
    ``comm`` (``hessntk.distributed.Communicator``), the default is the least over its
    ranks, so that every rank sizes its groups, and refuses, alike.

    Examples
    --------
    >>> budget_of(1000, lambda: 0)
    (1000, 'as given')
    >>> budget_of(None, lambda: 4000)
    (1000, 'a quarter of the free memory')
    """
    if max_memory is None:
        budget = memory_budget(None, free())
        if comm is not None:
            budget = int(comm.gather_numbers([budget], "the free memory").min())
        return budget, DEFAULT_BUDGET
    return memory_budget(max_memory, name=name), "as given"


def operator_budget(op: Any, max_memory: int | float | None,
                    free: Callable[[], int] | None = None,
                    name: str = "max_memory") -> tuple[int, str]:
    """:func:`budget_of` for a linear operator: the default from the free memory of its
    device (or ``free``), the least over its ranks for a data-parallel one."""
    return budget_of(max_memory, free or op._xp.free_memory, name,
                     getattr(op, "communicator", None))


#: Bytes a group of probes (or unit vectors, Lanczos bases) may take by default when the
#: default budget (a quarter of the free memory) allows: a fixed figure, so that the groups,
#: and with them the bits of an estimate (products of ``k`` vectors are not bitwise those of
#: fewer), do not move with the free memory wherever at least 8 GiB are free.
DEFAULT_GROUP_BYTES = 2**31


def group_room(max_memory: int | float | None, budget: int) -> int:
    """Bytes one group may take: the ``budget`` of a given ``max_memory``, or for
    ``max_memory=None`` :data:`DEFAULT_GROUP_BYTES` or the default ``budget`` if smaller."""
    return budget if max_memory is not None else min(DEFAULT_GROUP_BYTES, budget)


def group_size(count: int, per_item: int, fixed: int, max_memory: int | float | None,
               budget: int) -> int:
    """Items (probes, unit vectors) per group: as many as ``max_memory`` holds besides
    ``fixed`` bytes, or, for ``max_memory=None``, :data:`DEFAULT_GROUP_BYTES` or the
    default ``budget`` if smaller; at least one (a group beyond the budget is then refused
    by the caller).

    Examples
    --------
    >>> group_size(10, per_item=100, fixed=0, max_memory=450, budget=450)
    4
    """
    return int(max(1, min(count, (group_room(max_memory, budget) - fixed) // per_item)))


def format_bytes(num: float) -> str:
    """Human-readable size: ``format_bytes(3.2e9) == '3.2 GB'``.

    Examples
    --------
    >>> format_bytes(3.2e9)
    '3.2 GB'
    """
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(num) < 1000 or unit == "TB":
            return f"{num:.3g} {unit}"
        num /= 1000
    return f"{num:.3g} TB"  # pragma: no cover
