"""Jobs run by each rank of the distributed tests (see ``launch.run_ranks``).

``python tests/distributed/workers.py JOB OUT``: initialises gloo from torchrun's
environment (timeout 20 s), runs ``JOB`` and writes ``OUT/JOB.rank{r}.pt``.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

import hessntk.distributed
from hessntk.hessian import HessianOperator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import problems  # noqa: E402

TIMEOUT = 20.0
STALL_TIMEOUT = 4.0  # the process group's timeout in rank_stalls


def core(comm: hessntk.distributed.Communicator) -> dict:
    ops = problems.operators(comm.group)
    res = problems.results(ops)
    res["basis_rows"] = hessntk.lanczos(ops["H"], 10, num_probes=2, reorth="full",
                                        shard_basis=True, return_basis=True).basis.shape[-1]
    return res


def _mlp_operator(comm, data=None, net=None):  # noqa: ANN001, ANN202
    net0, loss, x, y = problems.mlp()
    data = hessntk.distributed.shard((x, y), comm.group) if data is None else data
    return HessianOperator(net or net0, loss, data, group=comm.group)


def rank_exits(comm: hessntk.distributed.Communicator) -> dict:
    """Rank 1 disappears after construction; rank 0's next product must fail, not hang."""
    H = _mlp_operator(comm)
    if comm.rank == 1:
        os._exit(3)
    return _timed_product(H)


def rank_stalls(comm: hessntk.distributed.Communicator) -> dict:
    """Rank 1 stops calling collectives (alive): rank 0 must time out."""
    H = _mlp_operator(comm)
    if comm.rank == 1:
        time.sleep(3 * STALL_TIMEOUT)
        os._exit(0)
    return _timed_product(H)


def _timed_product(H: HessianOperator) -> dict:
    """A product expected to fail: its DistributedError and how long it took to come."""
    start = time.monotonic()
    try:
        H @ torch.ones(H.shape[0], dtype=torch.float64)
    except hessntk.distributed.DistributedError as err:
        return {"error": str(err), "seconds": time.monotonic() - start}
    return {"error": None}


def _refused(build) -> dict:  # noqa: ANN001
    try:
        build()
    except ValueError as err:
        return {"error": str(err)}
    return {"error": None}


def other_parameters(comm: hessntk.distributed.Communicator) -> dict:
    net, _, _, _ = problems.mlp()
    if comm.rank == 1:
        with torch.no_grad():
            net[0].bias[0] += 1e-12
    return _refused(lambda: _mlp_operator(comm, net=net))


def same_data(comm: hessntk.distributed.Communicator) -> dict:
    _, _, x, y = problems.mlp()
    return _refused(lambda: _mlp_operator(comm, data=(x, y)))


def other_vectors(comm: hessntk.distributed.Communicator) -> dict:
    """Each rank draws its own vector (another seed): the product refuses it."""
    H = _mlp_operator(comm)
    v = torch.randn(H.shape[0], 2, generator=torch.Generator().manual_seed(comm.rank),
                    dtype=torch.float64)
    return _refused(lambda: H @ v)


def nan_on_one_rank(comm: hessntk.distributed.Communicator) -> dict:
    """Rank 1's shard holds a NaN: rank 1 raises its error, rank 0 stops too, at once."""
    _, _, x, y = problems.mlp()
    part = hessntk.distributed.shard((x.clone(), y), comm.group)
    if comm.rank == 1:
        part[0][0, 0] = float("nan")
    start = time.monotonic()
    try:
        _mlp_operator(comm, data=part)
    except (FloatingPointError, hessntk.distributed.DistributedError) as err:
        return {"error": f"{type(err).__name__}: {err}", "seconds": time.monotonic() - start}
    return {"error": None}


def padding_sampler(comm: hessntk.distributed.Communicator) -> dict:
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    _, _, x, y = problems.mlp()  # 37 samples: padded to 38 over 2 ranks
    ds = TensorDataset(x, y)
    loader = DataLoader(ds, batch_size=8, sampler=DistributedSampler(ds, shuffle=False))
    return _refused(lambda: _mlp_operator(comm, data=loader))


def exact_sampler(comm: hessntk.distributed.Communicator) -> dict:
    """A DistributedSampler over 36 samples (no padding) gives the mean over all 36."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    _, _, x, y = problems.mlp()
    ds = TensorDataset(x[:36], y[:36])
    loader = DataLoader(ds, batch_size=5, sampler=DistributedSampler(ds, shuffle=True, seed=4))
    H = _mlp_operator(comm, data=loader)
    return {"HV": H @ torch.ones(H.shape[0], dtype=torch.float64), "loss": H.loss}


def unequal_memory(comm: hessntk.distributed.Communicator) -> dict:
    """The ranks see different free memory: the default SLQ groups are sized by the least
    (rank 1's room for one probe), so that both run the same groups with the same numbers."""
    import hessntk._memory

    H = _mlp_operator(comm)
    per_probe = 8 * H.shape[0] * 6  # float64 basis of 6 steps
    free = 10**10 if comm.rank == 0 else 4 * per_probe + 3  # a quarter: one probe
    hessntk._memory.host_memory = lambda: free
    widths: list[int] = []
    product = H._matmat
    H._matmat = lambda V: (widths.append(V.shape[1]), product(V))[1]
    d = hessntk.slq(H, num_probes=3, num_matvecs=6, seed=1)
    slq_widths = list(widths)
    widths.clear()  # Hutchinson's groups, from the same least budget
    t = hessntk.trace(H, num_matvecs=6, method="hutchinson", seed=1)
    return {"widths": slq_widths, "nodes": torch.from_numpy(d.nodes),
            "trace_widths": list(widths), "trace": t.value}


JOBS = {f.__name__: f for f in (core, rank_exits, rank_stalls, other_parameters, same_data,
                                other_vectors, nan_on_one_rank, padding_sampler,
                                exact_sampler, unequal_memory)}


def main() -> None:
    job, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    comm = hessntk.distributed.init(
        "gloo", timeout=STALL_TIMEOUT if job == "rank_stalls" else TIMEOUT)
    try:
        result = JOBS[job](comm)
    except Exception:
        traceback.print_exc()
        raise
    torch.save(result, out / f"{job}.rank{comm.rank}.pt")
    # unequal_memory: its trace's collectives left gloo's threads to abort the exit in about
    # 1 of 4 runs here (SIGABRT "terminate called without an active exception", after the
    # result was saved; not seen without the trace)
    if job in ("rank_exits", "rank_stalls", "unequal_memory") or result.get(
            "error") is not None:
        # The group is broken, or its ranks stopped on an error: gloo's threads may abort a
        # normal interpreter exit (seen once in 17 runs of padding_sampler: SIGABRT on rank
        # 1 after both ranks had saved their refusal).
        sys.stdout.flush()
        os._exit(0)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
