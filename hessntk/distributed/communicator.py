"""The collectives a data-parallel operator needs, over one ``torch.distributed`` group.

Every call names what it was doing when it fails, so a rank that died or stalled shows up as
a :class:`DistributedError` on the others (within the process group's timeout), not as a
hang or a bare gloo message. The spectral core reaches these only through the duck-typed
``op.communicator`` (``rank``, ``size``, ``sum``, ``gather``) of a sharded Lanczos basis.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Communicator", "DistributedError", "digest"]


class DistributedError(RuntimeError):
    """A collective failed: another rank stopped, timed out, or holds other data."""


class Communicator:
    """Sums, gathers and consistency checks over a ``torch.distributed`` process group.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup, optional
        Default: the world group. ``torch.distributed`` must be initialised
        (:func:`hessntk.distributed.init` or ``torch.distributed.init_process_group``).

    Attributes
    ----------
    rank, size : int
        This process's rank in the group and the group's size.
    backend : str
        ``"gloo"`` or ``"nccl"``; gloo collectives of CUDA tensors go through host memory.
    num_calls, num_bytes : int
        Collectives run so far and the bytes this rank contributed to them (what a
        benchmark reports as communication per step).
    seconds : float
        Wall time spent inside the collectives (waiting for slower ranks included).

    Raises
    ------
    RuntimeError
        ``torch.distributed`` is not initialised.

    Examples
    --------
    >>> import torch.distributed as dist
    >>> dist.is_initialized()  # a Communicator needs an initialised process group
    False
    """

    def __init__(self, group: Any = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "Expected an initialised torch.distributed process group for group=; got "
                "none. Call hessntk.distributed.init() (it reads torchrun's environment) or "
                "torch.distributed.init_process_group(...) first, or pass group=None for one "
                "process."
            )
        self.group = dist.group.WORLD if group is None else group
        self.rank = dist.get_rank(self.group)
        if self.rank < 0:
            raise ValueError("Expected a process group this process belongs to; got one it is "
                             "not a member of (rank -1). Pass the group of this rank.")
        self.size = dist.get_world_size(self.group)
        self.backend = str(dist.get_backend(self.group))
        # Where collectives run: NCCL moves CUDA tensors only, gloo host tensors (and CUDA
        # ones by a copy we make explicit).
        self.device = torch.device("cpu")
        if self.backend == "nccl":  # this rank's GPU: LOCAL_RANK's (torchrun), else current
            local = os.environ.get("LOCAL_RANK")
            index = (int(local) % torch.cuda.device_count() if local is not None
                     else torch.cuda.current_device())
            self.device = torch.device("cuda", index)
        self.num_calls = 0
        self.num_bytes = 0
        self.seconds = 0.0

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size}, backend={self.backend!r})"

    # -- collectives ------------------------------------------------------------------------
    def sum(self, x: torch.Tensor, what: str = "a sum", *, inplace: bool = False
            ) -> torch.Tensor:
        """The elementwise sum of ``x`` over the ranks (the same bits on every rank).

        ``inplace``: ``x`` is a temporary the sum may overwrite (no copy on its device).
        """
        if self.size == 1:
            return x
        buf = self._wire(x, copy=not inplace)
        self._call(dist.all_reduce, what, buf, group=self.group)
        return buf.to(x.device) if buf.device != x.device else buf

    def gather(self, x: torch.Tensor, counts: Sequence[int], what: str = "a gather",
               dim: int = 0) -> torch.Tensor:
        """Concatenate every rank's ``x`` along ``dim`` in rank order.

        ``counts[r]`` is rank ``r``'s extent along ``dim`` (ragged shards are padded on the
        wire and trimmed).
        """
        if self.size == 1:
            return x
        width = max(counts)
        moved = x.movedim(dim, 0)
        buf = self._wire(moved, copy=False)  # all_gather only reads what it sends
        if buf.shape[0] < width:
            pad = buf.new_zeros((width - buf.shape[0], *buf.shape[1:]))
            buf = torch.cat([buf, pad])
        parts = [torch.empty_like(buf) for _ in range(self.size)]
        self._call(dist.all_gather, what, parts, buf.contiguous(), group=self.group)
        out = torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])
        return out.to(x.device).movedim(0, dim)

    def broadcast(self, x: torch.Tensor, src: int, what: str = "a broadcast") -> torch.Tensor:
        """Rank ``src``'s ``x`` on every rank (elsewhere ``x`` is the receive buffer: its
        shape and dtype, overwritten when on the backend's device)."""
        if self.size == 1:
            return x
        buf = self._wire(x, copy=False)
        self._call(dist.broadcast, what, buf, self._global(src), group=self.group)
        return buf.to(x.device) if buf.device != x.device else buf

    def gather_numbers(self, values: Sequence[float], what: str) -> np.ndarray:
        """Every rank's ``values`` (float64), shape ``(size, len(values))``."""
        x = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        if self.size == 1:
            return x.cpu().numpy()[None]
        parts = [torch.empty_like(x) for _ in range(self.size)]
        self._call(dist.all_gather, what, parts, x, group=self.group)
        return torch.stack(parts).cpu().numpy()

    def share(self, obj: Any, what: str = "a result of rank 0") -> Any:
        """Rank 0's picklable ``obj`` on every rank (the others pass anything)."""
        if self.size == 1:
            return obj
        box = [obj if self.rank == 0 else None]
        self.num_calls += 1
        try:
            dist.broadcast_object_list(box, src=self._global(0), group=self.group)
        except (RuntimeError, ValueError) as err:
            raise DistributedError(f"Rank {self.rank} of {self.size} could not complete {what}: "
                                   f"{err}.") from err
        return box[0]

    def barrier(self, what: str = "a barrier") -> None:
        if self.size > 1:
            self._call(dist.barrier, what, group=self.group)

    def agree(self, fn: Any, what: str) -> Any:
        """``fn()`` on every rank; if it raises on any, every rank raises (none waits).

        A rank whose own ``fn`` failed raises its error; the others raise a
        :class:`DistributedError` naming the failed ranks. One small all-gather.
        """
        try:
            result, failure = fn(), None
        except (ValueError, TypeError, FloatingPointError, RuntimeError) as err:
            if isinstance(err, DistributedError):
                raise
            result, failure = None, err
        flags = self.gather_numbers([failure is not None], f"the outcome of {what}")[:, 0]
        if failure is not None:
            raise failure
        if flags.any():
            bad = [int(r) for r in flags.nonzero()[0]]
            raise DistributedError(f"Rank(s) {bad} of {self.size} failed in {what} (see their "
                                   f"error); rank {self.rank} stops with them.")
        return result

    # -- consistency checks -----------------------------------------------------------------
    def check_same(self, values: Sequence[float], what: str, fix: str) -> None:
        """Refuse ranks whose ``values`` differ from rank 0's (exact comparison)."""
        table = self.gather_numbers(values, f"the check of {what}")
        bad = [r for r in range(self.size) if not np.array_equal(table[r], table[0])]
        if bad:
            raise ValueError(f"Expected the same {what} on every rank; got other values on "
                             f"rank(s) {bad} than on rank 0 ({table[bad[0]].tolist()} against "
                             f"{table[0].tolist()}). {fix}")

    def check_distinct(self, values: Sequence[float], what: str, fix: str) -> None:
        """Refuse two ranks with equal ``values`` (the same data shard on both)."""
        table = self.gather_numbers(values, f"the check of {what}")
        for r in range(1, self.size):
            for s in range(r):
                if np.array_equal(table[r], table[s]):
                    raise ValueError(f"Expected each rank to hold its own {what}; got the same "
                                     f"on ranks {s} and {r}. {fix}")

    # -- plumbing ---------------------------------------------------------------------------
    def _global(self, rank: int) -> int:
        """The global rank of the group's rank ``rank`` (what broadcasts name)."""
        return rank if self.group is dist.group.WORLD else dist.get_global_rank(self.group, rank)

    def _wire(self, x: torch.Tensor, copy: bool = True) -> torch.Tensor:
        """``x`` contiguous on the device the backend moves (host memory for gloo): a copy,
        or with ``copy=False`` itself when it already is."""
        if x.device != self.device:
            return x.detach().to(self.device).contiguous()
        x = x.detach()
        return x.clone().contiguous() if copy or not x.is_contiguous() else x

    def _call(self, fn: Any, what: str, *args: Any, **kwargs: Any) -> None:
        self.num_calls += 1
        if args:  # the tensor this rank sends (all_gather: the second argument)
            sent = args[1] if fn is dist.all_gather else args[0]
            self.num_bytes += sent.numel() * sent.element_size()
        start = time.perf_counter()
        try:
            fn(*args, **kwargs)
        except (RuntimeError, ValueError) as err:
            raise DistributedError(
                f"Rank {self.rank} of {self.size} could not complete {what}: {err}. Another "
                "rank failed, stopped or timed out (see its log); the process group's timeout "
                "(hessntk.distributed.init(timeout=...), torchrun: the --timeout flag of "
                "hessntk) bounds how long the others wait."
            ) from err
        finally:
            self.seconds += time.perf_counter() - start


def digest(text: str) -> float:
    """A float64-exact checksum of a string (CRC-32), for :meth:`Communicator.check_same`."""
    return float(zlib.crc32(text.encode()))
