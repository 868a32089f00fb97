"""Per-sample Jacobians of model outputs with respect to parameters (generic path).

Row order everywhere in :mod:`hessntk.ntk`: the ``N = n c`` stacked outputs are sample-major,
row ``i * c + j`` is output ``j`` of sample ``i`` (``c`` = outputs per sample after the
observation map, trailing output dimensions flattened row-major).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hessntk._model import batch_size, check_finite
from hessntk._progress import progress
from hessntk.ntk._common import (
    OutputsSpec,
    Problem,
    format_bytes,
    in_dims_tree,
    memory_budget,
    setup,
    slice_tree,
)
from hessntk.spectral._backend import itemsize

__all__ = ["jacobian"]


def forward_cost(problem: Problem, inputs: Any) -> tuple[int, int]:
    """Floats produced and matrix flops of the forward pass of one sample.

    The floats (sum over module outputs, forward hooks) feed the memory model, the flops
    (``torch.utils.flop_counter``: products, convolutions, attention) the choice between the
    generic engines; at least ``2 P``, the dense-layer count.
    """
    total = 0

    def hook(_m: nn.Module, _args: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    handles = [m.register_forward_hook(hook) for m in problem.model.modules()]
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            problem.outputs(problem.detached(), slice_tree(inputs, slice(0, 1)))
    finally:
        for h in handles:
            h.remove()
    return max(total, 1), max(int(counter.get_total_flops()), 2 * problem.layout.n)


def jacobian_chunks(
    problem: Problem,
    names: Sequence[str],
    inputs: Any,
    chunk_size: int,
) -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
    """Yield ``(samples, {name: (b, c, *shape)})`` per-sample Jacobians, ``b <= chunk_size``.

    Two paths, the same numbers (exact either way):

    - ``"vmap"`` (the default): one ``vmap`` over the samples of the chunk of one ``jacrev``
      over the outputs (each sample's forward pass runs as a batch of one);
    - ``"batched"``: one forward pass of the whole chunk, then ``J = vjp`` of the ``b c``
      unit output directions, ``vmap`` ped over the directions. Models whose forward pass has
      data-dependent control flow, which ``vmap`` over the samples cannot trace (Hugging
      Face attention masks call ``.item()``), take it: the first chunk detects the case and
      ``problem.jacobian_path`` records the path for the rest. It needs samples that do not
      interact within the chunk, as every NTK path does.
    """
    base = problem.detached()
    primals = {k: base[k] for k in names}
    n = batch_size(inputs)

    def single(p: dict[str, torch.Tensor], x: Any) -> torch.Tensor:
        out = problem.single_output(p, x)
        return out, out

    per_sample = torch.func.vmap(
        torch.func.jacrev(single, has_aux=True), in_dims=(None, in_dims_tree(inputs))
    )
    for start in progress(range(0, n, chunk_size), "NTK Jacobian chunks"):
        sl = slice(start, min(start + chunk_size, n))
        x = slice_tree(inputs, sl)
        if problem.jacobian_path != "batched":
            try:
                J, out = per_sample(primals, x)
                problem.jacobian_path = "vmap"
            except RuntimeError as err:
                if problem.jacobian_path == "vmap" or not _data_dependent(err):
                    raise
                problem.jacobian_path = "batched"
        if problem.jacobian_path == "batched":
            J, out = _batched_jacobian(problem, primals, x)
        check_finite(out, f"the model outputs (samples {sl.start}..{sl.stop - 1})")
        yield sl, J


def _data_dependent(err: RuntimeError) -> bool:
    """Whether ``err`` is vmap refusing data-dependent control flow (``.item()`` and the like)."""
    text = str(err)
    return "vmap" in text and ("data-dependent" in text or ".item()" in text)


def _batched_jacobian(
    problem: Problem, primals: dict[str, torch.Tensor], x: Any
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-sample Jacobians of a chunk from one forward pass and ``b c`` vjps (vmapped)."""
    out, vjp_fn = torch.func.vjp(lambda p: problem.outputs(p, x), primals)
    b, c = out.shape
    E = torch.eye(b * c, dtype=out.dtype, device=out.device).reshape(b * c, b, c)
    (J,) = torch.func.vmap(vjp_fn)(E)
    return {k: v.reshape(b, c, *v.shape[1:]) for k, v in J.items()}, out.detach()


def flat_jacobian(
    problem: Problem, J: dict[str, torch.Tensor], names: Sequence[str]
) -> torch.Tensor:
    """Concatenate ``{name: (b, c, *shape)}`` into ``(b, c, P)`` in layout order."""
    return torch.cat([J[k].reshape(*J[k].shape[:2], -1) for k in names], dim=-1)


def default_chunk(per_sample_bytes: int, budget: int, n: int) -> int:
    """Largest chunk of samples whose working memory stays within ``budget``."""
    return int(max(1, min(n, budget // max(per_sample_bytes, 1))))


def jacobian(
    model: nn.Module,
    inputs: Any,
    *,
    params: Any = None,
    chunk_size: int | None = None,
    outputs: OutputsSpec = "raw",
    output_key: str | int | None = None,
    outputs_fn: Callable[[Any], torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
    max_memory: int | None = None,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Build the Jacobian of the stacked outputs with respect to the parameters.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode (dropout / batch norm in train mode are refused). Samples must not
        interact (each output row depends on its own sample only).
    inputs : Tensor, tuple or dict of tensors
        One batch of ``n`` samples along dim 0 (a tuple calls ``model(*inputs)``, a dict
        ``model(**inputs)``).
    params : optional
        Which parameters (see :func:`hessntk._model.select_params`); default all trainable.
    chunk_size : int, optional
        Samples per vmapped ``jacrev`` call; default the largest chunk within ``max_memory``.
    outputs : {"raw", "logits", "probabilities", "simplex"} or callable
        Observation map applied to the model output of shape ``(n, ...)``: ``"raw"`` /
        ``"logits"`` leave it as is, ``"probabilities"`` applies a softmax over the last
        dim, ``"simplex"`` the softmax projected on :func:`simplex_basis` (``c - 1`` rows per
        sample), a callable maps ``(n, ...) -> (n, ...)`` per sample.
    output_key, outputs_fn : optional
        Pick the output tensor from dict / tuple / HF-style model outputs.
    dtype : torch.dtype, optional
        Dtype of the result (default the parameters' dtype).
    max_memory : int, optional
        Memory budget in bytes (default 25% of the free memory).
    allow_train_mode : bool
        Accept a model in train mode with dropout / batch norm.

    Returns
    -------
    torch.Tensor of shape (n * c, P)
        Row ``i * c + j`` is the gradient of output ``j`` of sample ``i``; columns follow
        ``ParamLayout(select_params(model, params))``.

    Raises
    ------
    ValueError
        If the Jacobian would exceed ``max_memory`` (use :func:`gram` or
        :class:`GramOperator`), for inconsistent inputs, or a model in train mode.
    FloatingPointError
        If the outputs are not finite.

    Examples
    --------
    >>> net = nn.Linear(3, 2, bias=False).double()
    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> jacobian(net, x).shape
    torch.Size([8, 6])
    """
    problem = setup(
        model,
        params=params,
        prior=None,
        outputs=outputs,
        output_key=output_key,
        outputs_fn=outputs_fn,
        allow_train_mode=allow_train_mode,
    )
    n, c = problem.probe(inputs, "inputs")
    P = problem.layout.n
    out_dtype = dtype or problem.dtype
    item = itemsize(out_dtype)
    budget = memory_budget(max_memory, problem.device)
    need = n * c * P * item
    if need > budget:
        raise ValueError(
            f"Expected a Jacobian that fits the memory budget {format_bytes(budget)}; got "
            f"({n * c}, {P}) entries = {format_bytes(need)}. Use gram() for the Gram matrix, "
            "GramOperator for products without forming it, or pass max_memory=."
        )
    if chunk_size is None:
        per = c * P * item * 3 + 4 * forward_cost(problem, inputs)[0] * item * c
        chunk_size = default_chunk(per, budget - need, n)
    elif not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"Expected chunk_size to be a positive int; got {chunk_size!r}.")
    names = problem.layout.names
    J = torch.empty(n, c, P, dtype=out_dtype, device=problem.device)
    for sl, Jc in jacobian_chunks(problem, names, inputs, chunk_size):
        J[sl] = flat_jacobian(problem, Jc, names).to(out_dtype)
    return J.reshape(n * c, P)
