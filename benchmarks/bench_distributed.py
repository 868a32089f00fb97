"""Data-parallel SLQ: 1 process x 2 threads against 2 processes x 1 thread (issue 15).

The same SLQ (``--probes`` x ``--steps``, partial reorthogonalisation) of the Hessian of the
MLP 64-512-512-10 (301,066 parameters, float32) on 512 digits images, run three ways on
this machine: one process with 2 threads; 2 gloo ranks on 127.0.0.1 with 1 thread each and
the basis replicated; the same with the basis sharded. Prints wall time, products per
second, the share of the wall spent in products and in collectives, the basis bytes per
rank, the bytes each rank sends per Lanczos step, the agreement of the SLQ nodes with the
one-process run, and a paper estimate of the scaling to 8 GPUs from the measured traffic.

Run: ``python benchmarks/bench_distributed.py`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_slq_overhead import digits_mlp  # noqa: E402

import hessntk  # noqa: E402
from hessntk.hessian import HessianOperator  # noqa: E402
from hessntk.spectral import CountingOperator  # noqa: E402


def run(group: object, args: argparse.Namespace, shard_basis: bool) -> dict:
    model, X, y = digits_mlp()
    data = (X, y) if group is None else hessntk.distributed.shard((X, y), group.group)
    op = HessianOperator(model, nn.CrossEntropyLoss(), data, group=group)
    op.matmat(torch.randn(op.shape[0], args.probes))  # warm-up: the cached graph
    counted = CountingOperator(op)
    comm = op.communicator
    before = (0.0, 0, 0) if comm is None else (comm.seconds, comm.num_bytes, comm.num_calls)
    start = time.perf_counter()
    d = hessntk.slq(counted, num_probes=args.probes, num_matvecs=args.steps, seed=0,
                    reorth="partial", shard_basis=shard_basis)
    wall = time.perf_counter() - start
    n, k, m = op.shape[0], args.probes, args.steps
    width = n if not shard_basis else -(-n // comm.size)
    out = {"wall": wall, "products": counted.seconds, "num_matvecs": counted.num_matvecs,
           "nodes": d.nodes.tolist(), "basis_bytes": 8 * width * m * k, "n": n}
    if comm is not None:
        out.update(comm_seconds=comm.seconds - before[0], bytes=comm.num_bytes - before[1],
                   calls=comm.num_calls - before[2], ranks=comm.size)
        walls = comm.gather_numbers([wall], "the wall times")[:, 0]
        out["wall"] = float(walls.max())
    return out


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    comm = hessntk.distributed.init("gloo", timeout=300)
    result = run(comm, args, args.shard_basis)
    if comm.rank == 0:
        print("RESULT " + json.dumps(result), flush=True)
    torch.distributed.destroy_process_group()


def launch(args: argparse.Namespace, shard_basis: bool) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--nnodes", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
           __file__, "--worker", "--probes", str(args.probes), "--steps", str(args.steps)]
    if shard_basis:
        cmd.append("--shard-basis")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    line = next(s for s in done.stdout.splitlines() if s.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shard-basis", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    torch.set_num_threads(2)
    single = run(None, args, False)
    runs = {"1 process x 2 threads": single,
            "2 processes x 1 thread": launch(args, False),
            "2 processes x 1 thread, sharded basis": launch(args, True)}
    steps = args.steps
    print(f"n = {single['n']}, SLQ {args.probes} probes x {steps} steps, reorth='partial'")
    print(f"{'run':40s} {'wall s':>8s} {'prod/s':>8s} {'prod %':>7s} {'comm %':>7s} "
          f"{'basis/rank MiB':>15s} {'sent/step KiB':>14s} {'max |dnode|':>12s}")
    ref = np.asarray(single["nodes"])
    for name, r in runs.items():
        comm = 100 * r.get("comm_seconds", 0.0) / r["wall"]
        sent = r.get("bytes", 0) / steps / 1024
        diff = float(np.max(np.abs(np.asarray(r["nodes"]) - ref)))
        print(f"{name:40s} {r['wall']:8.2f} {r['num_matvecs'] / r['wall']:8.1f} "
              f"{100 * r['products'] / r['wall']:7.1f} {comm:7.1f} "
              f"{r['basis_bytes'] / 2**20:15.1f} {sent:14.1f} {diff:12.2e}")
    sharded = runs["2 processes x 1 thread, sharded basis"]
    n, k = single["n"], args.probes
    print(f"\nspeed-up of 2 processes over 1 process x 2 threads: "
          f"{single['wall'] / runs['2 processes x 1 thread']['wall']:.2f}x (replicated basis), "
          f"{single['wall'] / sharded['wall']:.2f}x (sharded)")
    # Paper estimate, 8 GPUs (NVLink, ~150 GB/s per direction per GPU): a ring all-reduce
    # moves 2 (W - 1) / W of the buffer per rank, an all-gather (W - 1) / W. Per step: the
    # product's all-reduce of n k float32 and the gather of the next vectors (float32).
    w, bandwidth = 8, 150e9
    vectors = 4 * n * k
    seconds = (2 * (w - 1) / w * vectors + (w - 1) / w * vectors) / bandwidth
    measured = (sharded["comm_seconds"] / steps, sharded["bytes"] / steps)
    print(f"communication per step, measured here (2 ranks, loopback TCP): "
          f"{1e3 * measured[0]:.1f} ms for {measured[1] / 2**20:.1f} MiB sent per rank")
    print(f"8 GPUs (paper estimate, {bandwidth / 1e9:.0f} GB/s): {1e6 * seconds:.0f} us per "
          f"step for the all-reduce and the gather of {vectors / 2**20:.1f} MiB of vectors: "
          f"under 1% of a step whose products take more than {100 * seconds * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
