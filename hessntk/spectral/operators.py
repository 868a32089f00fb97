"""Symmetric linear operators known through their products.

Every curvature object in hessntk (Hessian, GGN, NTK Gram, dense test matrices) is a
:class:`LinearOperator`: a symmetric ``(n, n)`` map on flat vectors with ``matvec`` and a
batched ``matmat``. The algorithms in :mod:`hessntk.spectral` only ever call ``matmat``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hessntk.spectral._backend import (
    Array,
    Backend,
    backend_for,
    backend_of_array,
    is_jax,
    is_torch,
)
from hessntk.spectral.probes import as_generator


def _infer_backend_name(dtype: Any) -> str:
    if type(dtype).__module__.startswith("torch"):
        return "torch"
    return "numpy"


class LinearOperator:
    """A symmetric linear map on flat vectors, known through products.

    Subclasses implement ``_matmat(V)`` for ``V`` of shape ``(n, k)`` (``k`` vectors in one
    call; operators built from models do it with one vmapped call) and may override
    ``_matvec``.

    Parameters
    ----------
    n : int
        Dimension; the operator has shape ``(n, n)``.
    dtype : dtype
        Dtype of the products (a ``torch.dtype``, numpy dtype or jax dtype).
    device : optional
        Device of the products (``torch.device`` for torch, a jax device, or None).
    backend : {"torch", "numpy", "jax"}, optional
        Array library of the products. Inferred from ``dtype`` when omitted (a
        ``torch.dtype`` means torch, anything else numpy); jax must be named.

    Attributes
    ----------
    block_size : int or None
        Largest number of columns passed to ``_matmat`` at once; ``matmat`` splits wider
        inputs into blocks of this size (bounds the memory of vmapped model products).
        None: no limit.
    assume_symmetric : bool
        False (default): Lanczos, SLQ and ``eigsh`` compare ``u.(A w)`` with ``w.(A u)`` for
        their first two Krylov vectors (one dot product per probe, no extra product) and
        refuse an operator whose asymmetry exceeds ``sqrt(eps) ||A||``. True skips that check.
    communicator : object or None
        The collectives of a data-parallel operator (built with ``group=``: a
        :class:`hessntk.distributed.Communicator`), whose products are the same on every
        rank; None for one process. :func:`hessntk.spectral.lanczos` uses it to shard its
        basis (``shard_basis=True``).

    Examples
    --------
    >>> import numpy as np
    >>> from hessntk.spectral import aslinearoperator
    >>> op = aslinearoperator(np.diag([1.0, 2.0, 3.0]))
    >>> op.shape, op @ np.ones(3)
    ((3, 3), array([1., 2., 3.]))
    """

    communicator: Any = None

    def __init__(
        self, n: int, dtype: Any, device: Any = None, *, backend: str | None = None
    ) -> None:
        n = int(n)
        if n < 1:
            raise ValueError(f"Expected a positive dimension n; got {n}.")
        self.shape = (n, n)
        self.dtype = dtype
        self.device = device
        self.backend = backend or _infer_backend_name(dtype)
        self._xp: Backend = backend_for(self.backend, device)
        self.block_size: int | None = None
        self.assume_symmetric = False

    # -- to implement ---------------------------------------------------------------------
    def _matmat(self, V: Array) -> Array:
        # Fallback for operators defined by a matvec only: one product per column.
        cols = [self._matvec(V[:, j]) for j in range(V.shape[1])]
        return self._xp.stack(cols, axis=1)

    def _matvec(self, v: Array) -> Array:
        return self._matmat(v[:, None])[:, 0]

    # -- public -----------------------------------------------------------------------------
    def matmat(self, V: Array) -> Array:
        """Return ``A @ V`` for ``V`` of shape ``(n, k)`` (on the operator's backend, or numpy)."""
        V = self._native(V)
        if V.ndim != 2 or V.shape[0] != self.shape[0]:
            raise ValueError(
                f"Expected V of shape ({self.shape[0]}, k); got {tuple(V.shape)}."
            )
        b = self.block_size
        if b is None or V.shape[1] <= b:
            return self._matmat(V)
        parts = [self._matmat(V[:, i : i + b]) for i in range(0, V.shape[1], b)]
        return self._xp.concat(parts, axis=1)

    def matvec(self, v: Array) -> Array:
        """Return ``A @ v`` for ``v`` of shape ``(n,)`` (on the operator's backend, or numpy)."""
        v = self._native(v)
        if v.ndim != 1 or v.shape[0] != self.shape[0]:
            raise ValueError(f"Expected v of shape ({self.shape[0]},); got {tuple(v.shape)}.")
        return self._matvec(v)

    def _native(self, x: Array) -> Array:
        """A numpy input moved to the operator's backend (dtype kept: products cast it)."""
        if isinstance(x, np.ndarray) and self.backend != "numpy":
            return self._xp.from_numpy(x)
        return x

    def __matmul__(self, x: Array) -> Array:
        return self.matvec(x) if x.ndim == 1 else self.matmat(x)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.shape[0]}, dtype={self.dtype}, "
            f"backend={self.backend!r}, device={self.device})"
        )


class DenseOperator(LinearOperator):
    """A dense symmetric matrix (torch tensor, numpy array or jax array) as an operator.

    Examples
    --------
    >>> import torch
    >>> op = DenseOperator(torch.eye(4, dtype=torch.float64))
    >>> op.backend, op.shape
    ('torch', (4, 4))
    """

    def __init__(self, A: Array) -> None:
        if getattr(A, "ndim", None) != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(
                f"Expected a square 2-D matrix; got shape {tuple(getattr(A, 'shape', ()))}."
            )
        xp = backend_of_array(A)
        super().__init__(A.shape[0], A.dtype, xp.device, backend=xp.name)
        self.matrix = A

    def _matmat(self, V: Array) -> Array:
        return self.matrix @ V

    def _matvec(self, v: Array) -> Array:
        return self.matrix @ v


class CallableOperator(LinearOperator):
    """An operator defined by a ``matvec`` and/or ``matmat`` callable.

    If only ``matvec`` is given, ``matmat`` applies it column by column (prefer passing a
    batched ``matmat``).
    """

    def __init__(
        self,
        n: int,
        dtype: Any,
        device: Any = None,
        *,
        matvec: Callable[[Array], Array] | None = None,
        matmat: Callable[[Array], Array] | None = None,
        backend: str | None = None,
    ) -> None:
        if matvec is None and matmat is None:
            raise ValueError("Expected a matvec or a matmat callable; got neither.")
        super().__init__(n, dtype, device, backend=backend)
        self._matvec_fn = matvec
        self._matmat_fn = matmat

    def _matmat(self, V: Array) -> Array:
        if self._matmat_fn is not None:
            return self._matmat_fn(V)
        return super()._matmat(V)

    def _matvec(self, v: Array) -> Array:
        if self._matvec_fn is not None:
            return self._matvec_fn(v)
        return self._matmat_fn(v[:, None])[:, 0]


class CountingOperator(LinearOperator):
    """Wrap an operator and count the products (columns) it computes, and their time.

    Attributes
    ----------
    num_matvecs : int
        Columns multiplied so far.
    seconds : float
        Wall time spent inside the wrapped operator's products (waiting for a CUDA or jax
        device to finish each one), so that an algorithm's wall time can be compared with
        the time of its products alone.

    Examples
    --------
    >>> import numpy as np
    >>> op = CountingOperator(aslinearoperator(np.eye(3)))
    >>> _ = op.matmat(np.ones((3, 2)))
    >>> op.num_matvecs, op.seconds > 0
    (2, True)
    """

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(op.shape[0], op.dtype, op.device, backend=op.backend)
        self.base = op
        self.num_matvecs = 0
        self.seconds = 0.0
        self.assume_symmetric = op.assume_symmetric
        self.communicator = op.communicator

    def _matmat(self, V: Array) -> Array:
        self.num_matvecs += V.shape[1]
        start = time.perf_counter()
        out = self._xp.ready(self.base.matmat(V))
        self.seconds += time.perf_counter() - start
        return out

    def _matvec(self, v: Array) -> Array:
        self.num_matvecs += 1
        start = time.perf_counter()
        out = self._xp.ready(self.base.matvec(v))
        self.seconds += time.perf_counter() - start
        return out


def aslinearoperator(
    A: Any,
    *,
    n: int | None = None,
    dtype: Any = None,
    device: Any = None,
    backend: str | None = None,
    matmat: Callable[[Array], Array] | None = None,
    check_symmetric: bool = False,
) -> LinearOperator:
    """Wrap a dense matrix or a matvec callable as a :class:`LinearOperator`.

    Parameters
    ----------
    A : LinearOperator, array of shape (n, n), or callable
        A dense symmetric matrix (torch, numpy or jax), an existing operator (returned
        as is), or a function ``v -> A @ v`` on vectors of shape ``(n,)``.
    n, dtype, device, backend : optional
        Required for a callable: dimension, product dtype, device and array library.
    matmat : callable, optional
        For a callable ``A``: a batched ``V -> A @ V`` on ``(n, k)`` arrays (recommended).
    check_symmetric : bool
        Run :func:`check_symmetric` once (exact for dense matrices, a random-probe test
        for callables) and raise if the operator is not symmetric.

    Returns
    -------
    LinearOperator

    Examples
    --------
    >>> import numpy as np
    >>> op = aslinearoperator(lambda v: 2.0 * v, n=3, dtype=np.float64)
    >>> op @ np.ones(3)
    array([2., 2., 2.])
    """
    if isinstance(A, LinearOperator):
        op = A
    elif is_torch(A) or is_jax(A) or isinstance(A, np.ndarray):
        op = DenseOperator(A)
    elif callable(A) or matmat is not None:
        if n is None or dtype is None:
            raise ValueError(
                "Expected n= and dtype= when wrapping a callable; got "
                f"n={n!r}, dtype={dtype!r}."
            )
        op = CallableOperator(
            n, dtype, device, matvec=A if callable(A) else None, matmat=matmat, backend=backend
        )
    else:
        raise TypeError(
            "Expected a LinearOperator, a square matrix (torch, numpy or jax) or a "
            f"callable; got {type(A).__name__}."
        )
    if check_symmetric:
        globals()["check_symmetric"](op)
    return op


def check_symmetric(
    op: LinearOperator, *, seed: int | np.random.Generator = 0, rtol: float | None = None
) -> float:
    """Check ``u.(A v) == v.(A u)`` for random ``u, v`` and return the relative asymmetry.

    For a :class:`DenseOperator` the check is exact: ``||A - A^T||_max / ||A||_max``.

    Parameters
    ----------
    op : LinearOperator
    seed : int or numpy.random.Generator
        Seed of the two random probes (Gaussian: two sign vectors are parallel with
        probability ``2^(1 - n)``, and parallel probes see no asymmetry).
    rtol : float, optional
        Largest accepted relative asymmetry; default ``sqrt(eps)`` of the operator dtype.

    Returns
    -------
    float
        The measured relative asymmetry.

    Raises
    ------
    ValueError
        If the asymmetry exceeds ``rtol``.

    Examples
    --------
    >>> import numpy as np
    >>> check_symmetric(aslinearoperator(np.eye(3))) == 0.0
    True
    """
    xp = op._xp
    if rtol is None:
        rtol = float(np.sqrt(xp.eps(op.dtype)))
    if isinstance(op, DenseOperator):
        M = xp.to_numpy(op.matrix).astype(np.float64)
        scale = max(float(np.abs(M).max()), np.finfo(np.float64).tiny)
        asym = float(np.abs(M - M.T).max()) / scale
    else:
        U = as_generator(seed).standard_normal((op.shape[0], 2))
        AU = xp.to_numpy(op.matmat(xp.from_numpy(U, op.dtype))).astype(np.float64)
        a, b = U[:, 0] @ AU[:, 1], U[:, 1] @ AU[:, 0]
        scale = np.linalg.norm(AU[:, 0]) * np.linalg.norm(U[:, 1])
        scale += np.linalg.norm(AU[:, 1]) * np.linalg.norm(U[:, 0])
        asym = float(abs(a - b) / max(scale, np.finfo(np.float64).tiny))
    if asym > rtol:
        raise ValueError(
            f"Expected a symmetric operator; got relative asymmetry {asym:.3g} > {rtol:.3g} "
            f"for {op!r}. hessntk's algorithms need symmetric operators (Hessian, GGN, "
            "NTK Gram); symmetrise a matrix with (A + A.T) / 2."
        )
    return asym


def matmat_checked(op: LinearOperator, X: Array, where: str) -> Array:
    """Return ``A @ X`` for ``X`` of shape (n, k), computed and returned in ``op.dtype``.

    Raises
    ------
    FloatingPointError
        If a product is not finite; the message names ``where`` (e.g. the Lanczos step).
    """
    xp = op._xp
    Y = op.matmat(xp.cast(X, op.dtype))
    if not xp.all_finite(Y):
        raise FloatingPointError(
            f"Non-finite operator product at {where} ({op!r}). Check the model, loss and "
            "data for NaN/Inf, or use float64."
        )
    return Y


def matmat_float64(op: LinearOperator, X: Array, where: str) -> Array:
    """:func:`matmat_checked` (computed in ``op.dtype``, refusing non-finite products), as
    float64."""
    return op._xp.cast(matmat_checked(op, X, where), op._xp.float64)


def dense_matrix(op: LinearOperator) -> np.ndarray:
    """The ``(n, n)`` matrix of ``op`` as float64 numpy, from ``n`` products with unit vectors
    (in blocks of ``op.block_size`` or 64 columns), symmetrised.

    Examples
    --------
    >>> dense_matrix(aslinearoperator(np.diag([1.0, 2.0])))
    array([[1., 0.],
           [0., 2.]])
    """
    xp = op._xp
    n = op.shape[0]
    b = op.block_size or 64
    A = np.empty((n, n))
    for i in range(0, n, b):
        E = np.zeros((n, min(b, n - i)))
        E[np.arange(i, i + E.shape[1]), np.arange(E.shape[1])] = 1.0
        A[:, i : i + E.shape[1]] = xp.to_numpy(matmat_float64(op, xp.from_numpy(E), "the dense "
                                                              f"matrix, columns {i}+"))
    return 0.5 * (A + A.T)
