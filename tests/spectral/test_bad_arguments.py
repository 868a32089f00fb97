"""Scalar arguments that used to be truncated or passed on, and singular log-determinants
(issue 14, cases 5 and 6): each is refused with the argument's name, never a wrong number."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hessntk.criteria import allocate_bits
from hessntk.criteria.quantization_results import QuantizationSensitivity
from hessntk.spectral import aslinearoperator, diagonal, eigsh, rademacher, slq, trace


@pytest.fixture(scope="module")
def op():
    return aslinearoperator(np.diag(np.linspace(0.1, 3.0, 50)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tol": -1.0}, "tol to be a finite number > 0; got -1.0"),
        ({"tol": math.nan}, "tol to be a finite number > 0; got nan"),
        ({"tol": 0.0}, "tol to be a finite number > 0"),
        ({"k": 2.7}, "k to be an integer >= 1; got 2.7"),
        ({"k": True}, "k to be an integer >= 1; got True"),
        ({"ncv": 30.5}, "ncv to be an integer"),
        ({"max_matvecs": 0}, "max_matvecs to be an integer >= 1"),
    ],
)
def test_eigsh_refuses_bad_scalars(op, kwargs, match):
    with pytest.raises(ValueError, match=match):
        eigsh(op, **{"k": 2, **kwargs})


def test_integral_floats_and_numpy_integers_are_counts(op):
    a = eigsh(op, k=2.0, tol=1e-8)
    b = eigsh(op, k=np.int64(2), tol=1e-8)
    np.testing.assert_allclose(a.eigenvalues, [3.0, 3.0 - 2.9 / 49], rtol=1e-10)
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda op: slq(op, num_probes=1.5, num_matvecs=4), "num_probes to be an integer"),
        (lambda op: slq(op, num_probes=2, num_matvecs=4.5), "num_matvecs to be an integer"),
        (lambda op: slq(op, num_probes=2, num_matvecs=4, probes_per_group=0),
         "probes_per_group to be an integer >= 1"),
        (lambda op: trace(op, num_matvecs=10.5), "num_matvecs to be an integer"),
        (lambda op: diagonal(op, num_matvecs=-3), "num_matvecs to be an integer >= 1"),
    ],
)
def test_counts_of_stochastic_estimators(op, call, match):
    with pytest.raises(ValueError, match=match):
        call(op)


def test_cdf_and_density_arguments(op):
    d = slq(op, num_probes=2, num_matvecs=10, seed=0)
    with pytest.raises(ValueError, match="x without NaN"):
        d.cdf(np.array([0.5, math.nan]))
    ends = d.cdf(np.array([-math.inf, math.inf]))
    np.testing.assert_allclose(ends.value, [0.0, 1.0], atol=1e-14)
    for sigma in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="sigma to be a finite number > 0"):
            d.density(np.linspace(0, 3, 5), sigma=sigma)


def test_allocate_bits_refuses_an_infinite_budget():
    sens = QuantizationSensitivity(
        layers=("a", "b"), num_params=np.array([100, 100]), bits=(2, 4, 8),
        error=np.ones((2, 3)), gradient_term=np.zeros((2, 3)),
        quadratic_term=np.array([[9.0, 1.0, 0.1], [1.0, 0.5, 0.4]]))
    for unit in ("budget_bits", "budget_bytes", "average_bits"):
        for value in (math.inf, math.nan):
            with pytest.raises(ValueError, match=f"{unit} to be a finite number"):
                allocate_bits(sens, **{unit: value})


def _probe_logdet(A: np.ndarray, num_probes: int, seed: int) -> float:
    """What n-step SLQ computes exactly: mean over its unit probes of ``n v^T log(A) v``."""
    lam, U = np.linalg.eigh(A)
    V = rademacher(A.shape[0], num_probes, seed)
    V = V / np.linalg.norm(V, axis=0)
    return float(np.mean(A.shape[0] * np.sum((U.T @ V) ** 2 * np.log(lam)[:, None], axis=0)))


def _rank_deficient(n: int, r: int, seed: int) -> np.ndarray:
    B = np.random.default_rng(seed).standard_normal((n, r))
    return B @ B.T


@pytest.mark.parametrize("seed", range(8))
def test_logdet_of_a_singular_matrix_is_refused_whatever_the_rounding(seed):
    """Exact Lanczos (num_matvecs = n) on a singular PSD matrix: the zero eigenvalues come
    out as +-1e-16 ||A||; the log-determinant (-inf) is refused for every sign."""
    for A in (np.diag(np.r_[0.0, 0.0, np.linspace(1, 5, 10)]), _rank_deficient(12, 7, seed)):
        d = slq(aslinearoperator(A), num_probes=3, num_matvecs=12, seed=seed)
        with pytest.raises(ValueError, match="singular at this precision"):
            d.logdet()
        shifted = d.logdet(shift=0.5)  # the regularised value is defined (and exact here)
        assert shifted.value == pytest.approx(_probe_logdet(A + 0.5 * np.eye(12), 3, seed),
                                              rel=1e-10)


def test_logdet_resolution_follows_the_operator_dtype():
    """cond 1e9: resolved in float64, below the rounding level of a float32 operator."""
    lam = np.geomspace(1e-9, 1.0, 20)
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((20, 20)))[0]
    A = (Q * lam) @ Q.T
    d64 = slq(aslinearoperator(A), num_probes=2, num_matvecs=20, seed=0)
    assert d64.logdet().value == pytest.approx(_probe_logdet(A, 2, 0), rel=1e-6)
    d32 = slq(aslinearoperator(A.astype(np.float32)), num_probes=2, num_matvecs=20, seed=0)
    assert d32.eps == float(np.finfo(np.float32).eps)
    with pytest.raises(ValueError, match="float64 operator"):
        d32.logdet()


def test_a_non_symmetric_operator_is_refused_by_every_krylov_method():
    """Issue 14 case 7: confident wrong eigenvalues and densities (the check was opt-in).
    The check is free: two Krylov coefficients, no extra product."""
    from hessntk.spectral import lanczos

    rng = np.random.default_rng(0)
    S = rng.standard_normal((30, 30))
    A = S @ S.T + np.triu(rng.standard_normal((30, 30)), 1)  # symmetric part + a strict upper
    for call in (lambda op: eigsh(op, k=2), lambda op: slq(op, num_probes=3, num_matvecs=10),
                 lambda op: lanczos(op, 5)):
        with pytest.raises(ValueError, match="symmetric operator.*assume_symmetric = True"):
            call(aslinearoperator(A))
    op = aslinearoperator(A)
    op.assume_symmetric = True  # the documented opt-out
    assert slq(op, num_probes=2, num_matvecs=5).num_probes == 2
    sym = aslinearoperator(A + A.T)
    assert eigsh(sym, k=2).converged  # symmetric: no complaint
