"""Hessian and GGN operators of JAX losses against dense jax.hessian / jax.jacrev oracles.

Compilation dominates the run time of these tests, so they share shapes: the 75-parameter MLP
on one batch of 25 samples, with products of 1 vector (``eigsh``) and 2 vectors (checks
against the dense oracles, ``slq(num_probes=2)``). Compiled products are cached per loss
function and shape across tests and modules.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax not installed: pip install 'hessntk[jax]'")
import jax.numpy as jnp  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from hessntk.jax import GGNOperator, HessianOperator  # noqa: E402
from hessntk.jax.curvature import _hessian_product  # noqa: E402
from hessntk.spectral import rademacher, slq  # noqa: E402
from tests.helpers import assert_close  # noqa: E402
from tests.jax import models  # noqa: E402
from tests.jax.models import cross_entropy, mlp, mlp_loss  # noqa: E402

V = rademacher(75, 2, seed=11)  # the 2-vector block of every dense check


def dense_hessian(loss, params, batch):
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda v, b: loss(unravel(v), b)))(flat, batch))


def test_hessian_matches_jax_hessian(jax_mlp, oracle):
    params, data = jax_mlp
    H = HessianOperator(mlp_loss, params, data)
    assert H.backend == "jax" and H.dtype == np.float64 and H.shape == (75, 75)
    assert_close(H.matmat(V), oracle["H"] @ V)
    assert_close(H.matvec(V[:, 0]), oracle["H"] @ V[:, 0])
    assert_close(H.loss, float(mlp_loss(params, data)))
    chunked = HessianOperator(mlp_loss, params, data, chunk_size=1)  # 2 columns: 1 + 1
    assert chunked.block_size == 1
    assert_close(chunked.matmat(V), oracle["H"] @ V)


def test_ragged_batches_are_weighted_and_compile_once_more(jax_mlp, oracle):
    """Batch b is weighted n_b / n; the ragged last batch adds one compilation, no more."""
    params, (x, y) = jax_mlp
    H = HessianOperator(mlp_loss, params,
                        [(x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])])
    assert H.batch_sizes == [10, 10, 5] and H.num_samples == 25
    size = _hessian_product._cache_size()
    assert_close(H.matmat(V), oracle["H"] @ V)
    assert _hessian_product._cache_size() <= size + 2  # batch shapes 10 and 5
    grown = _hessian_product._cache_size()
    for seed in range(3):
        H.matmat(rademacher(75, 2, seed=seed))
    assert _hessian_product._cache_size() == grown
    assert_close(H.loss, float(mlp_loss(params, (x, y))))


def test_ggn_matches_dense_jacobian_formula(jax_mlp, oracle):
    params, data = jax_mlp
    G = GGNOperator(mlp, cross_entropy, params, data)
    GV = np.asarray(G.matmat(V))
    assert_close(GV, oracle["G"] @ V)
    assert np.all(np.sum(V * GV, axis=0) > 0)  # v^T G v > 0: positive semi-definite


def test_ggn_equals_hessian_for_a_linear_model():
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.standard_normal((20, 4))), jnp.asarray(rng.standard_normal(20))
    params = {"w": jnp.asarray(rng.standard_normal(4)), "b": jnp.zeros(())}

    def f(p, x):
        return x @ p["w"] + p["b"]

    def mse(out, t):
        return 0.5 * jnp.mean((out - t) ** 2)

    G = GGNOperator(f, mse, params, [(x[:12], y[:12]), (x[12:], y[12:])])
    H = HessianOperator(lambda p, b: mse(f(p, b[0]), b[1]), params, (x, y))
    # Closed form (docs/theory.md 7.8): H = [1 X]^T [1 X] / n, leaves in sorted-key order (b, w).
    A = np.hstack([np.ones((20, 1)), np.asarray(x)])
    assert_close(H.matmat(np.eye(5)), A.T @ A / 20)
    assert_close(G.matmat(np.eye(5)), A.T @ A / 20)


def test_any_pytree_and_unravel_round_trip():
    rng = np.random.default_rng(0)
    params = {"enc": [jnp.asarray(rng.standard_normal((3, 2))), (jnp.zeros(3),)],
              "head": {"w": jnp.asarray(rng.standard_normal(3))}}
    Z, y = rng.standard_normal((20, 12)), rng.standard_normal(20)

    def loss(p, b):  # least squares in the leaves, in tree_leaves order: H = Z^T Z / n
        theta = jnp.concatenate([p["enc"][0].ravel(), p["enc"][1][0], p["head"]["w"]])
        return 0.5 * jnp.mean((b[0] @ theta - b[1]) ** 2)

    H = HessianOperator(loss, params, (jnp.asarray(Z), jnp.asarray(y)))
    assert_close(H.matmat(np.eye(12)), Z.T @ Z / 20)
    assert H.blocks == ["['enc'][0]", "['enc'][1][0]", "['head']['w']"]
    assert H.block_slices == [slice(0, 6), slice(6, 9), slice(9, 12)]
    vec = np.arange(12.0)
    tree = H.unravel(vec)
    assert tree["enc"][0].shape == (3, 2) and tree["head"]["w"].shape == (3,)
    assert_close(H.layout.ravel(tree), vec)
    stacked = H.unravel(np.stack([vec, 2 * vec], axis=1), dim=0)  # eigenvectors (n, k)
    assert stacked["enc"][0].shape == (3, 2, 2)
    assert_close(stacked["head"]["w"][:, 1], 2 * tree["head"]["w"])


def test_float32_products():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 3)), dtype=jnp.float32)
    y = jnp.asarray(rng.standard_normal(16), dtype=jnp.float32)
    params = {"w": jnp.asarray(rng.standard_normal(3), dtype=jnp.float32)}

    def loss(p, b):
        return jnp.mean(jnp.tanh(b[0] @ p["w"] - b[1]) ** 2)

    H = HessianOperator(loss, params, (x, y))
    assert H.dtype == np.float32
    Hv = H.matvec(np.ones(3))  # float64 numpy in, float32 product out
    assert Hv.dtype == jnp.float32
    p64 = {"w": params["w"].astype(jnp.float64)}
    want = dense_hessian(loss, p64, (x.astype(jnp.float64), y.astype(jnp.float64))).sum(1)
    assert_close(Hv, want)  # the helper's float32 tolerance


def test_no_recompilation_across_lanczos_steps(jax_mlp, oracle):
    """The product is traced (and compiled) once per number of vectors, then only runs."""
    params, data = jax_mlp
    H = HessianOperator(mlp_loss, params, data)
    traces, size = len(models.TRACES), _hessian_product._cache_size()
    d = slq(H, num_probes=2, num_matvecs=5, seed=1)  # 5 Lanczos steps, one 2-vector matmat each
    assert d.num_matvecs == 10 and not d.exact.any()
    # At most the first step compiled (none if an earlier test compiled this shape already).
    assert len(models.TRACES) - traces <= 1 and _hessian_product._cache_size() - size <= 1
    traces, size = len(models.TRACES), _hessian_product._cache_size()
    slq(H, num_probes=2, num_matvecs=5, seed=2)
    H.matmat(jnp.ones((75, 2)))  # user-made (uncommitted) vectors: the same compiled code
    H2 = HessianOperator(mlp_loss, params, data)
    H2.matmat(V)  # a second operator of the same loss and shapes reuses the compiled code
    assert len(models.TRACES) == traces and _hessian_product._cache_size() == size
    # Full reorthogonalised Lanczos: m steps reproduce moments of degree < 2m exactly.
    Z = rademacher(75, 2, seed=1)
    assert_close(d.trace(np.square).value, np.mean(((oracle["H"] @ Z) ** 2).sum(0)))
