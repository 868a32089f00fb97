import numpy as np
import pytest

from hessntk.criteria import lower_tail_exponent, upper_tail_exponent
from hessntk.spectral import aslinearoperator, slq
from tests.helpers import matrix_with_spectrum, power_law_spectrum


@pytest.mark.parametrize("alpha", [0.3, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("method", ["mle", "hill", "regression"])
def test_deterministic_power_law_exact_exponent(alpha, method):
    lam = power_law_spectrum(2000, alpha, lam_max=3.0)
    fit = lower_tail_exponent(lam, method=method)
    assert abs(fit.alpha - alpha) < 2e-3 * alpha
    assert fit.tail == "lower" and fit.density_exponent == pytest.approx(fit.alpha - 1)


def test_random_beta_spectrum_within_reported_error():
    rng = np.random.default_rng(0)
    lam = rng.uniform(size=5000) ** (1 / 0.7)  # Beta(0.7, 1): CDF x^0.7
    for method in ("mle", "regression"):
        fit = lower_tail_exponent(lam, method=method, seed=1)
        assert abs(fit.alpha - 0.7) <= 3 * fit.stderr


def test_hard_edge_marchenko_pastur_and_fuss_catalan():
    rng = np.random.default_rng(0)
    G = rng.standard_normal((800, 800))
    wishart = np.linalg.eigvalsh(G @ G.T / 800)  # square Wishart: alpha = 1/2
    fit = lower_tail_exponent(wishart, method="regression", seed=0)
    assert abs(fit.alpha - 0.5) <= 3 * fit.stderr and fit.stderr < 0.06
    P = rng.standard_normal((800, 800)) @ rng.standard_normal((800, 800)) / 800
    fc = np.linalg.eigvalsh(P @ P.T / 800)  # product of two Ginibre: alpha = 1/3
    fit = lower_tail_exponent(fc, method="regression", seed=0)
    assert abs(fit.alpha - 1 / 3) <= 3 * fit.stderr and fit.stderr < 0.05


def test_floor_excludes_zeros_and_reports_their_mass():
    lam = np.concatenate([np.zeros(500), -1e-18 * np.ones(100), power_law_spectrum(1400, 0.5)])
    fit = lower_tail_exponent(lam, cutoff=0.5)
    assert fit.mass_below_floor == pytest.approx(600 / 2000)
    assert abs(fit.alpha - 0.5) < 0.01 and fit.num_points == np.sum(lam[lam > 0] <= 0.5)


def test_slq_density_recovers_alpha_within_reported_error():
    A = matrix_with_spectrum(power_law_spectrum(1500, 0.5), seed=0)
    dens = slq(aslinearoperator(A), num_probes=30, num_matvecs=80, seed=0)
    for method, cutoff in (("mle", "ks"), ("regression", 0.2)):
        fit = lower_tail_exponent(dens, method=method, cutoff=cutoff, seed=0)
        assert fit.num_points is None and 0 < fit.stderr < 0.02
        assert abs(fit.alpha - 0.5) <= 3 * fit.stderr


def test_slq_refuses_unresolved_cutoff_and_hill():
    A = matrix_with_spectrum(power_law_spectrum(600, 0.5), seed=0)
    dens = slq(aslinearoperator(A), num_probes=4, num_matvecs=30, seed=0)
    with pytest.raises(ValueError, match=r"num_matvecs >= \d+"):
        lower_tail_exponent(dens, cutoff=1e-3)
    with pytest.raises(ValueError, match="exact eigenvalues"):
        lower_tail_exponent(dens, method="hill")


def test_log_det_tracks_the_exponent_for_pure_power_laws():
    # (1/N) log det A -> log(lambda_max) - 1/alpha (docs/theory.md 2.5)
    for alpha in (0.4, 0.7, 1.5):
        lam = power_law_spectrum(5000, alpha, lam_max=2.0)
        fit = lower_tail_exponent(lam)
        assert abs(np.mean(np.log(lam)) - (np.log(2.0) - 1 / fit.alpha)) < 0.01 / alpha


def test_upper_tail_pareto():
    lam = (1 - (np.arange(4000) + 0.5) / 4000) ** (-1 / 1.5)  # density ~ x^-2.5 above 1
    fit = upper_tail_exponent(lam)
    assert abs(fit.alpha - 2.5) <= 3 * fit.stderr and fit.tail == "upper"
    assert fit.density_exponent == -fit.alpha


def test_bad_input_and_plot():
    with pytest.raises(ValueError, match="method"):
        lower_tail_exponent(np.ones(50), method="ols")
    with pytest.raises(ValueError, match="finite"):
        lower_tail_exponent(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="above the floor"):
        lower_tail_exponent(np.zeros(100))
    with pytest.raises(ValueError, match="Raise the cutoff"):
        lower_tail_exponent(power_law_spectrum(100, 0.5), cutoff=1e-9)
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ax = lower_tail_exponent(power_law_spectrum(500, 0.5)).plot()
    assert len(ax.lines) >= 2
    ax = upper_tail_exponent((1 - (np.arange(400) + 0.5) / 400) ** -0.5).plot()
    assert len(ax.lines) >= 2


def test_slq_cutoff_candidates_without_spread_are_skipped():
    import warnings

    d = np.concatenate([np.full(90, 0.1), np.full(10, 1.0)])
    dens = slq(aslinearoperator(np.diag(d)), num_probes=3, num_matvecs=20, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = lower_tail_exponent(dens, seed=0)
    assert np.isfinite(fit.alpha) and fit.cutoff == pytest.approx(1.0)
