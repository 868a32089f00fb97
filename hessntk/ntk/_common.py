"""Shared set-up of the NTK builders: outputs, batches, memory budget.

Internal. The public entry points (:func:`~hessntk.ntk.gram`, :func:`~hessntk.ntk.jacobian`,
:class:`~hessntk.ntk.GramOperator`) validate their arguments once through :func:`setup`, and
every engine then evaluates the model through :meth:`Problem.outputs`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hessntk._memory import format_bytes
from hessntk._memory import memory_budget as _budget
from hessntk._model import (
    ParamLayout,
    batch_size,
    call_model,
    check_eval_mode,
    check_finite,
    dtype_error,
    iter_batches,
    select_params,
    tensor_leaves,
)
from hessntk._observations import (
    OUTPUTS,
    OutputsSpec,
    check_batched_output,
    check_logits_shape,
    check_outputs_spec,
    simplex_basis_np,
    structural_nullity,
)
from hessntk.ntk.prior import resolve_prior

__all__ = [
    "OUTPUTS",
    "OutputsSpec",
    "Problem",
    "as_batches",
    "available_memory",
    "check_inputs",
    "check_same_signature",
    "format_bytes",
    "memory_budget",
    "setup",
    "simplex_basis",
    "slice_tree",
    "structural_nullity",
    "transform_outputs",
]


# -- memory ------------------------------------------------------------------------------------


def available_memory(device: torch.device) -> int:
    """Free memory in bytes on ``device``: ``mem_get_info`` on CUDA, else the host's."""
    from hessntk.spectral._backend import TorchBackend

    return TorchBackend(device).free_memory()


def memory_budget(max_memory: int | float | None, device: torch.device) -> int:
    """Resolve ``max_memory=`` (bytes, or None for a fraction of the device's free memory)."""
    return _budget(max_memory, available_memory(device) if max_memory is None else None)


# -- outputs -----------------------------------------------------------------------------------


def simplex_basis(
    c: int, *, dtype: torch.dtype = torch.float64, device: Any = None
) -> torch.Tensor:
    """Orthonormal basis of the complement of the all-ones vector in ``R^c`` (Helmert).

    Column ``k`` (``k = 0..c-2``) is ``(1, ..., 1, -(k+1), 0, ..., 0) / sqrt((k+1)(k+2))``
    with ``k+1`` leading ones. Projecting a probability vector ``p`` onto these columns,
    ``Q^T p``, removes the direction ``1^T dp = 0`` along which probabilities cannot move.

    Parameters
    ----------
    c : int
        Number of classes, at least 2.

    Returns
    -------
    torch.Tensor of shape (c, c - 1)
        ``Q^T Q = I`` and ``Q^T 1 = 0``.

    Examples
    --------
    >>> Q = simplex_basis(3)
    >>> Q.shape, bool(torch.allclose(Q.T @ Q, torch.eye(2, dtype=Q.dtype)))
    (torch.Size([3, 2]), True)
    >>> bool((Q.sum(0).abs() < 1e-12).all())
    True
    """
    return torch.from_numpy(simplex_basis_np(c)).to(dtype=dtype, device=device)


def transform_outputs(out: torch.Tensor, outputs: OutputsSpec) -> torch.Tensor:
    """Apply the observation map and flatten to ``(n, c)`` (row-major over trailing dims)."""
    check_batched_output(out.ndim, "model outputs")
    if callable(outputs):
        out = outputs(out)
    elif outputs in ("probabilities", "simplex"):
        check_logits_shape(tuple(out.shape), outputs)
        # In float64 whatever the model's dtype: the softmax Jacobian diag(p) - p p^T of a
        # confident model cancels (p (1 - p) with p near 1), which in float32 costs
        # eps / (1 - p) of relative accuracy in every derivative (1e-3 and worse).
        wide = out.dtype if out.dtype == torch.float64 or out.device.type == "mps" else (
            torch.float64)
        p = torch.softmax(out.to(wide), dim=-1)
        if outputs == "simplex":
            p = p @ simplex_basis(p.shape[1], dtype=wide, device=p.device)
        out = p.to(out.dtype)
    return out.reshape(out.shape[0], -1)


# -- inputs ------------------------------------------------------------------------------------


def _signature(tree: Any) -> Any:
    """Structure, dtypes and per-sample shapes of an inputs tree (for batch consistency)."""
    if isinstance(tree, torch.Tensor):
        return ("tensor", tree.dtype, tuple(tree.shape[1:]))
    if isinstance(tree, Mapping):
        return ("dict", tuple((k, _signature(v)) for k, v in tree.items()))
    if isinstance(tree, (tuple, list)):
        return ("seq", tuple(_signature(v) for v in tree))
    return ("const", type(tree).__name__)


def check_inputs(inputs: Any, what: str) -> int:
    """Validate one batch of inputs (tensor leaves share the leading dim) and return ``n``."""
    leaves = list(tensor_leaves(inputs))
    if not leaves:
        raise TypeError(
            f"Expected {what} to be a tensor, or a tuple/dict of tensors with a leading "
            f"batch dimension; got {type(inputs).__name__}."
        )
    n = batch_size(inputs)
    sizes = sorted({int(t.shape[0]) if t.ndim else -1 for t in leaves})
    if len(sizes) > 1:
        raise ValueError(
            f"Expected every tensor in {what} to have the same leading (batch) dimension; got "
            f"sizes {sizes}. Pass per-sample tensors with the samples along dim 0."
        )
    if n == 0:
        raise ValueError(f"Expected at least one sample in {what}; got 0.")
    return n


def as_batches(inputs: Any, data: Any) -> list[tuple[Any, Any]]:
    """Normalise ``inputs=`` (one batch or a list of batches) or ``data=`` (pairs) to a list.

    One batch is a tensor, a dict, or a tuple (called as ``model(*inputs)``); a *list* of such
    batches (or any other iterable, e.g. a ``DataLoader``) gives several batches. ``data=``
    takes ``(inputs, targets)`` pairs as elsewhere in hessntk.

    Returns
    -------
    list of (inputs, targets)
        ``targets`` is None for batches given as ``inputs=``.
    """
    if (inputs is None) == (data is None):
        raise ValueError(
            "Expected exactly one of inputs= (input batches) or data= ((inputs, targets) "
            f"batches); got {'both' if inputs is not None else 'neither'}."
        )
    if data is not None:
        return [(x, y) for x, y in iter_batches(data)]
    if isinstance(inputs, (torch.Tensor, Mapping, tuple)):
        return [(inputs, None)]
    if isinstance(inputs, Iterable):
        batches = list(inputs)
        if not batches:
            raise ValueError("Expected at least one batch of inputs; got an empty iterable.")
        return [(b, None) for b in batches]
    raise TypeError(
        "Expected inputs as a tensor, a tuple/dict of tensors, or a list of such batches; got "
        f"{type(inputs).__name__}."
    )


def unsqueeze_tree(tree: Any) -> Any:
    """Add a leading batch dimension of size 1 to every tensor leaf."""
    if isinstance(tree, torch.Tensor):
        return tree.unsqueeze(0)
    if isinstance(tree, Mapping):
        return {k: unsqueeze_tree(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(unsqueeze_tree(v) for v in tree)
    return tree


def slice_tree(tree: Any, sl: slice) -> Any:
    """Take samples ``sl`` of every tensor leaf."""
    if isinstance(tree, torch.Tensor):
        return tree[sl]
    if isinstance(tree, Mapping):
        return {k: slice_tree(v, sl) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(slice_tree(v, sl) for v in tree)
    return tree


def in_dims_tree(tree: Any) -> Any:
    """``vmap`` in_dims for an inputs tree: 0 for tensors, None for constants."""
    if isinstance(tree, torch.Tensor):
        return 0
    if isinstance(tree, Mapping):
        return {k: in_dims_tree(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(in_dims_tree(v) for v in tree)
    return None


# -- the problem ---------------------------------------------------------------------------------


@dataclass
class Problem:
    """A model, its selected parameters, prior and output map, validated once."""

    model: nn.Module
    params: dict[str, torch.Tensor]
    layout: ParamLayout
    variances: dict[str, float | torch.Tensor]
    outputs_spec: OutputsSpec
    output_key: str | int | None
    outputs_fn: Callable[[Any], torch.Tensor] | None
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    #: How per-sample Jacobians are formed: None until known, "vmap" or "batched"
    #: (see :func:`hessntk.ntk.jacobians.jacobian_chunks`).
    jacobian_path: str | None = None
    #: Train mode accepted (dropout, batch statistics): outputs may be random or batch-bound.
    allow_train_mode: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return self.layout.dtype

    @property
    def device(self) -> torch.device:
        return self.layout.device

    def outputs(self, params: Mapping[str, torch.Tensor], inputs: Any) -> torch.Tensor:
        """Observed outputs ``(n, c)`` at ``params`` (unlisted parameters are constants)."""
        out = call_model(
            self.model,
            params,
            inputs,
            buffers=self.buffers,
            output_key=self.output_key,
            outputs_fn=self.outputs_fn,
        )
        return transform_outputs(out, self.outputs_spec)

    def single_output(self, params: Mapping[str, torch.Tensor], x: Any) -> torch.Tensor:
        """Outputs ``(c,)`` of one sample ``x`` given without its batch dimension."""
        return self.outputs(params, unsqueeze_tree(x))[0]

    def detached(self) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self.params.items()}

    def scaled(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Multiply each tensor (leading batch dims allowed) by its prior variance."""
        out = {}
        for name, t in tensors.items():
            s = self.variances[name]
            out[name] = t if (not torch.is_tensor(s) and s == 1.0) else t * s
        return out

    def probe(self, inputs: Any, what: str) -> tuple[int, int]:
        """Check one batch and return ``(n, c)`` from forward passes on 1, 2 and 3 samples.

        Several sizes, so that a model reducing over the batch cannot pass by coincidence,
        and so that a model mixing samples (``x - x.mean(0)``, batch statistics) is caught:
        the first sample's outputs must not depend on the others in the batch. The engines
        check the finiteness of every output they evaluate.
        """
        n = check_inputs(inputs, what)
        c, first = None, None
        for m in sorted({1, min(n, 2), min(n, 3)}):
            x = slice_tree(inputs, slice(0, m))
            try:
                with torch.no_grad():
                    out = self.outputs(self.detached(), x)
            except RuntimeError as err:
                clear = dtype_error(err, what, x, self.dtype)
                if clear is None:
                    raise
                raise clear from err
            if out.shape[0] != m:
                raise ValueError(
                    f"Expected model outputs with the batch size of {what} along dim 0 ({m} "
                    f"for {m} samples); got shape {tuple(out.shape)}. hessntk needs "
                    "per-sample outputs (n, ...), not batch reductions."
                )
            check_finite(out, f"the model outputs on {what}")
            c = int(out.shape[1])
            if first is None:
                first = out[0]
            elif not self.allow_train_mode:
                _check_independent(first, out[0], m, what)
        return n, c


def _check_independent(alone: torch.Tensor, batched: torch.Tensor, m: int, what: str) -> None:
    """The first sample's outputs alone and in a batch of ``m`` must agree (to rounding)."""
    scale = float(alone.abs().max()) + float(batched.abs().max())
    # float32 rounding at least: models often compute parts in float32 (HF RMSNorm, losses).
    eps = max(torch.finfo(alone.dtype).eps, torch.finfo(torch.float32).eps)
    tol = math.sqrt(eps) * max(scale, torch.finfo(alone.dtype).tiny)
    diff = float((alone - batched).abs().max())
    if diff > tol:
        raise ValueError(
            f"Expected a model whose outputs for one sample do not depend on the other samples "
            f"of the batch; on {what} the first sample's outputs alone and in a batch of {m} "
            f"differ by {diff:.3g} (scale {scale:.3g}). The model mixes samples (batch "
            "statistics such as x - x.mean(0), BatchNorm in train mode), so per-sample "
            "Jacobians and the NTK are not defined. Make forward per-sample (e.g. "
            "model.eval() for batch norm)."
        )


def setup(
    model: nn.Module,
    *,
    params: Any,
    prior: Any,
    outputs: OutputsSpec,
    output_key: str | int | None,
    outputs_fn: Callable[[Any], torch.Tensor] | None,
    allow_train_mode: bool,
) -> Problem:
    """Validate the model-side arguments shared by every public entry point."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected a torch.nn.Module; got {type(model).__name__}.")
    check_outputs_spec(outputs)
    check_eval_mode(model, allow_train_mode=allow_train_mode)
    selected = select_params(model, params)
    layout = ParamLayout(selected)
    if not layout.dtype.is_floating_point:
        raise TypeError(f"Expected floating-point parameters; got {layout.dtype}.")
    variances = resolve_prior(prior, model, selected)
    return Problem(
        model=model,
        params=selected,
        layout=layout,
        variances=variances,
        outputs_spec=outputs,
        output_key=output_key,
        outputs_fn=outputs_fn,
        buffers=dict(model.named_buffers()),
        allow_train_mode=allow_train_mode,
    )


def check_same_signature(batches: list[Any], what: str) -> None:
    """Refuse batches whose structure, dtypes or per-sample shapes differ."""
    ref = _signature(batches[0])
    for i, b in enumerate(batches[1:], start=1):
        sig = _signature(b)
        if sig != ref:
            raise ValueError(
                f"Expected every batch of {what} to match the first in structure, dtype and "
                f"per-sample shape; got {sig} in batch {i} vs {ref} in batch 0."
            )
