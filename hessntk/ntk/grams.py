"""Explicit NTK Gram matrices ``K = J S J^T`` within a memory budget.

Three engines fill the same output buffer, parameter block by parameter block:

- ``structured``: Linear / HF Conv1D / Conv2d / Embedding layers, from captured layer inputs
  and output signals (:mod:`hessntk.ntk.structured`); a product of two small Gram matrices
  per layer.
- ``jacobian``: per-sample Jacobian chunks (``vmap(jacrev)``) contracted pairwise.
- ``ntk_vp``: Jacobian rows of a column chunk pushed through ``vmap(jvp)`` over the rows
  (NTK-vector products; needs no Jacobian of the rows).

``method="auto"`` takes the structured engine for every qualifying layer and, for the other
parameters, the cheaper of the two generic engines under the memory budget (Novak et al.
2022, "Fast finite width neural tangent kernel", section 3: Jacobian contraction costs
``~ N1 N2 P`` flops, NTK-vector products ``~ N2 n1`` forward passes).

The generic engines form per-sample Jacobians by ``vmap`` over the samples; a model whose
forward pass has data-dependent control flow that ``vmap`` cannot trace (a Hugging Face
attention mask) is detected on the first chunk and takes the batched path instead: one forward
pass per chunk, then vmapped vjps over the output directions (the same numbers;
:func:`hessntk.ntk.jacobians.jacobian_chunks`). ``GramOperator`` products never vmap over the
samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hessntk._model import batch_size, check_finite
from hessntk.ntk._common import (
    OutputsSpec,
    Problem,
    check_same_signature,
    format_bytes,
    memory_budget,
    setup,
    slice_tree,
)
from hessntk.ntk._structured_layers import structured_layers
from hessntk.ntk.jacobians import forward_cost, jacobian_chunks
from hessntk.ntk.structured import (
    accumulate,
    capture_chunked,
    layer_kernel,
    mirror,
    warn_failed,
)
from hessntk.spectral._backend import itemsize

__all__ = ["gram", "gram_diagonal", "per_sample_grad_norms"]

MODES = ("full", "trace", "diagonal")
METHODS = ("auto", "structured", "jacobian", "ntk_vp")


@dataclass
class Plan:
    """What :func:`gram` will do (exposed for tests and benchmarks via ``_plan``)."""

    structured: list[str]
    generic: list[str]
    generic_method: str | None
    out_bytes: int
    budget: int
    #: How the generic engine formed per-sample Jacobians: "vmap" over the samples, or
    #: "batched" (one forward pass per chunk, for data-dependent control flow), or None.
    jacobian_path: str | None = None


def _output_shape(mode: str, n1: int, n2: int, c: int) -> tuple[int, ...]:
    if mode == "full":
        return (n1, c, n2, c)
    if mode == "trace":
        return (n1, n2)
    return (n1, c, c)


def gram(
    model: nn.Module,
    inputs: Any,
    inputs2: Any = None,
    *,
    params: Any = None,
    prior: Any = None,
    mode: str = "full",
    method: str = "auto",
    outputs: OutputsSpec = "raw",
    output_key: str | int | None = None,
    outputs_fn: Callable[[Any], torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
    max_memory: int | None = None,
    chunk_size: int | None = None,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Build the (prior-weighted) empirical NTK Gram matrix ``K = J S J^T``.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode; samples must not interact (each output row depends on its own sample).
    inputs : Tensor, tuple or dict of tensors
        ``n1`` samples along dim 0 (a tuple calls ``model(*inputs)``, a dict
        ``model(**inputs)``).
    inputs2 : optional
        A second set of ``n2`` samples, same structure: returns the cross-kernel
        ``J(inputs) S J(inputs2)^T``.
    params : optional
        Which parameters (see :func:`hessntk._model.select_params`); default all trainable.
    prior : None, float, "init" or dict
        Diagonal prior covariance ``S`` per parameter tensor (see
        :func:`hessntk.ntk.prior.resolve_prior`); default the identity.
    mode : {"full", "trace", "diagonal"}
        ``"full"``: the ``(n1 c, n2 c)`` Gram, row ``i c + j`` = output ``j`` of sample ``i``.
        ``"trace"``: the output-summed ``(n1, n2)`` kernel ``sum_j K[(i,j),(i',j)]``.
        ``"diagonal"``: the per-sample ``(n1, c, c)`` blocks ``K[(i,:),(i,:)]`` (no
        ``inputs2``); their diagonals form ``diag(K)``.
    method : {"auto", "structured", "jacobian", "ntk_vp"}
        ``"structured"`` (and ``"auto"``): layer-structured blocks for Linear / Conv2d /
        Embedding layers, a generic engine for other parameters (``"auto"`` also picks the
        generic engine by cost). ``"jacobian"``: contract per-sample Jacobian chunks.
        ``"ntk_vp"``: NTK-vector products. All give the same matrix up to rounding.
    outputs : {"raw", "logits", "probabilities", "simplex"} or callable
        Observation map (see :func:`hessntk.ntk.jacobian`). ``"probabilities"`` Grams have
        ``n1`` exact null directions (:func:`structural_nullity`); ``"simplex"`` removes them.
    output_key, outputs_fn : optional
        Pick the output tensor from dict / tuple / HF-style model outputs.
    dtype : torch.dtype, optional
        Dtype of the result; contractions run in the wider of it and the parameters' dtype.
        Default float64 (float32 parameters on MPS, which has no float64): a float32 Gram
        resolves eigenvalues only down to about ``eps_32 lambda_max`` (8% error at
        ``1e-8 lambda_max`` on a trained CNN), a float64 accumulation of the same float32
        Jacobians down to :func:`hessntk.spectral.gram_floor` (``(20 eps_32)^2
        lambda_max``); ``dtype=torch.float32`` halves time and memory of the contraction.
    max_memory : int, optional
        Budget in bytes for the result and the working memory (default 25% of the free
        memory: ``MemAvailable`` on CPU, ``torch.cuda.mem_get_info`` on CUDA). The engines
        choose their chunk sizes to stay within it (a planned, not a measured, bound).
    chunk_size : int, optional
        Samples per chunk for the generic engines (default from the budget).
    allow_train_mode : bool
        Accept a model in train mode with dropout / batch norm.

    Returns
    -------
    torch.Tensor
        ``(n1 c, n2 c)`` for ``"full"``, ``(n1, n2)`` for ``"trace"``, ``(n1, c, c)`` for
        ``"diagonal"``.

    Raises
    ------
    ValueError
        If the result would not fit ``max_memory`` (the message gives its size; use
        :class:`GramOperator`), inputs that do not match, an unknown mode / method, or a
        model in train mode.
    FloatingPointError
        If the model outputs are not finite.

    Examples
    --------
    >>> net = nn.Linear(3, 1, bias=False).double()
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> bool(torch.allclose(gram(net, x), x @ x.T))
    True
    """
    K, _ = _gram(
        model, inputs, inputs2, params=params, prior=prior, mode=mode, method=method,
        outputs=outputs, output_key=output_key, outputs_fn=outputs_fn, dtype=dtype,
        max_memory=max_memory, chunk_size=chunk_size, allow_train_mode=allow_train_mode,
    )
    return K


def _gram(
    model: nn.Module,
    inputs: Any,
    inputs2: Any,
    *,
    params: Any,
    prior: Any,
    mode: str,
    method: str,
    outputs: OutputsSpec,
    output_key: Any,
    outputs_fn: Any,
    dtype: torch.dtype | None,
    max_memory: int | None,
    chunk_size: int | None,
    allow_train_mode: bool,
) -> tuple[torch.Tensor, Plan]:
    if mode not in MODES:
        raise ValueError(f"Expected mode to be one of {MODES}; got {mode!r}.")
    if method not in METHODS:
        raise ValueError(f"Expected method to be one of {METHODS}; got {method!r}.")
    if chunk_size is not None and not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"Expected chunk_size to be a positive int; got {chunk_size!r}.")
    problem = setup(
        model, params=params, prior=prior, outputs=outputs, output_key=output_key,
        outputs_fn=outputs_fn, allow_train_mode=allow_train_mode,
    )
    n1, c = problem.probe(inputs, "inputs")
    if inputs2 is not None:
        if mode == "diagonal":
            raise ValueError(
                "Expected no inputs2 with mode='diagonal' (per-sample blocks of one set); "
                "got inputs2. Use mode='full' for a cross-kernel."
            )
        check_same_signature([inputs, inputs2], "inputs and inputs2")
        n2, c2 = problem.probe(inputs2, "inputs2")
        if c2 != c:
            raise ValueError(
                f"Expected inputs2 to give as many outputs per sample as inputs ({c}); got {c2}."
            )
    else:
        n2 = n1
    out_dtype = dtype or accumulation_dtype(problem.dtype, problem.device)
    cdtype = torch.promote_types(out_dtype, problem.dtype)
    item = itemsize(cdtype)
    budget = memory_budget(max_memory, problem.device)
    shape = _output_shape(mode, n1, n2, c)
    out_bytes = item * _numel(shape)
    if out_bytes > budget:
        N = n1 * c if mode == "full" else n1
        M = n2 * c if mode == "full" else n2
        raise ValueError(
            f"Expected a Gram matrix that fits the memory budget {format_bytes(budget)}; got "
            f"({N}, {M}) entries of {cdtype} = {format_bytes(out_bytes)}. Use "
            "hessntk.ntk.GramOperator for products without forming it, mode='trace' or "
            "'diagonal', fewer samples, or a larger max_memory=."
        )
    left = budget - out_bytes
    act, fwd = forward_cost(problem, inputs)
    acc = torch.zeros(shape, dtype=cdtype, device=problem.device)
    block = _block(mode, n1, n2, c, item, left // 4)

    structured: list[str] = []
    if method in ("auto", "structured"):
        layers = structured_layers(problem)
        if layers:
            # Working memory of one capture: activations, their graph and c signals.
            per_sample = act * itemsize(problem.dtype) * (4 + c)
            chunk = max(1, min(n1, left // (2 * max(per_sample, 1))))
            cap1 = capture_chunked(problem, layers, inputs, n1, c, chunk)
            cap2 = None
            if inputs2 is not None:
                cap2 = capture_chunked(problem, layers, inputs2, n2, c, chunk)
            failed = dict(cap1.failed)
            if cap2 is not None:
                failed.update(cap2.failed)
            warn_failed(failed)
            for ly in layers:
                if ly.name in failed:
                    continue
                f2 = None if cap2 is None else cap2.factors[ly.name]
                layer_kernel(acc, mode, ly, cap1.factors[ly.name], f2, cdtype, block)
                structured.extend(ly.names)
            del cap1, cap2
    generic = [k for k in problem.layout.names if k not in set(structured)]
    gmethod = None
    if generic:
        gmethod = _plan_generic(method, mode, problem, generic, n1, n2, c, fwd, item, left)
        if gmethod == "ntk_vp":
            _ntk_vp(problem, generic, acc, mode, inputs, inputs2, n1, n2, c, act, cdtype,
                    left, chunk_size, block)
        else:
            _jacobian_engine(problem, generic, acc, mode, inputs, inputs2, n1, n2, c, act,
                             cdtype, left, chunk_size, block)
    if inputs2 is None and mode != "diagonal":
        mirror(acc, mode, block)
    plan = Plan(structured, generic, gmethod, out_bytes, budget, problem.jacobian_path)
    if mode == "full":
        acc = acc.reshape(n1 * c, n2 * c)
    return acc.to(out_dtype), plan


def accumulation_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The default dtype of Gram matrices: float64, unless the device has none (MPS)."""
    return dtype if device.type == "mps" else torch.float64


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


#: Largest sample block of the blockwise contractions (GEMM-efficient, bounded temporaries).
MAX_BLOCK = 256
#: Largest number of output rows of one block in ``mode="full"`` (block * c): keeps the
#: ``(block c, block c)`` product near the cache while it is weighted and accumulated.
MAX_BLOCK_ROWS = 640


def _block(mode: str, n1: int, n2: int, c: int, item: int, budget: int) -> int:
    """Samples per block so that two ``(block c, block c)`` temporaries fit ``budget``."""
    per = (c * c if mode == "full" else 1) * item * 3
    fit = int((budget / per) ** 0.5) if budget > 0 else 1
    rows = MAX_BLOCK_ROWS // c if mode == "full" else MAX_BLOCK
    return int(max(1, min(max(n1, n2), MAX_BLOCK, rows, fit)))


# -- generic engines --------------------------------------------------------------------------


def _plan_generic(
    method: str, mode: str, problem: Problem, names: list[str], n1: int, n2: int, c: int,
    fwd: int, item: int, left: int,
) -> str:
    """``"jacobian"`` or ``"ntk_vp"`` for the generic parameters, by flops (``fwd``: one
    sample's forward pass)."""
    if method in ("jacobian", "ntk_vp"):
        return "jacobian" if mode == "diagonal" else method
    if mode == "diagonal":
        return "jacobian"
    P = sum(problem.params[k].numel() for k in names)
    N1, N2 = n1 * c, n2 * c
    j_bytes = (n1 + n2) * c * P * item
    cost_jac = 2 * N1 * N2 * P + 3 * (n1 + n2) * c * fwd
    if j_bytes > left // 2:  # J does not fit: rows recomputed once per column block
        col_block = max(1, (left // 3) // max(c * P * item, 1))
        cost_jac += 3 * n1 * c * fwd * (-(-n2 // col_block) - 1)
    cost_vp = 3 * n2 * c * fwd + 3 * N2 * n1 * fwd
    return "jacobian" if cost_jac <= cost_vp else "ntk_vp"


#: Cap on the working memory of one generic chunk: larger chunks are no faster.
MAX_CHUNK_BYTES = 256 * 2**20


def _jac_chunk(c: int, P: int, act: int, item: int, budget: int, n: int) -> int:
    per = c * P * item * 3 + act * item * (c + 4)
    cap = min(budget, MAX_CHUNK_BYTES)
    return int(max(1, min(n, cap // max(per, 1))))


def _sqrt_scaled_jacobian(
    problem: Problem, names: list[str], inputs: Any, n: int, c: int, chunk: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``J S^{1/2}`` as ``(n, c, P)``, filled chunk by chunk without concatenation copies."""
    P = sum(problem.params[k].numel() for k in names)
    out = torch.empty(n, c, P, dtype=dtype, device=problem.device)
    for sl, J in jacobian_chunks(problem, names, inputs, chunk):
        _fill(problem, out[sl], J, names)
    return out


def _fill(
    problem: Problem, out: torch.Tensor, J: dict[str, torch.Tensor], names: list[str]
) -> None:
    """Write ``{name: (b, c, *shape)}`` times ``sqrt(S)`` into ``out`` of shape (b, c, P)."""
    o = 0
    for k in names:
        Jk = J[k].reshape(*out.shape[:2], -1)
        view = out[:, :, o : o + Jk.shape[-1]]
        s = problem.variances[k]
        if torch.is_tensor(s):
            view.copy_(Jk * s.sqrt().reshape(-1))
        elif s != 1.0:
            view.copy_(Jk).mul_(s**0.5)
        else:
            view.copy_(Jk)
        o += Jk.shape[-1]


def _jacobian_engine(
    problem: Problem, names: list[str], acc: torch.Tensor, mode: str, inputs: Any,
    inputs2: Any, n1: int, n2: int, c: int, act: int, cdtype: torch.dtype, left: int,
    chunk_size: int | None, block: int,
) -> None:
    """Contract per-sample Jacobian chunks: ``K += (J_1 S^{1/2}) (J_2 S^{1/2})^T``."""
    P = sum(problem.params[k].numel() for k in names)
    item = itemsize(cdtype)
    chunk = chunk_size or _jac_chunk(c, P, act, item, left // 2, max(n1, n2))
    if mode == "diagonal":
        for sl, J in jacobian_chunks(problem, names, inputs, chunk):
            Js = torch.empty(sl.stop - sl.start, c, P, dtype=cdtype, device=problem.device)
            _fill(problem, Js, J, names)
            acc[sl].add_(torch.bmm(Js, Js.transpose(1, 2)))
        return
    j_bytes = (n1 + (n2 if inputs2 is not None else 0)) * c * P * item
    if j_bytes <= left // 2:
        J1 = _sqrt_scaled_jacobian(problem, names, inputs, n1, c, chunk, cdtype)
        if inputs2 is None:
            accumulate(acc, mode, 1.0, J1, J1, block=block, lower_only=True)
            return
        J2 = _sqrt_scaled_jacobian(problem, names, inputs2, n2, c, chunk, cdtype)
        accumulate(acc, mode, 1.0, J1, J2, block=block)
        return
    # Blockwise: the columns' Jacobian takes a third of the budget; the rows' Jacobian is
    # recomputed (in small chunks) once per column block.
    cols_src = inputs if inputs2 is None else inputs2
    col_block = int(max(1, min(n2, (left // 3) // max(c * P * item, 1))))
    for start in range(0, n2, col_block):
        cols = slice(start, min(start + col_block, n2))
        J2 = _sqrt_scaled_jacobian(
            problem, names, slice_tree(cols_src, cols), cols.stop - cols.start, c, chunk, cdtype
        )
        for rows, Jr in jacobian_chunks(problem, names, inputs, chunk):
            if inputs2 is None and (rows.stop - 1) // block < cols.start // block:
                continue  # strictly above the block diagonal: mirrored at the end
            J1 = torch.empty(rows.stop - rows.start, c, P, dtype=cdtype, device=problem.device)
            _fill(problem, J1, Jr, names)
            del Jr
            accumulate(acc, mode, 1.0, J1, J2, block=block, rows=rows, cols=cols)
        del J2


def _ntk_vp(
    problem: Problem, names: list[str], acc: torch.Tensor, mode: str, inputs: Any,
    inputs2: Any, n1: int, n2: int, c: int, act: int, cdtype: torch.dtype, left: int,
    chunk_size: int | None, block: int,
) -> None:
    """``K[:, B] = J (S J_B^T)``: Jacobian rows of a column chunk, then one vmapped jvp."""
    P = sum(problem.params[k].numel() for k in names)
    item = itemsize(problem.dtype)
    col_chunk = chunk_size or _jac_chunk(c, P, act, item, left // 4, n2)
    # jvp over a row chunk for b*c tangents: ~ (b c) r act floats (primal + tangent).
    per_row = max(col_chunk * c * act * item * 3, 1)
    row_chunk = int(max(1, min(n1, min(left // 2, MAX_CHUNK_BYTES) // per_row)))
    base = problem.detached()
    primals = {k: base[k] for k in names}
    cols_src = inputs if inputs2 is None else inputs2
    for cols, J in jacobian_chunks(problem, names, cols_src, col_chunk):
        b = cols.stop - cols.start
        tangents = {k: v.reshape(b * c, *v.shape[2:]) for k, v in problem.scaled(J).items()}
        for start in range(0, n1, row_chunk):
            rows = slice(start, min(start + row_chunk, n1))
            if inputs2 is None and (rows.stop - 1) // block < cols.start // block:
                continue  # strictly above the block diagonal: mirrored at the end
            x = slice_tree(inputs, rows)
            r = rows.stop - rows.start

            def push(t: dict[str, torch.Tensor], x: Any = x) -> torch.Tensor:
                return torch.func.jvp(lambda p: problem.outputs(p, x), (primals,), (t,))[1]

            out = torch.func.vmap(push)(tangents).to(cdtype)  # (b c, r, c)
            check_finite(out, f"the NTK-vector products (samples {start}..{rows.stop - 1})")
            out = out.reshape(b, c, r, c)
            if mode == "full":
                acc[rows, :, cols, :].add_(out.permute(2, 3, 0, 1))
            else:
                acc[rows, cols].add_(torch.diagonal(out, dim1=1, dim2=3).sum(-1).T)


# -- diagonal -------------------------------------------------------------------------------------


def gram_diagonal(
    model: nn.Module,
    inputs: Any,
    *,
    params: Any = None,
    prior: Any = None,
    method: str = "auto",
    outputs: OutputsSpec = "raw",
    output_key: str | int | None = None,
    outputs_fn: Callable[[Any], torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
    max_memory: int | None = None,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Return ``diag(K)`` exactly: the squared (prior-weighted) per-output gradient norms.

    ``diag(K)[i c + j] = ||S^{1/2} grad_theta f_j(x_i)||^2``; its sum is the exact
    ``trace(K)``, and it is the Jacobi preconditioner of docs/theory.md section 5.3.

    Parameters
    ----------
    model, inputs, params, prior, method, outputs, output_key, outputs_fn, dtype,
    max_memory, allow_train_mode
        As in :func:`gram`.

    Returns
    -------
    torch.Tensor of shape (n * c,)

    Examples
    --------
    >>> net = nn.Linear(3, 1, bias=False).double()
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> bool(torch.allclose(gram_diagonal(net, x), (x * x).sum(1)))
    True
    """
    blocks = gram(
        model, inputs, params=params, prior=prior, mode="diagonal", method=method,
        outputs=outputs, output_key=output_key, outputs_fn=outputs_fn, dtype=dtype,
        max_memory=max_memory, allow_train_mode=allow_train_mode,
    )
    return torch.diagonal(blocks, dim1=1, dim2=2).reshape(-1)


def per_sample_grad_norms(
    model: nn.Module,
    inputs: Any,
    *,
    params: Any = None,
    prior: Any = None,
    outputs: OutputsSpec = "raw",
    output_key: str | int | None = None,
    outputs_fn: Callable[[Any], torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
    allow_train_mode: bool = False,
) -> torch.Tensor:
    """Return the norms ``||S^{1/2} grad_theta f_j(x_i)||`` as an ``(n, c)`` tensor.

    The square root of :func:`gram_diagonal`, arranged per sample.

    Examples
    --------
    >>> net = nn.Linear(3, 2).double()
    >>> per_sample_grad_norms(net, torch.zeros(4, 3, dtype=torch.float64))
    tensor([[1., 1.],
            [1., 1.],
            [1., 1.],
            [1., 1.]], dtype=torch.float64)
    """
    d = gram_diagonal(
        model, inputs, params=params, prior=prior, outputs=outputs, output_key=output_key,
        outputs_fn=outputs_fn, dtype=dtype, allow_train_mode=allow_train_mode,
    )
    return d.clamp_min(0).sqrt().reshape(batch_size(inputs), -1)
