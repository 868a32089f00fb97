"""The ``hessntk`` command under ``torchrun``: one process per rank, rank 0 speaks.

``torchrun --nproc-per-node N -m hessntk spectrum|iic|compare|quantization ...`` starts N
copies of the command. Each loads the entry point (the same model and data), keeps its
shard of the data (:func:`hessntk.distributed.shard`) and builds data-parallel operators,
so every rank computes the same numbers. Rank 0 alone holds the ``--out`` folder, shows
progress, reads and writes the partial results of ``--resume`` (and hands what it read to
the others) and writes the report; the others stay quiet unless they fail.
"""

from __future__ import annotations

import os
from typing import Any

from hessntk.cli.text import CLIError, one_line

__all__ = ["RankZeroStore", "close", "communicator", "on_rank_zero"]


def communicator(timeout: float, device: str | None = None) -> Any:
    """The world :class:`~hessntk.distributed.Communicator` under torchrun, else None.

    NCCL for ``--device cuda...``, gloo for ``--device cpu``; without ``--device``, NCCL
    when CUDA is available.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    from hessntk.distributed import init

    backend = None if device is None else ("nccl" if device.startswith("cuda") else "gloo")
    return init(backend, timeout=timeout)


def close(*, finished: bool) -> None:
    """End the process group of a torchrun command.

    A rank that finished waits at a barrier for the others (rank 0 still writes the report)
    and then destroys the group: a rank that destroyed its group and exited while rank 0 was
    still at work could abort, "terminate called without an active exception" (gloo: 12 of 43
    two-rank torchrun runs of ``hessntk iic``; none of 100 with the barrier). After an error
    there is no barrier, since the other ranks may never reach it: the group is destroyed at
    once.
    """
    import torch.distributed as dist

    if finished:
        from hessntk.distributed import close as close_group

        close_group()
    elif dist.is_initialized():
        dist.destroy_process_group()


def on_rank_zero(comm: Any, fn: Any) -> Any:
    """Run ``fn()`` on rank 0 only; every rank returns its result or raises its error."""
    if comm is None:
        return fn()
    result, failure, error = None, None, None
    if comm.rank == 0:
        try:
            result = fn()
        except Exception as err:  # handed to the other ranks, raised on all
            error, failure = err, one_line(err)
    result, failure = comm.share((result, failure), "a result of rank 0")
    if error is not None:
        raise error
    if failure is not None:
        raise CLIError(f"rank 0 stopped: {failure}")
    return result


class RankZeroStore:
    """A :class:`~hessntk.report.PartialStore` that only rank 0 touches.

    Loads happen on rank 0 and their values are given to every rank, so all ranks resume
    from the same partial results even when ``--out`` is not on a shared file system.
    """

    def __init__(self, comm: Any, folder: Any, *, resume: bool) -> None:
        from hessntk.report import PartialStore

        self.comm = comm
        self.store: Any = None

        def make() -> None:  # rank 0 only; its error stops every rank
            self.store = PartialStore(folder, resume=resume)

        on_rank_zero(comm, make)
        self.path = getattr(self.store, "path", None)

    @property
    def reused(self) -> int:
        return self.store.reused if self.store is not None else 0

    def load_json(self, name: str, key: Any) -> Any:
        return on_rank_zero(self.comm, lambda: self.store.load_json(name, key))

    def save_json(self, name: str, value: Any, key: Any) -> None:
        on_rank_zero(self.comm, lambda: self.store.save_json(name, value, key))

    def load_arrays(self, name: str, key: Any) -> Any:
        return on_rank_zero(self.comm, lambda: self.store.load_arrays(name, key))

    def save_arrays(self, name: str, key: Any, **arrays: Any) -> None:
        on_rank_zero(self.comm, lambda: self.store.save_arrays(name, key, **arrays))

    def slq_groups(self, name: str, key: Any) -> Any:
        from hessntk.report.store import SLQGroups

        return SLQGroups(self, name, key)
