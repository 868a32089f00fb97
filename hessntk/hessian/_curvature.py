"""The data walk, parameter blocks and protocol members shared by the torch curvature operators.

Internal to :mod:`hessntk.hessian`: :class:`_CurvatureOperator` holds what
:class:`~hessntk.hessian.HessianOperator` and :class:`~hessntk.hessian.GGNOperator` have in
common (parameter selection, the full-data weighting of batches, one validating pass over the
data, blocks, and the members of :class:`hessntk.spectral.protocols.CurvatureLike`); each
subclass only implements its batch product.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from hessntk._model import (
    ParamLayout,
    ParamSpec,
    ParamWatch,
    as_flat,
    call_model,
    channel_axes,
    check_batch,
    check_eval_mode,
    check_finite,
    dtype_error,
    forward_error,
    iter_batches,
    ravel_params,
    select_params,
    to_device,
)
from hessntk.distributed.checks import (
    agree,
    check_replicas,
    check_shards,
    check_vectors,
    communicator,
    parameter_checksum,
)
from hessntk.distributed.sharding import check_sampler
from hessntk.spectral.layout import ParamBlocks, resolve_blocks
from hessntk.spectral.operators import LinearOperator

__all__ = ["BlockSpec", "LossFn"]

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]
BlockSpec = str | Mapping[str, Sequence[str]]

#: Default vectors per batched product. Per vector, on the MLP 301k (2 threads, 96 vectors):
#: Hessian graph 12.9-17.5 ms at 16 against 20.1-21.1 at 32 and 18.6-26.3 in one chunk;
#: func 11.8-16.1 against 15.7-20.8; GGN 11.6-14.5 against 14.6-15.6. Wider chunks only
#: add the memory of their activations.
CHUNK_SIZE = 16


class _CurvatureOperator(ParamBlocks, LinearOperator):
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
        chunk_size: int | None = CHUNK_SIZE,
        group: Any = None,
        _checked: tuple[int, float, list[float]] | None = None,
    ) -> None:
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(
                f"Expected chunk_size to be a positive int or None; got {chunk_size!r}."
            )
        self.chunk_size = chunk_size
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected model to be a torch.nn.Module; got {type(model).__name__}.")
        if loss_fn is None and not self._own_loss_ok:
            raise ValueError(f"Expected loss_fn(outputs, targets) for a {type(self).__name__}: "
                             "it needs the loss as a function of the model outputs. The "
                             "model's own loss (loss_fn=None) works with HessianOperator.")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(
                f"Expected loss_fn(outputs, targets) -> scalar, or None for the model's own "
                f"loss (outputs.loss); got {type(loss_fn).__name__}."
            )
        if method not in self._methods:
            raise ValueError(f"Expected method in {self._methods}; got {method!r}.")
        check_eval_mode(model, allow_train_mode)
        _check_reduction(loss_fn)
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
        self.group = group
        self.communicator = comm = communicator(group)
        _checked_now = _checked is None  # a block's operator was checked as the whole
        if _checked is None:
            def check() -> tuple[int, float, list[float]]:
                check_sampler(data, comm)
                return self._check_data()

            _checked = agree(comm, check, "the check of the data")
            if comm is not None:
                check_shards(comm, data)
        if comm is not None:
            check_replicas(comm, self.layout, self.theta())
        if _checked_now:  # after the ranks' own checks, so that all of them refuse alike
            for name, value in self._primals.items():  # a saturated unit hides an inf
                check_finite(value, f"parameter {name!r}")
        self._local_samples, self._loss_sum, self._counts = _checked
        # Global totals: batch b of any rank weighs c_b / (sum of c over every rank's batches).
        totals = self._sum_numbers([self._local_samples, float(sum(self._counts)),
                                    self._loss_sum], "the sample counts")
        self.num_samples, self._total = round(totals[0]), totals[1]
        self.loss = totals[2] / self._total
        self._watch = ParamWatch(model, self.params, type(self).__name__)

    _own_loss_ok = False  # whether loss_fn=None (the model's own outputs.loss) is supported

    @property
    def channel_axes(self) -> dict[str, int]:
        """The output-channel axis of each parameter, for per-channel and per-group
        quantization grids: 1 for Hugging Face ``Conv1D`` weights, 0 otherwise."""
        return channel_axes(self.model, self.layout.names)

    @property
    def num_loss_terms(self) -> int:
        """How many terms the full-data mean loss averages: the samples, or the tokens of the
        model's own token-mean loss (see :func:`loss_terms`)."""
        return round(self._total)

    # -- data ----------------------------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[int, float, Any, Any]]:
        """Yield ``(index, weight, inputs, targets)`` on the operator's device.

        Batch ``b`` weighs ``c_b / sum c``: its share of the full-data mean, with ``c_b`` its
        number of samples, or of loss terms for the model's own token-mean loss.
        """
        seen = 0
        for i, (x, y) in enumerate(iter_batches(self.data, reiterable=True)):
            n_b = check_batch(x, y, i)
            seen += n_b
            yield (i, self._counts[i] / self._total, to_device(x, self.device),
                   to_device(y, self.device))
        if seen != self._local_samples:
            raise ValueError(
                f"Expected the data to hold {self._local_samples} samples on every pass; got "
                f"{seen}. Use a fixed dataset (drop_last must not change between passes)."
            )

    def _outputs(self, p: Mapping[str, torch.Tensor], x: Any) -> torch.Tensor:
        # Train-mode modules update buffers in place (running statistics, counters): they
        # get copies, so products leave the model unchanged and torch.func does not see a
        # mutated captured tensor.
        return call_model(
            self.model,
            p,
            x,
            buffers=self._buffers(),
            output_key=self.output_key,
            outputs_fn=self.outputs_fn,
        )

    def _loss(self, p: Mapping[str, torch.Tensor], x: Any, y: Any, **extra: Any) -> torch.Tensor:
        """The batch's mean loss at parameters ``p``: ``loss_fn(outputs, y)`` or the model's."""
        if self.loss_fn is not None:
            return self.loss_fn(self._outputs(p, x), y)
        return own_loss(self.model, p, x, y, buffers=self._buffers(), **extra)

    def _buffers(self) -> dict[str, torch.Tensor] | None:
        if self.allow_train_mode and any(m.training for m in self.model.modules()):
            return {k: b.clone() for k, b in self.model.named_buffers()}
        return None

    def _check_data(self) -> tuple[int, float, list[float]]:
        """One forward pass over the data: validate batches, outputs and losses.

        Returns the number of samples, ``sum_b c_b l_b`` and each batch's weight count
        ``c_b`` (its samples, or for the model's own loss its loss terms: see
        :func:`loss_terms`), all of this rank's data.
        """
        total, counts, losses = 0, [], []
        with torch.no_grad():
            for i, (x, y) in enumerate(iter_batches(self.data, reiterable=True)):
                n_b = check_batch(x, y, i, self.dtype)
                x, y = to_device(x, self.device), to_device(y, self.device)
                try:
                    loss = self._loss(self._primals, x, y)
                except (RuntimeError, IndexError) as err:
                    clear = dtype_error(err, f"batch {i}", x, self.dtype, y) if isinstance(
                        err, RuntimeError) else None
                    raise (clear or forward_error(err, f"batch {i}", x, y)) from err
                _check_loss(loss, i)
                if i == 0:
                    _warn_loss_dtype(loss, self.dtype, self.loss_fn is None)
                count = n_b
                if self.loss_fn is None:
                    count = loss_terms(self.model, self._primals, x, y, loss, n_b,
                                       self._buffers(), index=i)
                if i == 0 and not self.allow_train_mode:  # train mode: randomness accepted
                    _check_deterministic(loss, self._loss(self._primals, x, y))
                total += n_b
                counts.append(float(count))
                losses.append(float(loss))
        return total, _weighted_sum(losses, counts), counts

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
        self._watch.check()  # the parameters not in theta must be the ones counted with
        params = self.layout.unravel(as_flat(theta, self.layout, self.dtype, self.device))
        if self.communicator is not None:
            self.communicator.check_same(parameter_checksum(self.layout, params),
                                         "theta of loss_at",
                                         "Pass the same parameters on every rank.")
        def local() -> float:
            losses = []
            with torch.no_grad():
                for i, _, x, y in self._batches():
                    loss = self._loss(params, x, y)
                    _check_loss(loss, i)
                    losses.append(float(loss))
            return _weighted_sum(losses, self._counts)

        part = agree(self.communicator, local, "the loss")
        return self._sum_numbers([part], "the loss")[0] / self._total

    def gradient(self) -> torch.Tensor:
        """The gradient of the full-data mean loss, flat ``(P,)``: one pass over the data."""
        self._watch.check()

        def local() -> torch.Tensor:
            total = None
            for i, w, x, y in self._batches():
                leaves = {n: p.detach().requires_grad_(True) for n, p in self._primals.items()}
                with torch.enable_grad():
                    loss = self._loss(leaves, x, y)
                    _check_loss(loss, i)
                    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
                g = self.layout.flatten([torch.zeros_like(p) if d is None else d
                                         for d, p in zip(grads, leaves.values(), strict=True)])
                check_finite(g, f"gradient of batch {i}")
                total = w * g if total is None else total.add_(g, alpha=w)
            return total

        return self._sum(agree(self.communicator, local, "the gradient"), "the gradient")

    # -- blocks ----------------------------------------------------------------------------------
    def _set_blocks(self, blocks: BlockSpec) -> None:
        self._groups = resolve_blocks(self.layout, blocks, each="tensor", what="parameter")

    def block(self, name: str) -> _CurvatureOperator:
        """The operator restricted to one block (the other parameters held fixed).

        Its products are ``H_bb v_b`` with ``H_bb`` the diagonal block of the full operator.
        """
        if name not in self._groups:
            raise ValueError(f"Expected a block name among {self.blocks}; got {name!r}.")
        self._watch.check()  # the block reuses this operator's data pass
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
            group=self.group,
            _checked=(self._local_samples, self._loss_sum, self._counts),
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
        self._watch.check()
        V = V.to(dtype=self.dtype, device=self.device)
        if self.communicator is not None:  # a rank-dependent vector would mix products
            check_vectors(self.communicator, V, self._product_name)
        what = f"the {self._product_name}"
        return self._sum(agree(self.communicator, lambda: self._local_matmat(V), what), what).T

    def _local_matmat(self, V: torch.Tensor) -> torch.Tensor:
        """This rank's weighted share of ``(A V)^T`` (the full product on one process)."""
        tangents = self.layout.unravel(V.T)  # name -> (k, *shape): vmap over dim 0
        out = None
        for i, w, x, y in self._product_batches():
            part = self._batch_product(i, x, y, tangents)
            HV = self.layout.flatten(part, batch_ndim=1)
            check_finite(HV, f"{self._product_name} of batch {i}")
            out = w * HV if out is None else out.add_(HV, alpha=w)
        return out

    # -- the sum over ranks ------------------------------------------------------------------------
    def _sum(self, x: torch.Tensor, what: str) -> torch.Tensor:
        """``x`` summed over the ranks of the group (itself on one process)."""
        # x is this rank's temporary share: summed in place.
        return x if self.communicator is None else self.communicator.sum(x, what, inplace=True)

    def _sum_numbers(self, values: list[float], what: str) -> list[float]:
        if self.communicator is None:
            return values
        x = torch.tensor(values, dtype=torch.float64)
        return self.communicator.sum(x, what).tolist()

    def _product_batches(self) -> Iterator[tuple[int, float, Any, Any]]:
        return self._batches()

    _product_name = "product"

    def _batch_product(
        self, index: int, x: Any, y: Any, tangents: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def _check_reduction(loss_fn: Any) -> None:
    """Refuse a torch loss module that sums over the batch (the operators average batches)."""
    reduction = getattr(loss_fn, "reduction", None)
    if isinstance(loss_fn, nn.Module) and reduction not in (None, "mean", "batchmean"):
        raise ValueError(
            f"Expected a loss that averages over the batch; got {loss_fn!r} with "
            f"reduction={reduction!r}. Curvature is of the full-data mean loss, each batch "
            "weighted by its share of the samples, so a batch sum would be counted as a mean "
            "(off by the batch size). Use reduction='mean' (and multiply by the number of "
            "samples for the summed loss)."
        )


def _check_deterministic(first: torch.Tensor, second: torch.Tensor) -> None:
    """The loss of the first batch, evaluated twice, must agree (one extra forward pass)."""
    a, b = float(first), float(second)
    tol = 100 * torch.finfo(first.dtype).eps * max(abs(a), abs(b), 1e-30)
    if abs(a - b) > tol:
        raise ValueError(
            f"Expected a deterministic model and loss; got two different losses of batch 0 "
            f"({a!r} and {b!r}) for the same parameters. Something in forward or the loss is "
            "random (F.dropout(x, training=True), dropout on a module in train mode, random "
            "augmentation), so every product would be of another function. Make forward "
            "deterministic for the analysis (e.g. F.dropout(x, training=self.training) and "
            "model.eval())."
        )


def _check_loss(loss: Any, index: int) -> None:
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            "Expected loss_fn(outputs, targets) to return a scalar mean loss; got "
            f"{shape} for batch {index}. Use reduction='mean' (e.g. nn.CrossEntropyLoss()) "
            "or .mean()."
        )
    check_finite(loss, f"loss of batch {index}")


def _weighted_sum(losses: list[float], counts: list[float]) -> float:
    """``sum_b c_b l_b``: over the total count, the mean loss (``loss`` and ``loss_at``)."""
    return sum(c * loss for c, loss in zip(counts, losses, strict=True))


def _warn_loss_dtype(loss: torch.Tensor, dtype: torch.dtype, own: bool) -> None:
    if loss.dtype != dtype and loss.is_floating_point():
        where = ("the model's own loss (transformers computes it with logits.float())" if own
                 else "loss_fn")
        warnings.warn(f"The loss is computed in {loss.dtype}, not in the parameters' {dtype}, by "
                      f"{where}: curvature products are {loss.dtype}-accurate. Pass a loss_fn "
                      f"on the logits in {dtype} for full precision.", RuntimeWarning,
                      stacklevel=5)


def own_loss(model: nn.Module, p: Mapping[str, torch.Tensor], x: Any, y: Any, *,
             buffers: Mapping[str, torch.Tensor] | None = None, **extra: Any) -> torch.Tensor:
    """The model's own loss of a batch: ``model(**x, labels=y, **extra).loss``.

    Hugging Face convention: the targets are passed as ``labels`` and the loss is the output's
    ``loss`` (attribute or key; the first element of a tuple output).

    Raises
    ------
    ValueError
        No targets, a model that does not take ``labels``, or a model output without a loss.
    """
    if y is None:
        raise ValueError("Expected targets for the model's own loss (loss_fn=None): a dict "
                         "batch with 'labels', or (inputs, targets) pairs.")
    try:
        return call_model(model, p, x, buffers=buffers, extra={"labels": y, **extra},
                          outputs_fn=_loss_of)
    except TypeError as err:
        if "'labels'" not in str(err) or "num_items_in_batch" in extra:
            raise
        raise ValueError(
            f"Expected a model that computes its own loss for loss_fn=None "
            f"(model(**inputs, labels=targets).loss); {type(model).__name__} does not take "
            f"labels ({err}). Pass loss_fn(outputs, targets) instead.") from err


def _loss_of(out: Any) -> torch.Tensor:
    """``out.loss`` (attribute or key; the first element of a tuple output)."""
    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, Mapping):
        loss = out.get("loss")
    if loss is None and isinstance(out, (tuple, list)) and out:
        loss = out[0]
    if not torch.is_tensor(loss):
        raise ValueError(f"Expected the model to return its loss (outputs.loss) when called "
                         f"with labels=; got {type(out).__name__} without one. Pass "
                         "loss_fn(outputs, targets) instead.")
    return loss


def loss_terms(model: nn.Module, p: Mapping[str, torch.Tensor], x: Any, y: Any,
               mean: torch.Tensor, n: int, buffers: Any, *, index: int) -> float:
    """The number of terms the model's own mean loss averages over in one batch.

    A token-mean loss (a language model's, over the tokens whose label is not -100) weighs
    batches by their token counts, not their samples: the full-data mean is
    ``sum_b c_b l_b / sum_b c_b``. The model tells: Hugging Face losses take
    ``num_items_in_batch`` (the loss becomes ``sum / num_items_in_batch``), so ``c_b`` is the
    loss with ``num_items_in_batch=1`` over the mean loss. One label per sample, or a model
    that does not take the keyword, gives the sample count ``n`` (with a warning when labels
    per token suggest that the count matters).
    """
    if not torch.is_tensor(y) or y.ndim <= 1:
        return float(n)
    try:
        total = own_loss(model, p, x, y, buffers=buffers, num_items_in_batch=1)
    except TypeError:
        total = mean
    ratio = float(total) / float(mean) if float(mean) != 0 else float("nan")
    valid = int((y != -100).sum())
    if math.isfinite(ratio) and abs(ratio - round(ratio)) <= 1e-3 * max(ratio, 1.0) and (
            round(ratio) != 1 or valid <= 2):
        return float(round(ratio))
    warnings.warn(f"The model's loss does not say how many terms it averages over in batch "
                  f"{index} (its forward takes no num_items_in_batch): batches are weighted "
                  "by their samples, which is the full-data mean only when every batch has "
                  f"as many loss terms per sample ({valid} labels are not -100 in this one). "
                  "Pass the data as one batch, or as batches with as many labelled tokens "
                  "per sample, for the full-data token mean.", RuntimeWarning, stacklevel=6)
    return float(n)
