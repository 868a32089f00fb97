"""Benchmark hessntk's JAX backend against hessntk-torch and neural-tangents.

Same workload as ``benchmarks/bench_hessian.py``: an MLP 64-512-512-10 (ReLU, float32, CPU,
301k parameters) trained for 100 Adam steps on one batch of 512 images of sklearn's
``load_digits``; the JAX model gets the very same weights. Prints, side by side:

1. product time / gradient time (``jax.jit`` gradient; one vector and per vector of a
   16-vector ``matmat``), next to the torch operator's ratios;
2. wall time of the top Hessian eigenvalue (``eigsh``, k=1, tol=1e-2) and of a 100-step SLQ
   (10 probes) with hessntk-JAX and hessntk-torch, and their ratio. "first" is the first
   call in the process (JAX: tracing and compiling included); "warm" the best later call on a
   fresh operator. "products" is the part of the time spent in operator products;
3. the explicit NTK Gram ``gram()`` against neural-tangents' ``empirical_ntk_fn`` (its three
   implementations), each in a fresh subprocess (neural-tangents in the side venv
   ``/work/nt-venv`` with jax 0.4.23, as in ``benchmarks/bench_ntk.py``, whose data, weights,
   timing and memory measurement are reused), with the error against a float64 reference.

Timings on a shared machine are noisy: every number is the minimum over ``--reps`` runs.

    python benchmarks/bench_jax.py             # ~15 minutes on 2 cores
    python benchmarks/bench_jax.py --quick     # a short smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from hessntk.spectral import LinearOperator

GRAM_METHODS = ["hessntk.jax gram (auto)", "hessntk.jax gram (method=jacobian)",
                "hessntk.jax gram (method=ntk_vp)"]


# -- the model in both frameworks ------------------------------------------------------------


def jax_twin(net):
    """Parameters ``[(W1, b1), (W2, b2), (W3, b3)]`` (torch order and layout) and the loss."""
    import jax
    import jax.numpy as jnp

    layers = [m for m in net if hasattr(m, "weight")]
    params = [(jnp.asarray(m.weight.detach().numpy()), jnp.asarray(m.bias.detach().numpy()))
              for m in layers]

    def f(p, x):
        (W1, b1), (W2, b2), (W3, b3) = p
        h = jax.nn.relu(x @ W1.T + b1)
        h = jax.nn.relu(h @ W2.T + b2)
        return h @ W3.T + b3

    def loss(p, batch):
        x, y = batch
        logp = jax.nn.log_softmax(f(p, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    return params, f, loss


class Timed(LinearOperator):
    """Wrap an operator and add up the wall time of its products (synchronised)."""

    def __init__(self, base: LinearOperator) -> None:
        super().__init__(base.shape[0], base.dtype, base.device, backend=base.backend)
        self.base, self.seconds, self.num_matvecs = base, 0.0, 0

    def _matmat(self, V):
        self.num_matvecs += V.shape[1]
        if hasattr(V, "block_until_ready"):
            V.block_until_ready()
        t = time.perf_counter()
        out = self.base.matmat(V)
        if hasattr(out, "block_until_ready"):
            out.block_until_ready()
        self.seconds += time.perf_counter() - t
        return out


def hessian_part(args) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 bookkeeping of the core
    import bench_hessian as bh
    import jax.numpy as jnp
    import numpy as np
    import torch
    from torch import nn

    import hessntk.jax as hj
    from hessntk.hessian import HessianOperator
    from hessntk.spectral import eigsh, slq

    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = bh.digits(512)
    net = bh.train(bh.mlp(), x, y)
    params, _, loss = jax_twin(net)
    data = (jnp.asarray(x.numpy()), jnp.asarray(y.numpy()))
    n = sum(p.numel() for p in net.parameters())
    print(f"jax {jax.__version__} (x64 on, float32 parameters), torch {torch.__version__} "
          f"threads {torch.get_num_threads()}, {n} parameters, batch 512, CPU "
          f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.2f})")

    # -- 1. product time / gradient time ------------------------------------------------------
    grad = jax.jit(jax.grad(loss))

    def jax_grad():
        jax.block_until_ready(grad(params, data))

    ce = nn.CrossEntropyLoss()

    def torch_grad():
        net.zero_grad(set_to_none=True)
        ce(net(x), y).backward()

    rng = np.random.default_rng(0)
    v1 = rng.standard_normal((n, 1)).astype(np.float32)
    v16 = rng.standard_normal((n, 16)).astype(np.float32)
    Hj = hj.HessianOperator(loss, params, data)
    Ht = HessianOperator(net, ce, (x, y))  # method="auto"
    j1, j16 = jnp.asarray(v1), jnp.asarray(v16)
    t1, t16 = torch.from_numpy(v1), torch.from_numpy(v16)
    rows = [
        ("hessntk.jax HessianOperator (jit)",
         bh.ratio(lambda: Hj.matmat(j1).block_until_ready(), jax_grad, 1, args.reps),
         bh.ratio(lambda: Hj.matmat(j16).block_until_ready(), jax_grad, 16, args.reps)),
        ("hessntk HessianOperator (torch, auto)",
         bh.ratio(lambda: Ht.matmat(t1), torch_grad, 1, args.reps),
         bh.ratio(lambda: Ht.matmat(t16), torch_grad, 16, args.reps)),
    ]
    tg_j = min(_time(jax_grad) for _ in range(args.reps))
    tg_t = min(_time(torch_grad) for _ in range(args.reps))
    print("\n1. product time / gradient time (minimum over repetitions, interleaved)")
    print(f"   gradient: jax.jit {tg_j * 1e3:.1f} ms, torch {tg_t * 1e3:.1f} ms")
    print(f"   {'':40s} {'1 vector':>9s} {'per vector of 16':>17s}")
    for name, r1, r16 in rows:
        print(f"   {name:40s} {r1:9.2f} {r16:17.2f}")

    # -- 2. top eigenvalue and SLQ --------------------------------------------------------------
    steps, probes = (int(a) for a in args.slq.split("x"))
    tasks = [
        ("top eigenvalue (eigsh k=1, tol=1e-2)",
         lambda op: eigsh(op, 1, tol=1e-2, seed=0, return_eigenvectors=False).eigenvalues[0]),
        (f"SLQ {steps} steps x {probes} probes",
         lambda op: slq(op, num_probes=probes, num_matvecs=steps, seed=0).nodes.max()),
    ]
    builders = {
        "jax": lambda: hj.HessianOperator(loss, params, data, check_deterministic=False),
        "torch": lambda: HessianOperator(net, ce, (x, y)),
    }
    print("\n2. wall time (s): first call in the process, best warm call (a fresh operator "
          "each); in brackets the part spent in products (jax: asynchronous dispatch lets "
          "queued core work land in it)")
    print(f"   {'task':38s} {'jax first':>10s} {'jax warm':>17s} {'torch first':>12s} "
          f"{'torch warm':>17s} {'jax/torch':>9s}")
    for name, task in tasks:
        reps = args.reps if "eigsh" in name else args.slq_reps
        res = {}
        for fw, build in builders.items():
            times, prods, values, counts = [], [], [], []
            for _ in range(reps + 1):
                op = Timed(build())
                t = time.perf_counter()
                values.append(float(task(op)))
                times.append(time.perf_counter() - t)
                prods.append(op.seconds)
                counts.append(op.num_matvecs)
            best = 1 + int(np.argmin(times[1:]))
            res[fw] = (times[0], times[best], prods[best], values[best], counts[best])
        j, t = res["jax"], res["torch"]
        print(f"   {name:38s} {j[0]:10.2f} {j[1]:8.2f} ({j[2]:6.2f}) {t[0]:12.2f} "
              f"{t[1]:8.2f} ({t[2]:6.2f}) {j[1] / t[1]:9.2f}")
        print(f"   {'':38s} value jax {j[3]:.6g}, torch {t[3]:.6g}; products jax {j[4]}, "
              f"torch {t[4]}")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# -- 3. NTK Gram against neural-tangents --------------------------------------------------------


def child_gram(args) -> None:
    import bench_ntk as bn
    import jax
    import jax.numpy as jnp
    import numpy as np

    import hessntk.jax as hj

    arrays = bn._load(args.data)
    params = [(jnp.asarray(arrays[f"W{i}"]), jnp.asarray(arrays[f"b{i}"])) for i in (1, 2, 3)]
    x = jnp.asarray(arrays["x"])

    def f(p, x):
        (W1, b1), (W2, b2), (W3, b3) = p
        h = jax.nn.relu(x @ W1.T + b1)
        h = jax.nn.relu(h @ W2.T + b2)
        return h @ W3.T + b3

    method = {GRAM_METHODS[0]: "auto", GRAM_METHODS[1]: "jacobian",
              GRAM_METHODS[2]: "ntk_vp"}[args.child]
    m = bn._measure(lambda: hj.gram(f, params, x, method=method).block_until_ready(), args.reps)
    K = np.asarray(m.pop("result"), dtype=np.float64)
    if args.save:
        np.save(args.save, K)
    print("RESULT " + json.dumps(m))


def launch_jax(method: str, data: Path, save: Path | None, reps: int, timeout: float) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=str(ROOT))
    cmd = [sys.executable, __file__, "--child", method, "--data", str(data), "--reps", str(reps)]
    if save is not None:
        cmd += ["--save", str(save)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"note": f"timeout > {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"note": f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:60]}"}


def gram_part(args) -> None:
    import bench_ntk as bn
    import numpy as np

    sizes = [tuple(int(a) for a in s.split("x")) for s in args.gram.split(",")]
    print("\n3. NTK Gram (n c, n c), float32, identity prior; minimum of up to "
          f"{args.reps} calls after a warm-up, peak memory above baseline, error vs float64")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, c in sizes:
            data = Path(tmp) / f"data_{n}_{c}.npz"
            bn.make_data(n, c, data)
            K_ref = bn.reference(data)
            for method in GRAM_METHODS + list(bn.NT_METHODS):
                save = Path(tmp) / "K.npy"
                if method in GRAM_METHODS:
                    res = launch_jax(method, data, save, args.reps, args.timeout)
                else:
                    res = bn.launch(method, data, save, args.reps, args.timeout)
                err = None
                if "time" in res and save.exists():
                    err = float(np.abs(np.load(save) - K_ref).max() / np.abs(K_ref).max())
                    save.unlink()
                rows.append((method, n, c, res, err))
                bn.print_row(method, n, c, res, err, flush=True)
    print()
    bn.print_table(rows)
    print("\n   ratio hessntk.jax gram (auto) time / neural-tangents time:")
    for n, c in sizes:
        mine = next(r[3] for r in rows if r[:3] == (GRAM_METHODS[0], n, c))
        for method in bn.NT_METHODS:
            other = next(r[3] for r in rows if r[:3] == (method, n, c))
            if "time" in mine and "time" in other:
                print(f"   n={n:5d} c={c:2d} vs {method:40s} {mine['time'] / other['time']:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--reps", type=int, default=5, help="timing repetitions")
    parser.add_argument("--slq", default="100x10", help="SLQ STEPSxPROBES")
    parser.add_argument("--slq-reps", type=int, default=1, help="warm SLQ repetitions")
    parser.add_argument("--gram", default="256x10,1024x1", help="Gram sizes NxC, comma-separated")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per Gram run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--no-hessian", action="store_true")
    parser.add_argument("--no-gram", action="store_true")
    parser.add_argument("--child")
    parser.add_argument("--data")
    parser.add_argument("--save")
    args = parser.parse_args()
    if args.child:
        child_gram(args)
        return
    if args.quick:
        args.reps, args.slq, args.slq_reps, args.gram = 2, "20x4", 1, "128x1"
    if not args.no_hessian:
        hessian_part(args)
    if not args.no_gram:
        gram_part(args)


if __name__ == "__main__":
    main()
