"""SLQ spectral-CDF intervals cover exact spectra at their stated rate (issue 14, item 3).

``CDFEstimate.interval`` widens the Chebyshev-Markov-Stieltjes brackets by Student-t probe
noise. Where the rules are exact (brackets of width 0) it is a plain t-interval and covers at
about its rate; where the brackets dominate it is conservative. The Gauss point estimate with
its probe standard error is not an interval: where the quadrature bias dominates it covers
the truth far less often than 95% (measured in benchmarks/slq_cdf_coverage.py: 0-55% on the
demo Hessian at five settings). Each coverage bound below allows 3 binomial standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hessntk.spectral import aslinearoperator, slq
from tests.helpers import matrix_with_spectrum
from tests.hessian.models import dense_hessian


def _coverage(A: np.ndarray, x: float, truth: float, num_probes: int, num_matvecs: int,
              reps: int) -> tuple[float, float]:
    """Fractions of seeds whose interval(0.95), and whose value +- 1.96 stderr, hold truth."""
    op = aslinearoperator(A)
    inside = naive = 0
    for seed in range(reps):
        c = slq(op, num_probes=num_probes, num_matvecs=num_matvecs, seed=seed).cdf(x)
        lo, hi = c.interval(0.95)
        inside += bool(lo[0] <= truth <= hi[0])
        naive += bool(abs(c.value[0] - truth) <= 1.96 * c.stderr[0])
    return inside / reps, naive / reps


def _floor(reps: int, rate: float = 0.95) -> float:
    return rate - 3 * math.sqrt(rate * (1 - rate) / reps)


@pytest.mark.parametrize("num_probes", [3, 8])
def test_interval_covers_at_its_rate_when_the_rules_are_exact(num_probes):
    rng = np.random.default_rng(1)
    lam = np.concatenate([-rng.uniform(0, 1, 15), rng.uniform(0, 1, 45)])
    A = matrix_with_spectrum(lam, seed=0)
    reps = 400
    inside, _ = _coverage(A, 0.0, 0.25, num_probes, 60, reps)  # 60 steps: exact rules
    assert inside >= _floor(reps)
    assert inside <= 0.995  # not vacuous: probe noise alone, so about the stated rate


def _hessian_like(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """22% negative eigenvalues near zero, a positive bulk and a few outliers."""
    rng = np.random.default_rng(seed)
    neg = int(0.22 * n)
    lam = np.concatenate([-np.abs(rng.standard_normal(neg)) * 0.05,
                          np.abs(rng.standard_normal(n - neg - 4)) * 0.1,
                          rng.uniform(5, 50, 4)])
    return matrix_with_spectrum(lam, seed=seed), lam


@pytest.mark.parametrize(("num_probes", "num_matvecs"), [(4, 20), (8, 40), (12, 80)])
def test_interval_covers_where_the_gauss_estimate_does_not(num_probes, num_matvecs):
    A, lam = _hessian_like()
    reps = 150
    inside, naive = _coverage(A, 0.0, float(np.mean(lam <= 0)), num_probes, num_matvecs, reps)
    assert inside >= _floor(reps)
    if num_matvecs == 20:  # the quadrature bias is many probe standard errors
        assert naive <= 0.5


def test_interval_covers_the_exact_hessian_of_a_trained_network():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / (X.std(0) + 1e-8), dtype=torch.float64)[:100]
    y = torch.tensor(y[:100])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):  # part-trained: an indefinite Hessian
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    names = [name for name, _ in model.named_parameters()]
    H = dense_hessian(model, nn.CrossEntropyLoss(), [(X, y)], names).numpy()
    lam = np.linalg.eigvalsh(H)
    truth = float(np.mean(lam < 0))
    assert 0.05 < truth < 0.5  # a material negative fraction to estimate
    reps = 100
    for num_probes, num_matvecs in [(4, 20), (10, 40)]:
        inside, _ = _coverage(H, 0.0, truth, num_probes, num_matvecs, reps)
        assert inside >= _floor(reps), (num_probes, num_matvecs, inside)


def test_interval_arguments():
    A = matrix_with_spectrum(np.linspace(-1.0, 1.0, 40), seed=0)
    c = slq(aslinearoperator(A), num_probes=4, num_matvecs=8).cdf([-2.0, 0.0, 2.0])
    lo, hi = c.interval(0.9)
    assert lo[0] == 0.0 and hi[2] == 1.0
    assert np.all(lo <= c.lower) and np.all(hi >= c.upper - 1e-12)  # the brackets, widened
    wide = c.interval(0.99)
    assert wide[0][1] <= lo[1] and wide[1][1] >= hi[1]
    for bad in (0.0, 1.0, math.nan, 1.5):
        with pytest.raises(ValueError, match="confidence in"):
            c.interval(bad)
    single = slq(aslinearoperator(A), num_probes=1, num_matvecs=8).cdf(0.0)
    with pytest.raises(ValueError, match="2 or more probes"):
        single.interval()
