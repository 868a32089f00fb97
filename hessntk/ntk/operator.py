"""Matrix-free NTK Gram operator ``v -> J S J^T v`` over batches of inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from hessntk._model import ParamWatch, call_model, check_finite, concat_inputs, ravel_params
from hessntk._priors import prior_label
from hessntk.distributed.checks import (
    agree,
    check_replicas,
    check_shards,
    check_vectors,
    communicator,
)
from hessntk.distributed.sharding import check_sampler
from hessntk.ntk._common import (
    OutputsSpec,
    as_batches,
    check_inputs,
    check_same_signature,
    setup,
    slice_tree,
    structural_nullity,
    transform_outputs,
)
from hessntk.spectral.operators import LinearOperator

__all__ = ["GramOperator"]


class GramOperator(LinearOperator):
    """The prior-weighted NTK Gram ``K = J S J^T`` as a symmetric linear operator.

    A product never forms ``J`` or ``K``: with the stacked outputs split per batch,
    ``u = S sum_b J_b^T v_b`` (one vjp per batch) and ``(K v)_b = J_b u`` (one jvp per batch);
    ``matmat`` runs both with ``vmap`` over the ``k`` vectors. Memory: ``k`` parameter-sized
    vectors plus one batch's activations times ``k``.

    It implements :class:`hessntk.spectral.protocols.GramLike`, so every criterion of
    :mod:`hessntk.criteria` takes it (``hessntk.criteria.iic(K)``).

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode; samples must not interact.
    inputs : Tensor, tuple, dict, or a list of those
        One batch of inputs, or a list (any re-iterable, e.g. a ``DataLoader`` yielding
        inputs) of batches. The batches are materialised in a list once.
    data : iterable of (inputs, targets), optional
        Instead of ``inputs``: batches as pairs; the targets are kept (:meth:`targets`, the
        interpolation check of the IIC).
    batch_size : int, optional
        Split every batch further into chunks of at most this many samples (bounds the
        activation memory of one vjp / jvp; the products are unchanged).
    params, prior, outputs, output_key, outputs_fn, allow_train_mode
        As in :func:`hessntk.ntk.gram`.
    group : torch.distributed.ProcessGroup or hessntk.distributed.Communicator, optional
        Data parallel: the batches are this rank's shard of the samples (in rank order, the
        rows of ``K``). A product all-reduces ``J^T v`` over the ranks; each rank computes
        its rows of ``J S J^T v`` and the rows are gathered, so every rank holds the whole
        product. :meth:`dense` builds ``K`` by row blocks (each rank's Jacobian broadcast
        in turn), :meth:`outputs`, :meth:`targets`, :meth:`diagonal`, :meth:`jvp` gather
        over the ranks. Construction checks that the ranks hold the same parameters and
        different samples; every product checks that they pass the same vectors.

    Attributes
    ----------
    shape : (N, N)
        ``N = n c``; rows are sample-major over the batches in order (row ``i c + j`` is
        output ``j`` of the ``i``-th sample overall).
    num_samples, num_outputs : int
        ``n`` and ``c``.
    batch_sizes : list[int]
        Of this rank's batches.
    rows : slice
        This rank's rows of ``K`` (all of them on one process).
    structural_nullity : int
        Zero eigenvalues forced by the output map (``n`` for ``outputs="probabilities"``).
    observation : str
        The output map (``"custom"`` for a callable).
    prior_name : str
        A label of the prior for reports.
    layout : hessntk.spectral.layout.ParamLayout
        Of the selected parameters.

    Raises
    ------
    ValueError
        On batches that do not match (structure, per-sample shapes, number of outputs), empty
        data, or a model in train mode with dropout / batch norm.
    FloatingPointError
        If the model outputs are not finite.

    Examples
    --------
    >>> net = nn.Linear(3, 1, bias=False).double()
    >>> x = torch.randn(6, 3, dtype=torch.float64)
    >>> op = GramOperator(net, [x[:4], x[4:]])
    >>> v = torch.ones(6, dtype=torch.float64)
    >>> bool(torch.allclose(op @ v, x @ (x.T @ v)))
    True
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: Any = None,
        *,
        data: Any = None,
        batch_size: int | None = None,
        params: Any = None,
        prior: Any = None,
        outputs: OutputsSpec = "raw",
        output_key: str | int | None = None,
        outputs_fn: Callable[[Any], torch.Tensor] | None = None,
        allow_train_mode: bool = False,
        group: Any = None,
    ) -> None:
        self.group = group
        self.communicator = comm = communicator(group)
        self.problem = setup(
            model, params=params, prior=prior, outputs=outputs, output_key=output_key,
            outputs_fn=outputs_fn, allow_train_mode=allow_train_mode,
        )
        check_sampler(data if data is not None else inputs, comm)
        self.batches, self._targets, sizes, self.num_outputs = agree(
            comm, lambda: self._read(inputs, data, batch_size), "the check of the data")
        self.batch_sizes = sizes
        self.layout = self.problem.layout
        self._rank_samples = [sum(sizes)]
        if comm is not None:
            check_replicas(comm, self.layout, self.layout.flatten(self.problem.detached()))
            check_shards(comm, [(x, None) for x in self.batches])
            comm.check_same([self.num_outputs], "number of outputs per sample",
                            "Give every rank batches of one data set.")
            self._rank_samples = [int(r[0]) for r in
                                  comm.gather_numbers([sum(sizes)], "the sample counts")]
        rank = 0 if comm is None else comm.rank
        self.num_samples = sum(self._rank_samples)
        start = sum(self._rank_samples[:rank]) * self.num_outputs
        self.rows = slice(start, start + sum(sizes) * self.num_outputs)
        self._watch = ParamWatch(model, self.problem.params, "GramOperator")
        self.structural_nullity = structural_nullity(self.num_samples, outputs)
        self.observation = outputs if isinstance(outputs, str) else "custom"
        self.prior_name = prior_label(prior)
        self._offsets = [0]
        for n in sizes:
            self._offsets.append(self._offsets[-1] + n * self.num_outputs)
        super().__init__(
            self.num_samples * self.num_outputs,
            self.problem.dtype,
            self.problem.device,
            backend="torch",
        )

    def _read(self, inputs: Any, data: Any, batch_size: int | None
              ) -> tuple[list[Any], list[Any], list[int], int]:
        """This rank's batches, targets, batch sizes and outputs per sample, validated."""
        pairs = [(x, _per_sample_targets(x, y)) for x, y in as_batches(inputs, data)]
        if batch_size is not None:
            if not (isinstance(batch_size, int) and batch_size >= 1):
                raise ValueError(f"Expected batch_size to be a positive int; got {batch_size!r}.")
            pairs = [
                (slice_tree(x, sl), None if y is None else y[sl])
                for x, y in pairs
                for sl in (slice(s, s + batch_size)
                           for s in range(0, check_inputs(x, "inputs"), batch_size))
            ]
        batches = [x for x, _ in pairs]
        check_same_signature(batches, "inputs")
        sizes, cs = [], set()
        for i, b in enumerate(batches):
            n, c = self.problem.probe(b, f"batch {i}")
            sizes.append(n)
            cs.add(c)
        if len(cs) != 1:
            raise ValueError(
                f"Expected every batch to give the same number of outputs per sample; got "
                f"{sorted(cs)}."
            )
        return batches, [y for _, y in pairs], sizes, cs.pop()

    # -- products ---------------------------------------------------------------------------
    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._apply(V.to(self.problem.dtype))

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._apply(v.to(self.problem.dtype)[:, None])[:, 0]

    def _apply(self, V: torch.Tensor) -> torch.Tensor:
        """``K V = J S J^T V`` for ``V`` of shape ``(N, k)``."""
        self._watch.check()
        if self.communicator is not None:  # a rank-dependent vector would mix products
            check_vectors(self.communicator, V, "Gram product")
        return self._push(self.problem.scaled(self._pull(V)), V.shape[1])

    def _gather_rows(self, local: torch.Tensor, per_sample: int, what: str) -> torch.Tensor:
        """This rank's rows (``per_sample`` per sample) gathered over the ranks, in order."""
        if self.communicator is None:
            return local
        counts = [n * per_sample for n in self._rank_samples]
        return self.communicator.gather(local, counts, what)

    def _pull(self, V: torch.Tensor) -> dict[str, torch.Tensor]:
        """``J^T V`` (summed over the ranks) as a dict of ``(k, *shape)`` tensors."""
        u = agree(self.communicator, lambda: self._pull_local(V[self.rows]), "the Gram vjp")
        if self.communicator is None:
            return u
        flat = self.communicator.sum(self.layout.flatten(u, batch_ndim=1), "the Gram vjp",
                                     inplace=True)
        return self.layout.unravel(flat)

    def _pull_local(self, V: torch.Tensor) -> dict[str, torch.Tensor]:
        """``J_r^T V_r`` of this rank's rows: one vmapped vjp per batch."""
        p = self.problem
        c, k = self.num_outputs, V.shape[1]
        primals = p.detached()
        u: dict[str, torch.Tensor] | None = None
        for b, x in enumerate(self.batches):
            rows = slice(self._offsets[b], self._offsets[b + 1])
            out, vjp_fn = torch.func.vjp(lambda q, x=x: p.outputs(q, x), primals)
            check_finite(out, f"the model outputs on batch {b}")
            cot = V[rows].T.reshape(k, -1, c)
            (g,) = torch.func.vmap(vjp_fn)(cot)
            u = g if u is None else {name: u[name] + g[name] for name in g}
        return u

    def _push(self, tangents: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        """``J T`` of shape ``(N, k)`` for tangents given as ``(k, *shape)`` tensors."""
        local = agree(self.communicator, lambda: self._push_local(tangents, k), "the Gram jvp")
        return self._gather_rows(local, self.num_outputs, "the Gram jvp")

    def _push_local(self, tangents: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        """This rank's rows of ``J T``: one vmapped jvp per batch."""
        p = self.problem
        primals = p.detached()
        result = torch.empty(self._offsets[-1], k, dtype=p.dtype, device=p.device)
        for b, x in enumerate(self.batches):
            rows = slice(self._offsets[b], self._offsets[b + 1])

            def push(t: dict[str, torch.Tensor], x: Any = x) -> torch.Tensor:
                return torch.func.jvp(lambda q: p.outputs(q, x), (primals,), (t,))[1]

            Ju = torch.func.vmap(push)(tangents)  # (k, n_b, c)
            result[rows] = Ju.reshape(k, -1).T
        return result

    def vjp(self, V: torch.Tensor) -> torch.Tensor:
        """Return ``J^T V`` (flat, shape ``(P, k)``, or ``(P,)`` for ``V`` of shape ``(N,)``).

        Not weighted by the prior: ``K V = J (S * (J^T V))``.
        """
        p = self.problem
        V = _as_tensor(V)
        vector = V.ndim == 1
        V = (V[:, None] if vector else V).to(device=p.device, dtype=p.dtype)
        if V.ndim != 2 or V.shape[0] != self.shape[0]:
            raise ValueError(f"Expected V of shape ({self.shape[0]},) or ({self.shape[0]}, k); "
                             f"got {tuple(V.shape)}.")
        if self.communicator is not None:
            check_vectors(self.communicator, V, "Gram vjp")
        out = self.layout.flatten(self._pull(V), batch_ndim=1).T
        return out[:, 0] if vector else out

    def jvp(self, tangent: torch.Tensor) -> torch.Tensor:
        """Return ``J t`` for a flat parameter tangent ``t`` of shape ``(P,)`` or ``(P, k)``.

        Rows are ordered like the operator's (sample-major over the batches).
        """
        p = self.problem
        tangent = _as_tensor(tangent)
        vector = tangent.ndim == 1
        T = (tangent[:, None] if vector else tangent).to(device=p.device, dtype=p.dtype)
        if T.ndim != 2 or T.shape[0] != self.layout.n:
            raise ValueError(f"Expected a tangent of shape ({self.layout.n},) or "
                             f"({self.layout.n}, k); got {tuple(tangent.shape)}.")
        if self.communicator is not None:
            check_vectors(self.communicator, T, "Gram jvp")
        out = self._push(self.layout.unravel(T.T, dim=-1), T.shape[1])
        return out[:, 0] if vector else out

    # -- parameters ---------------------------------------------------------------------------
    def theta(self) -> torch.Tensor:
        """The selected parameters as one flat vector ``(P,)``."""
        return self.layout.flatten(self.problem.detached())

    def variances(self) -> torch.Tensor:
        """The diagonal of the prior covariance ``S``, flat ``(P,)``."""
        p = self.problem
        parts = {name: torch.as_tensor(p.variances[name], dtype=p.dtype, device=p.device)
                 .expand(shape) for name, shape in zip(self.layout.names, self.layout.shapes,
                                                      strict=True)}
        return self.layout.flatten(parts)

    def ravel(self, params: Mapping[str, torch.Tensor] | nn.Module) -> torch.Tensor:
        """Flatten parameter values (a dict by name, or a module of this architecture)."""
        return ravel_params(self.layout, params, self.device)

    def unravel(self, vec: Any, dim: int = -1) -> dict[str, torch.Tensor]:
        """Split a flat vector into tensors shaped like the selected parameters."""
        return self.layout.unravel(_as_tensor(vec), dim)

    # -- outputs and targets ------------------------------------------------------------------
    def outputs(self) -> torch.Tensor:
        """The model outputs ``(n, ...)`` before the observation map (no gradient)."""
        p = self.problem
        with torch.no_grad():
            parts = [call_model(p.model, p.detached(), x, buffers=p.buffers,
                                output_key=p.output_key, outputs_fn=p.outputs_fn)
                     for x in self.batches]
        return self._gather_rows(torch.cat(parts), 1, "the outputs")

    def targets(self) -> torch.Tensor | None:
        """The targets of ``data=`` stacked over the batches.

        None when the operator was built from ``inputs=``, or when the targets are not one
        tensor per batch with the samples along dim 0.
        """
        known = not any(y is None for y in self._targets)
        if self.communicator is not None:
            self.communicator.check_same([float(known)], "presence of targets",
                                         "Build every rank's operator with data=(inputs, "
                                         "targets), or every one with inputs=.")
        if not known:
            return None
        return self._gather_rows(torch.cat([y.to(self.device) for y in self._targets]), 1,
                                 "the targets")

    # -- exact side quantities ----------------------------------------------------------------
    def diagonal(self) -> torch.Tensor:
        """Exact ``diag(K)`` of shape ``(N,)`` (squared per-output gradient norms).

        Batch by batch with :func:`hessntk.ntk.gram_diagonal`; its sum is the exact trace.
        """
        from hessntk.ntk.grams import gram_diagonal

        p = self.problem
        parts = [
            gram_diagonal(
                p.model, x, params=list(p.params), prior=p.variances,
                outputs=p.outputs_spec, output_key=p.output_key, outputs_fn=p.outputs_fn,
                allow_train_mode=True,
            )
            for x in self.batches
        ]
        return self._gather_rows(torch.cat(parts), self.num_outputs, "the Gram diagonal")

    def dense(
        self, *, dtype: torch.dtype | None = None, max_memory: int | None = None,
        weighted: bool = True,
    ) -> torch.Tensor:
        """The explicit Gram ``(N, N)``: :func:`hessntk.ntk.gram` on all the batches.

        Layer-structured for Linear / HF Conv1D / Conv2d / Embedding layers.
        ``weighted=False`` gives ``J J^T`` (identity prior). Data parallel: by row blocks
        ``J_r S J_s^T``, each rank's Jacobian broadcast in turn (memory: three Jacobian
        shards, ``J_r``, ``J_r S`` and the one received; not layer-structured), the row
        blocks gathered.
        """
        from hessntk.ntk.grams import gram

        p = self.problem
        if self.communicator is not None:
            return self._dense_by_rows(dtype, max_memory, weighted)
        return gram(p.model, concat_inputs(self.batches), params=list(p.params),
                    prior=p.variances if weighted else None, outputs=p.outputs_spec,
                    output_key=p.output_key, outputs_fn=p.outputs_fn, dtype=dtype,
                    max_memory=max_memory, allow_train_mode=True)

    def jacobian(
        self, *, dtype: torch.dtype | None = None, max_memory: int | None = None
    ) -> torch.Tensor:
        """The explicit Jacobian ``(N, P)`` (not weighted by the prior)."""
        return self._gather_rows(self._local_jacobian(dtype, max_memory), self.num_outputs,
                                 "the Jacobian")

    def _local_jacobian(self, dtype: torch.dtype | None, max_memory: int | None
                        ) -> torch.Tensor:
        from hessntk.ntk.jacobians import jacobian

        p = self.problem
        return jacobian(p.model, concat_inputs(self.batches), params=list(p.params),
                        outputs=p.outputs_spec, output_key=p.output_key,
                        outputs_fn=p.outputs_fn, dtype=dtype, max_memory=max_memory,
                        allow_train_mode=True)

    def _dense_by_rows(self, dtype: torch.dtype | None, max_memory: int | None,
                       weighted: bool) -> torch.Tensor:
        """``K`` from row blocks ``J_r S J_s^T``: rank ``s``'s Jacobian broadcast in turn."""
        comm = self.communicator
        J = self._local_jacobian(dtype, max_memory)
        JS = J * self.variances().to(J.dtype) if weighted else J
        blocks = []
        for s in range(comm.size):
            shape = (self._rank_samples[s] * self.num_outputs, J.shape[1])
            Js = J if s == comm.rank else J.new_empty(shape)
            blocks.append(JS @ comm.broadcast(Js, s, f"rank {s}'s Jacobian").T)
        return self._gather_rows(torch.cat(blocks, dim=1), self.num_outputs, "the Gram rows")

    def output_hessian(self, weights: Any) -> LinearOperator:
        """``M = sum_i w_i hess f_i(theta)``, the Hessian of ``w^T f(X; theta)``, ``(P, P)``.

        A :class:`~hessntk.hessian.HessianOperator`, so normalisation layers get exact
        second derivatives. It weights batch ``b`` by ``n_b / n``: batch ``b``'s "targets"
        are ``w_b n / n_b`` and its "loss" is ``<f_b, targets_b>``, whose total is ``w^T f``.
        """
        from hessntk.hessian.operators import HessianOperator

        p, c, n = self.problem, self.num_outputs, self.num_samples
        w = _as_tensor(weights).to(device=p.device, dtype=p.dtype).reshape(-1)
        if w.shape != (self.shape[0],):
            raise ValueError(f"Expected weights of shape ({self.shape[0]},); got "
                             f"{tuple(w.shape)}.")
        w = w[self.rows]
        data = []
        for b, (x, n_b) in enumerate(zip(self.batches, self.batch_sizes, strict=True)):
            rows = slice(self._offsets[b], self._offsets[b + 1])
            data.append((x, w[rows].reshape(n_b, c) * (n / n_b)))
        spec = p.outputs_spec

        def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return (transform_outputs(out, spec) * target).sum()

        return HessianOperator(p.model, loss, data, params=list(p.params),
                               output_key=p.output_key, outputs_fn=p.outputs_fn,
                               allow_train_mode=True, method="func", group=self.group)

    def __repr__(self) -> str:
        return (
            f"GramOperator(n={self.shape[0]}, dtype={self.dtype}, num_samples="
            f"{self.num_samples}, num_outputs={self.num_outputs}, batches={len(self.batches)})"
        )


def _per_sample_targets(x: Any, y: Any) -> torch.Tensor | None:
    """``y`` when it is a tensor with one entry per sample of ``x`` along dim 0, else None."""
    if not torch.is_tensor(y) or y.ndim == 0 or y.shape[0] != check_inputs(x, "inputs"):
        return None
    return y


def _as_tensor(x: Any) -> torch.Tensor:
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x
