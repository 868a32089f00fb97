"""Checks that the ranks of a data-parallel operator agree where they must and differ where
they must: the same model and parameters, the same vectors in every product, data of one
structure but not the same shard twice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from hessntk._model import iter_batches, tensor_leaves
from hessntk.distributed.communicator import Communicator, digest
from hessntk.distributed.sharding import data_digest
from hessntk.spectral.layout import ParamLayout

__all__ = ["CHECKED_ROWS", "REPLICATED_FIX", "agree", "check_replicas", "check_shards",
           "check_vectors", "communicator", "parameter_checksum", "vector_checksum"]

REPLICATED_FIX = ("The spectral core runs replicated: draw probes on the host from the same "
                  "seed on every rank (hessntk's functions do) and pass the same vectors.")


def agree(comm: Communicator | None, fn: Any, what: str) -> Any:
    """``fn()``: this rank's part; data parallel, an error on any rank stops every rank
    (:meth:`Communicator.agree`)."""
    return fn() if comm is None else comm.agree(fn, what)


def communicator(group: Any) -> Communicator | None:
    """The :class:`Communicator` of ``group=`` (None: one process)."""
    if group is None:
        return None
    return group if isinstance(group, Communicator) else Communicator(group)


def parameter_checksum(layout: ParamLayout, params: Mapping[str, torch.Tensor] | torch.Tensor
                       ) -> list[float]:
    """Size, names and two float64 moments of flat or named parameters (order-sensitive)."""
    flat = params if torch.is_tensor(params) else layout.flatten(params)
    return [float(layout.n), digest(",".join(layout.names)), *vector_checksum(flat)]


#: Rows of a product's vectors compared across the ranks (a fixed, evenly spread sample).
CHECKED_ROWS = 4096


def vector_checksum(V: torch.Tensor, rows: int | None = None) -> list[float]:
    """``sum v`` and ``sum i v_i`` in float64 over ``rows`` evenly spread rows (all: None).

    A product checks a sample of rows only (cheap next to the product): vectors drawn from
    other seeds on other ranks differ everywhere.
    """
    v = V.detach()
    if rows is not None and v.shape[0] > rows:
        pick = torch.linspace(0, v.shape[0] - 1, rows, device=v.device).long()
        v = v[pick]
    v = v.reshape(-1).to(torch.float64)
    index = torch.arange(1, v.numel() + 1, dtype=torch.float64, device=v.device)
    return [float(v.sum()), float((v * index).sum())]


def check_vectors(comm: Communicator, V: torch.Tensor, what: str) -> None:
    """Refuse a product whose vectors differ across the ranks (sampled rows)."""
    comm.check_same(vector_checksum(V, CHECKED_ROWS), f"vectors of the {what}",
                    REPLICATED_FIX)


def check_replicas(comm: Communicator, layout: ParamLayout, theta: torch.Tensor) -> None:
    """Refuse ranks whose selected parameters differ (other checkpoint, seed or model)."""
    comm.check_same(parameter_checksum(layout, theta), "parameters (names, sizes and values)",
                    "Load the same checkpoint on every rank, or broadcast rank 0's: "
                    "for p in model.parameters(): torch.distributed.broadcast(p.data, 0).")


def check_shards(comm: Communicator, data: Any) -> None:
    """Refuse shards of different structure, and two ranks holding the same first batch."""
    x, y = next(iter_batches(data))
    comm.check_same([digest(_signature(x)), digest(_signature(y))],
                    "data structure (per-sample shapes and dtypes of the first batch)",
                    "Give every rank batches of one data set.")
    comm.check_distinct(data_digest(data), "data shard (first batch)",
                        "Shard the data: hessntk.distributed.shard(data), or a DataLoader "
                        "with a DistributedSampler.")


def _signature(tree: Any) -> str:
    return ";".join(f"{tuple(t.shape[1:])}:{t.dtype}" for t in tensor_leaves(tree))
