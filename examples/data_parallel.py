"""The Hessian spectrum of an MLP on load_digits, data parallel over torchrun's processes.

Every rank loads the same model and data, keeps its shard of the samples and builds a
data-parallel operator (``group=``); the spectral core runs replicated, so every rank gets
the same numbers as one process would (to rounding), and rank 0 prints them. The SLQ basis
is sharded: each rank stores ``1 / N`` of every Lanczos vector.

Run: ``torchrun --nproc-per-node 2 examples/data_parallel.py`` (or ``python
examples/data_parallel.py`` for one process).
"""

from __future__ import annotations

import argparse
import os

import torch
from sklearn.datasets import load_digits
from torch import nn

import hessntk
from hessntk.distributed import close, init, shard
from hessntk.hessian import HessianOperator

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--n-train", type=int, default=512)
parser.add_argument("--probes", type=int, default=4)
parser.add_argument("--steps", type=int, default=40)
args = parser.parse_args()

comm = init(timeout=120) if "RANK" in os.environ else None  # torchrun sets RANK
torch.manual_seed(0)
X, y = load_digits(return_X_y=True)
x = torch.tensor(X[: args.n_train] / 16.0, dtype=torch.float64)
y = torch.tensor(y[: args.n_train])
model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).double().eval()

data = (x, y) if comm is None else shard((x, y), comm.group)
H = HessianOperator(model, nn.CrossEntropyLoss(), data, group=None if comm is None else comm)
top = hessntk.eigsh(H, k=3, seed=0)
density = hessntk.slq(H, num_probes=args.probes, num_matvecs=args.steps, seed=0,
                      shard_basis=comm is not None)
trace = density.trace()
if comm is None or comm.rank == 0:
    ranks = 1 if comm is None else comm.size
    print(f"{ranks} process(es), {H.num_samples} samples, {H.shape[0]} parameters")
    print(f"top eigenvalues  {[round(float(v), 6) for v in top.eigenvalues]}")
    print(f"trace (SLQ)      {trace.value:.6f} +- {trace.stderr:.2g}")
    if comm is not None:
        print(f"communication    {comm.num_calls} collectives, {comm.num_bytes / 2**20:.2f} MiB "
              "sent by rank 0")
del H, comm  # the process group's last references, then close it before the exit
close()
