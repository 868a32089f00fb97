"""Mixed precision checked on the measured loss (issue 17): cross-layer terms exact for a loss
quadratic in the weights, never worse than uniform, the local search's moves, Conv1D axes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from hessntk.criteria import (
    allocate_bits,
    measure_quantization,
    mixed_precision,
    quantization_sensitivity,
    quantized_loss,
)
from hessntk.criteria.mixed_precision import _local_search, _objective
from tests.helpers import assert_close


class TwoBranches(nn.Module):
    """``f(x) = A x + B tanh(x)``: linear in its weights, so the MSE is exactly quadratic."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 3, bias=False)
        self.b = nn.Linear(6, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(torch.tanh(x))


def _linear_problem():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.randn(40, 3, generator=g, dtype=torch.float64)
    return TwoBranches().double().eval(), nn.MSELoss(), (x, y)


@pytest.mark.parametrize("scheme", [dict(granularity="tensor"), dict(granularity="channel"),
                                    dict(granularity="group", group_size=4),
                                    dict(quantizer="asymmetric", granularity="group",
                                         group_size=5)])
def test_predictions_exact_for_a_loss_quadratic_in_the_weights(scheme):
    model, loss_fn, data = _linear_problem()
    bits = (2, 3, 4) if scheme.get("quantizer") != "asymmetric" else (1, 2, 4)
    sens = quantization_sensitivity(model, loss_fn, data, bits=bits, metric="direct", **scheme)
    meas = measure_quantization(model, loss_fn, data, bits=bits, **scheme)
    assert_close(sens.predictions("direct"), meas.increase, rtol=1e-10, atol=1e-14)
    base = meas.loss
    for a, b in itertools.product(bits, bits):  # the cross-layer terms make joint exact
        assignment = {"a": a, "b": b}
        measured = quantized_loss(model, loss_fn, data, assignment, **scheme) - base
        assert_close(sens.joint_prediction(assignment), measured, rtol=1e-10, atol=1e-14)
        independent = sum(meas.increase[i, bits.index(assignment[k])]
                          for i, k in enumerate(("a", "b")))
        if (a, b) == (bits[0], bits[0]):  # not additive: the cross term is material
            assert abs(independent - measured) > 1e-3 * abs(measured)


def _trained(seed: int = 0, steps: int = 150):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor((X - X.mean(0)) / (X.std(0) + 1e-8), dtype=torch.float64)[:200]
    y = torch.tensor(y[:200])
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 48), nn.Tanh(), nn.Linear(48, 24), nn.Tanh(),
                          nn.Linear(24, 10)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model.eval(), nn.CrossEntropyLoss(), (X, y)


@pytest.mark.parametrize("average_bits", [3, 4])
def test_mixed_precision_never_loses_to_uniform_on_the_measured_loss(average_bits):
    model, loss_fn, data = _trained()
    before = [p.detach().clone() for p in model.parameters()]
    alloc = mixed_precision(model, loss_fn, data, average_bits=average_bits)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert alloc.verified and alloc.size_bits <= alloc.budget_bits
    assert alloc.uniform["bits"] == average_bits
    with torch.no_grad():
        base = float(loss_fn(model(data[0]), data[1]))
    uniform = quantized_loss(model, loss_fn, data, dict.fromkeys(alloc.bits, average_bits))
    assert_close(alloc.uniform["measured_increase"], uniform - base, rtol=1e-9)
    assert alloc.measured_increase <= alloc.uniform["measured_increase"]
    # the returned assignment is the best measured candidate, and it measures as reported
    assert alloc.measured_increase == min(c["measured_increase"] for c in alloc.candidates)
    assert_close(quantized_loss(model, loss_fn, data, alloc) - base, alloc.measured_increase,
                 rtol=1e-9)
    assert {"uniform"} <= {s.strip() for c in alloc.candidates for s in c["source"].split(",")}
    doc = alloc.to_dict()
    assert doc["verified"] and doc["uniform"]["bits"] == average_bits


def test_uniform_is_returned_and_said_when_nothing_mixed_measures_lower():
    model, loss_fn, data = _trained()
    alloc = mixed_precision(model, loss_fn, data, average_bits=4, choices=(4,))
    assert set(alloc.bits.values()) == {4}
    assert alloc.notes and "returned uniform" in alloc.notes[0]
    plain = allocate_bits(quantization_sensitivity(model, loss_fn, data, bits=(2, 4, 8),
                                                   metric="direct"), average_bits=4)
    assert not plain.verified and "not verified" in plain.notes[0]


def test_allocation_on_measured_increases():
    model, loss_fn, data = _trained()
    meas = measure_quantization(model, loss_fn, data, bits=(2, 4, 8))
    alloc = allocate_bits(meas, average_bits=4, choices=(2, 4, 8))
    assert alloc.predictor == "measured"
    k = [meas.bits.index(alloc.bits[layer]) for layer in meas.layers]
    assert_close(alloc.predicted_increase, meas.increase[range(3), k].sum(), rtol=1e-12)


def test_local_search_stops_where_no_move_within_the_budget_improves():
    rng = np.random.default_rng(0)
    for trial in range(20):
        L, C = 4, 3
        single = rng.standard_normal((L, C))
        P = rng.standard_normal((L, C, L, C))
        P = P + P.transpose(2, 3, 0, 1)
        P[np.arange(L), :, np.arange(L), :] = 0.0
        sizes = rng.integers(1, 5, L)[:, None] * np.array([2, 4, 8])[None, :]
        budget = float(sizes[:, 1].sum())
        start = np.ones(L, dtype=int)
        k = _local_search(single, P, sizes, budget, start)
        rows = np.arange(L)
        assert sizes[rows, k].sum() <= budget
        f = _objective(single, P, k)
        assert f <= _objective(single, P, start) + 1e-12
        # brute force: every assignment one or two layers away is worse or over budget
        for i, j in itertools.combinations_with_replacement(range(L), 2):
            for c, d in itertools.product(range(C), range(C)):
                m = k.copy()
                m[i], m[j] = c, d
                if sizes[rows, m].sum() <= budget:
                    assert _objective(single, P, m) >= f - 1e-9, (trial, i, j, c, d)
        # the objective is the pairwise sum it claims to be
        brute = single[rows, k].sum() + sum(P[a, k[a], b, k[b]]
                                            for a, b in itertools.combinations(range(L), 2))
        assert_close(f, brute, rtol=1e-12)


def test_conv1d_weights_quantized_per_output_channel_on_axis_one():
    transformers = pytest.importorskip("transformers")
    from hessntk.criteria.quantizers import quantize
    from hessntk.hessian import HessianOperator

    config = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=30,
                                     n_positions=8, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    ids = torch.randint(0, 30, (4, 6))
    data = [{"input_ids": ids, "labels": ids}]
    op = HessianOperator(model, None, data, params=["transformer.h.0.attn.c_attn.weight",
                                                    "transformer.wte.weight"])
    assert op.channel_axes == {"transformer.h.0.attn.c_attn.weight": 1,
                               "transformer.wte.weight": 0}
    layers = {"attn": ["transformer.h.0.attn.c_attn.weight"], "emb": ["transformer.wte.weight"]}
    meas = measure_quantization(model, None, data, bits=(3,), granularity="channel",
                                layers=layers)
    W = model.transformer.h[0].attn.c_attn.weight.detach()
    manual = (quantize(W, 3, granularity="channel", axis=1) - W).square().sum()
    assert_close(meas.error[0, 0], float(manual), rtol=1e-12)
    wrong = (quantize(W, 3, granularity="channel", axis=0) - W).square().sum()
    assert abs(float(wrong) - float(manual)) > 1e-6 * float(manual)
