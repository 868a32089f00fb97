"""Start N ranks of a worker job on gloo over 127.0.0.1, bounded in time, and collect them.

Each rank is a fresh ``python tests/distributed/workers.py JOB OUT`` process with torchrun's
environment (RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free MASTER_PORT) and
GLOO_SOCKET_IFNAME set to the loopback device; every process is killed when the call returns,
whatever happened.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKERS = Path(__file__).with_name("workers.py")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_device() -> str:
    """The name of the loopback interface (gloo binds to it)."""
    names = [name for _, name in socket.if_nameindex()]
    return "lo" if "lo" in names else names[0]


def rank_env(rank: int, size: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size),
               LOCAL_WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               GLOO_SOCKET_IFNAME=loopback_device(), OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


@dataclass
class Rank:
    returncode: int | None
    output: str


def run_ranks(job: str, out: Path, size: int = 2, timeout: float = 120.0,
              args: tuple[str, ...] = ()) -> tuple[list[Rank], float]:
    """Run ``job`` on ``size`` ranks; return each rank's exit code and output, and the wall.

    A rank still running after ``timeout`` seconds is killed (its return code is None).
    """
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs, logs = [], []
    codes: list[int | None] = []
    start = time.monotonic()
    try:
        for r in range(size):
            log = open(out / f"rank{r}.log", "w+")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, str(WORKERS), job, str(out), *args], cwd=ROOT,
                env=rank_env(r, size, port), stdout=log, stderr=subprocess.STDOUT))
        deadline = start + timeout
        for p in procs:
            try:
                codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        wall = time.monotonic() - start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    ranks = []
    for code, log in zip(codes, logs, strict=True):
        log.seek(0)
        ranks.append(Rank(code, log.read()))
        log.close()
    return ranks, wall
