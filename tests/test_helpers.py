import numpy as np
import pytest
import torch

from tests.helpers import assert_close, matrix_with_spectrum, power_law_spectrum


def test_assert_close_passes_and_fails_at_dtype_tolerance():
    x = np.array([1.0, 2.0, 3.0])
    assert_close(x * (1 + 1e-12), x)
    with pytest.raises(AssertionError):
        assert_close(x * (1 + 1e-8), x)
    # float32 inputs get the float32 tolerance
    assert_close(torch.tensor(x * (1 + 1e-6), dtype=torch.float32), x)
    with pytest.raises(AssertionError):
        assert_close(torch.tensor(x * (1 + 1e-3), dtype=torch.float32), x)
    with pytest.raises(AssertionError):
        assert_close(np.zeros(2), np.zeros(3))


def test_matrix_with_spectrum_has_that_spectrum():
    lam = power_law_spectrum(40, 0.5)
    assert_close(np.linalg.eigvalsh(matrix_with_spectrum(lam)), np.sort(lam), rtol=1e-12)
