"""Data-parallel JAX operators on a device mesh: the batch sharded, parameters replicated.

With ``mesh=`` the curvature operators place the parameters (and every vector the spectral
core hands them) replicated over the mesh and each batch's samples split along one mesh
axis; ``jax.jit`` then compiles each product once into a partitioned program whose batch
mean is an all-reduce, so every device holds the same product. A batch whose size is not a
multiple of the axis is split in two: the largest multiple, sharded, and the remainder,
replicated (computed on every device); weights stay ``n_b / n``, so the product is exact
for the losses these operators take: a batch's loss is the mean of per-sample terms (the
operators weigh batches by their samples already; a token-mean or a batch-coupled loss is
not one).

Multi-host: call ``jax.distributed.initialize()`` on every host, build the mesh over
``jax.devices()`` (all hosts' devices) and pass global arrays as data (e.g.
``jax.make_array_from_process_local_data(NamedSharding(mesh, P("batch")), local_x)``);
everything else is unchanged.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hessntk.jax._common import Batch

__all__ = ["mesh_shardings", "mesh_spans", "place", "shard_batches"]


def mesh_shardings(mesh: Any, batch_axis: str | None) -> tuple[NamedSharding, NamedSharding,
                                                                  int]:
    """``(replicated, batch-sharded, axis size)`` of ``mesh`` along ``batch_axis``.

    The data is converted where it is (host, one device, or already global arrays) and then
    placed by these shardings, never first replicated on every device.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"Expected mesh to be a jax.sharding.Mesh; got {type(mesh).__name__}.")
    axis = mesh.axis_names[0] if batch_axis is None else batch_axis
    if axis not in mesh.axis_names:
        raise ValueError(f"Expected batch_axis among the mesh's axes {mesh.axis_names}; got "
                         f"{batch_axis!r}.")
    return (NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(axis)),
            int(mesh.shape[axis]))


def mesh_spans(sizes: list[int], size: int) -> list[tuple[int, slice, bool]]:
    """``(batch, samples, sharded)`` parts: the largest multiple of ``size``, then the rest."""
    spans = []
    for i, n in enumerate(sizes):
        main = n - n % size
        if main:
            spans.append((i, slice(0, main), True))
        if main < n:
            spans.append((i, slice(main, n), False))
    return spans


def shard_batches(batches: list[Batch], replicated: NamedSharding, sharded: NamedSharding,
                  size: int) -> list[Batch]:
    """Each batch's samples split over the mesh axis (a remainder of ``< size`` replicated)."""
    return [_part(batches[i], samples, sharded if split else replicated)
            for i, samples, split in mesh_spans([b.num_samples for b in batches], size)]


def place(tree: Any, sharding: NamedSharding) -> Any:
    """Every leaf of ``tree`` put by ``sharding`` (scalars replicated)."""
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    return jax.tree_util.tree_map(
        lambda a: jax.device_put(a, sharding if getattr(a, "ndim", 0) > 0 else replicated),
        tree)


def _part(b: Batch, samples: slice, sharding: NamedSharding) -> Batch:
    def take(leaf: Any) -> Any:
        if getattr(leaf, "ndim", 0) == 0:
            return leaf
        return leaf[samples] if (samples.start, samples.stop) != (0, b.num_samples) else leaf

    n = samples.stop - samples.start
    return Batch(place(jax.tree_util.tree_map(take, b.tree), sharding), n, b.signature)
