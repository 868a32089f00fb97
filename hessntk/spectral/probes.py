"""Random probe vectors: the single place where hessntk draws randomness.

Probes are drawn on the host from a seeded :class:`numpy.random.Generator` and moved to the
operator's device once, so the same seed gives the same probes on every backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Seed = int | np.random.Generator


def as_generator(seed: Seed) -> np.random.Generator:
    """Return a numpy generator for ``seed`` (an int, or a generator passed through)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return np.random.default_rng(int(seed))
    raise TypeError(f"Expected seed to be an int or numpy.random.Generator; got {seed!r}.")


def rademacher(n: int, k: int, seed: Seed = 0, dtype: Any = np.float64) -> np.ndarray:
    """Draw ``k`` Rademacher vectors (entries +-1) of length ``n``.

    The signs are the bits of ``ceil(n k / 8)`` random bytes of the generator: probe ``j``
    takes bits ``j n`` to ``(j + 1) n - 1``, so the same seed gives the same probes in every
    dtype (+-1 is exact in all of them). The array is column-major: each probe is
    contiguous, as the rows ``V.T`` that products and Lanczos work on.

    Parameters
    ----------
    n, k : int
    seed : int or numpy.random.Generator
    dtype : numpy floating dtype
        Of the result; float32 halves the memory for probes of a float32 operator.

    Returns
    -------
    numpy.ndarray of shape (n, k), Fortran order. Each column has squared norm exactly ``n``.

    Examples
    --------
    >>> rademacher(3, 2, seed=0).shape
    (3, 2)
    """
    rng = as_generator(seed)
    # One random bit per sign (0.05 s for 301k x 100, against 0.25-0.75 s for a byte per
    # sign from rng.integers).
    raw = np.frombuffer(rng.bytes((n * k + 7) // 8), dtype=np.uint8)
    out = np.empty(n * k, dtype=dtype)
    two = out.dtype.type(2)
    for start in range(0, raw.size, _BYTES_PER_CHUNK):  # a small bit buffer, not n k bytes
        bits = np.unpackbits(raw[start : start + _BYTES_PER_CHUNK])
        part = out[8 * start : 8 * start + bits.size]
        np.multiply(bits[: part.size], two, out=part, casting="unsafe")
    out -= 1
    return out.reshape(k, n).T


_BYTES_PER_CHUNK = 1 << 17  # random bytes unpacked at once (a 1 MiB buffer of bits)
