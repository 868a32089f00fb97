"""Data-parallel curvature on ``torch.distributed``: the process group, shards and checks.

A distributed operator is an operator: build :class:`~hessntk.hessian.HessianOperator`,
:class:`~hessntk.hessian.GGNOperator` or :class:`~hessntk.ntk.GramOperator` on each rank
with that rank's data and ``group=``; products are summed over the ranks (the full-data
mean, ragged shards weighted by the global sample count) so every rank holds the same
numbers, and the spectral core and the criteria run unchanged and replicated.

>>> import hessntk.distributed as hd
>>> sorted(hd.__all__)
['Communicator', 'DistributedError', 'check_sampler', 'close', 'init', 'shard']

Typical use, under ``torchrun --nproc-per-node 2 script.py``::

    comm = hessntk.distributed.init(timeout=120)       # gloo on CPU, NCCL on GPU
    H = HessianOperator(model, loss_fn, hessntk.distributed.shard((x, y)), group=comm.group)
    density = hessntk.spectral.slq(H, num_probes=10, num_matvecs=100, seed=0)
    del H, comm
    hessntk.distributed.close()                         # barrier, destroy the group
"""

from __future__ import annotations

import gc
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from hessntk.distributed.communicator import Communicator, DistributedError
from hessntk.distributed.sharding import check_sampler, shard

__all__ = ["Communicator", "DistributedError", "check_sampler", "close", "init", "shard"]

#: Environment variables torchrun sets and :func:`init` reads.
ENVIRONMENT = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def init(backend: str | None = None, *, timeout: float = 120.0) -> Communicator:
    """Initialise the default process group from torchrun's environment (if not yet done).

    Parameters
    ----------
    backend : {"gloo", "nccl"}, optional
        Default: NCCL when CUDA is available, gloo otherwise.
    timeout : float
        Seconds a collective waits for the other ranks before it fails: a rank that died
        or stalls stops the others with a :class:`DistributedError` within this bound
        (gloo; with NCCL, torch's watchdog may abort the process instead of raising).

    Returns
    -------
    Communicator
        Of the world group. With NCCL the current CUDA device is set to ``LOCAL_RANK``
        (modulo the visible devices). When ``torch.distributed`` is already initialised,
        that group's Communicator (its own backend and timeout; the arguments are unused).

    Raises
    ------
    RuntimeError
        The environment lacks ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` or ``MASTER_PORT``
        (run under ``torchrun``).
    """
    if dist.is_initialized():
        return Communicator()
    missing = [k for k in ENVIRONMENT if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"Expected torchrun's environment ({', '.join(ENVIRONMENT)}); {', '.join(missing)} "
            "not set. Start with torchrun --nproc-per-node N ..., or set them."
        )
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"Expected timeout > 0 seconds; got {timeout!r}.")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"Expected backend 'gloo' or 'nccl'; got {backend!r}.")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=timedelta(seconds=float(timeout)))
    return Communicator()


def close() -> None:
    """Wait for every rank, then destroy the default process group (the end of a script).

    Left to the interpreter's exit, gloo's worker threads can abort a rank after its work is
    done ("terminate called without an active exception": 3 of 18 torchrun runs of
    ``examples/data_parallel.py``; none of 30 after ``close()`` with the operators and the
    Communicator deleted first). A no-op when ``torch.distributed`` is not initialised.

    Examples
    --------
    >>> close()  # one process: nothing to close
    """
    if not dist.is_initialized():
        return
    gc.collect()  # release process-group references held by unreachable cycles
    dist.barrier()
    dist.destroy_process_group()
