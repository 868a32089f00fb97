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
    dtype (+-1 is exact in all of them), and the same probes drawn a few at a time
    (:class:`RademacherStream`). The array is column-major: each probe is contiguous, as the
    rows ``V.T`` that products and Lanczos work on.

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
    return RademacherStream(n, seed).take(k, dtype)


class RademacherStream:
    """Rademacher probes of length ``n`` drawn a few at a time: ``take(a)`` then ``take(b)``
    gives the columns of one ``rademacher(n, a + b, seed)``, and leaves the generator where
    that call leaves it.

    The generator's bytes come in whole 32-bit words (``Generator.bytes`` draws words and
    drops the rest of the last one), so each draw asks for whole words and keeps the bits it
    did not use for the next ``take``.

    Examples
    --------
    >>> stream = RademacherStream(5, seed=0)
    >>> parts = np.hstack([stream.take(1), stream.take(2)])
    >>> bool(np.array_equal(parts, rademacher(5, 3, seed=0)))
    True
    """

    def __init__(self, n: int, seed: Seed = 0) -> None:
        self.n = n
        self._rng = as_generator(seed)
        self._raw = np.zeros(0, dtype=np.uint8)  # drawn bytes not yet used up
        self._bit = 0  # first unused bit of _raw[0]

    def take(self, k: int, dtype: Any = np.float64, out: np.ndarray | None = None
             ) -> np.ndarray:
        """The next ``k`` probes, shape (n, k), Fortran order; written into ``out`` (a
        C-contiguous (k, n) array, e.g. a view of a torch tensor) when given."""
        total = self.n * k
        missing = total - (8 * self._raw.size - self._bit)
        if missing > 0:
            words = -(-missing // 32)
            # One random bit per sign (0.05 s for 301k x 100, against 0.25-0.75 s for a byte
            # per sign from rng.integers).
            new = np.frombuffer(self._rng.bytes(4 * words), dtype=np.uint8)
            self._raw = np.concatenate([self._raw, new]) if self._raw.size else new
        if out is None:
            out = np.empty((k, self.n), dtype=dtype)
        if out.shape != (k, self.n) or not out.flags.c_contiguous:
            raise ValueError(f"Expected out of shape ({k}, {self.n}), C-contiguous; got "
                             f"{out.shape}.")
        flat = out.reshape(-1)
        two = out.dtype.type(2)
        done, bit = 0, self._bit
        while done < total:  # a small bit buffer at a time, not n k bytes
            first = bit // 8
            bits = np.unpackbits(self._raw[first : first + _BYTES_PER_CHUNK])[bit - 8 * first :]
            size = min(bits.size, total - done)
            np.multiply(bits[:size], two, out=flat[done : done + size], casting="unsafe")
            done += size
            bit += size
        self._raw, self._bit = self._raw[bit // 8 :], bit % 8
        flat -= 1
        return out.T


_BYTES_PER_CHUNK = 1 << 17  # random bytes unpacked at once (a 1 MiB buffer of bits)
