"""Small frozen result types shared by the spectral estimators."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A stochastic estimate with its standard error and the products it used.

    Attributes
    ----------
    value : float
        The estimate.
    stderr : float
        Standard error of ``value`` (0.0 when the estimate is exact).
    num_matvecs : int
        Operator products (columns) used.
    method : str
        Name of the estimator.
    """

    value: float
    stderr: float
    num_matvecs: int
    method: str = ""

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        return (
            f"Estimate(value={self.value:.6g}, stderr={self.stderr:.2g}, "
            f"num_matvecs={self.num_matvecs}, method={self.method!r})"
        )


@dataclass(frozen=True)
class BlockEstimate:
    """Per-block estimates (e.g. traces of diagonal blocks) from one shared set of products.

    Attributes
    ----------
    values : numpy.ndarray of shape (num_blocks,)
    stderrs : numpy.ndarray of shape (num_blocks,)
    num_matvecs : int
    method : str
    """

    values: np.ndarray
    stderrs: np.ndarray
    num_matvecs: int
    method: str = ""

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> Estimate:
        values, stderrs = self.values, self.stderrs
        return Estimate(float(values[i]), float(stderrs[i]), self.num_matvecs, self.method)

    def __repr__(self) -> str:
        vals = np.array2string(np.asarray(self.values), precision=4, threshold=8)
        return (
            f"BlockEstimate(values={vals}, num_blocks={len(self.values)}, "
            f"num_matvecs={self.num_matvecs}, method={self.method!r})"
        )


def mean_estimate(samples: np.ndarray, num_matvecs: int, method: str) -> Estimate:
    """Return the mean of iid per-probe samples with its standard error (nan for one sample)."""
    samples = np.asarray(samples, dtype=np.float64)
    n = len(samples)
    stderr = float(samples.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return Estimate(float(samples.mean()), stderr, int(num_matvecs), method)


def mean_block_estimate(samples: np.ndarray, num_matvecs: int, method: str) -> BlockEstimate:
    """Per-block means of per-probe samples of shape (num_blocks, num_probes)."""
    samples = np.asarray(samples, dtype=np.float64)
    n = samples.shape[1]
    if n > 1:
        stderrs = samples.std(axis=1, ddof=1) / np.sqrt(n)
    else:
        stderrs = np.full(samples.shape[0], np.nan)
    return BlockEstimate(samples.mean(axis=1), stderrs, int(num_matvecs), method)
