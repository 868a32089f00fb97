import math

import numpy as np
import pytest
import torch
from torch import nn

from hessntk.criteria import iic
from tests.helpers import assert_close


def _min_norm(X, Y):
    return X.T @ torch.linalg.solve(X @ X.T, Y)


def _linear(X, Y, bias=False):
    net = nn.Linear(X.shape[1], Y.shape[1], bias=bias).double()
    with torch.no_grad():
        net.weight.copy_(_min_norm(X, Y).T)
    return net.eval()


@pytest.fixture()
def regression():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(8, 20, generator=g, dtype=torch.float64)
    Y = torch.randn(8, 1, generator=g, dtype=torch.float64)
    return X, Y


def iic_lin(X, Y):
    """docs/theory.md 1.5: log(1/2 Y^T (X X^T)^-1 Y) + (1/n) log det(X X^T) - log n."""
    K = (X @ X.T).numpy()
    y = Y.numpy()[:, 0]
    n = len(y)
    return (math.log(0.5 * y @ np.linalg.solve(K, y)) + np.linalg.slogdet(K)[1] / n
            - math.log(n))


def test_linear_regression_closed_form_and_evidence_identity(regression):
    X, Y = regression
    res = iic(_linear(X, Y), (X, Y), prior=1.0, method="exact")
    assert res.valid and res.reasons == ()
    assert_close(res.value, iic_lin(X, Y), rtol=1e-10)
    # exact Gaussian evidence at the empirical-Bayes temperature tau* (docs/theory.md 1.5)
    K, y, n = (X @ X.T).numpy(), Y.numpy()[:, 0], 8
    tau = y @ np.linalg.solve(K, y) / n
    nll = 0.5 * (y @ np.linalg.solve(tau * K, y) + np.linalg.slogdet(tau * K)[1]
                 + n * math.log(2 * math.pi))
    assert_close(res.value, 2 / n * nll - 1 - math.log(4 * math.pi), rtol=1e-10)
    assert res.curvature == 0.0 and res.kkt_residual < 1e-6 and res.rank == 8
    assert res.residual < 1e-12 and res.sharpness_stderr == 0.0


def test_invariances(regression):
    X, Y = regression
    base = iic(_linear(X, Y), (X, Y), prior=1.0).value
    # R -> a R (prior variance / a) leaves the IIC unchanged
    assert_close(iic(_linear(X, Y), (X, Y), prior=1 / 7.0).value, base, rtol=1e-10)
    # X -> b X leaves it unchanged
    assert_close(iic(_linear(3 * X, Y), (3 * X, Y), prior=1.0).value, base, rtol=1e-10)
    # Y -> a Y shifts it by 2 log a
    assert_close(iic(_linear(X, 5 * Y), (X, 5 * Y), prior=1.0).value, base + 2 * math.log(5),
                 rtol=1e-10)


class Identity(nn.Module):
    """h(theta) = theta: N = p = 2 constraints, one 'sample' with two outputs."""

    def __init__(self, theta):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta, dtype=torch.float64))

    def forward(self, x):
        return self.theta.expand(x.shape[0], -1)


def test_two_parameter_case_is_log_17_over_8():
    # docs/theory.md 7 item 9c: theta* = (1, 2), R = 1/2 theta^T diag(2, 8) theta, theta0 = 0
    model = Identity([1.0, 2.0])
    data = (torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[1.0, 2.0]],
                                                                  dtype=torch.float64))
    gaussian = iic(model, data, prior={"theta": torch.tensor([0.5, 0.125])})
    assert_close(gaussian.value, math.log(17 / 8), rtol=1e-12)

    def R(p):
        t = p["theta"]
        return 0.5 * (2 * t[0] ** 2 + 8 * t[1] ** 2)

    general = iic(model, data, prior=R, reference={"theta": torch.zeros(2, dtype=torch.float64)})
    assert_close(general.value, math.log(17 / 8), rtol=1e-12)
    assert general.curvature == 0.0


def test_kernel_form_equals_tangent_form_for_a_general_regulariser(regression):
    X, Y = regression

    def R(p):  # non-quadratic: Hessian 1 + w^2 differs between theta* and theta0 = 0
        w = p["weight"]
        return (0.5 * w**2 + w**4 / 12).sum()

    net = _linear(X, Y)
    res = iic(net, (X, Y), prior=R, reference={"weight": torch.zeros(1, 20,
                                                                     dtype=torch.float64)})
    w = net.weight.detach()[0].numpy()
    H, H0 = np.diag(1 + w**2), np.eye(20)
    J = X.numpy()
    Q = np.linalg.svd(J)[2][8:].T  # orthonormal basis of ker J
    n = 8
    tangent = (math.log(float(R({"weight": net.weight.detach()})))
               + (np.linalg.slogdet(J @ J.T)[1] + np.linalg.slogdet(Q.T @ H @ Q)[1]
                  - np.linalg.slogdet(H0)[1]) / n - math.log(n))
    assert_close(res.value, tangent, rtol=1e-10)
    assert res.curvature > 0


class DiagonalNet(nn.Module):
    def __init__(self, p):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.u = nn.Parameter(torch.randn(p, generator=g, dtype=torch.float64))
        self.v = nn.Parameter(torch.randn(p, generator=g, dtype=torch.float64))

    def forward(self, x):
        return (x * self.u * self.v).sum(1, keepdim=True)


def test_diagonal_linear_network_ntk_closed_form():
    net = DiagonalNet(12).eval()
    X = torch.randn(5, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        Y = net(X)
    res = iic(net, (X, Y), prior=1.0)
    u, v = net.u.detach(), net.v.detach()
    K = (X * (u**2 + v**2)) @ X.T
    assert_close(res.sharpness, torch.linalg.slogdet(K)[1].item() / 5, rtol=1e-10)
    assert_close(np.sort(res.eigenvalues), torch.linalg.eigvalsh(K).numpy(), rtol=1e-10)


def _interpolating_mlp(n=30, d=6, h=64, c=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    Y = torch.randn(n, c, generator=g, dtype=torch.float64)
    net = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, c)).double()
    with torch.no_grad():
        Phi = torch.cat([net[1](net[0](X)), torch.ones(n, 1, dtype=torch.float64)], 1)
        sol = _min_norm(Phi, Y)
        net[2].weight.copy_(sol[:-1].T)
        net[2].bias.copy_(sol[-1])
    return net.eval(), X, Y


def test_exact_and_slq_agree_within_reported_error():
    net, X, Y = _interpolating_mlp()
    exact = iic(net, (X, Y), method="exact")
    approx = iic(net, (X, Y), method="slq", num_probes=30, num_matvecs=30, seed=0)
    assert exact.valid and exact.residual < 1e-10
    assert approx.sharpness_stderr > 0
    assert abs(approx.sharpness - exact.sharpness) <= 4 * approx.sharpness_stderr
    assert approx.regularization == exact.regularization
    assert exact.tail is not None and exact.floor > 0


def test_soft_variant_and_multi_batch_data():
    net, X, Y = _interpolating_mlp()
    hard = iic(net, [(X[:20], Y[:20]), (X[20:], Y[20:])])
    lam = hard.eigenvalues
    soft = iic(net, (X, Y), soft=1e3)
    assert_close(soft.sharpness, np.mean(np.log(lam + 1e-3)), rtol=1e-10)
    assert iic(net, (X, Y), soft=1e14).sharpness == pytest.approx(hard.sharpness, rel=1e-8)


def test_probability_observations_project_out_structural_nulls():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 3)).double().eval()
    with torch.no_grad():
        net[2].weight.mul_(40)
    res = iic(net, (X, y), observations="probabilities", soft=1e6)
    assert res.num_constraints == 6 * 2 and res.structural_nullity == 0
    with pytest.warns(RuntimeWarning, match="not interpolating"):
        res = iic(net, (X, torch.tensor([1, 1, 1, 1, 1, 1])), observations="logits")
    assert not res.valid and res.train_error > 0


def test_invalid_cases_are_flagged_not_hidden(regression):
    X, Y = regression
    net = _linear(X, Y)
    res = iic(net, (X, Y), prior=1.0, reference=net)  # theta* = m: R* - R0 = 0
    assert not res.valid and any("not positive" in r for r in res.reasons)
    assert math.isnan(res.value)
    with pytest.raises(ValueError, match="reference= the minimiser"):
        iic(net, (X, Y), prior=lambda p: (p["weight"] ** 2).sum())
    with pytest.raises(ValueError, match="shape"):
        iic(net, (X, Y), reference={"weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="observations"):
        iic(net, (X, Y), observations="labels")
    with pytest.raises(ValueError, match="soft=None"):
        iic(net, (X, Y), prior=lambda p: (p["weight"] ** 2).sum(), method="slq",
            reference=net, soft=1.0)
    with pytest.raises(ValueError, match="convention"):
        iic(net, (X, Y), convention="C")


def test_fewer_parameters_than_constraints_is_flagged():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 3, generator=g, dtype=torch.float64)
    net = nn.Linear(3, 1).double().eval()
    with torch.no_grad():
        Y = net(X)
    for method in ("exact", "slq"):
        res = iic(net, (X, Y), method=method, num_probes=4, num_matvecs=10)
        assert not res.valid and any("rank at most P = 4 < N = 30" in r for r in res.reasons)
