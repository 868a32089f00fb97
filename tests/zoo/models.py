"""A zoo of tiny real architectures, built from configs (no download), with dense oracles.

Each entry gives a float64 model in eval mode, its data as Hugging Face style dict batches
(model inputs, targets under ``"labels"``), a float64 loss on the logits, and how to call the
model on all the data at once for the oracles (``torch.autograd.functional`` on the flat
parameters, attention in its math kernel as hessntk runs it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

DT = torch.float64


@dataclass
class Case:
    """One model of the zoo."""

    name: str
    model: nn.Module
    batches: list[dict[str, torch.Tensor]]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    #: Relative tolerance of products against the dense oracles (float64 models whose
    #: library code runs parts in float32 need more).
    rtol: float = 1e-9

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """All the batches' model inputs concatenated (no labels)."""
        return {k: torch.cat([b[k] for b in self.batches]) for k in self.batches[0]
                if k != "labels"}

    @property
    def labels(self) -> torch.Tensor:
        return torch.cat([b["labels"] for b in self.batches])

    def names(self) -> list[str]:
        return [n for n, _ in self.model.named_parameters()]

    def theta(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])

    def unflat(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for name, p in self.model.named_parameters():
            out[name] = v[i : i + p.numel()].reshape(p.shape)
            i += p.numel()
        return out

    def logits(self, v: torch.Tensor, inputs: dict | None = None) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            out = torch.func.functional_call(self.model, self.unflat(v), (),
                                             inputs or self.inputs)
        return out.logits if hasattr(out, "logits") else out

    def loss(self, v: torch.Tensor) -> torch.Tensor:
        """The full-data mean of ``loss_fn`` (batches weighted by their samples)."""
        n = sum(len(b["labels"]) for b in self.batches)
        total = 0.0
        for b in self.batches:
            inputs = {k: t for k, t in b.items() if k != "labels"}
            total = total + len(b["labels"]) / n * self.loss_fn(self.logits(v, inputs),
                                                                  b["labels"])
        return total


def _quiet() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()


def _split(inputs: dict[str, torch.Tensor], labels: torch.Tensor, sizes: list[int]) -> list:
    out, i = [], 0
    for s in sizes:
        out.append({**{k: v[i : i + s] for k, v in inputs.items()}, "labels": labels[i : i + s]})
        i += s
    return out


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of every position's logits against the next token."""
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                       labels[:, 1:].reshape(-1))


def class_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, labels)


def gpt2() -> Case:
    """GPT-2 with tied input and output embeddings (``Conv1D`` projections)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _quiet()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=11, n_positions=8, n_embd=6, n_layer=1, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).to(DT).eval()
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    ids = torch.randint(0, 11, (5, 4))
    return Case("gpt2", model, _split({"input_ids": ids}, ids, [3, 2]), next_token_loss)


def bert() -> Case:
    """BERT sequence classification on padded batches (an attention mask)."""
    from transformers import BertConfig, BertForSequenceClassification

    _quiet()
    torch.manual_seed(1)
    config = BertConfig(vocab_size=13, hidden_size=6, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=8,
                        max_position_embeddings=8, num_labels=3)
    model = BertForSequenceClassification(config).to(DT).eval()
    ids = torch.randint(1, 13, (5, 6))
    mask = torch.ones(5, 6, dtype=torch.long)
    mask[0, 4:] = 0
    mask[3, 2:] = 0
    ids = ids * mask
    labels = torch.tensor([0, 1, 2, 1, 0])
    return Case("bert", model, _split({"input_ids": ids, "attention_mask": mask}, labels,
                                      [3, 2]), class_loss)


def llama() -> Case:
    """A Llama decoder: RMSNorm, rotary position embeddings, grouped-query attention.

    transformers runs RMSNorm and the rotary tables in float32 even for a float64 model
    (``hidden_states.to(torch.float32)``): products are float32-accurate, hence the tolerance.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    _quiet()
    torch.manual_seed(2)
    config = LlamaConfig(vocab_size=11, hidden_size=6, intermediate_size=8,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=4, max_position_embeddings=8)
    model = LlamaForCausalLM(config).to(DT).eval()
    ids = torch.randint(0, 11, (4, 4))
    return Case("llama", model, _split({"input_ids": ids}, ids, [2, 2]), next_token_loss,
                rtol=2e-5)


def vit() -> Case:
    """A ViT image classifier (a strided Conv2d patch embedding, LayerNorm, attention)."""
    from transformers import ViTConfig, ViTForImageClassification

    _quiet()
    torch.manual_seed(3)
    config = ViTConfig(image_size=4, patch_size=2, num_channels=1, hidden_size=6,
                       num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                       num_labels=3)
    model = ViTForImageClassification(config).to(DT).eval()
    px = torch.randn(5, 1, 4, 4, dtype=DT)
    labels = torch.tensor([0, 2, 1, 1, 0])
    return Case("vit", model, _split({"pixel_values": px}, labels, [3, 2]), class_loss)


class TorchEncoder(nn.Module):
    """torch's own transformer: ``nn.TransformerEncoder`` (``nn.MultiheadAttention``) with
    a key padding mask, masked mean pooling and a class head."""

    def __init__(self, vocab: int = 9, d: int = 4, num_classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 2, dim_feedforward=6, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1)  # nested-tensor fast path: default
        self.head = nn.Linear(d, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.emb(input_ids), src_key_padding_mask=attention_mask == 0)
        w = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * w).sum(1) / w.sum(1))


def torch_encoder() -> Case:
    """TorchEncoder on padded batches (mask rows with 4 and 2 real tokens)."""
    torch.manual_seed(5)
    model = TorchEncoder().to(DT).eval()
    ids = torch.randint(1, 9, (5, 5))
    mask = torch.ones(5, 5, dtype=torch.long)
    mask[1, 4:] = 0
    mask[4, 2:] = 0
    labels = torch.tensor([1, 0, 2, 2, 1])
    return Case("torch_encoder", model, _split({"input_ids": ids * mask,
                                                "attention_mask": mask}, labels, [2, 3]),
                class_loss)


class BasicBlock(nn.Module):
    """ResNet's basic block: conv-BN-ReLU-conv-BN plus the (projected) input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    """A ResNet-18-like CNN at toy width: stem, two stages of basic blocks, pooled head."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 3, 3, 1, 1, bias=False), nn.BatchNorm2d(3),
                                  nn.ReLU())
        self.layer1 = BasicBlock(3, 3, 1)
        self.layer2 = BasicBlock(3, 4, 2)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.layer2(self.layer1(self.stem(pixel_values)))
        return self.fc(h.mean(dim=(2, 3)))


def resnet() -> Case:
    """TinyResNet with BatchNorm in eval mode (running statistics not at their init)."""
    torch.manual_seed(4)
    model = TinyResNet().to(DT)
    with torch.no_grad():  # non-trivial running statistics, as after training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    px = torch.randn(5, 1, 6, 6, dtype=DT)
    labels = torch.tensor([2, 0, 1, 1, 2])
    return Case("resnet", model.eval(), _split({"pixel_values": px}, labels, [3, 2]),
                class_loss)


ZOO: dict[str, Callable[[], Case]] = {"gpt2": gpt2, "bert": bert, "llama": llama, "vit": vit,
                                      "resnet": resnet, "torch_encoder": torch_encoder}


def num_outputs(case: Case) -> int:
    logits = case.logits(case.theta())
    return int(math.prod(logits.shape[1:]))
