"""Matrix-free NTK Gram operator ``v -> J S J^T v`` over batches of inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hessntk._model import check_finite
from hessntk.ntk._common import (
    OutputsSpec,
    as_batches,
    check_inputs,
    check_same_signature,
    setup,
    slice_tree,
    structural_nullity,
)
from hessntk.spectral.operators import LinearOperator

__all__ = ["GramOperator"]


class GramOperator(LinearOperator):
    """The prior-weighted NTK Gram ``K = J S J^T`` as a symmetric linear operator.

    A product never forms ``J`` or ``K``: with the stacked outputs split per batch,
    ``u = S sum_b J_b^T v_b`` (one vjp per batch) and ``(K v)_b = J_b u`` (one jvp per batch);
    ``matmat`` runs both with ``vmap`` over the ``k`` vectors. Memory: ``k`` parameter-sized
    vectors plus one batch's activations times ``k``.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode; samples must not interact.
    inputs : Tensor, tuple, dict, or a list of those
        One batch of inputs, or a list (any re-iterable, e.g. a ``DataLoader`` yielding
        inputs) of batches. The batches are materialised in a list once.
    data : iterable of (inputs, targets), optional
        Instead of ``inputs``: batches as pairs, targets ignored.
    batch_size : int, optional
        Split every batch further into chunks of at most this many samples (bounds the
        activation memory of one vjp / jvp; the products are unchanged).
    params, prior, outputs, output_key, outputs_fn, allow_train_mode
        As in :func:`hessntk.ntk.gram`.

    Attributes
    ----------
    shape : (N, N)
        ``N = n c``; rows are sample-major over the batches in order (row ``i c + j`` is
        output ``j`` of the ``i``-th sample overall).
    num_samples, num_outputs : int
        ``n`` and ``c``.
    batch_sizes : list[int]
    structural_nullity : int
        Zero eigenvalues forced by the output map (``n`` for ``outputs="probabilities"``).
    layout : hessntk._model.ParamLayout
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
    ) -> None:
        self.problem = setup(
            model, params=params, prior=prior, outputs=outputs, output_key=output_key,
            outputs_fn=outputs_fn, allow_train_mode=allow_train_mode,
        )
        self.batches = as_batches(inputs, data)
        if batch_size is not None:
            if not (isinstance(batch_size, int) and batch_size >= 1):
                raise ValueError(f"Expected batch_size to be a positive int; got {batch_size!r}.")
            self.batches = [
                slice_tree(b, slice(s, s + batch_size))
                for b in self.batches
                for s in range(0, check_inputs(b, "inputs"), batch_size)
            ]
        check_same_signature(self.batches, "inputs")
        sizes, cs = [], set()
        for i, b in enumerate(self.batches):
            n, c = self.problem.probe(b, f"batch {i}")
            sizes.append(n)
            cs.add(c)
        if len(cs) != 1:
            raise ValueError(
                f"Expected every batch to give the same number of outputs per sample; got "
                f"{sorted(cs)}."
            )
        self.batch_sizes = sizes
        self.num_samples = sum(sizes)
        self.num_outputs = cs.pop()
        self.layout = self.problem.layout
        self.structural_nullity = structural_nullity(self.num_samples, outputs)
        self._offsets = [0]
        for n in sizes:
            self._offsets.append(self._offsets[-1] + n * self.num_outputs)
        super().__init__(
            self.num_samples * self.num_outputs,
            self.problem.dtype,
            self.problem.device,
            backend="torch",
        )

    # -- products ---------------------------------------------------------------------------
    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self._apply(V.to(self.problem.dtype))

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._apply(v.to(self.problem.dtype)[:, None])[:, 0]

    def _apply(self, V: torch.Tensor) -> torch.Tensor:
        """``K V = J S J^T V`` for ``V`` of shape ``(N, k)``."""
        return self._push(self.problem.scaled(self._pull(V)), V.shape[1])

    def _pull(self, V: torch.Tensor) -> dict[str, torch.Tensor]:
        """``J^T V`` as a dict of ``(k, *shape)`` tensors: one vmapped vjp per batch."""
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
        p = self.problem
        primals = p.detached()
        result = torch.empty(self.shape[0], k, dtype=p.dtype, device=p.device)
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
        vector = V.ndim == 1
        V = (V[:, None] if vector else V).to(device=p.device, dtype=p.dtype)
        if V.ndim != 2 or V.shape[0] != self.shape[0]:
            raise ValueError(f"Expected V of shape ({self.shape[0]},) or ({self.shape[0]}, k); "
                             f"got {tuple(V.shape)}.")
        out = self.layout.flatten(self._pull(V), batch_ndim=1).T
        return out[:, 0] if vector else out

    def jvp(self, tangent: torch.Tensor) -> torch.Tensor:
        """Return ``J t`` for a flat parameter tangent ``t`` of shape ``(P,)`` or ``(P, k)``.

        Rows are ordered like the operator's (sample-major over the batches).
        """
        p = self.problem
        vector = tangent.ndim == 1
        T = (tangent[:, None] if vector else tangent).to(device=p.device, dtype=p.dtype)
        if T.ndim != 2 or T.shape[0] != self.layout.n:
            raise ValueError(f"Expected a tangent of shape ({self.layout.n},) or "
                             f"({self.layout.n}, k); got {tuple(tangent.shape)}.")
        out = self._push(self.layout.unravel(T.T, dim=-1), T.shape[1])
        return out[:, 0] if vector else out

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
        return torch.cat(parts)
