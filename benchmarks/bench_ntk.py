"""Empirical NTK Gram: hessntk vs torch.func recipes, nngeometry and neural-tangents.

One command, one table::

    python benchmarks/bench_ntk.py            # n = 256 and 1024, c = 1 and 10, ~10 minutes
    python benchmarks/bench_ntk.py --quick    # n = 256 only

Workload: an MLP 64-512-512-c (ReLU, float32, CPU) on the first n images of sklearn's
``load_digits`` (standardised), the full ``(n c, n c)`` Gram with identity prior. Every
implementation computes the same function with the same weights (the torch weights are handed
to neural-tangents as ``stax.Dense(parameterization="standard")`` parameters).

How it measures (honestly, and the same way for everyone):

- Each (method, n, c) runs in its own fresh subprocess (neural-tangents in its own venv with
  jax 0.4.23, nngeometry in a venv that shares the system torch).
- Time: after one warm-up call (jit compilation, first-call allocations), the best of up to 3
  calls, with ``block_until_ready`` for jax.
- Memory: peak resident set size above the post-warm-up baseline. The child resets the
  kernel's high-water mark (``echo 5 > /proc/self/clear_refs``) right before the measured
  call and reads ``VmHWM`` after it; glibc is told to ``mmap`` every block >= 64 kB
  (``MALLOC_MMAP_THRESHOLD_``) so that memory freed by the warm-up is returned to the OS and
  the peak of the measured call is seen in full. This counts every allocator (torch, XLA,
  numpy), which ``tracemalloc`` would not. The returned Gram itself is included.
- Accuracy: at n = 256 every result is compared with a float64 reference (hessntk's
  structured Gram in float64, itself tested against ``torch.func.jacrev`` Jacobians in
  ``tests/ntk``); the table prints the relative max-abs error.

It also times one ``GramOperator`` product at n = 20000 (digits tiled with small noise) and
reports its peak memory next to the size of the explicit float64 Gram.

Side environments (created once, never pulling another torch)::

    python -m venv --system-site-packages /work/bench-venv
    /work/bench-venv/bin/pip install --no-deps nngeometry
    python -m venv /work/nt-venv
    /work/nt-venv/bin/pip install "jax[cpu]==0.4.23" "jaxlib==0.4.23" neural-tangents \
        numpy scikit-learn && /work/nt-venv/bin/pip install "numpy<2"

(jaxlib 0.4.23 is built against NumPy 1.x.) Missing environments are reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = Path(os.environ.get("HESSNTK_BENCH_VENV", "/work/bench-venv"))
NT_VENV = Path(os.environ.get("HESSNTK_NT_VENV", "/work/nt-venv"))
WIDTH = 512
D_IN = 64

TORCH_METHODS = [
    "hessntk gram (auto: structured)",
    "hessntk gram (method=jacobian)",
    "hessntk gram (method=ntk_vp)",
    "torch.func vmap(jacrev)+einsum",
    "torch.func NTK-vector products (chunked)",
]
NNGEOMETRY = "nngeometry GramMatrix"
NT_METHODS = {
    "neural-tangents JACOBIAN_CONTRACTION": 1,
    "neural-tangents NTK_VECTOR_PRODUCTS": 2,
    "neural-tangents STRUCTURED_DERIVATIVES": 3,
}


# -- measurement helpers (run in the children) ------------------------------------------------


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _measure(fn, reps: int) -> dict:
    """Warm up, reset the RSS high-water mark, time ``fn`` and read the peak above baseline."""
    import gc

    out = fn()
    del out
    gc.collect()
    base = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    t0 = time.perf_counter()
    out = fn()
    times = [time.perf_counter() - t0]
    peak = _status("VmHWM") - base if reset else float("nan")
    result = out
    del out
    gc.collect()
    for _ in range(reps - 1):
        if times[0] > 20:
            break
        t0 = time.perf_counter()
        o = fn()
        times.append(time.perf_counter() - t0)
        del o
    return {"time": min(times), "peak": peak, "result": result}


def _load(data_path: str):
    import numpy as np

    z = np.load(data_path)
    return {k: z[k] for k in z.files}


# -- children -------------------------------------------------------------------------------


def _torch_model(arrays):
    import torch
    from torch import nn

    c = arrays["W3"].shape[0]
    net = nn.Sequential(
        nn.Linear(D_IN, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, c)
    )
    with torch.no_grad():
        for i, layer in zip((1, 2, 3), (net[0], net[2], net[4]), strict=True):
            layer.weight.copy_(torch.from_numpy(arrays[f"W{i}"]))
            layer.bias.copy_(torch.from_numpy(arrays[f"b{i}"]))
    return net.eval()


def child_torch(method: str, arrays, reps: int) -> dict:
    import numpy as np
    import torch
    from torch.func import functional_call, jacrev, jvp, vjp, vmap

    sys.path.insert(0, str(ROOT))
    from hessntk.ntk import gram

    net = _torch_model(arrays)
    x = torch.from_numpy(arrays["x"])
    params = {k: v.detach() for k, v in net.named_parameters()}

    def fnet_single(p, xi):
        return functional_call(net, p, (xi.unsqueeze(0),)).squeeze(0)

    # --- the two recipes of the PyTorch "Neural Tangent Kernels" tutorial, verbatim in spirit
    def tutorial_jacobian_contraction(x1, x2):
        jac1 = vmap(jacrev(fnet_single), (None, 0))(params, x1)
        jac1 = [j.flatten(2) for j in jac1.values()]
        jac2 = vmap(jacrev(fnet_single), (None, 0))(params, x2)
        jac2 = [j.flatten(2) for j in jac2.values()]
        result = torch.stack(
            [torch.einsum("Naf,Mbf->NMab", j1, j2) for j1, j2 in zip(jac1, jac2, strict=True)]
        )
        return result.sum(0)

    def tutorial_ntk_vps(x1, x2):
        def get_ntk(x1, x2):
            def func_x1(p):
                return fnet_single(p, x1)

            def func_x2(p):
                return fnet_single(p, x2)

            output, vjp_fn = vjp(func_x1, params)

            def get_ntk_slice(vec):
                vjps = vjp_fn(vec)
                _, jvps = jvp(func_x2, (params,), vjps)
                return jvps

            basis = torch.eye(output.numel(), dtype=output.dtype).view(output.numel(), -1)
            return vmap(get_ntk_slice)(basis)

        # The tutorial's nested vmap materialises n^2 parameter-sized tangents (out of
        # memory already at n = 256); chunk_size=1 on the outer vmap is the only change.
        return vmap(vmap(get_ntk, (None, 0)), (0, None), chunk_size=1)(x1, x2)

    n, c = x.shape[0], arrays["W3"].shape[0]
    fns = {
        # float32 results like every peer (the library's default is a float64 accumulation).
        TORCH_METHODS[0]: lambda: gram(net, x, dtype=torch.float32),
        TORCH_METHODS[1]: lambda: gram(net, x, method="jacobian", dtype=torch.float32),
        TORCH_METHODS[2]: lambda: gram(net, x, method="ntk_vp", dtype=torch.float32),
        TORCH_METHODS[3]: lambda: tutorial_jacobian_contraction(x, x),
        TORCH_METHODS[4]: lambda: tutorial_ntk_vps(x, x),
    }
    m = _measure(fns[method], reps)
    K = m.pop("result")
    if K.ndim == 4:  # (n, n, c, c) -> (n c, n c)
        K = K.permute(0, 2, 1, 3).reshape(n * c, n * c)
    m["K"] = K.detach().numpy().astype(np.float64)
    return m


def child_nngeometry(arrays, reps: int) -> dict:
    import numpy as np
    import torch
    from nngeometry.gram import GramMatrix
    from torch.utils.data import DataLoader, TensorDataset

    net = _torch_model(arrays)
    x = torch.from_numpy(arrays["x"])
    n, c = x.shape[0], arrays["W3"].shape[0]
    loader = DataLoader(TensorDataset(x, torch.zeros(n)), batch_size=min(n, 256))
    m = _measure(lambda: GramMatrix(net, loader).data, reps)
    K = m.pop("result")  # (c, n, c, n)
    m["K"] = K.permute(1, 0, 3, 2).reshape(n * c, n * c).numpy().astype(np.float64)
    return m


def child_nt(method: str, arrays, reps: int) -> dict:
    import jax
    import neural_tangents as nt
    import numpy as np
    from neural_tangents import stax

    c = arrays["W3"].shape[0]
    _, apply_fn, _ = stax.serial(
        stax.Dense(WIDTH, parameterization="standard"), stax.Relu(),
        stax.Dense(WIDTH, parameterization="standard"), stax.Relu(),
        stax.Dense(c, parameterization="standard"),
    )
    params = [
        (arrays["W1"].T, arrays["b1"]), (), (arrays["W2"].T, arrays["b2"]), (),
        (arrays["W3"].T, arrays["b3"]),
    ]
    params = jax.tree_util.tree_map(jax.numpy.asarray, params)
    x = jax.numpy.asarray(arrays["x"])
    impl = nt.NtkImplementation(NT_METHODS[method])
    fn = jax.jit(
        nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0, implementation=impl)
    )
    m = _measure(lambda: fn(x, None, params).block_until_ready(), reps)
    K = np.asarray(m.pop("result"))  # (n, n, c, c)
    n = K.shape[0]
    m["K"] = K.transpose(0, 2, 1, 3).reshape(n * c, n * c).astype(np.float64)
    return m


def child_operator(arrays, reps: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from hessntk.ntk import GramOperator

    net = _torch_model(arrays)
    x = torch.from_numpy(arrays["x"])
    batches = list(torch.split(x, 4096))
    op = GramOperator(net, batches)
    v = torch.from_numpy(arrays["v"][: op.shape[0]])
    m = _measure(lambda: op.matvec(v), reps)
    m.pop("result")
    return m


def run_child(args) -> None:
    import numpy as np

    arrays = _load(args.data)
    if args.method in TORCH_METHODS:
        m = child_torch(args.method, arrays, args.reps)
    elif args.method == NNGEOMETRY:
        m = child_nngeometry(arrays, args.reps)
    elif args.method in NT_METHODS:
        m = child_nt(args.method, arrays, args.reps)
    else:
        m = child_operator(arrays, args.reps)
    K = m.pop("K", None)
    if K is not None and args.save:
        np.save(args.save, K)
    print("RESULT " + json.dumps(m))


# -- parent ---------------------------------------------------------------------------------


def make_data(n: int, c: int, path: Path, seed: int = 0) -> None:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    X = load_digits().data.astype(np.float64)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    if n > len(X):  # tile with small noise for the large-n operator product
        rng = np.random.default_rng(seed)
        X = np.concatenate([X] * (n // len(X) + 1))[:n]
        X = X + 0.01 * rng.standard_normal(X.shape)
    x = X[:n].astype(np.float32)
    torch.manual_seed(seed)
    layers = [nn.Linear(D_IN, WIDTH), nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, c)]
    arrays = {"x": x}
    for i, layer in enumerate(layers, start=1):
        arrays[f"W{i}"] = layer.weight.detach().numpy()
        arrays[f"b{i}"] = layer.bias.detach().numpy()
    arrays["v"] = np.random.default_rng(seed).standard_normal(n * c).astype(np.float32)
    np.savez(path, **arrays)


def interpreter(method: str) -> tuple[str | None, str]:
    if method == NNGEOMETRY:
        py = BENCH_VENV / "bin" / "python"
        if not py.exists():
            return None, f"no {BENCH_VENV} (see the module docstring)"
        ok = subprocess.run([str(py), "-c", "import nngeometry"], capture_output=True)
        return (str(py), "") if ok.returncode == 0 else (None, "nngeometry does not import")
    if method in NT_METHODS:
        py = NT_VENV / "bin" / "python"
        if not py.exists():
            return None, f"no {NT_VENV} (see the module docstring)"
        return str(py), ""
    return sys.executable, ""


def launch(method: str, data: Path, save: Path | None, reps: int, timeout: float) -> dict:
    py, why = interpreter(method)
    if py is None:
        return {"note": why}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=str(ROOT))
    cmd = [py, __file__, "--child", method, "--data", str(data), "--reps", str(reps)]
    if save is not None:
        cmd += ["--save", str(save)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"note": f"timeout > {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if "Error" in ln and "removed its internal frames" not in ln]
    err = (errors or lines or [f"exit code {proc.returncode}"])[-1]
    if proc.returncode < 0:
        err = f"killed by signal {-proc.returncode} (out of memory?)"
    return {"note": f"failed: {err[:60]}"}


def reference(data: Path):
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from hessntk.ntk import gram

    arrays = _load(str(data))
    net = _torch_model(arrays).double()
    x = torch.from_numpy(arrays["x"]).double()
    return gram(net, x, method="structured").numpy().astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 256 only")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sizes", default="256,1024", help="sample counts n")
    parser.add_argument("--only", default="", help="comma-separated substrings of methods")
    parser.add_argument("--outputs", default="1,10", help="output widths c, e.g. '1'")
    parser.add_argument("--no-operator", action="store_true", help="skip the n = 20000 run")
    parser.add_argument("--child")
    parser.add_argument("--data")
    parser.add_argument("--save")
    args = parser.parse_args()
    if args.child:
        args.method = args.child
        run_child(args)
        return

    import numpy as np

    sizes = [256] if args.quick else [int(n) for n in args.sizes.split(",")]
    wanted = args.only.split(",")
    methods = [
        m for m in TORCH_METHODS + [NNGEOMETRY] + list(NT_METHODS) if any(w in m for w in wanted)
    ]
    widths = [int(c) for c in args.outputs.split(",")]
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    # The tutorial's NTK-vector products take ~c x 30 s at n = 1024: not run for c = 10.
    skip = {(TORCH_METHODS[4], 1024, 10): "skipped (minutes; c x the c = 1 time)"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in widths:
            for n in sizes:
                data = Path(tmp) / f"data_{n}_{c}.npz"
                make_data(n, c, data)
                K_ref = reference(data) if n == 256 else None
                for method in methods:
                    if (method, n, c) in skip:
                        rows.append((method, n, c, {"note": skip[(method, n, c)]}, None))
                        continue
                    save = Path(tmp) / "K.npy" if K_ref is not None else None
                    res = launch(method, data, save, args.reps, args.timeout)
                    err = None
                    if K_ref is not None and "time" in res and save.exists():
                        K = np.load(save)
                        err = float(np.abs(K - K_ref).max() / np.abs(K_ref).max())
                        save.unlink()
                    rows.append((method, n, c, res, err))
                    print_row(*rows[-1], flush=True)
        print()
        print_table(rows)
        if args.no_operator:
            return
        # One GramOperator product at n = 20000.
        print("\nGramOperator, one product (matvec) at n = 20000, float32:")
        for c in widths:
            data = Path(tmp) / f"op_{c}.npz"
            make_data(20000, c, data)
            res = launch("operator", data, None, args.reps, args.timeout)
            N = 20000 * c
            dense = N * N * 8
            if "time" in res:
                print(f"  c = {c:2d}: N = {N:6d}: {res['time']:.3f} s, peak "
                      f"+{res['peak'] / 1e6:.0f} MB (explicit float64 Gram: {dense / 1e9:.1f} GB)")
            else:
                print(f"  c = {c:2d}: {res.get('note')}")


def _fmt(res: dict) -> tuple[str, str]:
    if "time" not in res:
        return res.get("note", "?"), ""
    return f"{res['time']:.3f}", f"{res['peak'] / 1e6:.0f}"


def print_row(method, n, c, res, err, flush=False) -> None:
    t, mem = _fmt(res)
    e = "" if err is None else f"{err:.1e}"
    print(f"{method:40s} n={n:5d} c={c:2d}  time {t:>10s} s  peak +{mem:>6s} MB  err {e}",
          flush=flush)


def print_table(rows) -> None:
    print(f"| {'method':40s} | {'n':>5s} | {'c':>2s} | {'time (s)':>10s} | {'peak (MB)':>9s} "
          f"| {'rel err':>7s} |")
    print(f"|{'-' * 42}|{'-' * 7}|{'-' * 4}|{'-' * 12}|{'-' * 11}|{'-' * 9}|")
    for method, n, c, res, err in rows:
        t, mem = _fmt(res)
        e = "" if err is None else f"{err:.0e}"
        print(f"| {method:40s} | {n:5d} | {c:2d} | {t:>10s} | {mem:>9s} | {e:>7s} |")


if __name__ == "__main__":
    main()
