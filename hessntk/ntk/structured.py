"""Structured NTK blocks of Linear, Hugging Face Conv1D, attention projections, Conv2d and
Embedding layers.

For a layer ``z = W a + b`` inside the model, the per-sample Jacobian of output ``j`` of
sample ``i`` with respect to ``W`` is the outer product ``g_ij a_i^T``, where ``a_i`` is the
layer input and ``g_ij = d f_ij / d z_i`` the back-propagated output signal. The layer's block
of ``K = J S J^T`` is therefore a product of two small Gram matrices (Novak et al. 2022,
"structured derivatives"):

    K_W[(i,j),(i',j')] = s_W (a_i . a_i') (g_ij . g_i'j'),   K_b = s_b (g_ij . g_i'j').

With token dimensions (``a_i`` of shape ``(T, d)``: sequences, convolution patches, several
calls of the same module) the weight gradient is ``sum_t g_ijt a_it^T`` and the block is
``sum_{t,t'} (a_it . a_i't') (g_ijt . g_i'j't')``; for those we either contract over tokens or
materialise the (small) per-sample weight gradients, whichever the cost model prefers.

The inputs ``a`` are captured with forward hooks, the signals ``g`` with one backward pass
batched over the ``c`` output directions (``is_grads_batched``). A module qualifies when it is
an unmodified ``nn.Linear`` (samples along dim 0, or ``(T, n, d)`` inputs of sequence-first
models), a Hugging Face ``Conv1D`` (GPT-2's projections, ``z = x W + b`` with ``W`` of shape
``(in, out)``), ``nn.Conv2d`` (``groups=1``, zero padding) or ``nn.Embedding`` (no
``max_norm``, no ``scale_grad_by_freq``, dense), its selected parameters belong to no other
module and have scalar prior variances. The input and output projections of an unmodified
``nn.MultiheadAttention`` (packed self-attention weights, or separate q/k/v weights) run
inside ``F.multi_head_attention_forward``, out of reach of hooks: their products are
recorded below autograd instead (:mod:`hessntk.ntk._matmul_calls`). Every capture is
verified: the weight gradient rebuilt from ``(a, g)`` for a random weighting of the outputs
must match autograd's. A module that fails (its weight also used outside the module, a layer
that mixes samples, a batch dimension that is not first) is handed to the generic path with a
warning.

Internal module: :func:`hessntk.ntk.gram` is the public entry point.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import nn

from hessntk._model import check_finite
from hessntk.ntk import _matmul_calls
from hessntk.ntk._common import Problem, slice_tree
from hessntk.ntk._structured_layers import Layer

#: Samples on which the outer-product structure of each layer is verified.
VERIFY_SAMPLES = 8

@dataclass
class Factors:
    """Captured factors of one layer on one set of inputs.

    ``A``: inputs ``(n, T, d)`` (token ids ``(n, T)`` for embeddings); ``G``: output signals
    ``(n, c, T, o)``.
    """

    A: torch.Tensor
    G: torch.Tensor


@dataclass
class Capture:
    factors: dict[str, Factors] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


# -- capture ---------------------------------------------------------------------------------


def _check_weights(
    shape: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    # Fixed, positive, distinct output weights for the consistency check (deterministic).
    # Random over outputs too: a fixed direction such as all-ones can be a null direction
    # of the outputs (probabilities sum to one).
    gen = torch.Generator().manual_seed(1234)
    r = 1.0 + torch.rand(shape, generator=gen, dtype=torch.float64)
    return r.to(dtype=dtype, device=device)


def _rows(layer: Layer, x: torch.Tensor, n: int) -> str | None:
    """Where the samples are in a captured input: "batch" (dim 0), "seq" (dim 1 of
    ``(T, n, d)``, or rows ordered ``(T, n)``: attention projections), None if neither."""
    if layer.calls == "matmul":
        return "seq" if x.ndim == 2 and x.shape[0] % n == 0 else None
    if x.ndim > 0 and x.shape[0] == n:
        return "batch"
    if layer.kind in ("linear", "conv1d") and x.ndim == 3 and x.shape[1] == n:
        return "seq"  # sequence-first models (nn.Transformer with batch_first=False)
    return None


def _to_tokens(layer: Layer, x: torch.Tensor, z_grad: torch.Tensor | None, n: int) -> Any:
    """Reshape a captured input (and signal ``(c, n, ...)``) to ``(n, T, d)`` / ``(n, c, T, o)``."""
    m = layer.module
    if layer.kind in ("linear", "conv1d") and _rows(layer, x, n) == "seq":
        A = x.reshape(-1, n, x.shape[-1]).transpose(0, 1)
        G = None
        if z_grad is not None:
            G = z_grad.reshape(z_grad.shape[0], -1, n, z_grad.shape[-1]).transpose(1, 2)
    elif layer.kind in ("linear", "conv1d"):
        A = x.reshape(n, -1, x.shape[-1])
        G = None if z_grad is None else z_grad.reshape(z_grad.shape[0], n, -1, z_grad.shape[-1])
    elif layer.kind == "conv2d":
        padding = 0 if m.padding == "valid" else m.padding
        A = nnf.unfold(x, m.kernel_size, dilation=m.dilation, padding=padding, stride=m.stride)
        A = A.transpose(1, 2)  # (n, L, C_in * kh * kw)
        G = None
        if z_grad is not None:
            G = z_grad.reshape(z_grad.shape[0], n, z_grad.shape[2], -1).transpose(2, 3)
    else:  # embedding: token ids (n, T); padding_idx rows get no gradient
        A = x.reshape(n, -1)
        G = None if z_grad is None else z_grad.reshape(z_grad.shape[0], n, -1, z_grad.shape[-1])
    if G is not None:
        G = G.permute(1, 0, 2, 3)  # (n, c, T, o)
    return A, G


def _rebuilt_grads(layer: Layer, A: torch.Tensor, Gr: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weight/bias gradient of ``sum_ij r_ij f_ij`` from factors; ``Gr`` is ``(n, T, o)``."""
    out = {}
    m = layer.module
    if layer.weight is not None:
        if layer.kind == "embedding":
            ids = A.reshape(-1)
            rows = Gr.reshape(-1, Gr.shape[-1])
            if m.padding_idx is not None:
                rows = rows * (ids != m.padding_idx).unsqueeze(1).to(rows.dtype)
            dW = torch.zeros_like(m.weight, dtype=Gr.dtype).index_add_(0, ids, rows)
        else:
            dW = Gr.reshape(-1, Gr.shape[-1]).T @ A.reshape(-1, A.shape[-1])  # (out, in)
            if layer.kind == "conv1d":
                dW = dW.T
            elif layer.kind == "conv2d":
                dW = dW.reshape(m.weight.shape)
        out[layer.weight] = dW
    if layer.bias is not None:
        out[layer.bias] = Gr.reshape(-1, Gr.shape[-1]).sum(0)
    return out


def _record(
    problem: Problem, layers: list[Layer], leaves: dict[str, torch.Tensor], inputs: Any, n: int
) -> tuple[torch.Tensor, dict[str, list[tuple[torch.Tensor, torch.Tensor]]], dict[str, str]]:
    """Forward pass recording ``(input, output)`` of every call of every layer."""
    records: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {ly.name: [] for ly in layers}

    def make_hook(name: str) -> Any:
        def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            records[name].append((args[0].detach(), out))
            # Downstream in-place ops (ReLU(inplace=True)) must not rewrite the recorded z.
            return out.clone()

        return hook

    hooked = [ly for ly in layers if ly.calls == "module"]
    handles = [ly.module.register_forward_hook(make_hook(ly.name)) for ly in hooked]
    products = {id(leaves[ly.weight]): ly.name for ly in layers if ly.calls == "matmul"}
    try:
        if products:
            with _matmul_calls.MatmulCalls(products) as calls:
                F = problem.outputs(leaves, inputs)
            records.update(calls.records)
        else:
            F = problem.outputs(leaves, inputs)
    finally:
        for h in handles:
            h.remove()
    check_finite(F, "the model outputs")
    if F.shape[0] != n:
        raise ValueError(
            f"Expected model outputs with the batch size {n} along dim 0; got shape "
            f"{tuple(F.shape)}. hessntk needs per-sample outputs (n, ...)."
        )
    failed = {}
    for ly in layers:
        recs = records[ly.name]
        if not recs:
            failed[ly.name] = "it was not called"
        elif any(_rows(ly, x, n) is None for x, _ in recs):
            failed[ly.name] = "its input does not have the samples along dim 0"
        elif not F.requires_grad:
            failed[ly.name] = "the outputs do not depend on it"
    return F, records, failed


def _factors(
    layer: Layer, recs: list[tuple[torch.Tensor, torch.Tensor]], grads: list[torch.Tensor], n: int
) -> Factors:
    pairs = [_to_tokens(layer, x, g, n) for (x, _), g in zip(recs, grads, strict=True)]
    if len(pairs) == 1:
        return Factors(A=pairs[0][0], G=pairs[0][1])
    return Factors(
        A=torch.cat([a for a, _ in pairs], dim=1), G=torch.cat([g for _, g in pairs], dim=2)
    )


def verify(problem: Problem, layers: list[Layer], inputs: Any, n: int, c: int) -> dict[str, str]:
    """Check the outer-product structure of every layer on (a few samples of) ``inputs``.

    The weight gradient of ``sum_ij r_ij f_ij`` (fixed random ``r_ij > 0``) rebuilt from
    the captured factors must match autograd's; a weight also used outside its module, a
    layer that mixes samples or a batch dimension that is not first all break it.

    Returns
    -------
    dict[str, str]
        Failed layer name -> reason.
    """
    leaves = {
        k: problem.params[k].detach().requires_grad_(True) for ly in layers for k in ly.names
    }
    F, records, failed = _record(problem, layers, leaves, inputs, n)
    live = [ly for ly in layers if ly.name not in failed]
    if not live:
        return failed
    zs = [z for ly in live for _, z in records[ly.name]]
    grads = _batched_signals(F, zs, c)
    r = _check_weights(tuple(F.shape), F.dtype, F.device)
    names = [k for ly in live for k in ly.names]
    ref = torch.autograd.grad(
        (F * r).sum(), [leaves[k] for k in names], allow_unused=True,
        materialize_grads=True,
    )
    ref = dict(zip(names, ref, strict=True))
    tol = 10 * math.sqrt(torch.finfo(F.dtype).eps)
    pos = 0
    for ly in live:
        recs = records[ly.name]
        f = _factors(ly, recs, grads[pos : pos + len(recs)], n)
        pos += len(recs)
        Gr = (f.G * r[:, :, None, None]).sum(1)  # (n, T, o)
        # Scale of the sums without cancellation (Cauchy-Schwarz): ||A|| ||Gr||.
        a_norm = (
            math.sqrt(f.A.numel()) if ly.kind == "embedding" else float(f.A.norm())
        )
        scale = max(a_norm, math.sqrt(Gr.shape[0] * Gr.shape[1])) * float(Gr.norm())
        bad = []
        for k, got in _rebuilt_grads(ly, f.A, Gr).items():
            err = float((got - ref[k]).norm())
            if err > tol * scale or not math.isfinite(err):
                bad.append(f"{k} (relative mismatch {err / max(scale, 1e-300):.2g})")
        if bad:
            failed[ly.name] = (
                "its gradient is not the outer product of its input and output signal for "
                + ", ".join(bad)
            )
    return failed


def capture(problem: Problem, layers: list[Layer], inputs: Any, n: int, c: int) -> Capture:
    """One forward and one backward pass (batched over the ``c`` outputs): layer factors."""
    leaves = {
        k: problem.params[k].detach().requires_grad_(True) for ly in layers for k in ly.names
    }
    F, records, failed = _record(problem, layers, leaves, inputs, n)
    result = Capture(failed=failed)
    live = [ly for ly in layers if ly.name not in failed]
    if not live:
        return result
    zs = [z for ly in live for _, z in records[ly.name]]
    grads = _batched_signals(F, zs, c)
    pos = 0
    for ly in live:
        recs = records[ly.name]
        result.factors[ly.name] = _factors(ly, recs, grads[pos : pos + len(recs)], n)
        pos += len(recs)
    return result


def _batched_signals(F: torch.Tensor, zs: list[torch.Tensor], c: int) -> list[torch.Tensor]:
    """``d f_{:,j} / d z`` for every output direction ``j``: list of ``(c, *z.shape)``."""
    n = F.shape[0]
    if c == 1:
        gs = torch.autograd.grad(
            F, zs, torch.ones_like(F), retain_graph=True, allow_unused=True,
            materialize_grads=True,
        )
        return [g.unsqueeze(0) for g in gs]
    E = torch.eye(c, dtype=F.dtype, device=F.device).unsqueeze(1).expand(c, n, c)
    try:
        gs = torch.autograd.grad(
            F, zs, E, retain_graph=True, allow_unused=True, materialize_grads=True,
            is_grads_batched=True,
        )
    except RuntimeError:  # an op without a vmap rule in its backward: one pass per output
        per = [
            torch.autograd.grad(
                F, zs, E[j], retain_graph=True, allow_unused=True, materialize_grads=True
            )
            for j in range(c)
        ]
        gs = [torch.stack([p[i] for p in per]) for i in range(len(zs))]
    return [
        g if g.ndim == z.ndim + 1 else g.expand(c, *z.shape) for g, z in zip(gs, zs, strict=True)
    ]


def capture_chunked(
    problem: Problem, layers: list[Layer], inputs: Any, n: int, c: int, chunk: int
) -> Capture:
    """:func:`verify` on the first samples, then :func:`capture` over sample chunks."""
    m = min(n, VERIFY_SAMPLES)
    failed = verify(problem, layers, slice_tree(inputs, slice(0, m)), m, c)
    layers = [ly for ly in layers if ly.name not in failed]
    if not layers:
        return Capture(failed=failed)
    if chunk >= n:
        out = capture(problem, layers, inputs, n, c)
        out.failed.update(failed)
        return out
    parts: list[Capture] = []
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        part = capture(problem, layers, slice_tree(inputs, sl), sl.stop - sl.start, c)
        failed.update(part.failed)
        parts.append(part)
    out = Capture(failed=failed)
    for ly in layers:
        if ly.name in failed:
            continue
        fs = [p.factors[ly.name] for p in parts]
        Ts = {f.A.shape[1] for f in fs}
        if len(Ts) > 1:
            out.failed[ly.name] = "its number of tokens differs between chunks"
            continue
        out.factors[ly.name] = Factors(
            A=torch.cat([f.A for f in fs]), G=torch.cat([f.G for f in fs])
        )
    return out


#: Reasons for the generic path that are no cause for concern: a module the outputs do not
#: reach, or one called on inputs shared by the batch (position embeddings of position ids
#: ``(1, T)``), whose parameters the generic path handles as well.
QUIET_REASONS = ("it was not called", "its input does not have the samples along dim 0")


def warn_failed(failed: dict[str, str]) -> None:
    """Warn about modules that could take the structured path but failed its check."""
    for name, why in failed.items():
        if why in QUIET_REASONS:
            continue
        warnings.warn(
            f"hessntk.ntk: module {name!r} takes the generic (slower) path because {why}.",
            RuntimeWarning,
            stacklevel=4,
        )


# -- kernels from factors ---------------------------------------------------------------------


def _input_gram(layer: Layer, A1: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
    """``(a_it . a_i't')`` as ``(n1, T1, n2, T2)`` (token-id equality for embeddings)."""
    if layer.kind == "embedding":
        eq = (A1.reshape(-1, 1) == A2.reshape(1, -1))
        pad = layer.module.padding_idx
        if pad is not None:
            eq &= (A1.reshape(-1, 1) != pad) & (A2.reshape(1, -1) != pad)
        out = eq.to(torch.get_default_dtype())
    else:
        out = A1.reshape(-1, A1.shape[-1]) @ A2.reshape(-1, A2.shape[-1]).T
    return out.reshape(A1.shape[0], A1.shape[1], A2.shape[0], A2.shape[1])


def _input_sqnorms(layer: Layer, A: torch.Tensor) -> torch.Tensor:
    """``(a_it . a_it')`` per sample as ``(n, T, T)``."""
    if layer.kind == "embedding":
        eq = A.unsqueeze(2) == A.unsqueeze(1)
        pad = layer.module.padding_idx
        if pad is not None:
            eq &= (A.unsqueeze(2) != pad) & (A.unsqueeze(1) != pad)
        return eq.to(torch.get_default_dtype())
    return A @ A.transpose(1, 2)


def blocks(n: int, size: int) -> list[slice]:
    """Consecutive slices of ``range(n)`` of length ``size`` (the last may be shorter)."""
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


Weight = float | torch.Tensor | Callable[[slice, slice], Any]


def accumulate(
    acc: torch.Tensor,
    mode: str,
    W: Weight,
    X1: torch.Tensor,
    X2: torch.Tensor,
    *,
    block: int,
    rows: slice = slice(None),
    cols: slice = slice(None),
    lower_only: bool = False,
) -> None:
    """``acc[rows, cols] += W * (X1 X2^T)`` in the kernel layout of ``mode``, blockwise.

    Parameters
    ----------
    acc : torch.Tensor
        ``(n1, c, n2, c)`` for ``"full"``, ``(n1, n2)`` for ``"trace"`` (outputs summed),
        ``(n, c, c)`` for ``"diagonal"``.
    W : float, tensor or callable
        Elementwise weight over sample pairs: a scalar, an ``(n1, n2)`` tensor (``(n,)`` for
        ``"diagonal"``), or ``W(I, J)`` returning the block for sample slices ``I, J``.
    X1, X2 : torch.Tensor
        ``(n1, c, m)`` and ``(n2, c, m)`` per-sample features.
    block : int
        Samples per block: bounds the temporaries to ``block^2 c^2`` entries.
    lower_only : bool
        Self-kernel: fill only the blocks ``I >= J`` of the partition into ``block``-sized
        slices; :func:`mirror` copies them to the upper triangle (half the flops).
    """
    n1, c, m = X1.shape
    if mode == "diagonal":
        GG = torch.bmm(X1, X1.transpose(1, 2))
        if torch.is_tensor(W):
            acc[rows].addcmul_(W.reshape(-1, 1, 1), GG)
        else:
            acc[rows].add_(GG, alpha=W)
        return
    n2 = X2.shape[0]
    target = acc[rows][:, :, cols] if mode == "full" else acc[rows][:, cols]
    for I in blocks(n1, block):
        for J in blocks(n2, block):
            if lower_only and J.start > I.start:
                break
            bI, bJ = I.stop - I.start, J.stop - J.start
            if mode == "full":
                GG = (X1[I].reshape(-1, m) @ X2[J].reshape(-1, m).T).view(bI, c, bJ, c)
                tgt = target[I][:, :, J]
            else:
                GG = X1[I].reshape(bI, -1) @ X2[J].reshape(bJ, -1).T
                tgt = target[I][:, J]
            Wb = W(I, J) if callable(W) else (W[I][:, J] if torch.is_tensor(W) else W)
            if torch.is_tensor(Wb):
                tgt.addcmul_(Wb[:, None, :, None] if mode == "full" else Wb, GG)
            else:
                tgt.add_(GG, alpha=Wb)


def mirror(acc: torch.Tensor, mode: str, block: int) -> None:
    """Copy the lower blocks ``I > J`` written with ``lower_only=True`` to the upper ones.

    Diagonal blocks are averaged with their transpose, so the result is exactly symmetric.
    """
    n = acc.shape[0]
    bl = blocks(n, block)
    for a, I in enumerate(bl):
        if mode == "full":
            D = acc[I][:, :, I]
            D.copy_((D + D.permute(2, 3, 0, 1)) / 2)
        else:
            D = acc[I][:, I]
            D.copy_((D + D.T) / 2)
        for J in bl[a + 1 :]:
            if mode == "full":
                acc[I][:, :, J] = acc[J][:, :, I].permute(2, 3, 0, 1)
            else:
                acc[I][:, J] = acc[J][:, I].T


#: Cost of the weighted accumulation of one kernel entry, in flops of a GEMM (calibrated on
#: 2-core CPUs, where contraction over 16 x 16 token pairs ran 4x slower than its flops say).
CONTRACT_PASS_FLOPS = 64


def token_strategy(n1: int, n2: int, c: int, T1: int, T2: int, d: int, o: int, kind: str) -> str:
    """``"contract"`` over tokens or ``"materialize"`` per-sample weight gradients (flops)."""
    if kind == "embedding":
        return "contract"
    # Each token pair also makes one memory-bound weighted pass over the (n1 c, n2 c) block,
    # worth about CONTRACT_PASS_FLOPS flops per entry (measured: benchmarks/bench_ntk_layers).
    contract = n1 * T1 * n2 * T2 * (d + c * c * (o + CONTRACT_PASS_FLOPS))
    materialize = (n1 + n2) * c * T1 * o * d + n1 * n2 * c * c * o * d
    return "contract" if contract <= materialize else "materialize"


def _scaled_inputs(A: torch.Tensor, sW: float, sb: float, has_b: bool) -> torch.Tensor:
    A = A * math.sqrt(sW) if sW != 1.0 else A
    if has_b:
        A = torch.cat([A, A.new_full((A.shape[0], 1), math.sqrt(sb))], dim=1)
    return A


def layer_kernel(
    acc: torch.Tensor,
    mode: str,
    layer: Layer,
    f1: Factors,
    f2: Factors | None,
    dtype: torch.dtype,
    block: int,
) -> None:
    """Add the layer's block ``J_l S_l J_l^T`` (weight and bias) to ``acc``.

    ``f2=None`` is the self-kernel: only the lower blocks are filled (see :func:`mirror`).
    """
    lower = f2 is None
    A1 = f1.A if layer.kind == "embedding" else f1.A.to(dtype)
    G1 = f1.G.to(dtype)
    if f2 is None:
        A2, G2 = A1, G1
    else:
        A2 = f2.A if layer.kind == "embedding" else f2.A.to(dtype)
        G2 = f2.G.to(dtype)
    n1, c, T1, o = G1.shape
    T2 = G2.shape[2]
    sW, sb = layer.s_weight, layer.s_bias
    has_w, has_b = layer.weight is not None, layer.bias is not None
    kw = {"block": block, "lower_only": lower}

    if T1 == 1 and T2 == 1:
        X1, X2 = G1[:, :, 0], G2[:, :, 0]
        if mode == "diagonal":
            W: Weight = sb if has_b else 0.0
            if has_w:
                W = sW * _input_sqnorms(layer, A1).reshape(-1).to(dtype) + W
            accumulate(acc, mode, W, X1, X2, **kw)
            return
        if not has_w:
            accumulate(acc, mode, sb, X1, X2, **kw)
            return

        if layer.kind == "embedding":

            def W(I: slice, J: slice) -> torch.Tensor:  # s_W [id_i == id_i'] + s_b
                AA = _input_gram(layer, A1[I], A2[J]).reshape(I.stop - I.start, -1).to(dtype)
                return AA.mul_(sW).add_(sb) if has_b else AA.mul_(sW)

        else:
            # Fold s_W and the bias into the inputs, a -> (sqrt(s_W) a, sqrt(s_b)), so that the
            # weight of a block is one GEMM: s_W a_i . a_i' + s_b.
            A1s, A2s = _scaled_inputs(A1[:, 0], sW, sb, has_b), None
            A2s = A1s if f2 is None else _scaled_inputs(A2[:, 0], sW, sb, has_b)

            def W(I: slice, J: slice) -> torch.Tensor:
                return A1s[I] @ A2s[J].T

        accumulate(acc, mode, W, X1, X2, **kw)
        return

    if has_b:  # bias gradient: sum of the signals over tokens
        accumulate(acc, mode, sb, G1.sum(2), G2.sum(2), **kw)
    if not has_w:
        return
    d = A1.shape[-1] if layer.kind != "embedding" else 1
    strategy = token_strategy(n1, G2.shape[0], c, T1, T2, d, o, layer.kind)
    if strategy == "materialize" and layer.kind != "embedding":
        J1 = torch.einsum("iato,itd->iaod", G1, A1).reshape(n1, c, o * d)
        J2 = J1 if f2 is None else torch.einsum("iato,itd->iaod", G2, A2).reshape(-1, c, o * d)
        accumulate(acc, mode, sW, J1, J2, **kw)
        return
    # contract over token pairs: sum_{t,t'} (a_it . a_i't') (g_ijt . g_i'j't')
    if mode == "diagonal":
        AA = _input_sqnorms(layer, A1).to(dtype)  # (n, T, T)
        GG = torch.einsum("iato,ibso->iabts", G1, G1)
        acc.add_(sW * torch.einsum("its,iabts->iab", AA, GG))
        return
    AA = _input_gram(layer, A1, A2).to(dtype)  # (n1, T1, n2, T2)
    for t in range(T1):
        for s in range(T2):
            accumulate(acc, mode, sW * AA[:, t, :, s], G1[:, :, t], G2[:, :, s], **kw)
