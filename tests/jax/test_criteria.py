"""IIC of JAX models against closed forms (docs/theory.md 1.5 and 7.9)."""

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax not installed: pip install 'hessntk[jax]'")
import jax.numpy as jnp  # noqa: E402

import hessntk.jax as hj  # noqa: E402
from hessntk.criteria import IICResult  # noqa: E402
from tests.helpers import assert_close  # noqa: E402


def linear(p, x):
    return x @ p["w"]


def test_linear_regression_closed_form():
    """docs/theory.md 1.5: log(1/2 Y^T (X X^T)^-1 Y) + (1/n) log det(X X^T) - log n."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((8, 20)), rng.standard_normal((8, 1))
    w = X.T @ np.linalg.solve(X @ X.T, Y)  # minimum-norm interpolator
    K = X @ X.T
    want = (math.log(0.5 * Y[:, 0] @ np.linalg.solve(K, Y[:, 0])) + np.linalg.slogdet(K)[1] / 8
            - math.log(8))
    res = hj.iic(linear, {"w": jnp.asarray(w)}, (jnp.asarray(X), jnp.asarray(Y)), prior=1.0)
    assert isinstance(res, IICResult) and res.valid and res.method == "exact"
    assert_close(res.value, want)
    assert res.kkt_residual < 1e-6 and res.residual < 1e-12
    # Two batches give the same criterion.
    data = [(jnp.asarray(X[:4]), jnp.asarray(Y[:4])), (jnp.asarray(X[4:]), jnp.asarray(Y[4:]))]
    assert_close(hj.iic(linear, {"w": jnp.asarray(w)}, data, prior=1.0).value, want)


def test_two_parameter_case_is_log_17_over_8():
    # docs/theory.md 7 item 9c: theta* = (1, 2), R = 1/2 theta^T diag(2, 8) theta, theta0 = 0
    def identity(p, x):
        return jnp.broadcast_to(p["theta"], (x.shape[0], 2))

    params = {"theta": jnp.array([1.0, 2.0])}
    data = (jnp.zeros((1, 1)), jnp.array([[1.0, 2.0]]))
    gaussian = hj.iic(identity, params, data, prior={"theta": np.array([0.5, 0.125])})
    assert_close(gaussian.value, math.log(17 / 8), rtol=1e-12)

    def R(p):
        t = p["theta"]
        return 0.5 * (2 * t[0] ** 2 + 8 * t[1] ** 2)

    general = hj.iic(identity, params, data, prior=R, reference={"theta": jnp.zeros(2)})
    assert_close(general.value, math.log(17 / 8), rtol=1e-12)
    assert general.curvature == 0.0 and general.prior == "R"


def test_not_interpolating_warns_and_is_flagged():
    rng = np.random.default_rng(1)
    X, Y = jnp.asarray(rng.standard_normal((6, 10))), jnp.asarray(rng.standard_normal((6, 1)))
    with pytest.warns(RuntimeWarning, match="not interpolating"):
        res = hj.iic(linear, {"w": jnp.zeros((10, 1)) + 0.1}, (X, Y), prior=1.0)
    assert not res.valid and res.reasons[0].startswith("not interpolating")
