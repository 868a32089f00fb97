"""Jacobians, Gram matrices and Gram operators of JAX functions against jax.jacrev oracles.

The oracle is the shared MLP's dense Jacobian ``J`` (75 x 75: 25 samples x 3 logits, 75
parameters) and ``K = J S J^T``. Sample chunks keep to a few shapes (25, 10/15, 5) because
every new shape compiles.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax not installed: pip install 'hessntk[jax]'")
import jax.numpy as jnp  # noqa: E402

from hessntk.jax import GramOperator, gram, init_variances, jacobian  # noqa: E402
from hessntk.jax.ntk.kernels import _pullback, _pushforward_into  # noqa: E402
from hessntk.spectral import rademacher, slq  # noqa: E402
from tests.helpers import assert_close  # noqa: E402
from tests.jax.models import NUM_SAMPLES, mlp  # noqa: E402

V = rademacher(75, 2, seed=11)


def test_jacobian_matches_jacrev(jax_mlp, oracle):
    params, (x, _) = jax_mlp
    assert_close(jacobian(mlp, params, x), oracle["J"])
    assert_close(jacobian(mlp, params, x, chunk_size=5), oracle["J"])  # 5 chunks of 5


def test_init_prior():
    var = init_variances([(jnp.zeros((8, 5)), jnp.zeros(8)), (jnp.zeros((3, 8)), jnp.zeros(3))])
    assert var == [(0.4, 1.0), (0.25, 1.0)]  # 2 / fan_in, weights stored (out, in)


@pytest.mark.parametrize("method", ["jacobian", "ntk_vp"])
def test_gram_modes_priors_and_cross_kernels(jax_mlp, oracle, method):
    params, (x, _) = jax_mlp
    J, s = oracle["J"], oracle["s"]
    n, c = NUM_SAMPLES, 3
    K = (J * s) @ J.T
    assert_close(gram(mlp, params, x, prior="init", method=method), K)
    assert_close(gram(mlp, params, x, method=method), J @ J.T)
    assert_close(gram(mlp, params, x, prior=2.0, method=method), 2 * J @ J.T)
    traced = np.einsum("icjc->ij", K.reshape(n, c, n, c))
    assert_close(gram(mlp, params, x, prior="init", mode="trace", method=method), traced)
    cross = gram(mlp, params, x[:10], x[10:], prior="init", method=method)
    assert_close(cross, K[:30, 30:])


def test_gram_diagonal_blocks_and_memory_tiles(jax_mlp, oracle):
    params, (x, _) = jax_mlp
    K = (oracle["J"] * oracle["s"]) @ oracle["J"].T
    blocks = gram(mlp, params, x, prior="init", mode="diagonal")
    assert blocks.shape == (25, 3, 3)
    assert_close(blocks[5], K[15:18, 15:18])
    # A budget too small for the whole Jacobian: lower-triangular tiles, recomputed rows.
    tiled = gram(mlp, params, x, prior="init", method="jacobian", max_memory=250_000,
                 chunk_size=5)
    assert_close(tiled, K)


def test_elementwise_prior_pytree(jax_mlp, oracle):
    params, (x, _) = jax_mlp
    rng = np.random.default_rng(0)
    prior = jax.tree_util.tree_map(lambda p: rng.uniform(0.5, 2.0, p.shape), params)
    s = np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(prior)])
    J = oracle["J"]
    assert_close(gram(mlp, params, x, prior=prior, method="jacobian"), (J * s) @ J.T)


def test_linear_model_closed_form():
    X = jnp.asarray(np.random.default_rng(0).standard_normal((6, 4)))
    K = gram(lambda p, x: x @ p["W"].T, {"W": jnp.zeros((2, 4))}, X)  # f = W x, c = 2
    assert_close(K, np.kron(np.asarray(X @ X.T), np.eye(2)))  # (X X^T) kron I_c


def test_observation_maps(jax_mlp):
    params, (x, _) = jax_mlp
    P = gram(mlp, params, x[:10], outputs="probabilities")
    assert np.linalg.eigvalsh(np.asarray(P))[:10].max() < 1e-12  # 1^T dp = 0 per sample
    S = gram(mlp, params, x[:10], outputs="simplex")
    assert S.shape == (20, 20) and np.linalg.eigvalsh(np.asarray(S)).min() > 1e-10
    op = GramOperator(mlp, params, x[:10], outputs="probabilities")
    assert op.structural_nullity == 10 and op.shape == (30, 30)


def test_operator_matches_dense_and_compiles_once(jax_mlp, oracle):
    params, (x, _) = jax_mlp
    J, s = oracle["J"], oracle["s"]
    K = (J * s) @ J.T
    op = GramOperator(mlp, params, [x[:10], x[10:]], prior="init")
    assert op.shape == (75, 75) and op.batch_sizes == [10, 15] and op.num_outputs == 3
    assert_close(op.matmat(V), K @ V)
    assert_close(op.diagonal(), np.diag(K))
    t = np.random.default_rng(0).standard_normal(75)
    assert_close(op.jvp(t), J @ t)
    sizes = (_pullback._cache_size(), _pushforward_into._cache_size())
    d = slq(op, num_probes=2, num_matvecs=5, seed=0)  # 2-vector products: compiled above
    slq(op, num_probes=2, num_matvecs=5, seed=1)
    assert (_pullback._cache_size(), _pushforward_into._cache_size()) == sizes
    Z = rademacher(75, 2, seed=0)  # moments of degree < 2m are exact
    assert_close(d.trace(np.square).value, np.mean(((K @ Z) ** 2).sum(0)))


def test_operator_from_data_pairs_and_batch_size(jax_mlp, oracle):
    params, (x, y) = jax_mlp
    op = GramOperator(mlp, params, data=[(x[:15], y[:15]), (x[15:], y[15:])], batch_size=5)
    assert op.batch_sizes == [5, 5, 5, 5, 5]
    J = oracle["J"]
    assert_close(op.matmat(V), J @ (J.T @ V))
