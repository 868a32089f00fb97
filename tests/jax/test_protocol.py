"""The operator protocol: torch and JAX builders implement it with the same names and numbers.

Every member of :mod:`hessntk.spectral.protocols` is checked on both backends against the
dense float64 oracles of the shared MLP (``jax.hessian`` / ``jax.jacrev``), and the torch and
JAX values against each other (1e-10).
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax not installed: pip install 'hessntk[jax]'")
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import hessntk.jax as hj  # noqa: E402
from hessntk import hessian, ntk  # noqa: E402
from hessntk.spectral import rademacher  # noqa: E402
from hessntk.spectral.protocols import CurvatureLike, GramLike, RegulariserLike  # noqa: E402
from tests.helpers import assert_close  # noqa: E402
from tests.jax.models import cross_entropy, mlp, mlp_loss, mlp_weights  # noqa: E402

RTOL = 1e-10
V = rademacher(75, 2, seed=5)


def _np(x):
    return x.detach().numpy() if torch.is_tensor(x) else np.asarray(x)


def test_every_builder_implements_its_protocol(jax_mlp, torch_mlp):
    params, data = jax_mlp
    net, tdata = torch_mlp
    curvature = [hj.HessianOperator(mlp_loss, params, data),
                 hj.GGNOperator(mlp, cross_entropy, params, data),
                 hessian.HessianOperator(net, nn.CrossEntropyLoss(), tdata),
                 hessian.GGNOperator(net, nn.CrossEntropyLoss(), tdata)]
    assert all(isinstance(op, CurvatureLike) for op in curvature)
    assert [op.kind for op in curvature] == ["hessian", "ggn"] * 2
    grams = [hj.GramOperator(mlp, params, data=data), ntk.GramOperator(net, data=tdata)]
    assert all(isinstance(op, GramLike) and not isinstance(op, CurvatureLike) for op in grams)
    regs = [hj.RegulariserOperator(lambda p: sum(jnp.sum(a**2) for a in jax.tree_util.tree_leaves(
        p)), params), hessian.RegulariserOperator(lambda p: sum((a**2).sum() for a in p.values()),
                                                  dict(net.named_parameters()))]
    assert all(isinstance(op, RegulariserLike) for op in regs)


def test_curvature_members_match_the_oracles_on_both_backends(jax_mlp, torch_mlp, oracle):
    params, data = jax_mlp
    net, tdata = torch_mlp
    Hj = hj.HessianOperator(mlp_loss, params, data, blocks="layer")
    Ht = hessian.HessianOperator(net, nn.CrossEntropyLoss(), tdata, blocks="layer")
    flat = np.concatenate([w.ravel() for w in mlp_weights()])
    grad = np.asarray(jax.grad(lambda v: mlp_loss(Hj.unravel(v), data))(jnp.asarray(flat)))
    for H in (Hj, Ht):
        assert_close(H.theta(), flat, rtol=RTOL)
        assert_close(H.gradient(), grad, rtol=1e-9)
        assert H.loss_at(H.theta()) == pytest.approx(H.loss, rel=1e-14)
        assert_close(H.ravel(H.unravel(H.theta())), flat, rtol=0)
        assert H.blocks == (["[0]", "[1]"] if H is Hj else ["0", "2"])
        assert H.block_slices == [slice(0, 48), slice(48, 75)]
        sub = H.block(H.blocks[1])  # the output layer, the first held fixed
        assert_close(sub.matmat(V[48:]), oracle["H"][48:, 48:] @ V[48:], rtol=1e-9)
        assert sub.loss == H.loss and sub.layout.names == H.block_params[H.blocks[1]]
    shifted = flat + 0.01 * V[:, 0]
    direct = float(mlp_loss(Hj.unravel(jnp.asarray(shifted)), data))
    assert_close(Hj.loss_at(shifted), direct, rtol=1e-12)
    assert_close(Ht.loss_at(torch.from_numpy(shifted)), direct, rtol=1e-12)


def test_selected_leaves_of_a_jax_operator(jax_mlp, oracle):
    params, data = jax_mlp
    H = hj.HessianOperator(mlp_loss, params, data, select=["[1][0]", "[0][0]"])
    assert H.layout.names == ["[0][0]", "[1][0]"] and H.shape == (64, 64)
    idx = np.r_[0:40, 48:72]
    assert_close(H.matmat(V[idx]), oracle["H"][np.ix_(idx, idx)] @ V[idx], rtol=1e-9)
    assert set(H.unravel(H.theta())) == {"[0][0]", "[1][0]"}  # a dict by key path
    with pytest.raises(ValueError, match="unknown \\['w'\\]"):
        hj.HessianOperator(mlp_loss, params, data, select=["w"])


def test_gram_members_match_the_oracles_on_both_backends(jax_mlp, torch_mlp, oracle):
    params, (x, y) = jax_mlp
    net, (xt, yt) = torch_mlp
    J, s = oracle["J"], oracle["s"]
    Kj = hj.GramOperator(mlp, params, data=[(x[:10], y[:10]), (x[10:], y[10:])], prior="init")
    Kt = ntk.GramOperator(net, data=[(xt[:10], yt[:10]), (xt[10:], yt[10:])], prior="init")
    logits = np.asarray(mlp(params, x))
    w = np.random.default_rng(0).standard_normal(75)
    Mj = jax.hessian(lambda v: jnp.sum(mlp(Kj.unravel(v), x).reshape(-1) * w))(Kj.theta())
    for K in (Kj, Kt):
        assert (K.observation, K.prior_name, K.structural_nullity) == ("raw", "init", 0)
        assert_close(K.variances(), s, rtol=RTOL)
        assert_close(K.outputs(), logits, rtol=RTOL)
        assert np.array_equal(_np(K.targets()), _np(y))
        assert_close(K.jvp(V), J @ V, rtol=1e-9)
        assert_close(K.vjp(V), J.T @ V, rtol=1e-9)
        assert_close(K.vjp(V[:, 0]), J.T @ V[:, 0], rtol=1e-9)
        assert_close(K.diagonal(), np.diag((J * s) @ J.T), rtol=1e-9)
        assert_close(K.dense(), (J * s) @ J.T, rtol=1e-9)
        assert_close(K.dense(weighted=False), J @ J.T, rtol=1e-9)
        assert_close(K.jacobian(), J, rtol=1e-9)
        M = K.output_hessian(w)
        assert M.shape == (75, 75)
        assert_close(M.matmat(V), np.asarray(Mj) @ V, rtol=1e-9)
    assert Kt.targets().dtype == torch.long and hj.GramOperator(mlp, params, x).targets() is None


def test_regulariser_operators_agree_with_the_closed_form():
    w = np.array([[1.0, -2.0, 0.5]])

    def R_t(p):
        return (0.5 * p["w"] ** 2 + p["w"] ** 4 / 12).sum()

    def R_j(p):
        return jnp.sum(0.5 * p["w"] ** 2 + p["w"] ** 4 / 12)

    Rt = hessian.RegulariserOperator(R_t, {"w": torch.from_numpy(w)})
    Rj = hj.RegulariserOperator(R_j, {"w": jnp.asarray(w)})
    H = np.diag(1 + w[0] ** 2)
    for R in (Rt, Rj):
        assert_close(R.matmat(np.eye(3) if R is Rj else torch.eye(3, dtype=torch.float64)), H)
        assert_close(R.gradient(), w[0] + w[0] ** 3 / 3, rtol=1e-12)
        assert R.loss == pytest.approx(float((0.5 * w**2 + w**4 / 12).sum()), rel=1e-14)
        zero = np.zeros(3)
        assert R.loss_at(zero) == 0.0
        assert_close(R.at(zero).matmat(np.eye(3) if R is Rj else torch.eye(3,
                                                                          dtype=torch.float64)),
                     np.eye(3))
        assert R.name in ("R_t", "R_j")


def test_jax_operator_inputs_are_checked(jax_mlp):
    params, (x, y) = jax_mlp
    assert hj.GramOperator(mlp, params, data=[(x, None)]).targets() is None
    with pytest.raises(ValueError, match="batch_size to be a positive int"):
        hj.GramOperator(mlp, params, x, batch_size=0)
    H = hj.HessianOperator(mlp_loss, params, (x, y), select=["[0][0]", "[1][0]"])
    with pytest.raises(ValueError, match="missing \\['\\[1\\]\\[0\\]'\\]"):
        H.ravel({"[0][0]": params[0][0]})
    with pytest.raises(ValueError, match="shape"):
        H.ravel([(params[0][0][:2], params[0][1]), params[1]])
    with pytest.raises(ValueError, match="f= \\(the model"):
        hj.quantization_sensitivity(mlp_loss, params, (x, y), curvature="ggn")
    Rt = hessian.RegulariserOperator(lambda p: (p["w"] ** 2).sum(), {"w": torch.ones(75)})
    from hessntk.criteria import iic

    with pytest.raises(ValueError, match="on the Gram operator's backend"):
        iic(hj.GramOperator(mlp, params, data=(x, y)), prior=Rt, reference=np.zeros(75))
