"""Rademacher probes: one draw, or the same probes a few at a time."""

import numpy as np
import pytest

from hessntk.spectral.probes import RademacherStream, rademacher


@pytest.mark.parametrize("n", [1, 3, 8, 13, 4099])
def test_probes_drawn_in_groups_equal_one_draw_and_leave_the_generator_alike(n):
    k, sizes = 23, (1, 2, 5, 1, 14)
    one_rng, parts_rng = np.random.default_rng(5), np.random.default_rng(5)
    one = rademacher(n, k, one_rng, np.float32)
    stream = RademacherStream(n, parts_rng)
    parts = np.hstack([stream.take(c, np.float32) for c in sizes])
    assert one.shape == (n, k) and one.flags.f_contiguous and one.dtype == np.float32
    assert set(np.unique(one)) <= {-1.0, 1.0} and np.array_equal(parts, one)
    assert one_rng.bytes(16) == parts_rng.bytes(16)  # later draws (Hutch++'s G) agree too


def test_probes_are_the_bits_of_the_generator_bytes():
    # probe j takes bits j n .. (j + 1) n - 1 of the bytes, most significant bit first
    n, k = 5, 3
    bits = np.unpackbits(np.frombuffer(np.random.default_rng(0).bytes(4), np.uint8))
    expected = (2.0 * bits[: n * k] - 1.0).reshape(k, n).T
    assert np.array_equal(rademacher(n, k, seed=0), expected)


def test_probes_into_a_given_array_and_a_wrong_one():
    rows = np.zeros((3, 7), np.float32)
    got = RademacherStream(7, seed=1).take(3, out=rows)
    assert np.shares_memory(got, rows) and np.array_equal(got, rademacher(7, 3, 1, np.float32))
    with pytest.raises(ValueError, match=r"Expected out of shape \(3, 7\), C-contiguous"):
        RademacherStream(7, seed=1).take(3, out=np.zeros((7, 3), np.float32))
