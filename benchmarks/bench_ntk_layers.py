"""Structured NTK blocks of transformer layers against the generic paths, side by side.

    python benchmarks/bench_ntk_layers.py           # ~2 minutes on 2 cores
    python benchmarks/bench_ntk_layers.py --quick   # smaller models

Two small transformers, float32, CPU, eval mode, random weights (nothing downloaded):

- ``gpt2``: Hugging Face ``GPT2LMHeadModel`` (its projections are ``Conv1D``), outputs the
  logits of the last position (c = 64);
- ``encoder``: ``nn.TransformerEncoder`` (``nn.MultiheadAttention`` and ``nn.Linear``) with
  an embedding, mean pooling and a class head (c = 10);

each at width 64 with 16 tokens and at width 256 with 4 tokens. Per-layer factors pay off
when the tokens are few for the width (``T^2`` below about ``d``); otherwise the structured
path materialises per-sample weight gradients, which is what the Jacobian path does too.

For each, the full ``(n c, n c)`` Gram with the default prior, computed three ways in this
process: ``method="auto"`` (the structured layers, the rest generic), and every parameter on
the generic ``"jacobian"`` and ``"ntk_vp"`` paths. Then the same restricted to the projection
weights alone (``params=``), where all of the work is structured. Times: best of 3 after one
warm-up call. Accuracy: relative max-abs difference from the ``"jacobian"`` Gram.
"""

from __future__ import annotations

import argparse
import importlib
import time
import warnings

import torch
from torch import nn

grams = importlib.import_module("hessntk.ntk.grams")


class Encoder(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, classes: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.emb(input_ids)).mean(1))


def _gpt2(d: int, L: int, T: int, n: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=T, n_embd=d, n_layer=L, n_head=4)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 64, (n, T))
    return (model, {"input_ids": ids}, lambda out: out.logits[:, -1],
            lambda name: name.endswith(("attn.weight", "proj.weight", "fc.weight")))


def _encoder(d: int, L: int, T: int, n: int):
    torch.manual_seed(0)
    model = Encoder(64, d, L, 10).eval()
    ids = torch.randint(0, 64, (n, T))
    return (model, ids, None,
            lambda name: "in_proj_weight" in name or name.endswith(
                ("out_proj.weight", "linear1.weight", "linear2.weight")))


def models(quick: bool) -> dict:
    """name -> (model, inputs, outputs_fn, is_projection); (width d, layers, tokens, n)."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    if quick:
        return {"gpt2 d=32 T=8": _gpt2(32, 1, 8, 16), "encoder d=32 T=8": _encoder(32, 1, 8, 16)}
    return {
        "gpt2 d=64 T=16": _gpt2(64, 2, 16, 32),
        "gpt2 d=256 T=4": _gpt2(256, 1, 4, 16),
        "encoder d=64 T=16": _encoder(64, 2, 16, 32),
        "encoder d=256 T=4": _encoder(256, 1, 4, 32),
    }


def timed(fn) -> tuple[float, torch.Tensor]:
    out = fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(name: str, model, inputs, outputs_fn, is_projection) -> None:
    names = [k for k, _ in model.named_parameters()]
    proj = [k for k in names if is_projection(k)]
    P = sum(p.numel() for p in model.parameters())
    Pp = sum(p.numel() for k, p in model.named_parameters() if k in proj)
    for label, params in (("all parameters", None), ("projections only", proj)):
        rows = {}
        for method in ("auto", "jacobian", "ntk_vp"):
            def call(method=method, params=params):
                return grams._gram(
                    model, inputs, None, params=params, prior=None, mode="full", method=method,
                    outputs="raw", output_key=None, outputs_fn=outputs_fn, dtype=torch.float32,
                    max_memory=None, chunk_size=None, allow_train_mode=False,
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t, (K, plan) = timed(call)
            rows[method] = (t, K, plan)
        ref = rows["jacobian"][1]
        scale = float(ref.abs().max())
        plan = rows["auto"][2]
        n_struct = sum(dict(model.named_parameters())[k].numel() for k in plan.structured)
        print(f"\n{name}: {label} (P = {Pp if params else P}, structured {n_struct}, "
              f"K {tuple(ref.shape)})")
        for method, (t, K, _) in rows.items():
            err = float((K - ref).abs().max()) / scale
            print(f"  {method:9s} {t:8.3f} s   jacobian/this {rows['jacobian'][0] / t:6.2f}x"
                  f"   rel err {err:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32")
    for name, spec in models(args.quick).items():
        run(name, *spec)


if __name__ == "__main__":
    main()
