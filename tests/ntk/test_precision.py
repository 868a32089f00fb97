"""float32 and bfloat16 models give the float64 NTK spectrum within a stated bound, or are
refused (issue 14, cases 1 and 2).

The bound (hessntk.spectral.resolution): for Jacobians computed with machine epsilon ``eps``
and accumulated in float64, ``|lambda_i - lambda_i^64| <= 2 c eps sqrt(lambda_i
lambda_max)`` with ``c = GRAM_FLOOR_FACTOR``; so above ``gram_floor`` eigenvalues are
accurate to 10%. The model: a CNN (conv, max-pool, two Linear layers) trained 100 Adam steps
on 128 digits, whose NTK spectrum spans 12 decades.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import hessntk
from hessntk import hessian
from hessntk.criteria import iic, lower_tail_exponent
from hessntk.ntk import gram
from hessntk.spectral import gram_floor
from hessntk.spectral.resolution import GRAM_FLOOR_FACTOR

EPS64 = float(np.finfo(np.float64).eps)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X[:128] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y[:128])
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    return net.eval(), X[:40], y[:40]


def _as(net: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    return copy.deepcopy(net).to(dtype)


def _spectrum(net, x, model_dtype, outputs, **kw) -> np.ndarray:
    K = gram(_as(net, model_dtype), x.to(model_dtype), outputs=outputs, **kw)
    return np.linalg.eigvalsh(K.double().numpy())


@pytest.mark.parametrize("outputs", ["raw", "probabilities"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_grams_are_within_the_bound(trained, outputs, dtype):
    net, x, _ = trained
    ref = _spectrum(net, x, torch.float64, outputs)
    got = _spectrum(net, x, dtype, outputs)  # default: float64 accumulation
    lmax, eps = ref.max(), torch.finfo(dtype).eps
    assert lmax / max(ref[ref > gram_floor(lmax, EPS64)].min(), 1e-300) > 1e8  # 8+ decades
    size = np.maximum(np.abs(ref), gram_floor(lmax, EPS64))  # the reference's own resolution
    bound = 2 * GRAM_FLOOR_FACTOR * eps * np.sqrt(size * lmax)
    assert np.all(np.abs(got - ref) <= bound)
    above = ref > gram_floor(lmax, eps)
    assert above.sum() >= {torch.float32: 150, torch.bfloat16: 4}[dtype]
    assert np.all(np.abs(got - ref)[above] <= 0.1 * ref[above])


def test_float32_accumulation_is_what_the_default_avoids(trained):
    """The same float32 Jacobians contracted in float32 break the bound (this test's power)."""
    net, x, _ = trained
    ref = _spectrum(net, x, torch.float64, "raw")
    got = _spectrum(net, x, torch.float32, "raw", dtype=torch.float32)
    bound = 2 * GRAM_FLOOR_FACTOR * torch.finfo(torch.float32).eps * np.sqrt(ref * ref.max())
    assert np.any(np.abs(got - ref) > bound)
    assert gram(_as(net, torch.float32), x).dtype == torch.float64  # the default


def test_tail_exponent_and_iic_agree_across_dtypes(trained):
    """The CLI's case: tail exponent 8.56 in float32 against 0.75 in float64, and a nan IIC."""
    net, x, y = trained
    fits, values = {}, {}
    for dtype in (torch.float64, torch.float32):
        lam = _spectrum(net, x, dtype, "raw")
        fits[dtype] = lower_tail_exponent(lam, floor=gram_floor(lam.max(),
                                                                torch.finfo(dtype).eps))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # not interpolating: flagged
            res = iic(_as(net, dtype), (x.to(dtype), y), observations="logits", soft=1e3)
        assert math.isfinite(res.value) and res.num_below_floor == 0
        values[dtype] = res.value
    a64, a32 = fits[torch.float64], fits[torch.float32]
    assert a32.num_points == a64.num_points and a32.mass_below_floor == 0.0
    assert abs(a32.alpha - a64.alpha) <= 1e-3 * abs(a64.alpha)
    assert values[torch.float32] == pytest.approx(values[torch.float64], rel=1e-5)


def test_bfloat16_krylov_and_iic_are_refused(trained):
    net, x, y = trained
    net16 = _as(net, torch.bfloat16)
    H = hessian.HessianOperator(net16, nn.CrossEntropyLoss(), (x.to(torch.bfloat16), y))
    for call in (lambda: hessntk.eigsh(H, k=2), lambda: hessntk.slq(H, num_matvecs=5),
                 lambda: iic(net16, (x.to(torch.bfloat16), y), observations="logits",
                             soft=1e3)):
        with pytest.raises(ValueError, match=r"float32 or float64.*bfloat16.*model\.float\(\)"):
            call()
