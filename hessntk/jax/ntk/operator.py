"""Matrix-free NTK Gram operator ``v -> J S J^T v`` of a JAX function over batches of inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessntk._observations import OutputsSpec, structural_nullity
from hessntk._priors import prior_label
from hessntk.jax._common import (
    TreeLayout,
    as_batch_list,
    as_jax,
    check_pairs,
    commit,
    concat_trees,
    convert_batches,
    slice_tree,
)
from hessntk.jax.ntk._common import MAX_CHUNK_BYTES, _check_chunk, _chunk, _setup, observe
from hessntk.jax.ntk.kernels import _jacobian_chunks, _pullback, _pushforward_into
from hessntk.jax.sharding import mesh_shardings, mesh_spans, place
from hessntk.spectral.operators import LinearOperator

__all__ = ["GramOperator"]


def batch_leading(tree: Any) -> int:
    """The number of samples of an inputs tree (the leading axis of its leaves)."""
    return next(int(leaf.shape[0]) for leaf in jax.tree_util.tree_leaves(tree)
                if getattr(leaf, "ndim", 0) > 0)


class GramOperator(LinearOperator):
    """The prior-weighted NTK Gram ``K = J S J^T`` of a JAX function as a linear operator.

    A product never forms ``J`` or ``K``: with the stacked outputs split per batch,
    ``u = S sum_b J_b^T v_b`` (one vjp per batch) and ``(K v)_b = J_b u`` (one jvp per batch);
    ``matmat`` runs both with ``jax.vmap`` over the ``k`` vectors, compiled once per batch
    shape and ``k`` (a ragged last batch compiles once more).

    It implements :class:`hessntk.spectral.protocols.GramLike`, so every criterion of
    :mod:`hessntk.criteria` takes it (``hessntk.criteria.iic(K)``).

    Parameters
    ----------
    f : callable
        ``f(params, x) -> outputs``, per-sample outputs ``(n, ...)``.
    params : pytree of floating arrays
    inputs : array, pytree of arrays, or a list of those
        One batch of inputs or a ``list`` of batches (same structure and per-sample shapes).
    data : (inputs, targets) or list of such pairs, optional
        Instead of ``inputs``: batches as pairs; the targets are kept (:meth:`targets`).
    batch_size : int, optional
        Split every batch further into chunks of at most this many samples (bounds the
        activation memory of one vjp / jvp; the products are unchanged).
    prior, outputs
        As in :func:`hessntk.jax.gram`.
    chunk_size : int, optional
        Largest number of vectors per vmapped product (wider ``matmat`` calls are split).
    mesh, batch_axis : optional
        Data parallel on a ``jax.sharding.Mesh``: parameters replicated, each batch's
        samples sharded along ``batch_axis`` (as for :class:`hessntk.jax.HessianOperator`;
        rows keep their order).

    Attributes
    ----------
    shape : (N, N)
        ``N = n c``; rows are sample-major over the batches in order.
    num_samples, num_outputs : int
        ``n`` and ``c``.
    batch_sizes : list[int]
    structural_nullity : int
        Zero eigenvalues forced by the output map (``n`` for ``outputs="probabilities"``).
    observation : str
        The output map (``"custom"`` for a callable).
    prior_name : str
    layout : hessntk.jax._common.TreeLayout

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> f = lambda p, x: x @ p["w"]
    >>> x = jnp.arange(12.0).reshape(6, 2)
    >>> K = GramOperator(f, {"w": jnp.zeros(2)}, [x[:4], x[4:]])
    >>> bool(jnp.allclose(K @ jnp.ones(6), x @ (x.T @ jnp.ones(6))))
    True
    """

    def __init__(
        self,
        f: Callable[[Any, Any], jax.Array],
        params: Any,
        inputs: Any = None,
        *,
        data: Any = None,
        batch_size: int | None = None,
        prior: Any = None,
        outputs: OutputsSpec = "raw",
        chunk_size: int | None = 32,
        mesh: Any = None,
        batch_axis: str | None = None,
    ) -> None:
        _check_chunk(chunk_size)
        if mesh is not None:
            replicated, sharded, size = mesh_shardings(mesh, batch_axis)
            params = jax.device_put(params, replicated)
        self.problem = _setup(f, params, prior, outputs)
        if (inputs is None) == (data is None):
            raise ValueError(
                "Expected exactly one of inputs= (input batches) or data= ((inputs, targets) "
                f"batches); got {'both' if inputs is not None else 'neither'}."
            )
        targets: list[Any] | None = None
        if data is not None:
            pairs = check_pairs(data, "data=", "Pass inputs= for batches without targets.")
            raw = [b[0] for b in pairs]
            targets = [b[1] for b in pairs]
        else:
            raw = as_batch_list(inputs, "inputs")
        device = self.problem.layout.device
        converted = convert_batches(raw, "inputs", self.problem.dtype,
                                    device if mesh is None else None)
        if targets is not None:  # one array per batch with the samples along axis 0, or None
            targets = [_per_sample_targets(y, b.num_samples) for y, b in
                       zip(targets, converted, strict=True)]
            if any(y is None for y in targets):
                targets = None
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"Expected batch_size to be a positive int; got {batch_size!r}.")
            spans = [(i, slice(s, s + batch_size)) for i, b in enumerate(converted)
                     for s in range(0, b.num_samples, batch_size)]
            raw = [slice_tree(converted[i].tree, sl) for i, sl in spans]
            if targets is not None:
                targets = [targets[i][sl] for i, sl in spans]
        if mesh is not None:
            if batch_size is None:
                raw = [b.tree for b in converted]
            parts = mesh_spans([batch_leading(b) for b in raw], size)
            raw = [place(slice_tree(raw[i], sl), sharded if split else replicated)
                   for i, sl, split in parts]
            if targets is not None:
                targets = [targets[i][sl] for i, sl, _ in parts]
        self._targets = targets
        self.batches, sizes, cs = [], [], set()
        for i, b in enumerate(raw):
            tree, n, c = self.problem.batch(b, f"batch {i}")
            self.batches.append(tree)
            sizes.append(n)
            cs.add(c)
        if len(cs) != 1:
            raise ValueError(
                "Expected every batch to give the same number of outputs per sample; got "
                f"{sorted(cs)}."
            )
        self.batch_sizes = sizes
        self.num_samples = sum(sizes)
        self.num_outputs = cs.pop()
        self.layout: TreeLayout = self.problem.layout
        self.observation = outputs if isinstance(outputs, str) else "custom"
        self.structural_nullity = structural_nullity(self.num_samples, self.observation)
        self.prior_name = prior_label(prior)
        self._offsets = [0]
        for n in sizes:
            self._offsets.append(self._offsets[-1] + n * self.num_outputs)
        super().__init__(
            self.num_samples * self.num_outputs, self.problem.dtype, device, backend="jax",
        )
        self.block_size = chunk_size

    # -- products ---------------------------------------------------------------------------
    def _matmat(self, V: Any) -> jax.Array:
        return self._push(self._pull(V), self.problem.variances)

    def _pull(self, V: Any) -> jax.Array:
        """``(J^T V)^T`` of shape ``(k, P)``, batch by batch."""
        p, device = self.problem, self.layout.device
        V = as_jax(V, self.dtype, device)
        U = commit(jnp.zeros((V.shape[1], self.layout.n), self.dtype), device)
        ok = commit(True, device)
        for b, x in enumerate(self.batches):
            U, ok = _pullback(p.f, p.outputs, self.layout.tree, x, V, U, self._offsets[b], ok)
        if not bool(ok):
            raise FloatingPointError(
                "Expected finite outputs of f on every batch; got NaN/Inf. Check the inputs "
                "and the parameters."
            )
        return U

    def _push(self, U: jax.Array, scale: jax.Array | None) -> jax.Array:
        """``J (scale * U)^T`` of shape ``(N, k)``, batch by batch."""
        p = self.problem
        out = commit(jnp.zeros((self.shape[0], U.shape[0]), self.dtype), self.layout.device)
        for b, x in enumerate(self.batches):
            out = _pushforward_into(p.f, p.outputs, self.layout.tree, x, U, scale, out,
                                    self._offsets[b])
        return out

    def jvp(self, tangent: Any) -> jax.Array:
        """Return ``J t`` for a flat parameter tangent ``t`` of shape ``(P,)`` or ``(P, k)``.

        Rows are ordered like the operator's (sample-major over the batches).
        """
        t = as_jax(tangent, self.dtype, self.layout.device)
        if t.ndim not in (1, 2) or t.shape[0] != self.layout.n:
            raise ValueError(f"Expected a tangent of shape ({self.layout.n},) or "
                             f"({self.layout.n}, k); got {tuple(t.shape)}.")
        out = self._push(t[None] if t.ndim == 1 else t.T, None)
        return out[:, 0] if t.ndim == 1 else out

    def vjp(self, V: Any) -> jax.Array:
        """Return ``J^T V`` (flat ``(P, k)``, or ``(P,)`` for ``V`` of shape ``(N,)``).

        Not weighted by the prior: ``K V = J (S * (J^T V))``.
        """
        V = as_jax(V, self.dtype, self.layout.device)
        if V.ndim not in (1, 2) or V.shape[0] != self.shape[0]:
            raise ValueError(f"Expected V of shape ({self.shape[0]},) or ({self.shape[0]}, k); "
                             f"got {tuple(V.shape)}.")
        U = self._pull(V[:, None] if V.ndim == 1 else V)
        return U[0] if V.ndim == 1 else U.T

    # -- parameters ---------------------------------------------------------------------------
    def theta(self) -> jax.Array:
        """The parameters as one flat vector ``(P,)``."""
        return self.layout.flat

    def variances(self) -> jax.Array:
        """The diagonal of the prior covariance ``S``, flat ``(P,)``."""
        v = self.problem.variances
        return jnp.ones(self.layout.n, self.dtype) if v is None else v

    def ravel(self, params: Any) -> jax.Array:
        """Flatten a pytree with the parameters' structure."""
        return self.layout.ravel(params)

    def unravel(self, vec: Any, dim: int = -1) -> Any:
        """Split a flat vector into a pytree shaped like the parameters."""
        return self.layout.unravel_tree(vec, dim)

    # -- outputs and targets ------------------------------------------------------------------
    def outputs(self) -> jax.Array:
        """The outputs of ``f`` ``(n, ...)`` before the observation map."""
        parts = [_raw_outputs(self.problem.f, self.layout.tree, x) for x in self.batches]
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

    def targets(self) -> jax.Array | None:
        """The targets of ``data=`` stacked over the batches (None for ``inputs=``)."""
        if self._targets is None:
            return None
        return self._targets[0] if len(self._targets) == 1 else jnp.concatenate(self._targets)

    def inputs(self) -> Any:
        """All input batches concatenated along axis 0 (one pytree)."""
        return concat_trees(self.batches)

    # -- exact side quantities ----------------------------------------------------------------
    def diagonal(self) -> jax.Array:
        """Exact ``diag(K)`` of shape ``(N,)``: squared prior-weighted per-output gradients.

        Its sum is the exact trace (the oracle of the trace estimators).
        """
        p = self.problem
        c, P = self.num_outputs, self.layout.n
        item = np.dtype(self.dtype).itemsize
        parts = []
        for x, n in zip(self.batches, self.batch_sizes, strict=True):
            chunk = _chunk(c, P, item, MAX_CHUNK_BYTES, n)
            for _, A in _jacobian_chunks(p, x, 0, n, chunk, p.sqrt_variances(), self.dtype):
                parts.append(jnp.sum(A * A, axis=-1).reshape(-1))
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

    def dense(self, *, dtype: Any = None, max_memory: int | None = None,
              weighted: bool = True) -> jax.Array:
        """The explicit Gram ``(N, N)`` (:func:`hessntk.jax.gram`); ``J J^T`` unweighted."""
        from hessntk.jax.ntk.grams import gram

        p = self.problem
        prior = None
        if weighted and p.variances is not None:
            prior = self.layout.unravel_tree(p.variances)
        return gram(p.f, self.layout.tree, self.inputs(), prior=prior, outputs=p.outputs,
                    dtype=dtype, max_memory=max_memory)

    def jacobian(self, *, dtype: Any = None, max_memory: int | None = None) -> jax.Array:
        """The explicit Jacobian ``(N, P)`` (not weighted by the prior)."""
        from hessntk.jax.ntk.jacobians import jacobian

        p = self.problem
        return jacobian(p.f, self.layout.tree, self.inputs(), outputs=p.outputs, dtype=dtype,
                        max_memory=max_memory)

    def output_hessian(self, weights: Any) -> LinearOperator:
        """``M = sum_i w_i hess f_i(theta)``, the Hessian of ``w^T f(X; theta)``, ``(P, P)``.

        A :class:`~hessntk.jax.HessianOperator` of the loss ``<f_b, targets_b>`` with batch
        ``b``'s targets ``w_b n / n_b`` (it weights batch ``b`` by ``n_b / n``).
        """
        from hessntk.jax.curvature import HessianOperator

        p, c, n = self.problem, self.num_outputs, self.num_samples
        w = as_jax(weights, self.dtype, self.layout.device).reshape(-1)
        if w.shape != (self.shape[0],):
            raise ValueError(f"Expected weights of shape ({self.shape[0]},); got "
                             f"{tuple(w.shape)}.")
        data = []
        for b, (x, n_b) in enumerate(zip(self.batches, self.batch_sizes, strict=True)):
            rows = slice(self._offsets[b], self._offsets[b + 1])
            data.append((x, w[rows].reshape(n_b, c) * (n / n_b)))
        return HessianOperator(_WeightedOutputs(p.f, p.outputs), self.layout.tree, data,
                               check_deterministic=False)

    def __repr__(self) -> str:
        return (
            f"GramOperator(n={self.shape[0]}, dtype={self.dtype}, num_samples="
            f"{self.num_samples}, num_outputs={self.num_outputs}, batches={len(self.batches)})"
        )


def _per_sample_targets(y: Any, n: int) -> jax.Array | None:
    """``y`` as an array when it has ``n`` entries along axis 0, else None."""
    if y is None or not isinstance(y, (jax.Array, np.ndarray)) or y.ndim == 0 or (
            y.shape[0] != n):
        return None
    return jnp.asarray(y)


@dataclass(frozen=True)
class _WeightedOutputs:
    """The loss ``<observe(f)(params, x), w>`` of a batch ``(x, w)``.

    A frozen dataclass: equal for the same ``f`` and map, so compiled products are reused.
    """

    f: Callable
    outputs: Any

    def __call__(self, params: Any, batch: Any) -> jax.Array:
        x, w = batch
        return jnp.sum(observe(self.f, self.outputs, params, x) * w)


#: ``f(params, x)`` compiled once per ``f`` and shape.
_raw_outputs = jax.jit(lambda f, params, x: f(params, x), static_argnums=0)
