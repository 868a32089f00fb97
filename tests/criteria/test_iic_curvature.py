"""IIC curvature terms: general regularisers matrix-free and the convention-A correction."""

import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import hessian as autograd_hessian
from torch.autograd.functional import jacobian as autograd_jacobian
from torch.func import functional_call

from hessntk.criteria import iic


def _interpolating_mlp(n=5, d=3, hidden=6, c=1, seed=0, norm=False):
    """A tanh MLP whose last layer is the minimum-norm interpolator of random targets."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    Y = torch.randn(n, c, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(d, hidden)]
    if norm:
        layers.append(torch.nn.LayerNorm(hidden))
    layers += [torch.nn.Tanh(), torch.nn.Linear(hidden, c)]
    net = torch.nn.Sequential(*layers).double().eval()
    with torch.no_grad():
        feats = net[:-1](X)
        A = torch.cat([feats, torch.ones(n, 1, dtype=torch.float64)], dim=1)
        W = torch.linalg.pinv(A) @ Y
        net[-1].weight.copy_(W[:-1].T)
        net[-1].bias.copy_(W[-1])
    return net, X, Y


def _flat(net):
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for _, p in net.named_parameters()])

    def unflat(v):
        out, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            k = math.prod(shape)
            out[name] = v[i : i + k].reshape(shape)
            i += k
        return out

    return theta, unflat


def _dense_correction(net, X, Y, var):
    """Oracle: (1/N)[log det Q^T (S^-1 + M_mu) Q - log det Q^T S^-1 Q] with autograd."""
    theta, unflat = _flat(net)

    def f(v):
        return functional_call(net, unflat(v), (X,)).reshape(-1)

    J = autograd_jacobian(f, theta)
    N, P = J.shape
    g = theta / var  # grad R for R = ||theta||^2 / (2 var), reference 0
    mu = -torch.linalg.solve(J @ J.T, J @ g)
    M = autograd_hessian(lambda v: mu @ f(v), theta)
    Q = torch.linalg.svd(J, full_matrices=True)[2][N:].T
    H = torch.eye(P, dtype=torch.float64) / var
    ld = [torch.linalg.slogdet(Q.T @ B @ Q) for B in (H + M, H)]
    assert all(s.sign > 0 for s in ld)
    return float(ld[0].logabsdet - ld[1].logabsdet) / N


@pytest.mark.parametrize("norm", [False, True])
def test_convention_a_dense_matches_autograd_oracle(norm):
    net, X, Y = _interpolating_mlp(norm=norm)
    var = 0.7
    b = iic(net, (X, Y), prior=var)
    a = iic(net, (X, Y), prior=var, convention="A")
    expected = _dense_correction(net, X, Y, var)
    assert a.convention == "A" and b.multiplier_correction is None
    assert abs(expected) > 1e-3  # the model is curved: the correction matters
    assert a.multiplier_correction == pytest.approx(expected, rel=1e-8, abs=1e-12)
    assert a.curvature == pytest.approx(expected, rel=1e-8)
    assert a.value - b.value == pytest.approx(expected, rel=1e-8)
    assert a.sharpness == b.sharpness and a.curvature_stderr == 0.0


def test_convention_a_slq_within_reported_error_of_dense():
    # The per-probe log-determinant differences are heavy-tailed here (the smallest
    # eigenvalue of Q^T H_M Q is 0.045 against 1 for Q^T H* Q), so 64 probes: with 8 the
    # standard error itself is too noisy to test against.
    net, X, Y = _interpolating_mlp(seed=1)
    exact = iic(net, (X, Y), prior=1.0, convention="A").multiplier_correction
    zs = []
    for seed in range(3):
        est = iic(net, (X, Y), prior=1.0, convention="A", method="slq", seed=seed,
                  num_probes=64, num_matvecs=40)
        assert est.curvature_stderr > 0
        zs.append((est.multiplier_correction - exact) / est.curvature_stderr)
    assert max(abs(z) for z in zs) < 4, zs


def test_convention_a_vanishes_for_linear_models():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4, 9, generator=g, dtype=torch.float64)
    Y = torch.randn(4, 1, generator=g, dtype=torch.float64)
    net = torch.nn.Linear(9, 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_((torch.linalg.pinv(X) @ Y).T)
    dense = iic(net, (X, Y), prior=1.0, convention="A")
    assert abs(dense.multiplier_correction) < 1e-12
    assert dense.valid and dense.kkt_residual < 1e-8
    est = iic(net, (X, Y), prior=1.0, convention="A", method="slq", num_matvecs=9)
    assert est.multiplier_correction == 0.0 and est.curvature_stderr == 0.0


def _quartic_prior(net):
    """A non-Gaussian convex regulariser with coupling; minimiser 0, Hessian not diagonal."""

    def R(params):
        v = torch.cat([p.reshape(-1) for p in params.values()])
        return 0.5 * (v * v).sum() + 0.1 * (v**4).sum() + 0.05 * v.sum() ** 2

    ref = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    return R, ref


def test_general_prior_slq_within_reported_error_of_exact():
    net, X, Y = _interpolating_mlp(n=6, seed=2)
    R, ref = _quartic_prior(net)
    exact = iic(net, (X, Y), prior=R, reference=ref, method="exact")
    assert exact.method == "exact" and exact.valid
    assert abs(exact.curvature) > 1e-3
    zs_sharp, zs_curv = [], []
    # 16 probes: standard errors from 15 degrees of freedom, so that six |z| < 4 fail by
    # chance with probability 0.7% (with 8 probes, 7 degrees of freedom: 3%)
    for seed in range(3):
        est = iic(net, (X, Y), prior=R, reference=ref, method="slq", seed=seed, num_probes=16,
                  num_matvecs=60)
        assert est.method == "slq" and est.regularization == pytest.approx(
            exact.regularization, rel=1e-12)
        zs_sharp.append((est.sharpness - exact.sharpness) / est.sharpness_stderr)
        zs_curv.append((est.curvature - exact.curvature) / est.curvature_stderr)
    assert max(abs(z) for z in zs_sharp) < 4, zs_sharp
    assert max(abs(z) for z in zs_curv) < 4, zs_curv


def test_general_prior_convention_a_matches_gaussian_special_case():
    """A callable R equal to the Gaussian one gives the same IIC under both conventions."""
    net, X, Y = _interpolating_mlp(seed=3)
    ref = {n: torch.zeros_like(p) for n, p in net.named_parameters()}

    def R(params):
        return 0.5 * sum((p * p).sum() for p in params.values()) / 2.0

    for convention in ("B", "A"):
        gauss = iic(net, (X, Y), prior=2.0, convention=convention)
        gen = iic(net, (X, Y), prior=R, reference=ref, convention=convention)
        assert gen.value == pytest.approx(gauss.value, rel=1e-9)
        assert gen.curvature == pytest.approx(gauss.curvature, abs=1e-10)


def test_convention_a_refuses_rank_deficient_jacobian():
    net, X, Y = _interpolating_mlp(n=4)
    X2, Y2 = torch.cat([X, X[:1]]), torch.cat([Y, Y[:1]])  # a repeated sample: J loses rank
    res = iic(net, (X2, Y2), prior=1.0, convention="A")
    assert not res.valid and any("full row rank" in r for r in res.reasons)
    assert math.isnan(res.multiplier_correction)
    assert np.isnan(res.value)
