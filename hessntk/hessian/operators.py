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
  convex losses (MSE, cross-entropy): a ``jvp`` of the model, a forward-over-reverse product
  with the Hessian of the loss with respect to the outputs, and a ``vjp`` of the model.

A ``matmat`` of ``k`` vectors is one batched call per data batch, never a Python loop over
the vectors. Over several batches the product is that of the full-data mean loss: batch
``b`` is weighted by ``n_b / n`` (a ragged last batch included).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hessntk._model import (
    ParamLayout,
    ParamSpec,
    as_flat,
    batch_size,
    call_model,
    check_batch,
    check_eval_mode,
    check_finite,
    is_single_batch,
    iter_batches,
    ravel_params,
    select_params,
    to_device,
)
from hessntk.hessian._norms import CompositeNorms
from hessntk.spectral.operators import LinearOperator

__all__ = ["GGNOperator", "HessianOperator"]

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]
BlockSpec = str | Mapping[str, Sequence[str]]


class _CurvatureOperator(LinearOperator):
    """Shared set-up of the Hessian and GGN operators (parameters, data, blocks)."""

    _methods: tuple[str, ...] = ("func",)

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
        method: str = "func",
        chunk_size: int | None = 32,
        _checked: tuple[int, float] | None = None,
    ) -> None:
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(
                f"Expected chunk_size to be a positive int or None; got {chunk_size!r}."
            )
        self.chunk_size = chunk_size
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected model to be a torch.nn.Module; got {type(model).__name__}.")
        if not callable(loss_fn):
            raise TypeError(
                f"Expected loss_fn(outputs, targets) -> scalar; got {type(loss_fn).__name__}."
            )
        if method not in self._methods:
            raise ValueError(f"Expected method in {self._methods}; got {method!r}.")
        check_eval_mode(model, allow_train_mode)
        self.model = model
        self.loss_fn = loss_fn
        self.data = data
        self.output_key = output_key
        self.outputs_fn = outputs_fn
        self.allow_train_mode = allow_train_mode
        self.method = method
        self.params = select_params(model, params)
        self.layout = ParamLayout(self.params)
        super().__init__(self.layout.n, self.layout.dtype, self.layout.device, backend="torch")
        self._primals = {name: p.detach() for name, p in self.params.items()}
        self._set_blocks(blocks)
        if _checked is None:
            _checked = self._check_data()
        self.num_samples, self.loss = _checked

    # -- data ----------------------------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[int, float, Any, Any]]:
        """Yield ``(index, weight n_b / n, inputs, targets)`` on the operator's device."""
        seen = 0
        for i, (x, y) in enumerate(iter_batches(self.data, reiterable=True)):
            n_b = check_batch(x, y, i)
            seen += n_b
            yield i, n_b / self.num_samples, to_device(x, self.device), to_device(y, self.device)
        if seen != self.num_samples:
            raise ValueError(
                f"Expected the data to hold {self.num_samples} samples on every pass; got "
                f"{seen}. Use a fixed dataset (drop_last must not change between passes)."
            )

    def _outputs(self, p: Mapping[str, torch.Tensor], x: Any) -> torch.Tensor:
        buffers = None
        if self.allow_train_mode and any(m.training for m in self.model.modules()):
            # Train-mode modules update buffers in place (running statistics, counters):
            # give them copies, so products leave the model unchanged and torch.func does
            # not see a mutated captured tensor.
            buffers = {k: b.clone() for k, b in self.model.named_buffers()}
        return call_model(
            self.model,
            p,
            x,
            buffers=buffers,
            output_key=self.output_key,
            outputs_fn=self.outputs_fn,
        )

    def _check_data(self) -> tuple[int, float]:
        """One forward pass over the data: validate batches, outputs and losses."""
        total, weighted = 0, 0.0
        with torch.no_grad():
            for i, (x, y) in enumerate(iter_batches(self.data, reiterable=True)):
                n_b = check_batch(x, y, i, self.dtype)
                try:
                    loss = self.loss_fn(
                        self._outputs(self._primals, to_device(x, self.device)),
                        to_device(y, self.device),
                    )
                except RuntimeError as err:
                    if "type" not in str(err):
                        raise
                    raise TypeError(
                        f"Expected data the model and loss accept; got a dtype error on batch "
                        f"{i} with inputs of dtype {_dtypes(x)} and targets of dtype "
                        f"{_dtypes(y)} (parameters: {self.dtype}): {err}. Cast the inputs, "
                        f"e.g. x.to({self.dtype}) for a model without an embedding, or the "
                        "targets (class indices: torch.long; regression: the parameters' dtype)."
                    ) from err
                _check_loss(loss, i)
                total += n_b
                weighted += n_b * float(loss)
        return total, weighted / total

    # -- the protocol of hessntk.spectral.protocols.CurvatureLike ------------------------------
    def theta(self) -> torch.Tensor:
        """The selected parameters as one flat vector ``(P,)`` (a copy)."""
        return self.layout.flatten(self._primals)

    def ravel(self, params: Mapping[str, torch.Tensor] | nn.Module) -> torch.Tensor:
        """Flatten parameter values (a dict by name, or a module of this architecture)."""
        return ravel_params(self.layout, params, self.device)

    def loss_at(self, theta: torch.Tensor) -> float:
        """The full-data mean loss at flat parameters ``theta`` (the model is not changed).

        Raises
        ------
        FloatingPointError
            A non-finite loss, naming the batch.
        """
        params = self.layout.unravel(as_flat(theta, self.layout, self.dtype, self.device))
        total = 0.0
        with torch.no_grad():
            for i, _, x, y in self._batches():
                loss = self.loss_fn(self._outputs(params, x), y)
                _check_loss(loss, i)
                total += batch_size(x) * float(loss)
        return total / self.num_samples

    def gradient(self) -> torch.Tensor:
        """The gradient of the full-data mean loss, flat ``(P,)``: one pass over the data."""
        total = None
        for i, w, x, y in self._batches():
            leaves = {n: p.detach().requires_grad_(True) for n, p in self._primals.items()}
            with torch.enable_grad():
                loss = self.loss_fn(self._outputs(leaves, x), y)
                _check_loss(loss, i)
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            g = self.layout.flatten([torch.zeros_like(p) if d is None else d
                                     for d, p in zip(grads, leaves.values(), strict=True)])
            check_finite(g, f"gradient of batch {i}")
            total = w * g if total is None else total.add_(g, alpha=w)
        return total

    # -- blocks ----------------------------------------------------------------------------------
    def _set_blocks(self, blocks: BlockSpec) -> None:
        if blocks == "tensor":
            groups = {name: [name] for name in self.layout.names}
        elif blocks == "layer":
            groups = self.layout.layer_groups()
        elif isinstance(blocks, Mapping):
            groups = {str(k): list(v) for k, v in blocks.items()}
            members = [name for names in groups.values() for name in names]
            unknown = [name for name in members if name not in self.layout.slices]
            if unknown or sorted(members) != sorted(self.layout.names):
                raise ValueError(
                    "Expected blocks= to partition the selected parameters "
                    f"{self.layout.names}; got unknown {unknown} and "
                    f"{len(members)} members for {len(self.layout.names)} parameters."
                )
        else:
            raise ValueError(
                "Expected blocks='tensor', 'layer' or a dict block name -> parameter names; "
                f"got {blocks!r}."
            )
        self._groups = groups

    @property
    def blocks(self) -> list[str]:
        """Names of the parameter blocks (per tensor, per layer or as given by ``blocks=``)."""
        return list(self._groups)

    @property
    def block_params(self) -> dict[str, list[str]]:
        """``block name -> parameter names`` of each block."""
        return {k: list(v) for k, v in self._groups.items()}

    @property
    def block_slices(self) -> list[slice | np.ndarray]:
        """Positions of each block in the flat vector, in :attr:`blocks` order.

        A ``slice`` for a contiguous block, else a 1-D numpy integer index array. Together
        they partition ``range(n)``, as ``hessntk.spectral.traces(..., blocks=)`` expects.
        """
        return [self.layout.index(names) for names in self._groups.values()]

    def block(self, name: str) -> _CurvatureOperator:
        """The operator restricted to one block (the other parameters held fixed).

        Its products are ``H_bb v_b`` with ``H_bb`` the diagonal block of the full operator.
        """
        if name not in self._groups:
            raise ValueError(f"Expected a block name among {self.blocks}; got {name!r}.")
        return type(self)(
            self.model,
            self.loss_fn,
            self.data,
            params=self._groups[name],
            blocks="tensor",
            output_key=self.output_key,
            outputs_fn=self.outputs_fn,
            allow_train_mode=self.allow_train_mode,
            method=self.method,
            _checked=(self.num_samples, self.loss),
            **self._options(),
        )

    def _options(self) -> dict[str, Any]:
        return {"chunk_size": self.chunk_size}

    def unravel(self, vec: torch.Tensor, dim: int = -1) -> dict[str, torch.Tensor]:
        """Split a flat vector (e.g. an eigenvector) into tensors shaped like the parameters.

        See :meth:`hessntk.spectral.layout.ParamLayout.unravel`; numpy arrays are accepted.
        """
        if isinstance(vec, np.ndarray):
            vec = torch.from_numpy(vec)
        return self.layout.unravel(vec, dim)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.shape[0]}, dtype={self.dtype}, "
            f"num_samples={self.num_samples}, blocks={len(self._groups)}, method={self.method!r})"
        )

    # -- products --------------------------------------------------------------------------------
    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._matmat(v[:, None])[:, 0]

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        V = V.to(dtype=self.dtype, device=self.device)
        tangents = self.layout.unravel(V.T)  # name -> (k, *shape): vmap over dim 0
        out = None
        for i, w, x, y in self._product_batches():
            part = self._batch_product(i, x, y, tangents)
            HV = self.layout.flatten(part, batch_ndim=1)
            check_finite(HV, f"{self._product_name} of batch {i}")
            out = w * HV if out is None else out.add_(HV, alpha=w)
        return out.T

    def _product_batches(self) -> Iterator[tuple[int, float, Any, Any]]:
        return self._batches()

    _product_name = "product"

    def _batch_product(
        self, index: int, x: Any, y: Any, tangents: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def _dtypes(tree: Any) -> str:
    if isinstance(tree, torch.Tensor):
        return str(tree.dtype).replace("torch.", "")
    if isinstance(tree, Mapping):
        return "{" + ", ".join(f"{k}: {_dtypes(v)}" for k, v in tree.items()) + "}"
    if isinstance(tree, (tuple, list)):
        return "(" + ", ".join(_dtypes(v) for v in tree) + ")"
    return type(tree).__name__


def _check_loss(loss: Any, index: int) -> None:
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            "Expected loss_fn(outputs, targets) to return a scalar mean loss; got "
            f"{shape} for batch {index}. Use reduction='mean' (e.g. nn.CrossEntropyLoss()) "
            "or .mean()."
        )
    check_finite(loss, f"loss of batch {index}")


class HessianOperator(_CurvatureOperator):
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
        (default): ``"graph"`` for one vector; for several, both are timed on the first such
        product and the faster is kept (:attr:`batched_method`): dense layers favour
        ``"func"``, convolutions ``"graph"`` on CPU. All are exact.
    cache_graph : bool, optional
        Keep each batch's gradient graph between products (method ``"graph"``), so a product
        costs one double-backward pass. Memory: the activations of every batch. Default:
        cache when the data is a single batch.
    chunk_size : int, optional
        Largest number of vectors pushed through the model at once by ``"func"`` (bounds
        memory; larger ``matmat`` calls are split into chunks). ``None``: no limit.

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
    batched_method : {"graph", "func"} or None
        The method used for products of several vectors (``None`` until ``"auto"`` chose).
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
        chunk_size: int | None = 32,
        _checked: tuple[int, float] | None = None,
    ) -> None:
        super().__init__(
            model,
            loss_fn,
            data,
            params=params,
            blocks=blocks,
            output_key=output_key,
            outputs_fn=outputs_fn,
            allow_train_mode=allow_train_mode,
            method=method,
            chunk_size=chunk_size,
            _checked=_checked,
        )
        if cache_graph is None:
            cache_graph = _num_batches(data) == 1
        self.cache_graph = bool(cache_graph)
        self._graphs: list[tuple[int, float, list[torch.Tensor], tuple[torch.Tensor, ...]]] = []
        self.batched_method: str | None = None if method == "auto" else method

    def _options(self) -> dict[str, Any]:
        return {"cache_graph": self.cache_graph, "chunk_size": self.chunk_size}

    def _loss(self, p: Mapping[str, torch.Tensor], x: Any, y: Any) -> torch.Tensor:
        return self.loss_fn(self._outputs(p, x), y)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        method = self.method
        if method == "auto" and V.shape[1] == 1:
            method = "graph"
        elif method == "auto" and self.batched_method is None:
            return self._autotune(V)
        elif method == "auto":
            method = self.batched_method
        if method == "func":
            return super()._matmat(V)
        return self._matmat_graph(V)

    def _autotune(self, V: torch.Tensor) -> torch.Tensor:
        """Time both methods on the first multi-vector product; keep the faster one.

        Which is faster depends on the model (vmapped forward-mode convolutions are slow on
        CPU, dense layers fast), so ``method="auto"`` measures it once per operator. One-off
        costs are paid before the clock starts: the cached gradient graph and torch.func's
        first use in the process.
        """
        if self.cache_graph and not self._graphs:
            for _ in self._gradient_graphs():
                pass
        _warm_up_forward_ad()
        start = time.perf_counter()
        out = self._matmat_graph(V)
        t_graph = time.perf_counter() - start
        start = time.perf_counter()
        super()._matmat(V)
        t_func = time.perf_counter() - start
        self.batched_method = "graph" if t_graph <= t_func else "func"
        return out

    def _matmat_graph(self, V: torch.Tensor) -> torch.Tensor:
        V = V.to(dtype=self.dtype, device=self.device)
        k = V.shape[1]
        step = k if self.chunk_size is None else self.chunk_size
        out = None
        for i, w, leaves, grads in self._gradient_graphs():
            parts = []
            for start in range(0, k, step):  # one batched backward per chunk of vectors
                chunk = V[:, start : start + step]
                tangents = list(self.layout.unravel(chunk.T).values())
                retain = self.cache_graph or start + step < k
                hv = _batched_grad(grads, leaves, tangents, chunk.shape[1], retain)
                parts.append(self.layout.flatten(hv, batch_ndim=1))
            HV = parts[0] if len(parts) == 1 else torch.cat(parts)
            check_finite(HV, f"{self._product_name} of batch {i}")
            out = w * HV if out is None else out.add_(HV, alpha=w)
        return out.T

    def _gradient_graphs(
        self,
    ) -> Iterator[tuple[int, float, list[torch.Tensor], tuple[torch.Tensor, ...]]]:
        """Yield ``(index, weight, leaves, gradient)`` per batch, from the cache if kept."""
        if self._graphs:
            yield from self._graphs
            return
        built = []
        for i, w, x, y in self._batches():
            leaves = [p.detach().requires_grad_(True) for p in self._primals.values()]
            with torch.enable_grad():
                named = dict(zip(self.layout.names, leaves, strict=True))
                loss = self._loss(named, x, y)
                _check_loss(loss, i)
                grads = torch.autograd.grad(loss, leaves, create_graph=True)
            if self.cache_graph:
                built.append((i, w, leaves, grads))
            yield i, w, leaves, grads
        if self.cache_graph:
            self._graphs = built  # only a complete pass is kept

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


_FORWARD_AD_READY = []


def _warm_up_forward_ad() -> None:
    """Pay torch.func's one-off set-up (it scripts its jvp decompositions on first use)."""
    if not _FORWARD_AD_READY:
        x = torch.ones(2)
        torch.func.jvp(torch.func.jacrev(lambda t: F.cross_entropy(t[None], t[None])), (x,), (x,))
        _FORWARD_AD_READY.append(True)


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


class GGNOperator(_CurvatureOperator):
    """The generalised Gauss-Newton matrix ``J^T (d^2 loss / d out^2) J`` of the mean loss.

    Positive semi-definite for losses convex in the outputs (MSE, cross-entropy). Weighted
    like the loss: batch ``b`` contributes ``n_b / n`` times its ``J_b^T Lambda_b J_b``, where
    ``Lambda_b`` is the Hessian of the batch's mean loss with respect to the model outputs.
    Equal to the Hessian for models linear in the parameters.

    Parameters are those of :class:`HessianOperator` except ``cache_graph``; ``method`` is
    ``"func"`` only (a ``jvp`` of the model, a forward-over-reverse product with the loss
    Hessian in output space, and a ``vjp``, vmapped over the vectors in chunks of at most
    ``chunk_size``).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    >>> G = GGNOperator(net, torch.nn.CrossEntropyLoss(), (x, y), blocks="layer")
    >>> G.blocks
    ['0', '2']
    """

    _methods = ("func",)
    _product_name = "GGN-vector product"
    kind = "ggn"

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
