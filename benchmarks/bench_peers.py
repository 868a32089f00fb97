"""hessntk side by side with its peers PyHessian, curvlinops and hessian-eigenthings.

Run: ``python benchmarks/bench_peers.py [--threads 2] [--rounds 3] [--quick]`` (the peers
``pyhessian``, ``curvlinops`` (``curvlinops-for-pytorch``) and ``hessian_eigenthings`` must be
importable; a missing or broken peer prints ``peer X failed: <reason>`` and the rest goes on).
The setting is issue 16's: the Hessian of the MLP 64-512-512-10 (301k parameters, float32,
untrained, ``torch.manual_seed(0)``) under ``CrossEntropyLoss`` on 512 standardised
``load_digits`` images, ``torch.set_num_threads(2)`` (and the BLAS pools limited alike).
``--quick`` divides the products (trace 30, SLQ 2 probes x 30 steps, top 1 and 3 eigenvalues,
PyHessian power iterations 30) so that the whole script runs in under about two minutes; the
full settings (trace 100, SLQ 10 x 100, top 1 and 10) take several minutes on two cores.

Every peer's products are counted and timed by wrapping its own product function (PyHessian's
``hessian_vector_product``, curvlinops' ``_matmat``, hessian-eigenthings' ``matvec``); ours
by a ``CountingOperator``. So each run prints its wall time, its products and the seconds
spent inside them, and ``wall/prod`` = wall time / product seconds (1.0 = all the time is in
the products; above 1 is the algorithm's own overhead: reorthogonalisation, Python loops).

The trace and eigenvalue candidates run ``--rounds`` times each, interleaved (every round
runs all of them once, so that a drift of the machine's load hits all alike), and each row
shows its run of median wall time; the SLQ section runs once (a minute per candidate).

Sections and ratios:

1. ms per Hessian-vector product for k = 1, 8, 16 vectors at once, and in units of one
   gradient (forward + backward on the batch). ``rel.diff`` = ``||Hv_peer - Hv_ours|| /
   ||Hv_ours||`` for one vector: all compute the same matrix.
2. Trace from the same product budget; ``ours/peer`` = our wall time with the same estimator
   (Hutchinson, Hutch++ or XTrace) / the peer's wall time (below 1: we are faster).
3. Top-k eigenvalues; ``ours/peer`` = our ``eigsh`` wall / the peer's; ``rel.diff`` = the
   largest relative difference of the peer's top-k eigenvalues from ours; the best peer is the
   fastest of those within 1e-3 of ours. hessian-eigenthings' Lanczos is given as many steps
   as our ``eigsh`` made products.
4. SLQ spectral density, probes x steps; ``ours/peer`` = our wall time (reorth ``partial``)
   / the peer's; ``trace`` is each density's estimate ``n * mean_l sum_j w_lj theta_lj``.

Each section ends with ``ours/best peer``: our wall / the fastest peer's wall.

Peer caveats (read from their installed source): PyHessian builds the gradient graph once
(``create_graph=True``) so its hvp is one double-backward, one vector at a time; its ``trace``
is Hutchinson with one Rademacher probe (one product) per iteration, and its tolerance test
divides by the signed running mean, so it is called with ``tol=-inf`` to make exactly
``maxIter`` products; ``eigenvalues`` is power iteration with deflation (``maxIter`` products
per eigenvalue at most); ``density`` is Lanczos with full (one-pass Gram-Schmidt, float32,
per-parameter Python loops) reorthogonalisation, and calls ``torch.eig``, removed in torch 2,
for which this script stands in ``torch.linalg.eigh`` during the call. curvlinops multiplies
all the columns of a matrix at once (``vmap`` of forward-over-reverse, recomputing the
forward pass); ``check_deterministic=False`` skips its start-up check products. Its
``lanczos_approximate_spectrum`` has no reorthogonalisation and returns only a smoothed
density. hessian-eigenthings 1.0 (no ``compute_hessian_eigenthings`` any more) recomputes
forward + backward + double-backward for every vector; its ``lanczos`` makes a fixed number
of steps (no restarts) and its ``spectral_density`` always reorthogonalises fully.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from hessntk.hessian import GGNOperator, HessianOperator
from hessntk.spectral import CountingOperator, eigsh, slq, trace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_slq_overhead import digits_mlp

Row = list[str]
#: One timed run: (value as printed, wall s, products, seconds in the products).
Run = tuple[Any, float, int, float]


# -- helpers ---------------------------------------------------------------------------------
class Meter:
    """Counts the products (columns) a peer computes and the seconds spent in them."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0

    def wrap(self, fn: Callable[..., Any], cols: Callable[..., int]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            self.count += cols(*args, **kwargs)
            return out

        return timed


def table(headers: Row, rows: list[Row]) -> None:
    """Print an aligned table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for r in [headers, *rows]:
        rest = [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        cells = [r[0].ljust(widths[0]), *rest]
        print("  " + "  ".join(cells).rstrip(), flush=True)


def failed(name: str, exc: BaseException) -> None:
    reason = (str(exc).strip().splitlines() or [""])[0][:160]
    print(f"  peer {name} failed: {type(exc).__name__}: {reason}", flush=True)


def f3(x: float) -> str:
    return f"{x:.3f}"


def g5(x: float) -> str:
    return f"{x:.5g}"


def ratio(ours: float | None, peer: float | None) -> str:
    return "-" if ours is None or not peer else f"{ours / peer:.2f}"


def split(v: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """A flat vector as a list of parameter-shaped tensors (model.parameters() order)."""
    chunks = torch.split(v, [p.numel() for p in params])
    return [c.reshape(p.shape) for c, p in zip(chunks, params, strict=True)]


def flat(ts: Any) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def clear_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def eig_shim() -> Callable[[], None]:
    """PyHessian's ``density`` calls ``torch.eig``, removed in torch 2; stand in with eigh.

    Returns the function that restores ``torch.eig``. The tridiagonal matrix is symmetric, so
    ``eigh`` gives the same pairs (eigenvectors as columns, like ``torch.eig``).
    """
    original = getattr(torch, "eig", None)
    try:
        original(torch.eye(1), eigenvectors=True)  # type: ignore[misc]
        return lambda: None
    except Exception:
        pass

    def eig(A: torch.Tensor, eigenvectors: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        w, V = torch.linalg.eigh(A)
        return torch.stack([w, torch.zeros_like(w)], 1), V

    torch.eig = eig  # type: ignore[attr-defined]

    def restore() -> None:
        torch.eig = original  # type: ignore[attr-defined]

    return restore


class Peers:
    """Builds each peer's Hessian operator on the same model and batch, with a product meter."""

    def __init__(self, model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.X, self.y = model, X, y
        self.crit = nn.CrossEntropyLoss()
        self.params = [p for p in model.parameters() if p.requires_grad]

        self._restore: list[Callable[[], None]] = []

    def release(self) -> None:
        """Undo the patches made for the last peer run (PyHessian's metered hvp, torch.eig)."""
        while self._restore:
            self._restore.pop()()
        clear_grads(self.model)

    def run(self, name: str, make: Callable[[], tuple[Any, Meter]],
            call: Callable[[Any], Any]) -> tuple[Any, float, Meter] | None:
        """``call(operator)`` on a fresh peer operator: (result, wall s, meter), or None."""
        try:
            obj, meter = make()
            start = time.perf_counter()
            with quiet():
                out = call(obj)
            return out, time.perf_counter() - start, meter
        except Exception as exc:
            failed(name, exc)
            return None
        finally:
            self.release()

    def runner(self, name: str, make: Callable[[], tuple[Any, Meter]],
               call: Callable[[Any], Any], show: Callable[[Any], Any]) -> Callable[[], Run | None]:
        """A candidate of :func:`median_runs`: :meth:`run`, its value shown by ``show``."""
        def timed() -> Run | None:
            got = self.run(name, make, call)
            if got is None:
                return None
            out, wall, meter = got
            return show(out), wall, meter.count, meter.seconds

        return timed

    def pyhessian(self) -> tuple[Any, Meter]:
        """A ``pyhessian.hessian`` object; its products go through the metered hvp."""
        # the package's __init__ rebinds ``pyhessian.hessian`` to the class: take the module
        ph = importlib.import_module("pyhessian.hessian")
        clear_grads(self.model)  # its constructor accumulates into .grad (create_graph=True)
        with quiet():
            h = ph.hessian(self.model, self.crit, data=(self.X, self.y), cuda=False)
        meter, original = Meter(), ph.hessian_vector_product
        ph.hessian_vector_product = meter.wrap(original, lambda *a: 1)

        def restore() -> None:
            ph.hessian_vector_product = original

        self._restore.append(restore)
        return h, meter

    def pyhessian_density(self) -> tuple[Any, Meter]:
        """As :meth:`pyhessian`, with ``torch.eig`` stood in for (see :func:`eig_shim`)."""
        out = self.pyhessian()
        self._restore.append(eig_shim())
        return out

    def curvlinops(self) -> tuple[Any, Meter]:
        from curvlinops import HessianLinearOperator

        H = HessianLinearOperator(self.model, self.crit, self.params, [(self.X, self.y)],
                                  check_deterministic=False)
        meter = Meter()
        H._matmat = meter.wrap(H._matmat, lambda M: M[0].shape[-1])
        return H, meter

    def eigenthings(self) -> tuple[Any, Meter]:
        from hessian_eigenthings import HessianOperator as EtHessian
        from hessian_eigenthings import supervised_loss

        op = EtHessian(self.model, [(self.X, self.y)], supervised_loss(self.crit))
        meter = Meter()
        op.matvec = meter.wrap(op.matvec, lambda v: 1)
        return op, meter


def median_runs(candidates: list[tuple[str, Callable[[], Run | None]]],
                rounds: int) -> dict[str, Run]:
    """Run every candidate once per round, interleaved (so that a drift of the machine's
    load hits all alike), and keep each one's run of median wall time."""
    runs: dict[str, list[Run]] = {name: [] for name, _ in candidates}
    for _ in range(rounds):
        for name, call in candidates:
            got = call()
            if got is not None:
                runs[name].append(got)
    return {name: sorted(rs, key=lambda r: r[1])[len(rs) // 2] for name, rs in runs.items()
            if rs}


def mean_seconds(fn: Callable[[], Any], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


# -- 1. products -----------------------------------------------------------------------------
def bench_products(model: nn.Module, X: torch.Tensor, y: torch.Tensor, peers: Peers,
                   reps: int) -> HessianOperator:
    crit, params = nn.CrossEntropyLoss(), peers.params
    grad = lambda: torch.autograd.grad(crit(model(X), y), params)  # noqa: E731
    grad()
    grad()
    t_grad = mean_seconds(grad, 10)
    print(f"\n1. one gradient (forward + backward, 512 images): {1e3 * t_grad:.2f} ms "
          f"(mean of 10 after warm-up); Hessian products, ms per vector (in gradients), "
          f"k vectors per call (mean of {reps} calls after one warm-up call at that k)")
    ops = {f"hessntk {m}": HessianOperator(model, crit, (X, y), method=m)
           for m in ("auto", "graph", "func")}
    ops["hessntk GGNOperator (GGN, not H)"] = GGNOperator(model, crit, (X, y))
    n = ops["hessntk auto"].shape[0]
    products: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        name: op.matmat for name, op in ops.items()}
    try:
        from pyhessian.utils import hessian_vector_product

        h, _ = peers.pyhessian()
        products["PyHessian hvp (loop over k)"] = lambda V: torch.stack(
            [flat(hessian_vector_product(h.gradsH, h.params, split(V[:, j], params)))
             for j in range(V.shape[1])], 1)
    except Exception as exc:
        failed("PyHessian", exc)
    try:
        H, _ = peers.curvlinops()
        products["curvlinops H @ V (vmap)"] = lambda V: H @ V
    except Exception as exc:
        failed("curvlinops", exc)
    try:
        et, _ = peers.eigenthings()
        products["hessian-eigenthings matvec (loop)"] = lambda V: torch.stack(
            [et.matvec(V[:, j].contiguous()) for j in range(V.shape[1])], 1)
    except Exception as exc:
        failed("hessian-eigenthings", exc)

    ks = (1, 8, 16)
    g = torch.Generator().manual_seed(0)
    Vs = {k: torch.randn(n, k, generator=g) for k in ks}
    ref = ops["hessntk graph"].matmat(Vs[1])[:, 0]
    rows = []
    for name, fn in products.items():
        row = [name]
        try:
            with quiet():
                for k in ks:
                    out = fn(Vs[k])  # warm-up at this k (auto: the method choice)
                    if k == 1:
                        diff = float(torch.linalg.vector_norm(out[:, 0] - ref)
                                     / torch.linalg.vector_norm(ref))
                    t = mean_seconds(lambda fn=fn, k=k: fn(Vs[k]), reps) / k
                    row.append(f"{1e3 * t:.2f} ({t / t_grad:.2f})")
            row.append(f"{diff:.1e}")
        except Exception as exc:
            failed(name, exc)
            continue
        rows.append(row)
    peers.release()
    table(["Hessian product", "k=1 ms (grads)", "k=8 ms (grads)", "k=16 ms (grads)",
           "rel.diff"], rows)
    print(f"  (hessntk auto chose {ops['hessntk auto'].batched_method!r} for k > 1; "
          f"rel.diff: vs hessntk graph, one vector; GGN differs from H by design)")
    return ops["hessntk auto"]


# -- 2. trace --------------------------------------------------------------------------------
def bench_trace(op: HessianOperator, peers: Peers, budget: int, rounds: int) -> None:
    print(f"\n2. trace estimate from about {budget} products (wall s, products, seconds in "
          f"products, wall/prod, value +- stderr, ours/peer = our wall, same estimator / "
          f"peer's wall)")
    budgets = {"hutchinson": budget, "hutchpp": 3 * (budget // 3), "xtrace": budget - budget % 2}

    def our_trace(method: str) -> Callable[[], Run]:
        def call() -> Run:
            counted = CountingOperator(op)
            start = time.perf_counter()
            est = trace(counted, num_matvecs=budgets[method], method=method, seed=0)
            wall = time.perf_counter() - start
            return (f"{est.value:.5g} +- {est.stderr:.2g}", wall, counted.num_matvecs,
                    counted.seconds)

        return call

    def ph_trace(h: Any) -> float:
        # Its stopping test |mean - previous mean| / (previous mean + 1e-6) < tol divides by
        # the signed mean: with tol=0 it still stops as soon as the running mean is negative.
        # tol=-inf never stops, so it makes maxIter products (one Hutchinson probe each).
        return float(np.mean(h.trace(maxIter=budgets["hutchinson"], tol=-np.inf)))

    def cl_trace(fn_name: str, est: str) -> Callable[[Any], float]:
        def call(H: Any) -> float:
            import curvlinops

            return float(getattr(curvlinops, fn_name)(H, budgets[est]))

        return call

    def et_trace(method: str, est: str) -> Callable[[Any], float]:
        def call(et: Any) -> float:
            from hessian_eigenthings import trace as et_trace

            return et_trace(et, num_matvecs=budgets[est], method=method, seed=0).estimate

        return call

    candidates = [(f"hessntk trace {m}", m, our_trace(m))
                  for m in ("xtrace", "hutchpp", "hutchinson")]
    candidates += [(name, est, peers.runner(name, make, call, g5)) for name, est, make, call in (
        ("PyHessian trace(maxIter, tol=-inf)", "hutchinson", peers.pyhessian, ph_trace),
        ("curvlinops hutchinson_trace", "hutchinson", peers.curvlinops,
         cl_trace("hutchinson_trace", "hutchinson")),
        ("curvlinops hutchpp_trace", "hutchpp", peers.curvlinops,
         cl_trace("hutchpp_trace", "hutchpp")),
        ("curvlinops xtrace", "xtrace", peers.curvlinops, cl_trace("xtrace", "xtrace")),
        ("hessian-eigenthings trace hutchinson", "hutchinson", peers.eigenthings,
         et_trace("hutchinson", "hutchinson")),
        ("hessian-eigenthings trace hutch++", "hutchpp", peers.eigenthings,
         et_trace("hutch++", "hutchpp")))]
    medians = median_runs([(name, call) for name, _, call in candidates], rounds)
    ours = {est: medians[name][1] for name, est, _ in candidates[:3]}
    walls: dict[str, float] = {}
    rows = []
    for name, est, _ in candidates:
        if name not in medians:
            continue
        value, wall, count, seconds = medians[name]
        mine = name.startswith("hessntk")
        if not mine:
            walls[name] = wall
        rows.append([name, str(count), f3(wall), f3(seconds), f"{wall / seconds:.2f}", value,
                     "-" if mine else ratio(ours[est], wall)])
    table(["trace", "products", "wall s", "prod s", "wall/prod", "value", "ours/peer"], rows)
    if walls:
        name = min(walls, key=walls.__getitem__)
        print(f"  ours/best peer: hessntk xtrace {ours['xtrace']:.3f} s / {name} "
              f"{walls[name]:.3f} s = {ours['xtrace'] / walls[name]:.2f}; hessntk hutchinson "
              f"/ same peer = {ours['hutchinson'] / walls[name]:.2f}")


# -- 3. top eigenvalues ----------------------------------------------------------------------
def bench_eigen(op: HessianOperator, peers: Peers, ks: tuple[int, ...], power_iters: int,
                rounds: int) -> None:
    print(f"\n3. top-k eigenvalues (largest algebraic; hessntk eigsh tol 1e-6, PyHessian power "
          f"iteration maxIter={power_iters} tol=1e-3 with deflation, hessian-eigenthings "
          f"Lanczos with full reorth and our product count as steps, curvlinops to_scipy + "
          f"scipy eigsh tol 1e-6)")
    for k in ks:
        bench_eigen_k(op, peers, k, power_iters, rounds)


def bench_eigen_k(op: HessianOperator, peers: Peers, k: int, power_iters: int,
                  rounds: int) -> None:
    def our_eigsh(basis_dtype: str, reorth: str = "partial") -> Callable[[], Run]:
        def call() -> Run:
            counted = CountingOperator(op)
            start = time.perf_counter()
            with quiet():
                res = eigsh(counted, k=k, seed=0, return_eigenvectors=False,
                            basis_dtype=basis_dtype, reorth=reorth)
            wall = time.perf_counter() - start
            vals = np.asarray(res.eigenvalues, dtype=np.float64)
            return (vals, f"converged={res.converged}"), wall, counted.num_matvecs, counted.seconds

        return call

    first = our_eigsh("operator")()  # the reference values and the peers' step count
    ref = first[0][0]
    steps = max(first[2], 2 * k)

    def ph_eig(h: Any) -> tuple[Any, str]:
        return h.eigenvalues(maxIter=power_iters, tol=1e-3, top_n=k)[0], ""

    def et_eig(et: Any) -> tuple[Any, str]:
        from hessian_eigenthings import lanczos

        r = lanczos(et, k=k, max_iter=steps, which="LA", seed=0, reorthogonalize=True)
        return r.eigenvalues.double().numpy(), f"converged {int(r.converged.sum())}/{k}"

    def cl_eig(H: Any) -> tuple[Any, str]:
        from scipy.sparse.linalg import eigsh as sp_eigsh

        return sp_eigsh(H.to_scipy(), k=k, which="LA", tol=1e-6, return_eigenvectors=False), ""

    ours = [f"hessntk eigsh k={k} (partial, float32 basis)", f"hessntk eigsh k={k} reorth=full",
            f"hessntk eigsh k={k} float64 basis"]
    candidates = [(ours[0], our_eigsh("operator")), (ours[1], our_eigsh("operator", "full")),
                  (ours[2], our_eigsh("float64"))]
    candidates += [(name, peers.runner(name, make, call, lambda out: out)) for name, make, call in (
        (f"PyHessian eigenvalues top_n={k}", peers.pyhessian, ph_eig),
        (f"hessian-eigenthings lanczos k={k}", peers.eigenthings, et_eig),
        (f"curvlinops + scipy eigsh k={k}", peers.curvlinops, cl_eig))]
    medians = median_runs(candidates, rounds)
    wall_ours = medians[ours[0]][1]
    found: dict[str, np.ndarray] = {"hessntk": ref}
    walls: dict[str, float] = {}
    rows = []
    for name, _ in candidates:
        if name not in medians:
            continue
        (vals, note), wall, count, seconds = medians[name]
        vals = np.sort(np.asarray(vals, dtype=np.float64))[::-1]
        mine = name in ours
        m = min(len(vals), len(ref))
        diff = float(np.max(np.abs(vals[:m] - ref[:m]) / np.abs(ref[:m])))
        if not mine:
            found[name] = vals
            if diff <= 1e-3:
                walls[name] = wall
        rows.append([name, str(count), f3(wall), f3(seconds), f"{wall / seconds:.2f}",
                     g5(vals[0]), g5(vals[-1]), "-" if mine else f"{diff:.1e}",
                     "-" if mine else ratio(wall_ours, wall), note])
    table(["eigenvalues", "products", "wall s", "prod s", "wall/prod", "top", f"#{k}",
           "rel.diff", "ours/peer", "note"], rows)
    if k > 1:
        for name, vals in found.items():
            print(f"  {name} top {k}: {np.array2string(vals, precision=4)}")
    if walls:
        name = min(walls, key=walls.__getitem__)
        print(f"  ours/best peer (k={k}, among peers agreeing with ours to 1e-3): {wall_ours:.3f} "
              f"s / {name} {walls[name]:.3f} s = {wall_ours / walls[name]:.2f}")
    else:
        print(f"  ours/best peer (k={k}): no peer agreed with ours to 1e-3")


# -- 4. SLQ ----------------------------------------------------------------------------------
def bench_slq(op: HessianOperator, peers: Peers, probes: int, steps: int) -> None:
    print(f"\n4. SLQ spectral density, {probes} probes x {steps} Lanczos steps (wall s, "
          f"products, seconds in products, wall/prod, trace estimate, top node; ours/peer = "
          f"hessntk reorth=partial wall / peer's wall)")
    n = op.shape[0]
    rows: list[Row] = []
    ours: dict[str, float] = {}
    bounds = (0.0, 0.0)
    for reorth in ("partial", "none", "full"):
        counted = CountingOperator(op)
        start = time.perf_counter()
        d = slq(counted, num_probes=probes, num_matvecs=steps, seed=0, reorth=reorth)
        wall = ours[reorth] = time.perf_counter() - start
        if reorth == "partial":
            bounds = (float(d.nodes.min()), float(d.nodes.max()))
        rows.append([f"hessntk slq reorth={reorth}", str(counted.num_matvecs), f3(wall),
                     f3(counted.seconds), f"{wall / counted.seconds:.2f}",
                     g5(d.trace().value), g5(float(d.nodes.max())), "-"])

    def quadrature(nodes: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
        nodes, weights = np.nan_to_num(nodes), np.nan_to_num(weights)
        return n * float(np.mean(np.sum(nodes * weights, axis=1))), float(nodes.max())

    def ph_density(h: Any) -> tuple[float, float | None]:
        nodes, weights = h.density(iter=steps, n_v=probes)
        return quadrature(np.array(nodes), np.array(weights))

    def et_density(et: Any) -> tuple[float, float | None]:
        from hessian_eigenthings import spectral_density

        r = spectral_density(et, num_runs=probes, lanczos_steps=steps, seed=0)
        return quadrature(r.raw_eigenvalues.double().numpy(), r.raw_weights.double().numpy())

    def cl_density(H: Any) -> tuple[float, float | None]:
        from curvlinops import lanczos_approximate_spectrum

        grid, dens = lanczos_approximate_spectrum(H, ncv=steps, num_repeats=probes,
                                                  boundaries=bounds)
        grid, dens = grid.double().numpy(), dens.double().numpy()
        return n * float(np.sum(grid * dens) * (grid[1] - grid[0])), None

    walls: dict[str, float] = {}
    for name, make, call in (
            ("PyHessian density (full reorth f32)", peers.pyhessian_density, ph_density),
            ("hessian-eigenthings spectral_density", peers.eigenthings, et_density),
            ("curvlinops lanczos_approximate_spectrum", peers.curvlinops, cl_density)):
        got = peers.run(name, make, call)
        if got is None:
            continue
        (tr, top), wall, meter = got
        walls[name] = wall
        rows.append([name, str(meter.count), f3(wall), f3(meter.seconds),
                     f"{wall / meter.seconds:.2f}", g5(tr), "-" if top is None else g5(top),
                     ratio(ours["partial"], wall)])
    table(["SLQ", "products", "wall s", "prod s", "wall/prod", "trace", "top node",
           "ours/peer"], rows)
    print("  (curvlinops: no reorth, Gaussian start, given our node range as its boundaries "
          "so it makes no eigsh products of its own; its trace is n * integral of lambda "
          "times its smoothed density)")
    if walls:
        name = min(walls, key=walls.__getitem__)
        print(f"  ours/best peer: hessntk partial {ours['partial']:.3f} s / {name} "
              f"{walls[name]:.3f} s = {ours['partial'] / walls[name]:.2f}; hessntk none / same "
              f"= {ours['none'] / walls[name]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="fewer products (trace 30, SLQ 2 x 30, top 1 and 3): < 2 min")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved runs of every trace and eigenvalue candidate; the "
                        "run of median wall time is shown (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        limits: Any = threadpool_limits(args.threads)
    except Exception:
        limits = contextlib.nullcontext()
    quick = args.quick
    reps, budget = (2, 30) if quick else (5, 100)
    ks, power_iters = ((1, 3), 30) if quick else ((1, 10), 100)
    probes, steps = (2, 30) if quick else (10, 100)
    start = time.perf_counter()
    with limits:
        model, X, y = digits_mlp()
        n = sum(p.numel() for p in model.parameters())
        print(f"hessntk vs peers: MLP 64-512-512-10, n = {n} parameters, {X.shape[0]} digits "
              f"images, CrossEntropyLoss, float32, {args.threads} threads"
              f"{' (--quick)' if quick else ''}")
        peers = Peers(model, X, y)
        op = bench_products(model, X, y, peers, reps)
        bench_trace(op, peers, budget, args.rounds)
        bench_eigen(op, peers, ks, power_iters, args.rounds)
        bench_slq(op, peers, probes, steps)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
