"""Uniform quantizers: error bounds, idempotence, level counts, granularity and bad input."""

from __future__ import annotations

import warnings

import pytest
import torch

from hessntk.criteria.quantizers import check_bits, grid, num_levels, quantize
from tests.helpers import assert_close

SHAPES = [(6,), (5, 7), (4, 3, 2, 2)]
CASES = [("symmetric", b) for b in (2, 3, 4, 8, 16)] + [("asymmetric", b) for b in (1, 2, 4, 8)]


def _weights(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # Rows of different scales, so per-channel grids differ from the per-tensor one.
    w = torch.randn(shape, generator=g, dtype=dtype)
    return w * torch.logspace(-1, 1, shape[0], dtype=dtype).reshape(-1, *[1] * (len(shape) - 1))


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("scheme,bits", CASES)
def test_error_at_most_half_a_step_and_idempotent(scheme, bits, shape, granularity):
    w = _weights(shape)
    q = quantize(w, bits, scheme, granularity)
    scale, _ = grid(w, bits, scheme, granularity)
    assert q.shape == w.shape and q.dtype == w.dtype
    # Half a step, up to the rounding of w / scale in float64.
    assert bool(((q - w).abs() <= scale / 2 * (1 + 1e-12)).all())
    assert_close(quantize(q, bits, scheme, granularity), q, rtol=1e-12)


@pytest.mark.parametrize("scheme,bits", [c for c in CASES if c[1] <= 8])
def test_number_of_levels(scheme, bits):
    # Dense in [-1, 1] (symmetric) or [-1, 0.8] (asymmetric): every level is hit.
    w = torch.linspace(-1.0, 1.0 if scheme == "symmetric" else 0.8, 20001, dtype=torch.float64)
    levels = torch.unique(quantize(w, bits, scheme))
    assert len(levels) == num_levels(bits, scheme)
    assert len(levels) == (2**bits - 1 if scheme == "symmetric" else 2**bits)
    assert bool((levels == 0).any())  # zero is exactly representable
    steps = torch.diff(levels)
    assert_close(steps, torch.full_like(steps, float(steps.mean())), rtol=1e-9)  # uniform


def test_symmetric_levels_are_symmetric_about_zero():
    w = torch.linspace(-0.5, 1.0, 1001, dtype=torch.float64)
    levels = torch.unique(quantize(torch.cat([w, -w]), 3))
    assert_close(levels, -levels.flip(0), rtol=1e-14)
    assert_close(levels.max(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-14)


def test_channel_grids_equal_quantizing_each_row_alone():
    w = _weights((5, 3, 2))
    q = quantize(w, 4, "asymmetric", "channel")
    for i in range(w.shape[0]):
        assert torch.equal(q[i], quantize(w[i], 4, "asymmetric", "tensor"))
    # A 1-D tensor (bias) has one grid whatever the granularity.
    b = _weights((7,))
    assert torch.equal(quantize(b, 3, granularity="channel"), quantize(b, 3))
    # Per-channel grids fit rows of unequal scale better.
    err_c = (quantize(w, 3, granularity="channel") - w).square().sum()
    err_t = (quantize(w, 3) - w).square().sum()
    assert err_c < err_t


def test_zero_tensor_input_untouched_and_high_precision():
    z = torch.zeros(3, 4)
    assert torch.equal(quantize(z, 4), z)
    w = _weights((5, 7), dtype=torch.float32)
    before = w.clone()
    q = quantize(w.requires_grad_(True), 16)
    assert torch.equal(w.detach(), before) and not q.requires_grad
    assert_close(q, before, rtol=1e-4)  # 16 bits: error below the float32 rtol


@pytest.mark.parametrize(
    "bits,scheme,exc,match",
    [
        (0, "symmetric", ValueError, "1..16"),
        (17, "asymmetric", ValueError, "1..16"),
        (1, "symmetric", ValueError, "scheme='asymmetric'"),
        (2.5, "symmetric", TypeError, "integer"),
        (True, "symmetric", TypeError, "integer"),
        (4, "ternary", ValueError, "scheme"),
    ],
)
def test_bad_bits_and_scheme(bits, scheme, exc, match):
    with pytest.raises(exc, match=match):
        quantize(torch.ones(3), bits, scheme)


def test_refuses_integer_quantized_and_nonfinite_tensors():
    with pytest.raises(TypeError, match="integer weights are already quantized"):
        quantize(torch.arange(4), 4)
    with warnings.catch_warnings():  # quantized dtypes are deprecated in torch 2.13
        warnings.simplefilter("ignore", UserWarning)
        qt = torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8)
    with pytest.raises(TypeError, match="already quantized.*dequantize"):
        quantize(qt, 4)
    with pytest.raises(FloatingPointError, match="finite"):
        quantize(torch.tensor([1.0, float("nan")]), 4)
    with pytest.raises(ValueError, match="granularity"):
        quantize(torch.ones(2, 2), 4, granularity="row")
    assert check_bits(8) == 8


# -- per-group grids (issue 17) ------------------------------------------------------------------


@pytest.mark.parametrize("group_size", [3, 4, 128])
@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 2, 2)], ids=str)
@pytest.mark.parametrize("scheme,bits", [("symmetric", 2), ("symmetric", 4),
                                         ("asymmetric", 1), ("asymmetric", 4)])
def test_group_grids_half_a_step_and_idempotent(scheme, bits, shape, group_size):
    w = _weights(shape)
    kw = dict(granularity="group", group_size=group_size)
    q = quantize(w, bits, scheme, **kw)
    scale, _ = grid(w, bits, scheme, **kw)
    rows = w.reshape(shape[0], -1)
    k = -(-rows.shape[1] // group_size)
    assert scale.shape == (shape[0], k, 1) and q.shape == w.shape and q.dtype == w.dtype
    step = scale.expand(-1, -1, group_size).reshape(shape[0], -1)[:, : rows.shape[1]]
    assert bool(((q.reshape(shape[0], -1) - rows).abs() <= step / 2 * (1 + 1e-12)).all())
    assert_close(quantize(q, bits, scheme, **kw), q, rtol=1e-12)


def test_group_grids_equal_quantizing_each_group_alone():
    w = _weights((5, 10))
    q = quantize(w, 3, "asymmetric", "group", group_size=4)  # groups 0:4, 4:8, 8:10 (short)
    for i in range(5):
        for lo, hi in ((0, 4), (4, 8), (8, 10)):
            assert torch.equal(q[i, lo:hi], quantize(w[i, lo:hi], 3, "asymmetric"))
    # groups as long as a row are the per-channel grids; smaller groups fit better
    assert torch.equal(quantize(w, 3, granularity="group", group_size=10),
                       quantize(w, 3, granularity="channel"))
    err = [(quantize(w, 3, granularity="group", group_size=g) - w).square().sum()
           for g in (10, 5, 2)]
    assert err[0] > err[1] > err[2]


def test_output_channel_axis_one_for_conv1d_weights():
    w = _weights((6, 4)).T.contiguous()  # (in, out), as Hugging Face Conv1D stores it
    for granularity in ("channel", "group"):
        kw = dict(granularity=granularity, group_size=4)
        assert torch.equal(quantize(w, 4, axis=1, **kw), quantize(w.T, 4, **kw).T)


def test_group_grids_on_every_backend():
    np = pytest.importorskip("numpy")
    w = _weights((4, 9))
    ref = quantize(w, 3, "asymmetric", "group", group_size=4).numpy()
    np.testing.assert_array_equal(quantize(w.numpy(), 3, "asymmetric", "group", group_size=4),
                                  ref)
    jnp = pytest.importorskip("jax.numpy")
    from tests.jax.models import float64

    with float64():
        out = quantize(jnp.asarray(w.numpy()), 3, "asymmetric", "group", group_size=4)
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_bad_group_size(bad):
    with pytest.raises(ValueError, match="group_size"):
        quantize(_weights((3, 8)), 4, granularity="group", group_size=bad)
