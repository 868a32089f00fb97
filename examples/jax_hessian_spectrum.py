"""Curvature of an Equinox MLP on the digits data: Hessian spectrum, NTK tail and the IIC.

An ``equinox.nn.MLP`` is trained briefly (Adam, full batch) on sklearn's ``load_digits``;
then, with :mod:`hessntk.jax`:

- the top eigenvalues of the loss Hessian (``hessntk.eigsh``), its trace (XTrace) and its
  spectral density (SLQ), the Hessian being a :class:`hessntk.jax.HessianOperator` over the
  model's arrays (``equinox.partition``), evaluated over mini-batches;
- the NTK Gram matrix of a subset (:func:`hessntk.jax.gram`, He-initialisation prior) and
  the lower-tail exponent of its spectrum;
- the IIC of the trained model on a subset (:func:`hessntk.jax.iic`, logits, soft variant).

It prints a table and saves a two-panel plot (Hessian density, NTK spectrum) to ``--out``.

    python examples/jax_hessian_spectrum.py             # about a minute on 2 cores; CI runs:
    python examples/jax_hessian_spectrum.py --n-train 128 --width 16 --steps 20 --k 2 \\
        --ncv 8 --num-probes 2 --num-matvecs 8 --trace-matvecs 4 --n-ntk 20 --n-iic 10

The first call of each spectral routine on jax arrays compiles its array operations for every
new shape (eager jax); the products themselves compile once. A smaller ``--ncv`` keeps the
number of shapes of ``eigsh`` small.
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)  # the spectral core keeps float64 bookkeeping

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

import hessntk
import hessntk.jax as hj
from hessntk.criteria import lower_tail_exponent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=1024, help="training samples")
    p.add_argument("--width", type=int, default=64, help="hidden units per layer")
    p.add_argument("--steps", type=int, default=300, help="Adam steps (full batch)")
    p.add_argument("--batch-size", type=int, default=256, help="batches of the Hessian")
    p.add_argument("--k", type=int, default=5, help="top Hessian eigenvalues")
    p.add_argument("--ncv", type=int, default=None,
                   help="eigsh basis size (smaller: fewer array shapes for jax to compile)")
    p.add_argument("--num-probes", type=int, default=8, help="SLQ probes")
    p.add_argument("--num-matvecs", type=int, default=60, help="SLQ Lanczos steps per probe")
    p.add_argument("--trace-matvecs", type=int, default=40, help="XTrace product budget")
    p.add_argument("--n-ntk", type=int, default=100, help="samples of the NTK Gram")
    p.add_argument("--n-iic", type=int, default=50, help="samples of the IIC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="jax_hessian_spectrum.png", help="plot file")
    return p.parse_args()


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def train(model: eqx.Module, x: jax.Array, y: jax.Array, steps: int) -> eqx.Module:
    """Full-batch Adam (lr 1e-2) on the mean cross-entropy."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p: eqx.Module) -> jax.Array:
        return cross_entropy(jax.vmap(eqx.combine(p, static))(x), y)

    @jax.jit
    def step(p, m, v, t):
        g = jax.grad(loss)(p)
        m = jax.tree_util.tree_map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = jax.tree_util.tree_map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        scale = jnp.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        p = jax.tree_util.tree_map(
            lambda a, b, c: a - 1e-2 * scale * b / (jnp.sqrt(c) + 1e-8), p, m, v)
        return p, m, v

    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    for t in range(1, steps + 1):
        params, m, v = step(params, m, v, t)
    return eqx.combine(params, static)


def main() -> None:
    args = parse_args()
    X, y = load_digits(return_X_y=True)
    X = jnp.asarray(X / 16.0)
    y = jnp.asarray(y)
    x_train, y_train = X[: args.n_train], y[: args.n_train]

    key = jax.random.PRNGKey(args.seed)
    model = eqx.nn.MLP(64, 10, args.width, depth=2, activation=jnp.tanh, key=key)
    start = time.perf_counter()
    model = train(model, x_train, y_train, args.steps)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def f(p: eqx.Module, x: jax.Array) -> jax.Array:  # logits of a batch
        return jax.vmap(eqx.combine(p, static))(x)

    def loss(p: eqx.Module, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        return cross_entropy(f(p, batch[0]), batch[1])

    accuracy = float(jnp.mean(jnp.argmax(f(params, x_train), axis=1) == y_train))
    t_train = time.perf_counter() - start

    # -- Hessian: a LinearOperator over the flat parameters, products compiled once ------------
    b = args.batch_size
    batches = [(x_train[i : i + b], y_train[i : i + b]) for i in range(0, args.n_train, b)]
    H = hj.HessianOperator(loss, params, batches)
    start = time.perf_counter()
    top = hessntk.eigsh(H, k=args.k, tol=1e-4, seed=args.seed, ncv=args.ncv,
                        return_eigenvectors=False)
    tr = hessntk.trace(H, num_matvecs=args.trace_matvecs, seed=args.seed)
    m = min(args.num_matvecs, H.shape[0])
    density = hessntk.slq(H, num_probes=args.num_probes, num_matvecs=m, seed=args.seed)
    t_hessian = time.perf_counter() - start

    # -- NTK Gram of a subset, its spectrum and lower tail ---------------------------------------
    start = time.perf_counter()
    K = hj.gram(f, params, X[: args.n_ntk], prior="init")
    lam = np.linalg.eigvalsh(np.asarray(K))
    floor = np.finfo(np.float64).eps * lam.max()
    try:
        fit = lower_tail_exponent(lam, floor=floor)
        alpha = f"{fit.alpha:.3f} +- {fit.stderr:.2f}"
    except ValueError as err:  # too few eigenvalues above the floor for a fit
        fit, alpha = None, f"n/a ({str(err)[:40]})"
    t_ntk = time.perf_counter() - start

    # -- IIC of the trained model on a subset (logits; soft: it need not interpolate) -----------
    start = time.perf_counter()
    res = hj.iic(f, params, (X[: args.n_iic], y[: args.n_iic]), observations="logits",
                 soft=1e3, seed=args.seed)
    t_iic = time.perf_counter() - start

    rows = [
        ("parameters", f"{H.shape[0]}"),
        ("training accuracy", f"{accuracy:.3f} after {args.steps} steps ({t_train:.1f} s)"),
        ("Hessian top eigenvalues", np.array2string(top.eigenvalues, precision=4)),
        ("Hessian trace (XTrace)", f"{tr.value:.4g} +- {tr.stderr:.2g}"),
        ("Hessian SLQ range", f"[{density.nodes.min():.3g}, {density.nodes.max():.3g}] "
                              f"({density.num_matvecs} products, {t_hessian:.1f} s in all)"),
        (f"NTK Gram ({K.shape[0]} x {K.shape[1]})",
         f"lambda_max {lam.max():.4g}, {int(np.sum(lam <= floor))} below the floor "
         f"({t_ntk:.1f} s)"),
        ("NTK lower-tail exponent", alpha),
        ("IIC (soft=1e3, logits)", f"{res.value:.4f} = reg {res.regularization:.3f} + sharp "
                                   f"{res.sharpness:.3f} + corr {res.correction:.3f} "
                                   f"({t_iic:.1f} s)"),
        ("IIC valid", f"{res.valid} {list(res.reasons)[:1]}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'quantity':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    density.plot(ax=ax1)
    ax1.set_title("Hessian spectral density (SLQ)")
    pos = np.sort(lam[lam > floor])
    ax2.loglog(pos, np.arange(1, pos.size + 1) / lam.size, ".", ms=3)
    ax2.set_xlabel("eigenvalue")
    ax2.set_ylabel("empirical CDF")
    ax2.set_title(f"NTK Gram spectrum (alpha {alpha.split(' ')[0]})")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"saved the plot to {args.out}")


if __name__ == "__main__":
    main()
