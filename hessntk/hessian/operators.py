"""Hessian and generalised Gauss-Newton operators of a PyTorch model's loss.

Both are symmetric :class:`hessntk.spectral.LinearOperator` s over the flattened selected
parameters, known through exact products:

- :class:`HessianOperator`: ``H v`` of the full-data mean loss. One vector: differentiate the
  batch's gradient graph (``create_graph=True``, kept between products for a single batch)
  again, as PyHessian does. Several vectors: ``torch.func.vmap`` of forward-over-reverse
  (``jvp`` over ``jacrev``), with fused norms routed through exact composites (see
  :mod:`hessntk.hessian._norms`). ``benchmarks/bench_hessian.py`` measured each the faster of the
  two in its case.
- :class:`GGNOperator`: ``G v = J^T (d^2 loss / d out^2) J v``, positive semi-definite for
  convex losses (MSE, cross-entropy): with the same ``method`` rule, three backward passes
  through the batch's cached graphs (``J v`` by the double-vjp trick, the output-space loss
  Hessian, ``J^T``), or a ``jvp`` of the model, a forward-over-reverse product with the
  loss Hessian in output space and a ``vjp``.

A ``matmat`` of ``k`` vectors is one batched call per data batch, never a Python loop over
the vectors. Over several batches the product is that of the full-data mean loss: batch
``b`` is weighted by ``n_b / n`` (a ragged last batch included).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from hessntk._model import ParamSpec, check_finite, is_single_batch
from hessntk.hessian._curvature import (
    CHUNK_SIZE,
    BlockSpec,
    LossFn,
    _check_loss,
    _CurvatureOperator,
)
from hessntk.hessian._norms import CompositeNorms

__all__ = ["GGNOperator", "HessianOperator"]

#: ``method="auto"`` on CPU pushes vectors through the gradient graph one at a time when
#: every batch has at least this many samples (or loss terms) ...
ONE_AT_A_TIME_SAMPLES = 256
#: ... and samples x parameters reach this (``HessianOperator.one_at_a_time``).
ONE_AT_A_TIME_WORK = 2**24


class _GraphCurvature(_CurvatureOperator):
    """Products by differentiating a per-batch autograd graph again (``method="graph"``) or
    by ``torch.func`` (``"func"``), with the ``"auto"`` rule of :class:`HessianOperator`;
    subclasses say what the graph of a batch is (:meth:`_build_graph`) and how ``k``
    vectors go through it (:meth:`_graph_product`)."""

    _methods = ("auto", "graph", "func")

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        *,
        params: ParamSpec = None,
        blocks: BlockSpec = "tensor",
        output_key: str | int | None = None,
        outputs_fn: Callable[[Any], torch.Tensor] | None = None,
        allow_train_mode: bool = False,
        method: str = "auto",
        cache_graph: bool | None = None,
        chunk_size: int | None = CHUNK_SIZE,
        group: Any = None,
        _checked: tuple[int, float, list[float]] | None = None,
    ) -> None:
        # The signature is spelled out (not **options) so that both public operators show it.
        super().__init__(model, loss_fn, data, params=params, blocks=blocks,
                         output_key=output_key, outputs_fn=outputs_fn,
                         allow_train_mode=allow_train_mode, method=method,
                         chunk_size=chunk_size, group=group, _checked=_checked)
        if cache_graph is None:
            cache_graph = _num_batches(data) == 1
        self.cache_graph = bool(cache_graph)
        self._graphs: list[tuple[int, float, Any]] = []
        self.batched_method = method if method != "auto" else (
            "func" if self.device.type == "cuda" else "graph")
        # "auto" on CPU: a batch this large keeps one vector's backward compute-bound, and
        # batching its vectors only makes the intermediates outgrow the caches (per vector,
        # 16 at once against one at a time: MLP 301k on 512 images 23 against 18 ms).
        # Small models gain from batching (an MLP 385 on 256 samples: 0.19 against 0.51
        # ms). The rule keys on samples and parameters only, so it leaves some heavy
        # models batched (a CNN 10k on 64 32x32 images: 159 against 123 ms).
        smallest = min(self._counts, default=0)
        self.one_at_a_time = (method == "auto" and self.device.type == "cpu"
                              and smallest >= ONE_AT_A_TIME_SAMPLES
                              and smallest * self.shape[0] >= ONE_AT_A_TIME_WORK)

    def _options(self) -> dict[str, Any]:
        return {"cache_graph": self.cache_graph, "chunk_size": self.chunk_size}

    def _local_matmat(self, V: torch.Tensor) -> torch.Tensor:
        method = self.method
        if method == "auto" and (V.shape[1] == 1 or self.one_at_a_time):
            return self._matmat_graph(V, step=1)
        if method == "auto":
            method = self.batched_method
        return self._matmat_graph(V) if method == "graph" else super()._local_matmat(V)

    def _matmat_graph(self, V: torch.Tensor, step: int | None = None) -> torch.Tensor:
        k = V.shape[1]
        step = step or (k if self.chunk_size is None else self.chunk_size)
        # Rows of a contiguous copy: tangents strided like the columns of V made every
        # backward slower (MLP 301k, 16 vectors: 25-27 against 21-22 ms per vector).
        rows = V.T.contiguous()
        out = None
        for i, w, graph in self._batch_graphs():
            HV = V.new_empty((k, V.shape[0]))
            for start in range(0, k, step):  # one batched backward per chunk of vectors
                chunk = rows[start : start + step]
                tangents = list(self.layout.unravel(chunk).values())
                retain = self.cache_graph or start + step < k
                hv = self._graph_product(graph, tangents, chunk.shape[0], retain)
                # the chunk's rows written in place: no list of parts concatenated again
                torch.cat([t.reshape(chunk.shape[0], -1) for t in hv], dim=1,
                          out=HV[start : start + step])
            check_finite(HV, f"{self._product_name} of batch {i}")
            out = HV.mul_(w) if out is None else out.add_(HV, alpha=w)
        return out

    def _batch_graphs(self) -> Iterator[tuple[int, float, Any]]:
        """Yield ``(index, weight, graph)`` per batch, from the cache if kept."""
        if self._graphs:
            yield from self._graphs
            return
        built = []
        for i, w, x, y in self._batches():
            leaves = {name: p.detach().requires_grad_(True) for name, p in self._primals.items()}
            with torch.enable_grad():
                graph = self._build_graph(i, leaves, x, y)
            if self.cache_graph:
                built.append((i, w, graph))
            yield i, w, graph
        if self.cache_graph:
            self._graphs = built  # only a complete pass is kept

    def _build_graph(self, index: int, leaves: dict[str, torch.Tensor], x: Any, y: Any
                     ) -> Any:
        raise NotImplementedError

    def _graph_product(self, graph: Any, tangents: list[torch.Tensor], k: int,
                       retain: bool) -> list[torch.Tensor]:
        raise NotImplementedError


class HessianOperator(_GraphCurvature):
    """The Hessian of a model's full-data mean loss, over the selected parameters.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode if it has dropout or batch norm (or pass ``allow_train_mode=True``).
    loss_fn : callable
        ``loss_fn(outputs, targets) -> scalar`` mean over the batch, e.g.
        ``torch.nn.CrossEntropyLoss()``.
    data : (inputs, targets) or iterable of (inputs, targets)
        One batch or a re-iterable of batches (a list or a ``DataLoader``). Inputs may be a
        tensor (``model(x)``), a tuple (``model(*x)``) or a dict (``model(**x)``); one batch
        with tuple inputs must be wrapped in a list, ``[((x1, x2), y)]``.
    params : optional
        Which parameters: None (all that require grad), names, module(s) or a predicate
        ``(name, param) -> bool``. Tied weights count once.
    blocks : {"tensor", "layer"} or dict
        How :attr:`blocks` groups parameters: per tensor, per owning module, or a dict
        ``block name -> parameter names`` partitioning the selection.
    output_key : str or int, optional
        Select ``out[key]`` / ``out.key`` from a dict, tuple or HF-style model output.
    outputs_fn : callable, optional
        ``outputs_fn(out) -> Tensor`` for other output structures.
    allow_train_mode : bool
        Accept a model in train mode with dropout / batch norm (random or batch-dependent
        products).
    method : {"auto", "graph", "func"}
        ``"graph"``: differentiate the gradient graph (built with ``create_graph=True``)
        again, with ``torch.autograd.grad(..., is_grads_batched=True)`` for ``k`` vectors.
        ``"func"``: ``torch.func.vmap`` of ``jvp`` over ``jacrev`` (forward-over-reverse), with
        layer / instance / train-mode batch norm spelled out as exact composites (torch.func
        gets their fused kernels' second derivatives wrong in torch 2.13). ``"auto"``
        (default): ``"graph"`` for one vector and on CPU, ``"func"`` for several vectors on
        CUDA; on CPU the vectors go through the graph one at a time when every batch has
        at least 256 samples and samples x parameters >= 2**24 (:attr:`one_at_a_time`),
        in chunks of ``chunk_size`` otherwise. A fixed rule, not a timing: the methods and
        chunkings agree only to rounding, so a choice by timing would make the numbers
        depend on the machine's load (and a resumed run differ from an uninterrupted one).
        On CPU, 2 threads, ms per vector at 16 vectors, one at a time / in one chunk:
        MLP 301k on 512 images 18 / 23 (one at a time by the rule), MLP 385 on 256
        samples 0.51 / 0.19 and CNN 10k on 64 32x32 images 123 / 159 (both batched by the
        rule; ``benchmarks/bench_peers.py`` compares the methods); vmapped forward-mode
        convolutions are slower still on CPU. All are exact.
    cache_graph : bool, optional
        Keep each batch's gradient graph between products (method ``"graph"``), so a product
        costs one double-backward pass. Memory: the activations of every batch. Default:
        cache when the data is a single batch.
    chunk_size : int, optional
        Largest number of vectors pushed through the model at once by either method (bounds
        memory; larger ``matmat`` calls are split into chunks). ``None``: no limit. Default
        16: the fastest per vector measured (MLP 301k, 2 threads, 96 vectors: graph 13-18
        ms per vector at 16, 20-21 at 32; :data:`hessntk.hessian._curvature.CHUNK_SIZE`).
    group : torch.distributed.ProcessGroup or hessntk.distributed.Communicator, optional
        Data parallel: ``data`` is this rank's shard (:func:`hessntk.distributed.shard`, or a
        ``DataLoader`` with a ``DistributedSampler`` that does not pad). Products, the
        gradient and the loss are those of the mean over every rank's samples (batch ``b``
        weighs ``n_b`` over the global count), summed over the ranks so every rank holds
        the same numbers. Construction checks that the ranks hold the same parameters and
        different shards; every product checks that the ranks pass the same vectors.

    Attributes
    ----------
    shape : tuple[int, int]
    dtype, device
        Those of the selected parameters; products are in this dtype.
    layout : hessntk._model.ParamLayout
        The flat-vector layout (names, shapes, slices).
    num_samples : int
    loss : float
        The full-data mean loss at the parameters' values when the operator was built.
    batched_method : {"graph", "func"}
        The method of products of several vectors (``method``, or the rule of ``"auto"``).
    one_at_a_time : bool
        Whether ``"auto"`` pushes several vectors through the graph one at a time.
    blocks, block_slices, block_params
        The parameter blocks, their positions in the flat vector and their parameter names.

    Notes
    -----
    Products are taken at the parameters' current values; a cached graph keeps the values of
    its first product, so build a new operator after changing the parameters.

    Raises
    ------
    ValueError
        Train mode with dropout/batch norm; empty data; no parameter selected; parameters
        without ``requires_grad``; a non-scalar loss (naming the batch).
    FloatingPointError
        A non-finite loss or product, naming the batch.
    TypeError
        Floating data of another dtype than the parameters; a non-tensor model output
        without ``output_key``/``outputs_fn``.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
    >>> H = HessianOperator(net, torch.nn.MSELoss(), (x, y))
    >>> H.shape, H.blocks
    ((21, 21), ['0.weight', '0.bias', '2.weight', '2.bias'])
    >>> H.matmat(torch.randn(21, 5)).shape
    torch.Size([21, 5])
    """

    _methods = ("auto", "graph", "func")
    _product_name = "Hessian-vector product"
    kind = "hessian"
    _own_loss_ok = True

    def _build_graph(self, index: int, leaves: dict[str, torch.Tensor], x: Any, y: Any
                     ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
        """The batch's gradient, with its graph (``create_graph=True``)."""
        loss = self._loss(leaves, x, y)
        _check_loss(loss, index)
        params = list(leaves.values())
        # Parameters the loss does not use have zero rows (no graph: _batched_grad skips them).
        grads = (torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
                 if loss.requires_grad else [None] * len(params))
        return params, tuple(torch.zeros_like(p) if g is None else g
                             for g, p in zip(grads, params, strict=True))

    def _graph_product(self, graph: Any, tangents: list[torch.Tensor], k: int,
                       retain: bool) -> list[torch.Tensor]:
        leaves, grads = graph
        return _batched_grad(grads, leaves, tangents, k, retain)

    def _batch_product(
        self, index: int, x: Any, y: Any, tangents: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        # jvp over jacrev, not over grad: torch.func.grad fails under jvp for F.mse_loss in
        # torch 2.13 (pytorch issue 123996).
        grad_fn = torch.func.jacrev(lambda p: self._loss(p, x, y))

        def hvp(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return torch.func.jvp(grad_fn, (self._primals,), (v,))[1]

        with CompositeNorms():
            return _vmap(hvp, tangents, self.chunk_size)


def _vmap(
    fn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    tangents: dict[str, torch.Tensor],
    chunk_size: int | None,
) -> dict[str, torch.Tensor]:
    """``fn`` over the leading axis of ``tangents``: one vmapped call (none for one vector)."""
    if next(iter(tangents.values())).shape[0] == 1:
        return {name: t[None] for name, t in fn({n: t[0] for n, t in tangents.items()}).items()}
    # randomness="same": with allow_train_mode, dropout draws one mask for all k vectors, so
    # a matmat applies one (random) matrix to every column.
    return torch.func.vmap(fn, chunk_size=chunk_size, randomness="same")(tangents)


def _num_batches(data: Any) -> int | None:
    """1 for one batch or a one-element sequence; None when unknown without iterating."""
    if is_single_batch(data):
        return 1
    try:
        return len(data)
    except TypeError:
        return None


def _batched_grad(
    outputs: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    grad_outputs: Sequence[torch.Tensor],
    k: int,
    retain_graph: bool,
) -> list[torch.Tensor]:
    """``k`` vector-Jacobian products through one graph; zeros where an input is unused.

    ``grad_outputs[j]`` has shape ``(k, *outputs[j].shape)``; returns ``(k, *inputs[i].shape)``.
    """
    # A gradient entry that does not depend on the parameters (loss linear in it) has no
    # graph: it contributes nothing to the product.
    live = [j for j, g in enumerate(outputs) if g.requires_grad]
    res: Sequence[torch.Tensor | None] = [None] * len(inputs)
    if live and k == 1:
        res = torch.autograd.grad(
            [outputs[j] for j in live],
            inputs,
            [grad_outputs[j][0] for j in live],
            retain_graph=retain_graph,
            allow_unused=True,
        )
        res = [None if r is None else r[None] for r in res]
    elif live:
        res = torch.autograd.grad(
            [outputs[j] for j in live],
            inputs,
            [grad_outputs[j] for j in live],
            retain_graph=retain_graph,
            is_grads_batched=True,
            allow_unused=True,
        )
    return [
        torch.zeros(k, *p.shape, dtype=p.dtype, device=p.device) if r is None else r.detach()
        for r, p in zip(res, inputs, strict=True)
    ]


class GGNOperator(_GraphCurvature):
    """The generalised Gauss-Newton matrix ``J^T (d^2 loss / d out^2) J`` of the mean loss.

    Positive semi-definite for losses convex in the outputs (MSE, cross-entropy). Weighted
    like the loss: batch ``b`` contributes ``n_b / n`` times its ``J_b^T Lambda_b J_b``, where
    ``Lambda_b`` is the Hessian of the batch's mean loss with respect to the model outputs.
    Equal to the Hessian for models linear in the parameters.

    Parameters are those of :class:`HessianOperator`, with the same ``method`` rule and
    ``cache_graph`` default:

    - ``"graph"``: from the batch's forward graph ``out(theta)``, the graph of ``J^T u``
      (``create_graph=True``, linear in a dummy ``u``) and of the loss gradient in output
      space, three backward passes per chunk of vectors: ``J v`` as the derivative of
      ``J^T u`` with respect to ``u`` (the "double-vjp" trick), ``Lambda J v`` and
      ``J^T (Lambda J v)``, each ``torch.autograd.grad(..., is_grads_batched=True)``.
      With ``cache_graph`` (one batch) a product costs no forward pass.
    - ``"func"``: a ``jvp`` of the model, a forward-over-reverse product with the loss
      Hessian in output space and a ``vjp``, vmapped over the vectors in chunks of at most
      ``chunk_size``; a forward pass per product.

    Both are exact. MLP 301k on 512 images, float32, 2 threads, ms per vector at 1 / 8 / 16
    vectors (one gradient 3.6): graph 4.6 / 5.3 / 5.7, func 11.3 / 5.4 / 5.5, ``"auto"``
    (one at a time by the rule) 5.2 / 5.2 / 5.3; ``benchmarks/bench_peers.py`` times
    ``"auto"`` beside the Hessian's.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    >>> G = GGNOperator(net, torch.nn.CrossEntropyLoss(), (x, y), blocks="layer")
    >>> G.blocks
    ['0', '2']
    >>> G.matmat(torch.randn(G.shape[0], 3)).shape
    torch.Size([26, 3])
    """

    _product_name = "GGN-vector product"
    kind = "ggn"

    def _build_graph(self, index: int, leaves: dict[str, torch.Tensor], x: Any, y: Any
                     ) -> tuple[Any, ...]:
        """The graphs of ``out``, of ``J^T u`` in a dummy ``u`` and of the output-space loss
        gradient at ``out``."""
        out = self._outputs(leaves, x)
        params = list(leaves.values())
        o = out.detach().requires_grad_(True)
        loss = self.loss_fn(o, y)
        _check_loss(loss, index)
        (loss_grad,) = torch.autograd.grad(loss, o, create_graph=True)
        u = torch.zeros_like(o, requires_grad=True)
        # Outputs that no selected parameter reaches (a block of an unused head): J = 0.
        Jt_u = (torch.autograd.grad(out, params, u, create_graph=True, allow_unused=True)
                if out.requires_grad else [None] * len(params))
        Jt_u = [torch.zeros_like(p) if g is None else g for g, p in zip(Jt_u, params,
                                                                         strict=True)]
        return out, params, o, loss_grad, u, Jt_u

    def _graph_product(self, graph: Any, tangents: list[torch.Tensor], k: int,
                       retain: bool) -> list[torch.Tensor]:
        out, params, o, loss_grad, u, Jt_u = graph
        (Jv,) = _batched_grad(Jt_u, [u], tangents, k, True)  # d(J^T u)/du . v = J v
        (HJv,) = _batched_grad([loss_grad], [o], [Jv], k, True)
        return _batched_grad([out], params, [HJv], k, retain)

    def _batch_product(
        self, index: int, x: Any, y: Any, tangents: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return self._outputs(p, x)

        out, vjp_fn = torch.func.vjp(f, self._primals)
        out = out.detach()
        loss_grad = torch.func.jacrev(lambda o: self.loss_fn(o, y))

        def ggn_v(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            Jv = torch.func.jvp(f, (self._primals,), (v,))[1]
            HJv = torch.func.jvp(loss_grad, (out,), (Jv,))[1]
            return vjp_fn(HJv)[0]

        return _vmap(ggn_v, tangents, self.chunk_size)
