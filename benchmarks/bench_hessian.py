"""Benchmark hessntk's Hessian operators against PyHessian, curvlinops and hessian-eigenthings.

One process, CPU, float32: an MLP 64-512-512-10 (~300k parameters) and a small CNN on the
8x8 digit images of ``sklearn.datasets.load_digits``, one batch of 512. Prints

1. product time / gradient time, for one vector and per vector inside a 16-vector matmat;
2. top-1 and top-5 eigenvalues: wall time, products, relative error against a float64
   reference;
3. the trace at a fixed product budget: wall time, relative error against a 400-product
   XTrace reference (its standard error is printed);
4. a 100-step SLQ density with 10 probes: wall time.

Run: ``python benchmarks/bench_hessian.py`` (``--quick`` for a short smoke run). Peers are
imported optionally (``pip install --no-deps pyhessian curvlinops-for-pytorch
hessian-eigenthings`` in a side environment); a missing peer is skipped with a note.
PyHessian's ``density`` calls ``torch.eig``, removed from torch: it is patched here, in this
process only, with an equivalent built on ``torch.linalg.eigh``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from hessntk import hessian
from hessntk.hessian import GGNOperator, HessianOperator
from hessntk.spectral import eigsh, trace

warnings.filterwarnings("ignore")
torch.manual_seed(0)


def peer(name: str):
    try:
        return importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - any import failure means "skip this peer"
        print(f"  [skip] {name} not importable: {type(err).__name__}: {err}")
        return None


# -- models and data -------------------------------------------------------------------------


def digits(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return torch.tensor(X[:n] / 16.0, dtype=torch.float32), torch.tensor(y[:n])


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(32 * 16, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(-1, 1, 8, 8))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 100) -> nn.Module:
    """A short Adam run so that the Hessian is that of a (partly) trained network."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


# -- timing ------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def ratio(fn: Callable[[], object], grad: Callable[[], object], k: int, reps: int) -> float:
    """min product time / min gradient time / k, interleaved to share machine noise."""
    fn(), grad()  # warm up
    tp, tg = [], []
    for _ in range(reps):
        tg.append(timed(grad)[0])
        tp.append(timed(fn)[0])
    return min(tp) / min(tg) / k


def products(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reps: int, peers: bool) -> None:
    loss = nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)

    def grad() -> None:
        model.zero_grad(set_to_none=True)
        loss(model(x), y).backward()

    g = torch.Generator().manual_seed(0)
    v = torch.randn(n, 1, generator=g)
    V = torch.randn(n, 16, generator=g)
    rows = []
    H = HessianOperator(model, loss, (x, y))  # method="auto"
    rows.append(("hessntk Hessian, auto", ratio(lambda: H @ v, grad, 1, reps),
                 ratio(lambda: H @ V, grad, 16, reps)))  # fmt: skip
    for method in ("graph", "func"):
        Hm = HessianOperator(model, loss, (x, y), method=method)
        rows.append((f"hessntk Hessian, {method}", ratio(lambda Hm=Hm: Hm @ v, grad, 1, reps),
                     ratio(lambda Hm=Hm: Hm @ V, grad, 16, reps)))  # fmt: skip
    Hu = HessianOperator(model, loss, (x, y), method="graph", cache_graph=False)
    rows.append(("hessntk Hessian, graph uncached", ratio(lambda: Hu @ v, grad, 1, reps),
                 ratio(lambda: Hu @ V, grad, 16, reps)))  # fmt: skip
    G = GGNOperator(model, loss, (x, y))
    rows.append(("hessntk GGN", ratio(lambda: G @ v, grad, 1, reps),
                 ratio(lambda: G @ V, grad, 16, reps)))  # fmt: skip
    if peers:
        ph = peer("pyhessian")
        if ph is not None:
            from pyhessian.utils import hessian_vector_product

            hc = ph.hessian(model, loss, data=(x, y), cuda=False)
            vl = [torch.randn_like(p) for p in hc.params]
            rows.append(
                (
                    "PyHessian (cached graph)",
                    ratio(lambda: hessian_vector_product(hc.gradsH, hc.params, vl), grad, 1, reps),
                    None,
                )
            )
        cl = peer("curvlinops")
        if cl is not None:
            Hc = cl.HessianLinearOperator(model, loss, params, [(x, y)], check_deterministic=False)
            rows.append(("curvlinops", ratio(lambda: Hc @ v[:, 0], grad, 1, reps),
                         ratio(lambda: Hc @ V, grad, 16, reps)))  # fmt: skip
        he = peer("hessian_eigenthings")
        if he is not None:
            He = he.HessianOperator(model, [(x, y)], he.supervised_loss(loss))
            rows.append(("hessian-eigenthings", ratio(lambda: He.matvec(v[:, 0]), grad, 1, reps),
                         None))  # fmt: skip
    print(f"  {'':34s} {'1 vector':>10s} {'per vector of 16':>17s}")
    for name, r1, r16 in rows:
        s16 = f"{r16:17.2f}" if r16 is not None else f"{'-':>17s}"
        print(f"  {name:34s} {r1:10.2f} {s16}")


# -- spectra ---------------------------------------------------------------------------------


def reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    m64 = copy.deepcopy(model).double()
    H64 = HessianOperator(m64, nn.CrossEntropyLoss(), (x.double(), y))
    return eigsh(H64, 5, tol=1e-9, return_eigenvectors=False).eigenvalues


def spectra(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, quick: bool, slq: tuple | None = None
) -> None:
    loss = nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    lam = reference(model, x, y)
    print(
        f"  reference top-5 (float64, hessntk eigsh tol 1e-9): {np.array2string(lam, precision=5)}"
    )
    rows = []

    def add(name: str, seconds: float, nmv: object, vals: np.ndarray) -> None:
        vals = np.sort(np.asarray(vals, dtype=np.float64))[::-1]
        err = np.max(np.abs(vals - lam[: len(vals)]) / np.abs(lam[: len(vals)]))
        rows.append((name, seconds, nmv, err))

    for k, tol in ((1, 1e-2), (5, 1e-3)):
        t, r = timed(
            lambda k=k, tol=tol: hessian.top_eigenvalues(model, loss, (x, y), k=k, tol=tol)
        )
        add(f"hessntk top_eigenvalues k={k} tol={tol:g}", t, r.num_matvecs, r.eigenvalues)
    cl = peer("curvlinops")
    if cl is not None:
        import scipy.sparse.linalg as sla

        for k in (1, 5):
            Hc = cl.HessianLinearOperator(model, loss, params, [(x, y)], check_deterministic=False)
            count = [0]
            Hs = Hc.to_scipy(np.float32)

            def mv(u: np.ndarray, Hs=Hs, count=count) -> np.ndarray:
                count[0] += 1
                return Hs @ u

            op = sla.LinearOperator(Hs.shape, matvec=mv, dtype=np.float32)
            t, vals = timed(lambda op=op, k=k: sla.eigsh(op, k=k, which="LA", tol=1e-3,
                                                       return_eigenvectors=False))  # fmt: skip
            add(f"curvlinops + scipy eigsh k={k} tol=1e-3", t, count[0], vals)
    ph = peer("pyhessian")
    if ph is not None:
        for k in (1, 5):
            hc = ph.hessian(model, loss, data=(x, y), cuda=False)
            t, (vals, _) = timed(lambda hc=hc, k=k: hc.eigenvalues(maxIter=100, tol=1e-4,
                                                                   top_n=k))  # fmt: skip
            add(f"PyHessian power iteration k={k} tol=1e-4", t, "?", vals)
    he = peer("hessian_eigenthings")
    if he is not None:
        for k in (1, 5):
            He = he.HessianOperator(model, [(x, y)], he.supervised_loss(loss))
            t, r = timed(lambda He=He, k=k: he.lanczos(He, k=k, tol=1e-4, which="LA", seed=0))
            add(f"hessian-eigenthings lanczos k={k} tol=1e-4", t, r.iterations, r.eigenvalues)
    print(f"  {'top eigenvalues':44s} {'seconds':>8s} {'products':>9s} {'max rel err':>12s}")
    for name, t, nmv, err in rows:
        print(f"  {name:44s} {t:8.2f} {nmv!s:>9s} {err:12.1e}")

    # -- trace --------------------------------------------------------------------------
    H = HessianOperator(model, loss, (x, y))
    ref_m = 120 if quick else 400
    t_ref, ref = timed(lambda: trace(H, num_matvecs=ref_m, seed=12345))
    print(f"\n  reference trace: XTrace with {ref_m} products = {ref.value:.5g} "
          f"+- {ref.stderr:.2g} ({t_ref:.1f} s)")  # fmt: skip
    rows = []
    for m in (40, 100):
        for method in ("xtrace", "hutchinson"):
            t, e = timed(
                lambda m=m, method=method: hessian.trace(
                    model, loss, (x, y), num_matvecs=m, method=method
                )
            )
            rows.append((f"hessntk trace {method} m={m}", t, m, e.value, e.stderr))
    if cl is not None:
        from curvlinops import hutchinson_trace, xtrace

        Hc = cl.HessianLinearOperator(model, loss, params, [(x, y)], check_deterministic=False)
        torch.manual_seed(0)
        t, v = timed(lambda: xtrace(Hc, 100))
        rows.append(("curvlinops xtrace m=100", t, 100, float(v), None))
        t, v = timed(lambda: hutchinson_trace(Hc, 100))
        rows.append(("curvlinops hutchinson m=100", t, 100, float(v), None))
    if ph is not None:
        hc = ph.hessian(model, loss, data=(x, y), cuda=False)
        torch.manual_seed(0)
        t, v = timed(lambda: hc.trace(maxIter=100, tol=1e-3))
        rows.append(("PyHessian hutchinson (tol 1e-3)", t, len(v), float(np.mean(v)), None))
    if he is not None:
        He = he.HessianOperator(model, [(x, y)], he.supervised_loss(loss))
        t, r = timed(lambda: he.trace(He, num_matvecs=100, method="hutch++", seed=0))
        rows.append(("hessian-eigenthings hutch++ m=100", t, 100, float(r.estimate), None))
    print(f"  {'trace':44s} {'seconds':>8s} {'products':>9s} {'rel err':>9s} {'rel stderr':>11s}")
    for name, t, m, val, se in rows:
        s = f"{se / abs(ref.value):11.2%}" if se is not None else f"{'-':>11s}"
        print(f"  {name:44s} {t:8.2f} {m!s:>9s} {abs(val - ref.value) / abs(ref.value):9.2%} {s}")

    # -- SLQ ----------------------------------------------------------------------------
    steps, probes = slq or ((30, 4) if quick else (100, 10))
    print(f"\n  SLQ density, {steps} steps x {probes} probes")
    t, d = timed(lambda: hessian.density(model, loss, (x, y), num_probes=probes,
                                         num_matvecs=steps))  # fmt: skip
    print(f"  {'hessntk density':44s} {t:8.2f} s  ({d.num_matvecs} products)")
    if ph is not None:
        _patch_torch_eig()
        hc = ph.hessian(model, loss, data=(x, y), cuda=False)
        t, _ = timed(lambda: hc.density(iter=steps, n_v=probes))
        print(f"  {'PyHessian density (torch.eig patched)':44s} {t:8.2f} s")
    if he is not None:
        He = he.HessianOperator(model, [(x, y)], he.supervised_loss(loss))
        t, _ = timed(lambda: he.spectral_density(He, num_runs=probes, lanczos_steps=steps,
                                                 seed=0))  # fmt: skip
        print(f"  {'hessian-eigenthings spectral_density':44s} {t:8.2f} s")
    if cl is not None:
        from curvlinops import lanczos_approximate_spectrum

        Hc = cl.HessianLinearOperator(model, loss, params, [(x, y)], check_deterministic=False)
        t, _ = timed(lambda: lanczos_approximate_spectrum(Hc, steps, num_repeats=probes))
        print(f"  {'curvlinops lanczos_approximate_spectrum':44s} {t:8.2f} s  (incl. its "
              "boundary eigsh)")  # fmt: skip


def _patch_torch_eig() -> None:
    """PyHessian's density calls torch.eig (removed in torch 2.0): an eigh-based stand-in."""

    def eig(T: torch.Tensor, eigenvectors: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        w, V = torch.linalg.eigh(T)
        return torch.stack([w, torch.zeros_like(w)], dim=1), V

    torch.eig = eig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--no-peers", action="store_true", help="hessntk only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--reps", type=int, default=None, help="timing repetitions")
    parser.add_argument("--slq", type=str, default=None, help="STEPSxPROBES, e.g. 100x10")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or (3 if args.quick else 10)
    x, y = digits(512)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {len(y)}, "
          "float32, CPU")  # fmt: skip
    net = train(mlp(), x, y)
    cnn = train(CNN(), x, y)
    for name, model in (("MLP 64-512-512-10", net), ("CNN (conv16-conv32-linear)", cnn)):
        n = sum(p.numel() for p in model.parameters())
        print(f"\n== {name}: {n} parameters ==\nproduct time / gradient time")
        products(model, x, y, reps, not args.no_peers)
    print("\n== MLP 64-512-512-10 spectra ==")
    slq = tuple(int(a) for a in args.slq.split("x")) if args.slq else None
    spectra(net, x, y, args.quick, slq)


if __name__ == "__main__":
    main()
