"""A ``hessntk`` entry point for a tiny GPT-2 built from a config (no download).

    hessntk spectrum docs/examples/tiny_gpt2.py:build --loss model
    hessntk spectrum docs/examples/tiny_gpt2.py:build --ntk-samples 8
    hessntk quantization docs/examples/tiny_gpt2.py:build --loss model --bits 4 8

``build`` returns a dict: the model, ``loss_fn`` (here a float64 cross-entropy on the logits;
``--loss model`` uses the model's own ``outputs.loss`` instead) and the data as a list of
Hugging Face dict batches (``input_ids``, ``labels``) of different token counts.
"""

import torch
from torch import nn


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each position's logits against the next token (-100 ignored)."""
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                       labels[:, 1:].reshape(-1), ignore_index=-100)


def build() -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).double().eval()
    ids = torch.randint(1, 32, (12, 10))
    labels = ids.clone()
    labels[:4, 7:] = -100  # the first batch has padded positions: fewer tokens
    batches = [{"input_ids": ids[i : i + 4], "labels": labels[i : i + 4]} for i in (0, 4, 8)]
    return {"model": model, "loss_fn": next_token_loss, "data": batches, "output_key": "logits"}
