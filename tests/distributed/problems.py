"""The tiny float64 problems of the distributed tests, and everything computed on them.

:func:`results` runs the same public calls on single-process operators (the oracle, in the
test process) and on data-parallel ones (in each rank), so the criteria are exercised
unchanged on both.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

import hessntk
from hessntk.criteria import iic, quantization_sensitivity
from hessntk.hessian import GGNOperator, HessianOperator
from hessntk.ntk import GramOperator

NUM_SAMPLES = 37  # ragged over 2 ranks: 18 + 19

#: What :func:`results` returns.
KEYS = ("HV", "Hv", "HV_func", "GV", "HV_cnn", "gradient", "loss", "loss_at", "num_samples",
        "block_HV", "eigsh", "trace", "KW", "K_dense", "K_diagonal", "K_vjp", "K_outputs",
        "K_targets", "iic", "slq_full_nodes", "slq_full_weights", "slq_partial_nodes",
        "slq_partial_weights", "lanczos_alpha", "lanczos_beta", "quantization_error",
        "quantization_trace", "HV_gpt2", "loss_gpt2", "cg", "gram_lanczos_alpha",
        "gram_lanczos_beta", "gram_lanczos_steps", "gram_lanczos_breakdown")


def mlp() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(NUM_SAMPLES, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (NUM_SAMPLES,), generator=g)
    return net, nn.CrossEntropyLoss(), x, y


def cnn() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """A convolution with batch norm (eval mode, trained statistics)."""
    g = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 2)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        net[1].running_mean.copy_(torch.randn(3, generator=g, dtype=torch.float64))
        net[1].running_var.copy_(1 + torch.rand(3, generator=g, dtype=torch.float64))
    net.eval()
    x = torch.randn(11, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (11,), generator=g)
    return net, nn.CrossEntropyLoss(), x, y


def regression() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An interpolating two-output regression for the Gram operator and the IIC."""
    g = torch.Generator().manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / 2)
    x = torch.randn(13, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = net(x) + 1e-6 * torch.randn(13, 2, generator=g, dtype=torch.float64)
    return net, x, y


def gpt2() -> tuple[nn.Module, dict]:
    """A tiny GPT-2 with its own token-mean loss: masked padding, some labels -100."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    torch.manual_seed(4)
    config = GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).double().eval()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 11, (7, 5), generator=g)
    mask = torch.ones(7, 5, dtype=torch.long)
    mask[1, 3:] = mask[4, 2:] = mask[6, 4:] = 0  # padded sequences
    labels = ids.masked_fill(mask == 0, -100)  # ragged token counts per shard
    return model, {"input_ids": ids, "attention_mask": mask, "labels": labels}


def own_loss_operator(lm: nn.Module, text: dict, group: Any) -> HessianOperator:
    with warnings.catch_warnings():  # "loss computed in float32": known, see LOOSER
        warnings.simplefilter("ignore", RuntimeWarning)
        return HessianOperator(lm, None, text, group=group)


def batches(x: torch.Tensor, y: torch.Tensor, size: int = 8) -> list[tuple[Any, Any]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, x.shape[0], size)]


def operators(group: Any = None) -> dict[str, Any]:
    """The operators, of this rank's shard with ``group``, of all the data without."""
    def part(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (x, y) if group is None else hessntk.distributed.shard((x, y), group)

    net, loss, x, y = mlp()
    data = batches(*part(x, y))
    conv, closs, cx, cy = cnn()
    rnet, rx, ry = regression()
    lm, text = gpt2()
    text = text if group is None else hessntk.distributed.shard(text, group)
    return {
        "H_gpt2": own_loss_operator(lm, text, group),
        "H": HessianOperator(net, loss, data, blocks="layer", group=group),
        "H_func": HessianOperator(net, loss, data, method="func", group=group),
        "G": GGNOperator(net, loss, data, group=group),
        "H_cnn": HessianOperator(conv, closs, batches(*part(cx, cy), size=4), group=group),
        "K": GramOperator(rnet, data=batches(*part(rx, ry), size=4), prior=1.0, group=group),
    }


def damped(G: Any, shift: float) -> Any:
    """``G + shift I`` (SPD for a PSD GGN), for conjugate gradients."""
    return hessntk.aslinearoperator(lambda v: G @ v + shift * v, n=G.shape[0], dtype=G.dtype,
                                    matmat=lambda V: G @ V + shift * V)


def results(ops: dict[str, Any]) -> dict[str, np.ndarray]:
    """Products, spectra, traces and criteria of :func:`operators`, as float64 arrays."""
    H, K = ops["H"], ops["K"]
    g = torch.Generator().manual_seed(3)
    V = torch.randn(H.shape[0], 5, generator=g, dtype=torch.float64)
    W = torch.randn(K.shape[0], 3, generator=g, dtype=torch.float64)
    Vc = torch.randn(ops["H_cnn"].shape[0], 3, generator=g, dtype=torch.float64)
    Vg = torch.randn(ops["H_gpt2"].shape[0], 2, generator=g, dtype=torch.float64)
    sharded = H.communicator is not None
    out: dict[str, Any] = {
        "HV": H @ V, "Hv": H @ V[:, 0], "HV_func": ops["H_func"] @ V, "GV": ops["G"] @ V,
        "HV_cnn": ops["H_cnn"] @ Vc, "gradient": H.gradient(), "loss": H.loss,
        "loss_at": H.loss_at(H.theta() + 0.01), "num_samples": H.num_samples,
        "block_HV": H.block("2") @ V[H.block_slices[H.blocks.index("2")]],
        "eigsh": hessntk.eigsh(H, k=3, seed=0).eigenvalues,
        "trace": hessntk.trace(H, num_matvecs=30, seed=0).value,
        "KW": K @ W, "K_dense": K.dense(), "K_diagonal": K.diagonal(), "K_vjp": K.vjp(W),
        "K_outputs": K.outputs(), "K_targets": K.targets(),
        "iic": iic(K).value,
        "HV_gpt2": ops["H_gpt2"] @ Vg, "loss_gpt2": ops["H_gpt2"].loss,
        "cg": hessntk.spectral.cg(damped(ops["G"], 0.1), V[:, :2], tol=1e-12).x,
    }
    for reorth in ("full", "partial"):
        d = hessntk.slq(H, num_probes=3, num_matvecs=15, seed=0, reorth=reorth,
                        shard_basis=sharded)
        out[f"slq_{reorth}_nodes"], out[f"slq_{reorth}_weights"] = d.nodes, d.weights
    T = hessntk.lanczos(H, 20, num_probes=2, seed=1, reorth="full", shard_basis=sharded)
    out["lanczos_alpha"], out["lanczos_beta"] = T.alpha, T.beta
    # Probes that stop early (max_steps) and run to the full dimension (a breakdown): the
    # sharded vectors follow the active subsets.
    T = hessntk.lanczos(K, K.shape[0], num_probes=3, seed=2, reorth="partial",
                        max_steps=[7, K.shape[0], 15], shard_basis=sharded)
    out["gram_lanczos_alpha"], out["gram_lanczos_beta"] = T.alpha, T.beta
    out["gram_lanczos_steps"], out["gram_lanczos_breakdown"] = T.num_steps, T.breakdown
    q = quantization_sensitivity(H, bits=(2, 4), num_matvecs=20, seed=0)
    out["quantization_error"], out["quantization_trace"] = q.error, q.trace
    return {k: np.asarray(v.detach().numpy() if torch.is_tensor(v) else v, dtype=np.float64)
            for k, v in out.items()}
