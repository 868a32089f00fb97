"""Split a data set over the ranks of a process group, and check a loader that already is.

Curvature over sharded data is the full-data mean: each rank weighs its batches by their
share of the *global* number of samples (:class:`~hessntk.hessian.HessianOperator` with
``group=``), so shards may be ragged. What must not happen is a sample counted twice (a
``DistributedSampler`` pads the last shard by repeating samples) or every rank holding the
whole data set: both are refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hessntk._model import batch_size, is_single_batch, loader_sampler, split_batch, tensor_leaves
from hessntk.distributed.communicator import Communicator
from hessntk.spectral.layout import even_bounds

__all__ = ["check_sampler", "data_digest", "shard"]



def shard(data: Any, group: Any = None, *, rank: int | None = None,
          size: int | None = None) -> Any:
    """This rank's part of ``data``, contiguous and in order (ragged where it must be).

    Parameters
    ----------
    data : one batch or a sequence of batches
        One batch (``(inputs, targets)`` or a dict batch) is split by samples: rank ``r`` of
        ``W`` gets samples ``[r n // W, (r + 1) n // W)``. A list or tuple of ``B >= W``
        batches is split by batches, in contiguous blocks.
    group : torch.distributed.ProcessGroup, optional
        Default: the world group (initialised).
    rank, size : int, optional
        Instead of ``group``: the part ``rank`` of ``size`` (no process group needed).

    Returns
    -------
    The same structure as ``data``: one batch, or a list of batches.

    Raises
    ------
    ValueError
        Fewer samples (or batches) than ranks.
    TypeError
        A ``DataLoader`` (give it a ``DistributedSampler`` instead) or other data.

    Examples
    --------
    >>> x, y = torch.arange(10.0)[:, None], torch.arange(10.0)
    >>> [len(shard((x, y), rank=r, size=3)[1]) for r in range(3)]
    [3, 3, 4]
    """
    if rank is None or size is None:
        comm = Communicator(group)
        rank, size = comm.rank, comm.size
    if not (0 <= rank < size):
        raise ValueError(f"Expected 0 <= rank < size; got rank={rank}, size={size}.")
    if is_single_batch(data):
        x, y = split_batch(data, 0)
        n = batch_size(x)
        if n < size:
            raise ValueError(f"Expected at least as many samples as ranks; got {n} samples "
                             f"for {size} ranks. Use fewer processes.")
        bounds = even_bounds(n, size)
        sl = slice(bounds[rank], bounds[rank + 1])
        if isinstance(data, Mapping):
            return {k: _take(v, sl, n) for k, v in data.items()}
        return (_take(x, sl, n), _take(y, sl, n))
    from torch.utils.data import DataLoader

    if isinstance(data, DataLoader):
        raise TypeError(
            "Expected one batch or a list of batches to shard; got a DataLoader. Give it a "
            "torch.utils.data.DistributedSampler(dataset, shuffle=False) instead: the "
            "operators check its shards (no padding)."
        )
    if not isinstance(data, Sequence):
        raise TypeError(f"Expected one batch or a list of batches to shard; got "
                        f"{type(data).__name__}.")
    b = len(data)
    if b < size:
        raise ValueError(f"Expected at least as many batches as ranks; got {b} batches for "
                         f"{size} ranks. Pass the data as one batch (split by samples) or "
                         "in more batches.")
    bounds = even_bounds(b, size)
    return list(data[bounds[rank] : bounds[rank + 1]])


def _take(tree: Any, sl: slice, n: int) -> Any:
    """Samples ``sl`` of every tensor leaf with ``n`` samples along dim 0."""
    if isinstance(tree, torch.Tensor):
        return tree[sl] if tree.ndim > 0 and tree.shape[0] == n else tree
    if isinstance(tree, Mapping):
        return {k: _take(v, sl, n) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_take(v, sl, n) for v in tree)
    return tree


def has_distributed_sampler(data: Any) -> bool:
    """Whether ``data`` is a ``DataLoader`` drawing from a ``DistributedSampler``."""
    from torch.utils.data import DistributedSampler

    return isinstance(loader_sampler(data), DistributedSampler)


def check_sampler(data: Any, comm: Communicator | None) -> None:
    """Refuse a ``DataLoader`` whose ``DistributedSampler`` does not partition the data.

    With ``comm`` None (one process) a ``DistributedSampler`` of several replicas is refused:
    the operator would see one shard only. With a communicator, its ``num_replicas`` and
    ``rank`` must be the group's, and it must not pad (``drop_last=False`` with a data set
    whose size is not a multiple of the ranks repeats samples).
    """
    from torch.utils.data import DistributedSampler

    sampler = loader_sampler(data)
    if not isinstance(sampler, DistributedSampler):
        return
    if comm is None:
        if sampler.num_replicas > 1:
            raise ValueError(
                f"Expected group= with a DistributedSampler of {sampler.num_replicas} "
                "replicas: this process holds one shard, so the operator would be of that "
                "shard only. Pass group=torch.distributed.group.WORLD (or the sampler's group)."
            )
        return
    if (sampler.num_replicas, sampler.rank) != (comm.size, comm.rank):
        raise ValueError(
            f"Expected the DistributedSampler of rank {comm.rank} of {comm.size}; got one with "
            f"num_replicas={sampler.num_replicas}, rank={sampler.rank}."
        )
    n = len(sampler.dataset)
    if sampler.total_size > n:
        raise ValueError(
            f"Expected a DistributedSampler that partitions the data; got one that pads "
            f"{n} samples to {sampler.total_size} by repeating {sampler.total_size - n} "
            "(drop_last=False with a size that is not a multiple of the ranks), which counts "
            "them twice. Use hessntk.distributed.shard on the data set's tensors (ragged "
            f"shards are weighted exactly), or a data set of a multiple of {comm.size} samples."
        )


def data_digest(data: Any) -> list[float]:
    """A checksum of the first batch: its size and the float64 sum of its tensors."""
    from hessntk._model import iter_batches

    x, y = next(iter_batches(data))
    leaves = list(tensor_leaves(x)) + list(tensor_leaves(y))
    total = sum(float(t.detach().double().sum()) for t in leaves if t.numel())
    weighted = sum(float((t.detach().double().reshape(-1)
                          * torch.arange(1, t.numel() + 1, dtype=torch.float64,
                                         device=t.device)).sum())
                   for t in leaves if t.numel())
    return [float(batch_size(x)), total, weighted]
