"""Quantization sensitivity: predictions against exact and dense references, measurement,
bit allocation against brute force, export, and bad input."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hessntk.criteria import (
    QuantizationSensitivity,
    allocate_bits,
    measure_quantization,
    quantization_sensitivity,
    quantize,
    quantized_loss,
)
from tests.helpers import assert_close

DT = torch.float64
ROOT = Path(__file__).resolve().parents[2]


class TwoBranch(nn.Module):
    """Linear in its parameters: the MSE loss is exactly quadratic in them."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x[:, :3]) + self.b(x[:, 3:])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models on a shared 2-core machine: extra intra-op threads only add contention.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _unchanged(model, before) -> bool:
    return all(torch.equal(p, before[k]) for k, p in model.named_parameters())


def _dense(model, loss_fn, X, Y, names):
    """Gradient and Hessian of the mean loss over ``names`` (flat, layout order), float64."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    theta = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(t):
        parts = torch.split(t, [s.numel() for s in shapes])
        p = {n: q.reshape(s) for n, q, s in zip(names, parts, shapes, strict=True)}
        return loss_fn(torch.func.functional_call(model, p, (X,)), Y)

    # torch.autograd.functional, not torch.func.hessian: the latter is wrong through
    # layer_norm in torch 2.13.
    g = torch.autograd.functional.jacobian(f, theta)
    H = torch.autograd.functional.hessian(f, theta)
    return g, H


@pytest.fixture(scope="module")
def quadratic():
    torch.manual_seed(0)
    model = TwoBranch().to(DT)
    X, Y = torch.randn(20, 7, dtype=DT), torch.randn(20, 2, dtype=DT)
    return model, nn.MSELoss(), (X, Y)


@pytest.fixture(scope="module")
def layernorm_mlp():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
    X, y = torch.randn(40, 5, dtype=DT), torch.randint(0, 3, (40,))
    batches = [(X[:25], y[:25]), (X[25:], y[25:])]  # ragged: batches weighted by size
    names = ["0.weight", "3.weight"]
    g, H = _dense(model, nn.CrossEntropyLoss(), X, y, names)
    return model.eval(), nn.CrossEntropyLoss(), batches, g, H


@pytest.fixture(scope="module")
def trained_mlp():
    torch.manual_seed(0)
    X = torch.randn(128, 6, dtype=DT)
    y = (X[:, 0] * X[:, 1] + X[:, 2] > 0).long() + (X[:, 3] > 1).long()
    model = nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)
    ).to(DT)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model.eval(), nn.CrossEntropyLoss(), (X, y)


# -- predictions against exact references ---------------------------------------------------


def test_quadratic_model_prediction_is_the_exact_loss_increase(quadratic):
    model, loss_fn, data = quadratic
    before = _params(model)
    sens = quantization_sensitivity(model, loss_fn, data, bits=(2, 3, 4, 8), quantize_biases=True)
    meas = measure_quantization(model, loss_fn, data, bits=(2, 3, 4, 8), quantize_biases=True)
    assert sens.layers == meas.layers == ("a", "b")
    assert sens.params["a"] == ("a.weight", "a.bias")
    assert _unchanged(model, before)
    # Not at a minimum: the gradient term matters, and with it the prediction is exact.
    assert np.abs(sens.gradient_term).max() > 0.1 * np.abs(meas.increase).max()
    assert_close(sens.predictions("direct"), meas.increase, rtol=1e-10)
    assert_close(sens.error, meas.error, rtol=1e-12)
    rho = sens.rank_correlation(meas)
    assert set(rho) == {"direct", "trace", "eigenvalue"} and set(rho["direct"]) == {2, 3, 4, 8}


def test_quadratic_form_and_gradient_match_the_dense_hessian(quadratic):
    model, loss_fn, (X, Y) = quadratic
    sens = quantization_sensitivity(model, loss_fn, (X, Y), bits=(2, 5), metric="trace")
    names = ["a.weight", "b.weight"]
    g, H = _dense(model, loss_fn, X, Y, names)
    offsets = {"a": slice(0, 6), "b": slice(6, 14)}
    params = dict(model.named_parameters())
    for i, layer in enumerate(sens.layers):
        w = params[f"{layer}.weight"]
        for j, b in enumerate(sens.bits):
            dw = torch.zeros(14, dtype=DT)
            dw[offsets[layer]] = (quantize(w, b) - w).reshape(-1)
            assert_close(sens.quadratic_term[i, j], 0.5 * dw @ H @ dw)
            assert_close(sens.gradient_term[i, j], g @ dw)


def test_block_traces_and_eigenvalues_match_dense_blocks(layernorm_mlp):
    model, loss_fn, data, g, H = layernorm_mlp
    blocks = {"0": slice(0, 30), "3": slice(30, 48)}
    sens = quantization_sensitivity(model, loss_fn, data, bits=(3, 8), num_matvecs=48)
    assert sens.layers == ("0", "3")  # the LayerNorm holds no weights (1-D only)
    assert sens.num_matvecs["trace"] == 48 and sens.trace_method == "exact"
    params = dict(model.named_parameters())
    for i, layer in enumerate(sens.layers):
        Hb = H[blocks[layer], blocks[layer]]
        assert_close(sens.trace[i], torch.trace(Hb))
        assert sens.trace_stderr[i] == 0
        assert_close(sens.average_trace[i], torch.trace(Hb) / Hb.shape[0])
        assert_close(sens.top_eigenvalue[i], torch.linalg.eigvalsh(Hb).max(), rtol=1e-6)
        w = params[f"{layer}.weight"]
        for j, b in enumerate(sens.bits):
            dw = (quantize(w, b) - w).reshape(-1)
            assert_close(sens.quadratic_term[i, j], 0.5 * dw @ Hb @ dw)
            assert_close(sens.gradient_term[i, j], g[blocks[layer]] @ dw)
            assert_close(sens.predictions("trace")[i, j], 0.5 * torch.trace(Hb) / len(dw) * dw @ dw)


def test_stochastic_block_traces_within_their_standard_errors(layernorm_mlp):
    model, loss_fn, data, _, H = layernorm_mlp
    sens = quantization_sensitivity(model, loss_fn, data, bits=4, num_matvecs=20, metric="trace")
    assert sens.trace_method == "xtrace" and sens.num_matvecs["trace"] == 20
    exact = [float(torch.trace(H[:30, :30])), float(torch.trace(H[30:, 30:]))]
    assert np.all(sens.trace_stderr > 0)
    # XTrace's reported stderr can be 1-2x small (hessntk.spectral.trace): judge with 4.
    assert np.all(np.abs(sens.trace - exact) <= 4 * sens.trace_stderr)
    again = quantization_sensitivity(model, loss_fn, data, bits=4, num_matvecs=20, metric="trace")
    assert np.array_equal(again.trace, sens.trace)  # same seed, same bits
    other = quantization_sensitivity(
        model, loss_fn, data, bits=4, num_matvecs=20, metric="trace", seed=1
    )
    assert not np.array_equal(other.trace, sens.trace)
    assert np.isnan(sens.top_eigenvalue).all() and sens.num_matvecs["eigenvalue"] == 0


def test_memory_budget_reaches_the_traces_and_eigenvalues(layernorm_mlp):
    from hessntk import MemoryBudgetError

    model, loss_fn, data, _, _ = layernorm_mlp
    for metric, words in (("trace", "trace"), ("eigenvalue", "Krylov basis")):
        with pytest.raises(MemoryBudgetError, match=words):
            quantization_sensitivity(model, loss_fn, data, bits=4, num_matvecs=20,
                                     metric=metric, max_memory=64)


def test_direct_form_within_a_few_percent_at_8_bits_on_a_trained_mlp(trained_mlp):
    model, loss_fn, data = trained_mlp
    sens = quantization_sensitivity(model, loss_fn, data, bits=(4, 8), metric="eigenvalue")
    meas = measure_quantization(model, loss_fn, data, bits=(4, 8))
    pred, real = sens.predictions("direct")[:, 1], meas.increase[:, 1]
    assert np.all(np.abs(pred - real) <= 0.05 * np.abs(real))
    assert np.isnan(sens.trace).all()
    # The eigenvalue predictor bounds the quadratic term from above.
    assert np.all(sens.quadratic_term <= sens.predictions("eigenvalue") * (1 + 1e-6))


def test_ggn_curvature_equals_hessian_for_a_model_linear_in_its_parameters(quadratic):
    model, loss_fn, data = quadratic
    kw = dict(bits=(2, 4), metric="trace", num_matvecs=100)
    hess = quantization_sensitivity(model, loss_fn, data, **kw)
    ggn = quantization_sensitivity(model, loss_fn, data, curvature="ggn", **kw)
    assert_close(ggn.quadratic_term, hess.quadratic_term)
    assert_close(ggn.trace, hess.trace)


def test_layer_choices_granularity_and_biases(layernorm_mlp):
    model, loss_fn, data, _, _ = layernorm_mlp
    named = quantization_sensitivity(model, loss_fn, data, bits=4, layers=["3"], metric="trace")
    assert named.layers == ("3",) and named.num_params.tolist() == [18]
    full = quantization_sensitivity(model, loss_fn, data, bits=4, quantize_biases=True,
                                    metric="trace")  # fmt: skip
    assert full.layers == ("0", "1", "3") and full.num_params.tolist() == [36, 12, 21]
    groups = {"first": ["0.weight"], "last": ["3.weight", "3.bias"]}
    custom = quantization_sensitivity(
        model, loss_fn, data, bits=4, layers=groups, quantize_biases=True, granularity="channel"
    )
    assert custom.layers == ("first", "last") and custom.num_params.tolist() == [30, 21]
    meas = measure_quantization(
        model, loss_fn, data, bits=4, layers=groups, quantize_biases=True, granularity="channel"
    )
    assert_close(custom.error, meas.error, rtol=1e-12)
    whole = quantization_sensitivity(nn.Sequential(model), loss_fn, data, bits=4, layers="0",
                                     metric="trace")  # fmt: skip
    assert whole.layers == ("0",) and whole.num_params.tolist() == [48]  # all weights under it


# -- measurement ------------------------------------------------------------------------------


def test_measure_restores_the_model_on_exception(trained_mlp):
    model, loss_fn, data = trained_mlp
    before = _params(model)
    calls = []

    def flaky(out, y):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        return loss_fn(out, y)

    with pytest.raises(RuntimeError, match="interrupted"):
        measure_quantization(model, flaky, data, bits=(2, 4))
    assert _unchanged(model, before)

    def nan_after_first(out, y):
        calls.append(1)
        return loss_fn(out, y) * (float("nan") if len(calls) > 1 else 1.0)

    calls.clear()
    with pytest.raises(FloatingPointError, match="layer '0' quantized to 2 bits"):
        measure_quantization(model, nan_after_first, data, bits=(2, 4))
    assert _unchanged(model, before)


def test_quantized_loss_of_one_layer_equals_the_measurement(trained_mlp):
    model, loss_fn, data = trained_mlp
    meas = measure_quantization(model, loss_fn, data, bits=(3, 8))
    assert quantized_loss(model, loss_fn, data, {"2": 3}) == meas.quantized_loss[1, 0]
    assert quantized_loss(model, loss_fn, data, {}) == meas.loss
    with pytest.raises(ValueError, match="unknown \\['9'\\]"):
        quantized_loss(model, loss_fn, data, {"9": 4})


# -- allocation ---------------------------------------------------------------------------------


def _fake_sensitivity(pred, num_params, bits):
    L, B = pred.shape
    return QuantizationSensitivity(
        layers=tuple(f"l{i}" for i in range(L)), num_params=np.asarray(num_params), bits=bits,
        error=np.ones((L, B)), gradient_term=np.zeros((L, B)), quadratic_term=pred,
    )  # fmt: skip


def _brute_force(pred, sizes, budget):
    best = np.inf
    for k in itertools.product(range(pred.shape[1]), repeat=pred.shape[0]):
        rows = np.arange(pred.shape[0])
        if sizes[rows, k].sum() <= budget:
            best = min(best, pred[rows, k].sum())
    return best


@pytest.mark.parametrize("seed", range(3))
def test_allocate_bits_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    L, bits = 5, (2, 3, 4, 8)
    n = rng.integers(5, 200, L)
    # Decreasing in bits, with a few negative entries (gradient terms can be negative).
    pred = np.sort(rng.lognormal(0, 2, (L, len(bits))), axis=1)[:, ::-1] - 0.05
    sens = _fake_sensitivity(pred, n, bits)
    choices = (2, 4, 8)
    sizes = n[:, None] * np.array(choices)
    sub = pred[:, [0, 2, 3]]
    for avg in (2.0, 2.7, 3.5, 4.0, 6.1, 8.0):
        alloc = allocate_bits(sens, average_bits=avg, choices=choices, num_frontier=2)
        assert alloc.size_bits <= avg * n.sum()
        assert alloc.size_bits == sum(n[i] * alloc.bits[f"l{i}"] for i in range(L))
        assert_close(alloc.predicted_increase, _brute_force(sub, sizes, avg * n.sum()), rtol=1e-9)
    # Frontier: sizes increase, predictions decrease, each point optimal at its size.
    front = allocate_bits(sens, average_bits=4, choices=choices, num_frontier=10).frontier
    assert [p["size_bits"] for p in front] == sorted({p["size_bits"] for p in front})
    assert all(
        a["predicted_increase"] > b["predicted_increase"]
        for a, b in zip(front[:-1], front[1:], strict=True)
    )
    for p in front:
        assert_close(p["predicted_increase"], _brute_force(sub, sizes, p["size_bits"]), rtol=1e-9)
    assert front[0]["average_bits"] == 2 and front[-1]["average_bits"] == 8


def test_allocation_budget_forms_agree_and_infeasible_budget_is_explained():
    pred = np.array([[9.0, 1.0, 0.1], [1.0, 0.5, 0.4], [3.0, 0.2, 0.0]])
    sens = _fake_sensitivity(pred, [100, 50, 10], (2, 4, 8))
    a = allocate_bits(sens, average_bits=4)
    b = allocate_bits(sens, budget_bits=4 * 160)
    c = allocate_bits(sens, budget_bytes=4 * 160 / 8)
    assert a.bits == b.bits == c.bits and a.budget_bits == b.budget_bits == 640
    assert json.loads(a.to_json())["bits"] == a.bits
    assert "size_bits" in a.to_csv().splitlines()[0]
    with pytest.raises(ValueError, match="at least 40 .*every layer at 2 bits: 320 bits"):
        allocate_bits(sens, budget_bytes=39)
    with pytest.raises(ValueError, match="exactly one"):
        allocate_bits(sens, average_bits=4, budget_bits=640)
    with pytest.raises(ValueError, match="missing.*bits=\\(2, 3, 4, 8\\)"):
        allocate_bits(sens, average_bits=4, choices=(3, 4))
    with pytest.raises(ValueError, match="metric="):
        allocate_bits(sens, average_bits=4, predictor="trace")  # traces not computed


# -- export ---------------------------------------------------------------------------------------


def test_table_json_csv_and_plot(trained_mlp, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    model, loss_fn, data = trained_mlp
    sens = quantization_sensitivity(model, loss_fn, data, bits=(2, 4), metric="trace",
                                    num_matvecs=20)  # fmt: skip
    d = json.loads(sens.to_json(tmp_path / "s.json"))
    assert [x["layer"] for x in d["layers"]] == sens.ranking()
    assert d["layers"][0]["top_eigenvalue"] is None  # not computed: null, not NaN
    assert d["layers"][0]["per_bits"][1]["bits"] == 4
    assert "NaN" not in (tmp_path / "s.json").read_text()
    lines = sens.to_csv(tmp_path / "s.csv").splitlines()
    assert len(lines) == 1 + 3 * 2 and lines[0].startswith("layer,rank,num_params,bits")
    text = str(sens)
    assert "avg tr H" in text and all(name in text for name in sens.layers)
    ranked = sens.ranking("direct", 2)
    assert (
        sens.predictions("direct")[sens.layers.index(ranked[0]), 0]
        == sens.predictions("direct")[:, 0].max()
    )
    meas = measure_quantization(model, loss_fn, data, bits=(2, 4))
    assert json.loads(meas.to_json())["rows"][0]["increase"] == meas.increase[0, 0]
    assert "4 bits" in meas.table() and len(meas.to_csv().splitlines()) == 7
    sens.plot(measured=meas, path=tmp_path / "s.png")
    allocate_bits(sens, average_bits=3, choices=(2, 4)).plot(path=tmp_path / "a.png")
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "a.png").stat().st_size > 0
    import matplotlib.pyplot as plt

    plt.close("all")


# -- bad input ----------------------------------------------------------------------------------


def test_bad_input_names_the_offender_and_the_fix(trained_mlp, layernorm_mlp):
    model, loss_fn, data = trained_mlp
    with pytest.raises(ValueError, match="layer '1' .*got no parameters"):
        quantization_sensitivity(model, loss_fn, data, layers=["0", "1"])
    ln, ln_loss, ln_data, _, _ = layernorm_mlp
    with pytest.raises(ValueError, match="layer '1' .*1-D.*quantize_biases=True"):
        measure_quantization(ln, ln_loss, ln_data, layers=["1"])
    with pytest.raises(ValueError, match="'nope'.*Valid names"):
        quantization_sensitivity(model, loss_fn, data, layers=["nope"])
    with pytest.raises(ValueError, match="1..16; got 17"):
        quantization_sensitivity(model, loss_fn, data, bits=(4, 17))
    with pytest.raises(ValueError, match="1..16; got 0"):
        measure_quantization(model, loss_fn, data, bits=0)
    with pytest.raises(ValueError, match="metric"):
        quantization_sensitivity(model, loss_fn, data, metric="hessian")
    with pytest.raises(ValueError, match="disjoint.*'0.0.weight'"):
        quantization_sensitivity(nn.Sequential(model), loss_fn, data, layers=["0", "0.0"])
    with pytest.raises(ValueError, match="quantize_biases=True"):
        quantization_sensitivity(nn.LayerNorm(6).to(DT), loss_fn, (data[0], data[1]))
    X, y = data
    bad = X.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(FloatingPointError, match="batch 0"):
        quantization_sensitivity(model, loss_fn, (bad, y))


def test_integer_and_already_quantized_layers_are_refused():
    net = nn.Sequential(nn.Linear(3, 2))
    net.codes = nn.Module()
    net.codes.w = nn.Parameter(torch.arange(6).reshape(2, 3), requires_grad=False)
    data = (torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(TypeError, match="layer 'codes'.*integer.*already quantized"):
        measure_quantization(net, nn.MSELoss(), data, layers=["0", "codes"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qlin = torch.ao.nn.quantized.Linear(3, 2)
    except Exception as err:  # noqa: BLE001 - no quantized engine on this platform
        pytest.skip(f"no quantized Linear: {err}")
    qnet = nn.Sequential(qlin)
    qnet.float_head = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="layer '0'.*already quantized"):
        measure_quantization(qnet, nn.MSELoss(), data, layers=["0"])


# -- example -------------------------------------------------------------------------------------


def test_example_runs_quick(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quantization_sensitivity.py"), "--quick",
         "--n-train", "120", "--steps", "30", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "spearman" in done.stdout.lower() and "uniform" in done.stdout.lower()
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())
