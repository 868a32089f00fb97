"""Per-block Hessian spectra of a small GPT-2, the picture transformer Hessian studies show.

A GPT-2 built from a config (no download) is trained for a few steps on a synthetic
next-token task (a fixed random permutation of the vocabulary: token t is followed by
perm[t]), then the Hessian of its training loss is split into blocks by parameter group
(embeddings, attention, MLP, layer norms of each layer) and every block's spectral density is
estimated by SLQ in one lockstep pass (``hessntk.hessian.block_density``: each Lanczos step is
one product of the full Hessian over all blocks' probes). The loss is the model's own
(``outputs.loss``, ``loss_fn=None``) over Hugging Face dict batches of different token counts,
weighted as one token mean over all the data.

Prints a table per block (size, trace, extreme nodes, negative mass with its rigorous
bracket) and writes ``transformer_spectra.png`` (densities on a symmetric-log axis).

Run at the default (tiny) size in CI:

    python examples/transformer_spectra.py
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from hessntk import hessian


def model_and_data(args: argparse.Namespace):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    config = GPT2Config(vocab_size=args.vocab, n_positions=args.length, n_embd=args.width,
                        n_layer=args.layers, n_head=2, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).to(torch.float64)
    perm = torch.randperm(args.vocab)
    start = torch.randint(0, args.vocab, (args.n_seq,))
    ids = torch.empty(args.n_seq, args.length, dtype=torch.long)
    ids[:, 0] = start
    for t in range(1, args.length):
        ids[:, t] = perm[ids[:, t - 1]]
    labels = ids.clone()
    labels[: args.n_seq // 2, args.length // 2 :] = -100  # half the sequences are shorter
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(args.steps):
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    b = args.n_seq // 2
    batches = [{"input_ids": ids[:b], "labels": labels[:b]},
               {"input_ids": ids[b:], "labels": labels[b:]}]
    return model.eval(), batches


def groups(model: torch.nn.Module) -> dict[str, list[str]]:
    """Parameter blocks: embeddings, and per layer attention, MLP and layer norms."""
    out: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        if ".h." in name:
            layer = name.split(".h.")[1].split(".")[0]
            kind = "attention" if ".attn." in name else "mlp" if ".mlp." in name else "norms"
            key = f"layer {layer} {kind}"
        else:
            key = "embeddings" if ".wte." in name or ".wpe." in name else "final norm"
        out.setdefault(key, []).append(name)
    return out


def plot(densities: dict, path: str) -> None:
    """Mass per bin of every block's quadrature rules, bins uniform on a symmetric-log axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 1.6 * len(densities) + 0.8))
    axes = np.atleast_1d(fig.subplots(len(densities), 1, sharex=True))
    span = max(float(np.abs(d.nodes).max()) for d in densities.values())
    lin = 10.0 ** np.floor(np.log10(1e-3 * span))
    t = np.linspace(-np.log1p(span / lin), np.log1p(span / lin), 61)
    edges = np.sign(t) * lin * np.expm1(np.abs(t))
    for ax, (name, d) in zip(axes, densities.items(), strict=True):
        keep = d.weights > 0
        mass, _ = np.histogram(d.nodes[keep], bins=edges, weights=d.weights[keep] / d.num_probes)
        ax.stairs(np.where(mass > 0, mass, np.nan), edges, fill=True, alpha=0.7)
        ax.set_xscale("symlog", linthresh=lin)
        ax.set_yscale("log")
        ax.set_ylim(1e-3, 1.5)
        ax.set_ylabel(f"{name}\n({d.n})", rotation=0, ha="right", va="center", fontsize=8)
    axes[-1].set_xlabel(f"eigenvalue (symmetric log, linear below {lin:.0e}); bars: "
                        "fraction of the block's eigenvalues")
    fig.suptitle("GPT-2 Hessian spectrum per block (SLQ, one pass for all blocks)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=16)
    parser.add_argument("--length", type=int, default=8)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--n-seq", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--matvecs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="transformer_spectra.png")
    args = parser.parse_args()

    model, batches = model_and_data(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # transformers' float32 loss, noted
        H = hessian.HessianOperator(model, None, batches, blocks=groups(model))
    t0 = time.perf_counter()
    dens = hessian.block_density(H, num_probes=args.probes, num_matvecs=args.matvecs,
                                 seed=args.seed)
    wall = time.perf_counter() - t0
    print(f"GPT-2 ({H.shape[0]} parameters), token-mean loss {H.loss:.4f} over "
          f"{H.num_loss_terms:g} next-token targets; one SLQ pass for {len(dens)} blocks "
          f"in {wall:.1f} s")
    print(f"{'block':<20}{'params':>8}{'trace':>12}{'min node':>12}{'max node':>12}"
          f"{'negative mass [bracket]':>30}")
    for name, d in dens.items():
        neg = d.cdf(0.0)
        print(f"{name:<20}{d.n:>8}{d.trace().value:>12.4g}{d.nodes.min():>12.4g}"
              f"{d.nodes.max():>12.4g}   {neg.value[0]:.3f} [{neg.lower[0]:.3f}, "
              f"{neg.upper[0]:.3f}]")
    try:
        plot(dens, args.out)
        print(f"wrote {args.out}")
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()
