"""Array backends for the spectral core: numpy, torch (CPU or CUDA) and jax.

The core algorithms keep their working vectors on the operator's own backend and device
(no host round trip per product); only small per-step scalars (Lanczos coefficients) and
small projected matrices come to the host as numpy float64. Probe vectors are drawn on the
host from a seeded numpy generator and moved to the device once, so that the same seed gives
the same probes on every backend.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

Array = Any


#: Bytes of the float64 row blocks of lower-precision Grams and dots (:meth:`Backend.gram`)
#: on the host: blocks that stay in cache while they are cast and multiplied.
GRAM_BLOCK_BYTES = 1 << 21

#: The same on an accelerator (CUDA, a JAX GPU or TPU), where each block is a few kernel
#: launches: with host-sized blocks a 124M x 50 float32 Gram would take 24k launches.
DEVICE_BLOCK_BYTES = 1 << 27


class Backend:
    """Minimal array operations used by the spectral core (numpy implementation)."""

    name = "numpy"

    def __init__(self, device: Any = None) -> None:
        self.device = device

    # -- dtypes ---------------------------------------------------------------------------
    @property
    def float64(self) -> Any:
        return np.float64

    def eps(self, dtype: Any) -> float:
        return float(np.finfo(np.dtype(dtype)).eps)

    # -- conversion -----------------------------------------------------------------------
    def from_numpy(self, a: np.ndarray, dtype: Any = None) -> Array:
        return np.asarray(a, dtype=dtype if dtype is not None else a.dtype)

    def to_numpy(self, x: Array) -> np.ndarray:
        return np.asarray(x)

    def cast(self, x: Array, dtype: Any) -> Array:
        return x.astype(dtype, copy=False)

    def move(self, x: Array) -> Array:
        """``x`` on this backend's device (no copy when it is there already)."""
        return x

    # -- creation and updates ---------------------------------------------------------------
    def zeros(self, shape: tuple[int, ...], dtype: Any = None) -> Array:
        return np.zeros(shape, dtype=dtype or self.float64)

    def empty(self, shape: tuple[int, ...], dtype: Any = None) -> Array:
        """An array whose entries are written before they are read (uninitialised where the
        backend allows: no zeroing pass over a large Lanczos basis; zeros on jax)."""
        return np.empty(shape, dtype=dtype or self.float64)

    def set_index(self, x: Array, index: Any, value: Array) -> Array:
        """Return ``x`` with ``x[index] = value`` (in place where the backend allows)."""
        x[index] = value
        return x

    def cast_into(self, out: Array, x: Array) -> Array:
        """``x`` cast to ``out``'s dtype, written over ``out`` where the backend allows
        (``out`` must be the caller's, of ``x``'s shape): no fresh array."""
        out[...] = x
        return out

    def stack(self, xs: list[Array], axis: int = 0) -> Array:
        return np.stack(xs, axis=axis)

    def concat(self, xs: list[Array], axis: int = 0) -> Array:
        return np.concatenate(xs, axis=axis)

    def moveaxis(self, x: Array, source: int, destination: int) -> Array:
        return np.moveaxis(x, source, destination)

    # -- linear algebra -----------------------------------------------------------------------
    def sum(self, x: Array, axis: int) -> Array:
        return x.sum(axis=axis)

    def norm(self, x: Array, axis: int) -> Array:
        return np.sqrt((x * x).sum(axis=axis))

    def qr(self, x: Array) -> tuple[Array, Array]:
        return np.linalg.qr(x)

    def matmul(self, a: Array, b: Array) -> Array:
        """``a @ b`` for a tall ``a`` (n, k) and a small ``b`` (k, l)."""
        return a @ b

    def subtract_matmul(self, c: Array, a: Array, b: Array) -> Array:
        """``c - a @ b``, overwriting ``c`` where the backend allows (``c`` is the caller's
        own scratch array)."""
        c -= a @ b
        return c

    def transpose(self, x: Array) -> Array:
        """Swap the last two axes."""
        return np.swapaxes(x, -1, -2)

    def all_finite(self, x: Array) -> bool:
        # The sum is one read without a mask; only a non-finite sum (NaN/Inf present, or a
        # finite array whose sum overflows) needs the elementwise check.
        return bool(np.isfinite(x.sum())) or bool(np.isfinite(x).all())

    def recurrence(self, q: Array, w: Array, q_prev: Array | None,
                   b_prev: Array, reduce: Any = None, owned: bool = False
                   ) -> tuple[Array, Array]:
        """The Lanczos three-term step on rows: ``a = q.w``, ``w - a q - b_prev q_prev``.

        Returns ``(a, w')``: ``w'`` is ``w`` updated in place when ``owned`` (the caller made
        ``w``; where the backend allows), a new array otherwise (``w`` may alias the
        operator's output). ``reduce``: sums the partial dot products of sharded rows over
        the ranks.
        """
        a = self.row_dots(q, w)
        a = a if reduce is None else reduce(a)
        w = w - a[:, None] * q
        if q_prev is not None:
            w -= b_prev[:, None] * q_prev
        return a, w

    def divide_rows(self, w: Array, b: Array) -> Array:
        """``w / b[:, None]``, in place where the backend allows (``w`` must be the caller's)."""
        w /= b[:, None]
        return w

    def row_dots(self, a: Array, b: Array) -> Array:
        """``a[i] . b[i]`` for every row ``i`` of two (k, n) arrays."""
        return np.einsum("kn,kn->k", a, b)

    def gram(self, a: Array, b: Array) -> np.ndarray:
        """``a^T b`` as a host float64 matrix, for tall ``a`` (n, k) and ``b`` (n, l).

        Float64 arrays: one product. Lower precision (float32 sketches of a float32
        operator): summed in float64 over row blocks of :data:`GRAM_BLOCK_BYTES` cast to
        float64, so no float64 copy of ``a`` or ``b`` is made; a float32 product would add
        about ``5 eps32`` relative error (measured on 300k rows), more than the entries'
        own rounding contributes.
        """
        if a.dtype == self.float64 and b.dtype == self.float64:
            return self.to_numpy(self.transpose(a) @ b)
        out = self.zeros((a.shape[1], b.shape[1]))  # on the device: one transfer at the end
        for rows in self._row_blocks(a, b):
            a64 = self.cast(a[rows], self.float64)
            out = out + self.transpose(a64) @ (a64 if b is a else self.cast(b[rows], self.float64))
        return self.to_numpy(out)

    def column_dots(self, x: Array, y: Array) -> np.ndarray:
        """``sum_i x[i, j] y[i, j]`` for each column ``j`` of (n, k) arrays, as host float64.

        Float64 arrays: one batched dot. Lower precision: each product rounded once in the
        arrays' dtype (exact for +-1 probes), then summed in float64 over the row blocks of
        :meth:`gram`, so neither an (n, k) product nor a float64 copy is made (301k x 100
        float32 on torch: 17-25 ms; float64 casts of the blocks took 50-120 ms).
        """
        if x.dtype == self.float64 and y.dtype == self.float64:
            return self.to_numpy(self._einsum("ij,ij->j", x, y))
        out = self.zeros(x.shape[1])
        for rows in self._row_blocks(x, y):
            out = out + self.sum(self.cast(x[rows] * y[rows], self.float64), axis=0)
        return self.to_numpy(out)

    def matmul_inplace(self, a: Array, b: Array) -> Array:
        """``a @ b`` for a tall ``a`` (n, k) and a small square ``b``, written over ``a`` one
        row block at a time where the backend allows (``a`` must be the caller's): no
        second (n, k) array, whose fresh pages cost more than the product on some hosts."""
        for rows in self._row_blocks(a, b):
            a = self.set_index(a, rows, a[rows] @ b)
        return a

    def combine_rows(self, x: Array, s: Array) -> Array:
        """``x[:r] = s^T x[:j]`` for rows ``x`` (at least ``j``, n) and ``s`` (j, r), ``r <= j``,
        written in column blocks (``x`` must be the caller's): a thick restart's Ritz vectors
        over its Krylov basis with no (r, n) temporary and no transposing copy."""
        j = s.shape[0]
        st = self.transpose(s)
        for cols in self._row_blocks(self.transpose(x[:j]), s):
            x = self.set_index(x, (slice(0, s.shape[1]), cols), st @ x[:j, cols])
        return x

    def _row_blocks(self, a: Array, b: Array, limit: int | None = None) -> Any:
        """Row slices of (n, k) and (n, l) arrays whose float64 blocks take
        :data:`GRAM_BLOCK_BYTES` (:data:`DEVICE_BLOCK_BYTES` on an accelerator), or at most
        ``limit`` bytes."""
        size = GRAM_BLOCK_BYTES if self.on_host() else DEVICE_BLOCK_BYTES
        size = size if limit is None else min(size, limit)
        step = max(1, size // (8 * max(a.shape[1], b.shape[1], 1)))
        return (slice(i, i + step) for i in range(0, a.shape[0], step))

    def on_host(self) -> bool:
        """Whether the arrays live in host memory (numpy; torch on CPU; JAX on CPU)."""
        return True

    def _einsum(self, spec: str, *arrays: Array) -> Array:
        return np.einsum(spec, *arrays)

    def ready(self, x: Array) -> Array:
        """``x`` once the device has computed it (for timing; a no-op on the host)."""
        return x

    def nbytes_per_float64(self) -> int:
        return 8

    def rademacher(self, stream: Any, k: int, dtype: Any) -> Array:
        """The next ``k`` probes of a :class:`~hessntk.spectral.probes.RademacherStream` as
        an (n, k) column-major array in ``dtype`` (+-1 is exact in every dtype)."""
        return self.from_numpy(stream.take(k, np.float32), dtype)

    def free_memory(self) -> int:
        """Free bytes where this backend's arrays live (the host's ``MemAvailable`` here)."""
        from hessntk._memory import host_memory

        return host_memory()

    # -- elementwise and reductions (quantizers, criteria) -------------------------------
    def amax(self, x: Array, axis: tuple[int, ...], keepdims: bool = True) -> Array:
        return np.max(x, axis=axis, keepdims=keepdims)

    def amin(self, x: Array, axis: tuple[int, ...], keepdims: bool = True) -> Array:
        return np.min(x, axis=axis, keepdims=keepdims)

    def clip(self, x: Array, lo: Any, hi: Any) -> Array:
        return np.clip(x, lo, hi)

    def round(self, x: Array) -> Array:
        """Round half to even (as numpy, torch and jax all do)."""
        return np.round(x)

    def where(self, cond: Array, a: Any, b: Any) -> Array:
        return np.where(cond, a, b)

    def detach(self, x: Array) -> Array:
        """``x`` cut from any autodiff graph (a no-op outside torch)."""
        return x

    def is_floating(self, x: Array) -> bool:
        return bool(np.issubdtype(np.dtype(x.dtype), np.floating))

    def eye(self, n: int, dtype: Any = None) -> Array:
        return np.eye(n, dtype=dtype or self.float64)


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: Any = None) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def on_host(self) -> bool:
        return self.device.type == "cpu"

    @property
    def float64(self) -> Any:
        return self._torch.float64

    def eps(self, dtype: Any) -> float:
        return float(self._torch.finfo(dtype).eps)

    def from_numpy(self, a: np.ndarray, dtype: Any = None) -> Array:
        if not (a.flags.c_contiguous or a.flags.f_contiguous):  # e.g. negative strides
            a = np.ascontiguousarray(a)
        t = self._torch.from_numpy(a)  # column-major probes stay so: their rows are contiguous
        return t.to(device=self.device, dtype=dtype if dtype is not None else t.dtype)

    def to_numpy(self, x: Array) -> np.ndarray:
        return x.detach().cpu().numpy()

    def cast(self, x: Array, dtype: Any) -> Array:
        return x.to(dtype)  # keeps a column-major layout

    def move(self, x: Array) -> Array:
        return x.to(self.device)

    def zeros(self, shape: tuple[int, ...], dtype: Any = None) -> Array:
        return self._torch.zeros(shape, dtype=dtype or self.float64, device=self.device)

    def empty(self, shape: tuple[int, ...], dtype: Any = None) -> Array:
        # torch's allocator, not numpy's: numpy asks the kernel for transparent huge pages
        # (madvise), and where the kernel compacts memory to find them at fault time (THP
        # defrag "madvise", a common default) first writes stall: filling a fresh 41 x 301k
        # float32 eigsh basis took 2.1-2.4 ms per row in a new process against 0.25 from
        # torch, and a 301k x 50 float32 -> float64 cast 90-152 ms against 22-23 (numpy's
        # 11 ms once huge pages are free: a gain of 2x at best, a loss of 7-10x at worst).
        return self._torch.empty(shape, dtype=dtype or self.float64, device=self.device)

    def empty_on(self, shape: tuple[int, ...], dtype: Any, device: Any) -> Array:
        """:meth:`empty` on another ``device``; pinned host memory when this backend is on
        CUDA."""
        pin = device.type == "cpu" and self.device.type == "cuda"
        return self._torch.empty(shape, dtype=dtype, device=device, pin_memory=pin)

    def stack(self, xs: list[Array], axis: int = 0) -> Array:
        return self._torch.stack(xs, dim=axis)

    def concat(self, xs: list[Array], axis: int = 0) -> Array:
        return self._torch.cat(xs, dim=axis)

    def moveaxis(self, x: Array, source: int, destination: int) -> Array:
        return self._torch.movedim(x, source, destination)

    def sum(self, x: Array, axis: int) -> Array:
        return x.sum(dim=axis)

    def norm(self, x: Array, axis: int) -> Array:
        return self._torch.linalg.vector_norm(x, dim=axis)

    def qr(self, x: Array) -> tuple[Array, Array]:
        return self._torch.linalg.qr(x)

    def subtract_matmul(self, c: Array, a: Array, b: Array) -> Array:
        return self._torch.addmm(c, a, b, alpha=-1.0, out=c)

    def matmul(self, a: Array, b: Array) -> Array:
        if a.device.type != "cpu" or not _is_column_major(a):
            return a @ b
        # on the host, a column-major product of column-major probes (their columns stay
        # contiguous)
        out = self._torch.empty((b.shape[1], a.shape[0]), dtype=a.dtype, device=a.device)
        return self._torch.matmul(a, b, out=self._torch.transpose(out, 0, 1))

    def transpose(self, x: Array) -> Array:
        return x.transpose(-1, -2)

    def rademacher(self, stream: Any, k: int, dtype: Any) -> Array:
        if self.device.type != "cpu":
            return super().rademacher(stream, k, dtype)
        # Written into torch's memory: numpy's own large arrays ask for huge pages, whose
        # first writes stall where the kernel compacts memory (see empty).
        rows = self._torch.empty((k, stream.n), dtype=self._torch.float32, device=self.device)
        stream.take(k, out=rows.numpy())
        return self.cast(self.transpose(rows), dtype)

    def cast_into(self, out: Array, x: Array) -> Array:
        return out.copy_(x)

    def free_memory(self) -> int:
        if self.device.type == "cuda":
            return int(self._torch.cuda.mem_get_info(self.device)[0])
        return super().free_memory()

    def all_finite(self, x: Array) -> bool:
        # See Backend.all_finite: a sum first (one read, no mask), elementwise only if needed.
        return bool(self._torch.isfinite(x.sum())) or bool(self._torch.isfinite(x).all())

    def recurrence(self, q: Array, w: Array, q_prev: Array | None,
                   b_prev: Array, reduce: Any = None, owned: bool = False
                   ) -> tuple[Array, Array]:
        # Fused: one pass for the dot products, one per subtraction, and no new array when
        # w is the caller's: at 10 x 2M float64 rows a fresh array per step (page faults
        # and zeroing) made the step 2.5x slower.
        a = self.row_dots(q, w)
        a = a if reduce is None else reduce(a)
        if owned:
            w.addcmul_(q, a[:, None], value=-1.0)
        else:
            w = self._torch.addcmul(w, q, a[:, None], value=-1.0)
        if q_prev is not None:
            w.addcmul_(q_prev, b_prev[:, None], value=-1.0)
        return a, w

    def divide_rows(self, w: Array, b: Array) -> Array:
        return w.div_(b[:, None])

    def _einsum(self, spec: str, *arrays: Array) -> Array:
        return self._torch.einsum(spec, *arrays)  # a batched dot: no (n, k) temporary

    def row_dots(self, a: Array, b: Array) -> Array:
        """``a[i] . b[i]`` for every row ``i`` of two (k, n) arrays."""
        # On the CPU one BLAS dot per row (k calls, k = the probes): on 10 x 301k float64
        # rows, float64 vecdot took 8.6 ms, bmm 4.3 ms, (a * b).sum(1) 1.7-2.3 ms, the dots
        # 1.2 ms (torch 2.13, 2 threads).
        if self.device.type == "cuda":
            return self._torch.linalg.vecdot(a, b)
        return self._torch.stack([self._torch.dot(x, y) for x, y in zip(a, b, strict=True)])

    def ready(self, x: Array) -> Array:
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)
        return x

    def amax(self, x: Array, axis: tuple[int, ...], keepdims: bool = True) -> Array:
        return self._torch.amax(x, dim=axis, keepdim=keepdims)

    def amin(self, x: Array, axis: tuple[int, ...], keepdims: bool = True) -> Array:
        return self._torch.amin(x, dim=axis, keepdim=keepdims)

    def clip(self, x: Array, lo: Any, hi: Any) -> Array:
        return self._torch.clamp(x, lo, hi)

    def round(self, x: Array) -> Array:
        return self._torch.round(x)

    def where(self, cond: Array, a: Any, b: Any) -> Array:
        return self._torch.where(cond, a, b)

    def detach(self, x: Array) -> Array:
        return x.detach()

    def is_floating(self, x: Array) -> bool:
        return bool(x.is_floating_point())

    def eye(self, n: int, dtype: Any = None) -> Array:
        return self._torch.eye(n, dtype=dtype or self.float64, device=self.device)


def _is_column_major(x: Any) -> bool:
    """A 2-D torch tensor stored by columns (as probes and their products are)."""
    return x.dim() == 2 and x.shape[1] > 1 and x.stride(0) == 1 and x.stride(1) == x.shape[0]


class JaxBackend(Backend):
    name = "jax"

    def __init__(self, device: Any = None) -> None:
        import jax
        import jax.numpy as jnp

        self._jax = jax
        self._jnp = jnp
        self.device = device

    @property
    def float64(self) -> Any:
        if not self._jax.config.jax_enable_x64:
            raise ValueError(
                "Expected jax with float64 enabled for the spectral core's float64 "
                "bookkeeping; got jax_enable_x64=False. Call "
                "jax.config.update('jax_enable_x64', True) before creating arrays."
            )
        return self._jnp.float64

    def eps(self, dtype: Any) -> float:
        return float(self._jnp.finfo(dtype).eps)

    def from_numpy(self, a: np.ndarray, dtype: Any = None) -> Array:
        x = self._jnp.asarray(a, dtype=dtype)
        if self.device is not None:
            x = self._jax.device_put(x, self.device)
        return x

    def to_numpy(self, x: Array) -> np.ndarray:
        return np.asarray(x)

    def cast(self, x: Array, dtype: Any) -> Array:
        return x.astype(dtype)

    def move(self, x: Array) -> Array:
        return x if self.device is None else self._jax.device_put(x, self.device)

    def zeros(self, shape: tuple[int, ...], dtype: Any = None) -> Array:
        return self._jnp.zeros(shape, dtype=dtype or self.float64)

    def empty(self, shape: tuple[int, ...], dtype: Any = None) -> Array:
        return self.zeros(shape, dtype)  # immutable arrays: the fused steps read zero rows

    def set_index(self, x: Array, index: Any, value: Array) -> Array:
        # Cast to x's dtype first, as numpy's and torch's assignments do (jax warns otherwise).
        return x.at[index].set(self._jnp.asarray(value, x.dtype))

    def cast_into(self, out: Array, x: Array) -> Array:
        return x.astype(out.dtype)  # immutable arrays

    def lanczos_step(
        self, basis: Array, q: Array, w: Array, b_prev: Array, j: int
    ) -> tuple[Array, Array, Array, Array]:
        """One Lanczos step's bookkeeping for all probes, compiled (see ``_jax_step``)."""
        return _jax_step()(basis, q, w, b_prev, self._jnp.asarray(j))

    def store_row(self, basis: Array, j: int, q: Array) -> Array:
        """``basis[:, j] = q`` in place (the basis is donated to a compiled update)."""
        return _jax_store()(basis, self._jnp.asarray(j), q)

    def reorthogonalise_all(self, basis: Array, w: Array) -> Array:
        """``w`` reorthogonalised against the whole basis, compiled (see ``_jax_step``)."""
        return _jax_reorthogonalise()(basis, w)

    def stack(self, xs: list[Array], axis: int = 0) -> Array:
        return self._jnp.stack(xs, axis=axis)

    def concat(self, xs: list[Array], axis: int = 0) -> Array:
        return self._jnp.concatenate(xs, axis=axis)

    def moveaxis(self, x: Array, source: int, destination: int) -> Array:
        return self._jnp.moveaxis(x, source, destination)

    def norm(self, x: Array, axis: int) -> Array:
        return self._jnp.sqrt((x * x).sum(axis=axis))

    def qr(self, x: Array) -> tuple[Array, Array]:
        return self._jnp.linalg.qr(x)

    def subtract_matmul(self, c: Array, a: Array, b: Array) -> Array:
        return c - a @ b

    def transpose(self, x: Array) -> Array:
        return self._jnp.swapaxes(x, -1, -2)

    def all_finite(self, x: Array) -> bool:
        return bool(self._jnp.isfinite(x).all())

    def recurrence(self, q: Array, w: Array, q_prev: Array | None,
                   b_prev: Array, reduce: Any = None, owned: bool = False
                   ) -> tuple[Array, Array]:
        a = self.row_dots(q, w)
        a = a if reduce is None else reduce(a)
        w = w - a[:, None] * q
        if q_prev is not None:
            w = w - b_prev[:, None] * q_prev
        return a, w

    def divide_rows(self, w: Array, b: Array) -> Array:
        return w / b[:, None]

    def matmul_inplace(self, a: Array, b: Array) -> Array:
        return a @ b  # immutable arrays

    def combine_rows(self, x: Array, s: Array) -> Array:
        return x.at[: s.shape[1]].set(self._jnp.transpose(s) @ x[: s.shape[0]])

    def _einsum(self, spec: str, *arrays: Array) -> Array:
        # (gram and column_dots use the shared row blocks: XLA's preferred_element_type
        # converts whole inputs to float64 first.)
        return self._jnp.einsum(spec, *arrays)

    def row_dots(self, a: Array, b: Array) -> Array:
        return self._jnp.sum(a * b, axis=1)

    def ready(self, x: Array) -> Array:
        return self._jax.block_until_ready(x)

    def _first_device(self) -> Any:
        device = self.device if self.device is not None else self._jax.devices()[0]
        if hasattr(device, "device_set"):  # a mesh sharding: the first of its devices
            device = min(device.device_set, key=lambda d: d.id)
        return device

    def on_host(self) -> bool:
        return self._first_device().platform == "cpu"

    def free_memory(self) -> int:
        device = self._first_device()
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats and "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
        return super().free_memory()

    def amax(self, x: Array, axis: tuple[int, ...], keepdims: bool = True) -> Array:
        return self._jnp.max(x, axis=axis, keepdims=keepdims)

    def amin(self, x: Array, axis: tuple[int, ...], keepdims: bool = True) -> Array:
        return self._jnp.min(x, axis=axis, keepdims=keepdims)

    def clip(self, x: Array, lo: Any, hi: Any) -> Array:
        return self._jnp.clip(x, lo, hi)

    def round(self, x: Array) -> Array:
        return self._jnp.round(x)

    def where(self, cond: Array, a: Any, b: Any) -> Array:
        return self._jnp.where(cond, a, b)

    def is_floating(self, x: Array) -> bool:
        return bool(self._jnp.issubdtype(x.dtype, self._jnp.floating))

    def eye(self, n: int, dtype: Any = None) -> Array:
        return self.from_numpy(np.eye(n), dtype or self.float64)


@functools.cache
def _jax_step() -> Any:
    """A jitted Lanczos step for jax, compiled once per basis shape.

    Eager jax would copy the whole ``(k, m, n)`` basis at every ``.at[].set`` and compile new
    programs for every slice ``basis[:, :j + 1]``. Here the basis is donated (updated in place),
    ``j`` is traced, and the reorthogonalisation runs against the whole basis (rows past ``j``
    are zero and contribute nothing; slicing them off copies the basis in XLA).
    """
    import jax
    import jax.numpy as jnp

    def step(basis, q, w, b_prev, j):  # noqa: ANN001, ANN202
        basis = basis.at[:, j].set(q)
        a = jnp.sum(q * w, axis=1)
        w = w - a[:, None] * q
        prev = jax.lax.dynamic_index_in_dim(basis, jnp.maximum(j - 1, 0), axis=1,
                                            keepdims=False)
        w = w - b_prev[:, None] * prev
        w = _jax_gram_schmidt(basis, w)
        return basis, a, w, jnp.sqrt(jnp.sum(w * w, axis=1))

    return jax.jit(step, donate_argnums=0)


def _jax_gram_schmidt(basis: Array, w: Array) -> Array:
    """Classical Gram-Schmidt of rows ``w`` against ``basis`` (k, m, n), traced: the second
    pass only where the first cancelled much of ``w`` (the criterion of
    :func:`hessntk.spectral.krylov._reorthogonalise`)."""
    import jax
    import jax.numpy as jnp

    def sweep(w):  # noqa: ANN001, ANN202
        coeffs = jnp.einsum("kn,kmn->km", w, basis)
        return w - jnp.einsum("km,kmn->kn", coeffs, basis)

    before = jnp.sqrt(jnp.sum(w * w, axis=1))
    w = sweep(w)
    again = jnp.any(jnp.sqrt(jnp.sum(w * w, axis=1)) < before / jnp.sqrt(2.0))
    return jax.lax.cond(again, sweep, lambda w: w, w)


@functools.cache
def _jax_reorthogonalise() -> Any:
    import jax

    return jax.jit(_jax_gram_schmidt)


@functools.cache
def _jax_store() -> Any:
    import jax

    return jax.jit(lambda basis, j, q: basis.at[:, j].set(q), donate_argnums=0)


def itemsize(dtype: Any) -> int:
    """Bytes per element of a numpy, torch or jax dtype.

    Examples
    --------
    >>> itemsize(np.float32)
    4
    """
    size = getattr(dtype, "itemsize", None)
    return int(size) if isinstance(size, int) else int(np.dtype(dtype).itemsize)


def is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def is_jax(x: Any) -> bool:
    module = type(x).__module__
    return module.startswith("jax") or module.startswith("jaxlib")


def backend_for(name: str, device: Any = None) -> Backend:
    """Return the backend called ``name`` ("numpy", "torch" or "jax") on ``device``."""
    if name == "numpy":
        return Backend(device)
    if name == "torch":
        return TorchBackend(device)
    if name == "jax":
        return JaxBackend(device)
    raise ValueError(f"Expected backend 'numpy', 'torch' or 'jax'; got {name!r}.")


def backend_of_array(x: Any) -> Backend:
    """Return the backend that holds array ``x``."""
    if is_torch(x):
        return TorchBackend(x.device)
    if is_jax(x):
        devices = getattr(x, "devices", None)
        held = devices() if callable(devices) else set()
        # An array over several devices (a mesh) is placed by its sharding.
        device = next(iter(held)) if len(held) == 1 else getattr(x, "sharding", None)
        return JaxBackend(device)
    if isinstance(x, np.ndarray):
        return Backend()
    raise TypeError(
        f"Expected a torch tensor, numpy array or jax array; got {type(x).__name__}."
    )
