"""One-process checks of the distributed plumbing: shards, samplers and refusals."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import hessntk
from hessntk.distributed import Communicator, check_sampler, init, shard
from hessntk.hessian import HessianOperator


def test_shard_splits_one_batch_by_samples_in_order() -> None:
    x, y = torch.arange(10.0)[:, None], torch.arange(10.0)
    parts = [shard((x, y), rank=r, size=3) for r in range(3)]
    assert [len(p[1]) for p in parts] == [3, 3, 4]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_shard_splits_a_dict_batch_and_keeps_constants() -> None:
    batch = {"input_ids": torch.arange(12).reshape(6, 2), "labels": torch.arange(6),
             "scale": torch.tensor(2.0)}
    part = shard(batch, rank=1, size=2)
    assert torch.equal(part["input_ids"], batch["input_ids"][3:])
    assert torch.equal(part["labels"], torch.arange(3, 6))
    assert part["scale"] is batch["scale"]


def test_shard_splits_a_list_of_batches_in_blocks() -> None:
    batches = [(torch.zeros(2, 1), torch.zeros(2)) for _ in range(5)]
    assert [len(shard(batches, rank=r, size=2)) for r in range(2)] == [2, 3]


@pytest.mark.parametrize(("data", "error", "message"), [
    ((torch.zeros(1, 2), torch.zeros(1)), ValueError, "at least as many samples as ranks"),
    ([(torch.zeros(2, 1), torch.zeros(2))], ValueError, "at least as many batches as ranks"),
    (DataLoader(TensorDataset(torch.zeros(4, 1))), TypeError, "DistributedSampler"),
])
def test_shard_refuses_what_it_cannot_split(data: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        shard(data, rank=0, size=2)


def test_a_distributed_sampler_without_group_is_refused() -> None:
    ds = TensorDataset(torch.zeros(8, 2, dtype=torch.float64), torch.zeros(8, 1,
                                                                          dtype=torch.float64))
    loader = DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, num_replicas=2,
                                                                     rank=0, shuffle=False))
    with pytest.raises(ValueError, match="Expected group= with a DistributedSampler of 2"):
        check_sampler(loader, None)
    net = torch.nn.Linear(2, 1).double()
    with pytest.raises(ValueError, match="this process holds one shard"):
        HessianOperator(net, torch.nn.MSELoss(), loader)


def test_collectives_need_an_initialised_process_group() -> None:
    with pytest.raises(RuntimeError, match=r"hessntk.distributed.init\(\)"):
        Communicator()
    net = torch.nn.Linear(2, 1)
    with pytest.raises(RuntimeError, match="initialised torch.distributed"):
        HessianOperator(net, torch.nn.MSELoss(), (torch.zeros(4, 2), torch.zeros(4, 1)),
                        group=object())  # a group of a process group never initialised


def test_init_outside_torchrun_names_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="torchrun --nproc-per-node"):
        init()


def test_a_sharded_basis_needs_a_data_parallel_operator() -> None:
    op = hessntk.aslinearoperator(torch.eye(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="shard_basis=True"):
        hessntk.lanczos(op, 3, shard_basis=True)
    with pytest.raises(ValueError, match="group="):
        hessntk.slq(op, num_probes=2, num_matvecs=3, shard_basis=True)
