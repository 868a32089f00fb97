"""The same weights in torch and JAX give the same numbers (float64, 1e-10).

The spectral core draws its probes on the host from numpy, so with the same seed both
frameworks run the same algorithm on the same vectors: eigenvalues, traces, SLQ nodes and
weights, NTK Gram matrices and IIC terms must agree to rounding. The JAX parameters are kept
in the torch parameter order (``[(W1, b1), (W2, b2)]``, weights ``(out, in)``), so flat
vectors, and hence probes, line up entry by entry.
"""

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax not installed: pip install 'hessntk[jax]'")
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import hessntk.jax as hj  # noqa: E402
from hessntk import criteria, hessian, ntk  # noqa: E402
from hessntk.spectral import eigsh, rademacher, slq, trace  # noqa: E402
from tests.helpers import assert_close  # noqa: E402
from tests.jax.models import cross_entropy, mlp, mlp_loss, mlp_weights  # noqa: E402

RTOL = 1e-10


def test_hessian_eigenvalues_trace_and_slq(jax_mlp, torch_mlp, oracle):
    params, data = jax_mlp
    net, tdata = torch_mlp
    Hj = hj.HessianOperator(mlp_loss, params, data)
    Ht = hessian.HessianOperator(net, nn.CrossEntropyLoss(), tdata, method="graph")
    # ncv=6 keeps the core's per-shape compilations of eager jax ops few.
    ej, et = eigsh(Hj, k=2, ncv=6, seed=0), eigsh(Ht, k=2, ncv=6, seed=0)
    assert_close(ej.eigenvalues, et.eigenvalues, rtol=RTOL)
    assert ej.num_matvecs == et.num_matvecs
    assert_close(ej.eigenvalues, np.linalg.eigvalsh(oracle["H"])[::-1][:2], rtol=1e-8)
    assert type(ej.eigenvectors).__module__.startswith("jax")
    # Hutchinson: the same two host-drawn probes on both sides (estimators: tests/spectral).
    tj = trace(Hj, num_matvecs=2, method="hutchinson", seed=3)
    tt = trace(Ht, num_matvecs=2, method="hutchinson", seed=3)
    assert_close(tj.value, tt.value, rtol=RTOL)
    assert_close(tj.stderr, tt.stderr, rtol=1e-8)
    dj = slq(Hj, num_probes=2, num_matvecs=5, seed=0)
    dt = slq(Ht, num_probes=2, num_matvecs=5, seed=0)
    assert_close(dj.nodes, dt.nodes, rtol=RTOL)
    assert_close(dj.weights, dt.weights, rtol=RTOL)
    assert_close(Hj.loss, Ht.loss, rtol=RTOL)


def test_ggn_products(jax_mlp, torch_mlp):
    params, data = jax_mlp
    net, tdata = torch_mlp
    V = rademacher(75, 2, seed=0)
    Gj = hj.GGNOperator(mlp, cross_entropy, params, data)
    Gt = hessian.GGNOperator(net, nn.CrossEntropyLoss(), tdata)
    assert_close(Gj.matmat(V), Gt.matmat(torch.from_numpy(V)), rtol=RTOL)


def test_equinox_model(jax_mlp, torch_mlp):
    eqx = pytest.importorskip("equinox")
    _, (x, y) = jax_mlp
    net, tdata = torch_mlp
    # The skeleton only (no random initialisation to compile), then the torch weights.
    model = eqx.filter_eval_shape(eqx.nn.MLP, 5, 3, 8, 1, activation=jnp.tanh,
                                  key=jax.random.key(0))
    W1, b1, W2, b2 = (jnp.asarray(w) for w in mlp_weights())
    model = eqx.tree_at(
        lambda m: (m.layers[0].weight, m.layers[0].bias, m.layers[1].weight, m.layers[1].bias),
        model, (W1, b1, W2, b2))
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p, batch):
        return cross_entropy(jax.vmap(eqx.combine(p, static))(batch[0]), batch[1])

    H = hj.HessianOperator(loss, params, (x, y))
    assert H.blocks == [".layers[0].weight", ".layers[0].bias", ".layers[1].weight",
                        ".layers[1].bias"]
    V = rademacher(75, 2, seed=1)
    Ht = hessian.HessianOperator(net, nn.CrossEntropyLoss(), tdata, method="graph")
    assert_close(H.matmat(V), Ht.matmat(torch.from_numpy(V)), rtol=RTOL)


def test_ntk_gram(jax_mlp, torch_mlp):
    params, (x, _) = jax_mlp
    net, (xt, _) = torch_mlp
    for prior in (None, "init"):
        Kt = ntk.gram(net, xt, prior=prior)
        assert_close(hj.gram(mlp, params, x, prior=prior), Kt, rtol=RTOL)
    assert_close(hj.gram(mlp, params, x[:10], outputs="simplex"),
                 ntk.gram(net, xt[:10], outputs="simplex"), rtol=RTOL)
    assert_close(hj.jacobian(mlp, params, x[:5]), ntk.jacobian(net, xt[:5]), rtol=RTOL)


@pytest.mark.parametrize("method", ["exact", "slq"])
def test_iic(jax_mlp, torch_mlp, method):
    params, data = jax_mlp
    net, tdata = torch_mlp
    kw = dict(prior="init", observations="logits", soft=1e3, method=method, num_probes=2,
              num_matvecs=5, seed=4)
    rj = hj.iic(mlp, params, data, **kw)
    rt = criteria.iic(net, tdata, **kw)
    assert np.isnan(rj.residual) and np.isnan(rt.residual)  # logits of class-index targets
    for term in ("value", "regularization", "sharpness", "curvature", "correction",
                 "sharpness_stderr", "train_error"):
        assert_close(getattr(rj, term), getattr(rt, term), rtol=RTOL)
    assert (rj.num_constraints, rj.num_params, rj.valid, rj.reasons, rj.method) == (
        rt.num_constraints, rt.num_params, rt.valid, rt.reasons, rt.method)
    if method == "exact":
        assert_close(rj.eigenvalues, rt.eigenvalues, rtol=RTOL)
        # The KKT residual sums b_i^2 / lambda_i down to the eps * lambda_max floor: rounding
        # of the smallest eigenvalues moves it by ~1e-5 here (it is ~3e-5: noise around 0).
        assert_close(rj.kkt_residual, rt.kkt_residual, atol=1e-4)
        assert rj.rank == rt.rank and rj.tail.alpha == pytest.approx(rt.tail.alpha, rel=1e-8)


def test_iic_general_prior_and_compare():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((6, 12)), rng.standard_normal((6, 1))
    w = np.linalg.pinv(X) @ Y  # the minimum-norm interpolator, (12, 1)
    net = nn.Linear(12, 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(w.T))
    tdata = (torch.from_numpy(X), torch.from_numpy(Y))
    data = (jnp.asarray(X), jnp.asarray(Y))

    def f(p, x):
        return x @ p["weight"].T

    def R_torch(p):
        return (0.5 * p["weight"] ** 2 + p["weight"] ** 4 / 12).sum()

    def R_jax(p):
        return jnp.sum(0.5 * p["weight"] ** 2 + p["weight"] ** 4 / 12)

    params = {"weight": jnp.asarray(w.T)}
    rj = hj.iic(f, params, data, prior=R_jax, reference={"weight": jnp.zeros((1, 12))})
    rt = criteria.iic(net, tdata, prior=R_torch,
                      reference={"weight": torch.zeros(1, 12, dtype=torch.float64)})
    assert rj.valid and rt.valid and rj.curvature > 0
    for term in ("value", "sharpness", "curvature", "regularization"):
        assert_close(getattr(rj, term), getattr(rt, term), rtol=RTOL)
    # compare: the same ranking and values as the torch twin.
    cj = hj.compare({"a": params, "b": {"weight": 1.5 * params["weight"]}}, f, data,
                    prior=1.0, soft=1e4)
    ct = criteria.compare({"a": {"weight": net.weight.detach()},
                           "b": {"weight": 1.5 * net.weight.detach()}},
                          lambda: nn.Linear(12, 1, bias=False).double(), tdata, prior=1.0,
                          soft=1e4)
    assert [r["name"] for r in cj.rows] == [r["name"] for r in ct.rows] == ["a", "b"]
    for a, b in zip(cj.rows, ct.rows, strict=True):
        assert_close(a["value"], b["value"], rtol=RTOL)
        assert a["valid"] == b["valid"]
    assert math.isfinite(cj.rows[0]["value"]) and "rank" in cj.table()


def test_quantization_sensitivity(jax_mlp, torch_mlp):
    params, data = jax_mlp
    net, tdata = torch_mlp
    # The output bias alone (3 entries): direct, exact trace and eigsh stay cheap to compile.
    kw = dict(bits=(2, 8), metric="both", num_matvecs=4, seed=0, quantize_biases=True)
    sj = hj.quantization_sensitivity(mlp_loss, params, data, layers={"b2": ["[1][1]"]}, **kw)
    st = criteria.quantization_sensitivity(net, nn.CrossEntropyLoss(), tdata,
                                           layers={"b2": ["2.bias"]}, **kw)
    assert sj.layers == ("b2",) and sj.num_params.tolist() == st.num_params.tolist() == [3]
    for term in ("error", "gradient_term", "quadratic_term", "trace", "trace_stderr",
                 "top_eigenvalue"):
        assert_close(getattr(sj, term), getattr(st, term), rtol=RTOL)
    assert sj.num_matvecs == st.num_matvecs and sj.trace_method == st.trace_method == "exact"
    assert_close(sj.predictions("direct"), st.predictions("direct"), rtol=RTOL)


# -- the criteria written once: convention A, the matrix-free prior, quantization --------------


def _interpolating_regression(n=5, d=3, hidden=6, seed=0):
    """A tanh MLP whose last layer is the minimum-norm interpolator, in both frameworks."""
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, d)), rng.standard_normal((n, 1))
    W1, b1 = rng.standard_normal((hidden, d)) / np.sqrt(d), 0.1 * rng.standard_normal(hidden)
    A = np.concatenate([np.tanh(X @ W1.T + b1), np.ones((n, 1))], axis=1)
    W = np.linalg.pinv(A) @ Y
    weights = [W1, b1, W[:-1].T, W[-1]]
    net = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, 1)).double()
    with torch.no_grad():
        for p, w in zip(net.parameters(), weights, strict=True):
            p.copy_(torch.from_numpy(w))
    params = [(jnp.asarray(W1), jnp.asarray(b1)), (jnp.asarray(W[:-1].T), jnp.asarray(W[-1]))]
    return (net.eval(), (torch.from_numpy(X), torch.from_numpy(Y)),
            params, (jnp.asarray(X), jnp.asarray(Y)))


TERMS = ("value", "regularization", "sharpness", "sharpness_stderr", "curvature",
         "curvature_stderr", "correction")


@pytest.mark.parametrize("method", ["exact", "slq"])
def test_convention_a(method):
    net, tdata, params, data = _interpolating_regression()
    kw = dict(prior=0.7, convention="A", method=method, num_probes=6, num_matvecs=20, seed=3)
    rj, rt = hj.iic(mlp, params, data, **kw), criteria.iic(net, tdata, **kw)
    assert rt.valid and rj.valid and abs(rt.multiplier_correction) > 1e-3
    for term in (*TERMS, "multiplier_correction"):
        assert_close(getattr(rj, term), getattr(rt, term), rtol=RTOL)
    assert (rj.method, rj.convention) == (rt.method, rt.convention) == (method, "A")


def _quartic(v):
    """Convex, coupled, non-Gaussian; minimiser 0."""
    return 0.5 * (v * v).sum() + 0.1 * (v**4).sum() + 0.05 * v.sum() ** 2


def _gaussian(v):
    """The Gaussian prior N(0, 0.7) as a callable: theta* is its constrained minimum here."""
    return 0.5 * (v * v).sum() / 0.7


@pytest.mark.parametrize("method,convention", [("slq", "B"), ("exact", "A"), ("slq", "A")])
def test_callable_prior(method, convention):
    net, tdata, params, data = _interpolating_regression(n=6, seed=2)
    R = _quartic if convention == "B" else _gaussian

    def R_torch(p):
        return R(torch.cat([t.reshape(-1) for t in p.values()]))

    def R_jax(p):
        return R(jnp.concatenate([a.ravel() for a in jax.tree_util.tree_leaves(p)]))

    kw = dict(method=method, convention=convention, num_probes=6, num_matvecs=30, seed=1)
    zeros_t = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    zeros_j = jax.tree_util.tree_map(jnp.zeros_like, params)
    rt = criteria.iic(net, tdata, prior=R_torch, reference=zeros_t, **kw)
    rj = hj.iic(mlp, params, data, prior=R_jax, reference=zeros_j, **kw)
    assert rt.valid and rj.valid and abs(rt.curvature) > 1e-3
    assert rj.method == rt.method == method
    for term in TERMS:
        assert_close(getattr(rj, term), getattr(rt, term), rtol=RTOL)
    if convention == "A":
        assert_close(rj.multiplier_correction, rt.multiplier_correction, rtol=RTOL)


def test_one_criterion_on_a_torch_and_a_jax_operator(jax_mlp, torch_mlp):
    """criteria.iic and criteria.quantization_sensitivity, handed operators of each backend."""
    params, data = jax_mlp
    net, tdata = torch_mlp
    Kj = hj.GramOperator(mlp, params, data=data, prior="init", outputs="logits")
    Kt = ntk.GramOperator(net, data=tdata, prior="init", outputs="logits")
    rj, rt = criteria.iic(Kj, soft=1e3), criteria.iic(Kt, soft=1e3)
    for term in TERMS:
        assert_close(getattr(rj, term), getattr(rt, term), rtol=RTOL)
    assert rj.observations == rt.observations == "logits" and rj.prior == rt.prior == "init"
    Hj = hj.HessianOperator(mlp_loss, params, data, select=["[1][1]"])
    Ht = hessian.HessianOperator(net, nn.CrossEntropyLoss(), tdata, params=["2.bias"])
    kw = dict(bits=(2, 8), metric="both", num_matvecs=4, seed=0)
    sj, st = criteria.quantization_sensitivity(Hj, **kw), criteria.quantization_sensitivity(
        Ht, **kw)
    for term in ("error", "gradient_term", "quadratic_term", "trace", "top_eigenvalue"):
        assert_close(getattr(sj, term), getattr(st, term), rtol=RTOL)


def test_measured_quantization_quantized_loss_and_allocation(jax_mlp, torch_mlp):
    params, data = jax_mlp
    net, tdata = torch_mlp
    loss = nn.CrossEntropyLoss()
    mj = hj.measure_quantization(mlp_loss, params, data, bits=(2, 4, 8))
    mt = criteria.measure_quantization(net, loss, tdata, bits=(2, 4, 8))
    assert mj.layers == ("[0]", "[1]") and mt.layers == ("0", "2")
    assert_close(mj.quantized_loss, mt.quantized_loss, rtol=RTOL)
    assert_close(mj.error, mt.error, rtol=RTOL)
    assert_close(mj.loss, mt.loss, rtol=RTOL)
    assert_close(hj.quantized_loss(mlp_loss, params, data, {"[0]": 2, "[1]": 8}),
                 criteria.quantized_loss(net, loss, tdata, {"0": 2, "2": 8}), rtol=RTOL)
    kw = dict(bits=(2, 4, 8), metric="trace", num_matvecs=64)
    sj = hj.quantization_sensitivity(mlp_loss, params, data, **kw)
    st = criteria.quantization_sensitivity(net, loss, tdata, **kw)
    assert_close(sj.predictions("direct"), st.predictions("direct"), rtol=RTOL)
    assert_close(sj.trace, st.trace, rtol=RTOL)
    aj = criteria.allocate_bits(sj, average_bits=4, choices=(2, 4, 8))
    at = criteria.allocate_bits(st, average_bits=4, choices=(2, 4, 8))
    assert list(aj.bits.values()) == list(at.bits.values())
    assert_close(aj.predicted_increase, at.predicted_increase, rtol=RTOL)
    assert_close(hj.quantized_loss(mlp_loss, params, data, aj),
                 criteria.quantized_loss(net, loss, tdata, at), rtol=RTOL)


def test_ggn_quantization_sensitivity(jax_mlp, torch_mlp):
    params, data = jax_mlp
    net, tdata = torch_mlp
    kw = dict(bits=(2, 8), metric="both", num_matvecs=4, seed=0, quantize_biases=True)
    sj = hj.quantization_sensitivity(cross_entropy, params, data, f=mlp,
                                     layers={"b2": ["[1][1]"]}, **kw)
    st = criteria.quantization_sensitivity(net, nn.CrossEntropyLoss(), tdata, curvature="ggn",
                                           layers={"b2": ["2.bias"]}, **kw)
    assert sj.curvature == st.curvature == "ggn"
    for term in ("quadratic_term", "gradient_term", "trace", "top_eigenvalue"):
        assert_close(getattr(sj, term), getattr(st, term), rtol=RTOL)


def test_mixed_precision_and_group_grids(jax_mlp, torch_mlp):
    params, data = jax_mlp
    net, tdata = torch_mlp
    kw = dict(average_bits=3, choices=(2, 3, 4), granularity="group", group_size=3)
    aj = hj.mixed_precision(mlp_loss, params, data, **kw)
    at = criteria.mixed_precision(net, nn.CrossEntropyLoss(), tdata, **kw)
    assert list(aj.bits.values()) == list(at.bits.values())
    assert aj.verified and at.verified
    assert_close(aj.measured_increase, at.measured_increase, rtol=RTOL)
    assert_close(aj.uniform["measured_increase"], at.uniform["measured_increase"], rtol=RTOL)
    assert aj.measured_increase <= aj.uniform["measured_increase"]
