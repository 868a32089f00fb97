"""Hugging Face conventions: dict batches, the model's own loss over ragged token batches,
vmap-unfriendly masks, per-token IIC constraints, fused attention, and the CLI."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian as dense_hessian
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader

pytest.importorskip("transformers", reason="needs transformers (a test dependency)")

from hessntk import hessian, ntk  # noqa: E402
from hessntk.cli import main  # noqa: E402
from hessntk.criteria import compare as ntk_compare  # noqa: E402
from hessntk.criteria import iic  # noqa: E402
from hessntk.ntk.grams import _gram  # noqa: E402
from tests.helpers import assert_close  # noqa: E402
from tests.zoo.models import DT, bert, gpt2  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _ragged_gpt2():
    """GPT-2 with token batches of different lengths (-100 labels on padded positions)."""
    case = gpt2()
    ids = torch.randint(0, 11, (6, 5), generator=torch.Generator().manual_seed(7))
    labels = ids.clone()
    labels[0, 2:] = -100
    labels[1, 3:] = -100
    labels[4, 4:] = -100
    batches = [{"input_ids": ids[:2], "labels": labels[:2]},
               {"input_ids": ids[2:], "labels": labels[2:]}]
    return case, ids, labels, batches


def test_own_loss_is_the_full_data_token_mean_over_ragged_batches():
    case, ids, labels, batches = _ragged_gpt2()
    with pytest.warns(RuntimeWarning, match="float32.*logits.float"):
        H = hessian.HessianOperator(case.model, None, batches)
    full = case.model(input_ids=ids, labels=labels).loss  # one batch: the token mean
    tokens = int((labels[:, 1:] != -100).sum())
    assert H.num_loss_terms == tokens == 3 + 15  # batch 0: 1 + 2 next-token targets
    assert_close(H.loss, full, rtol=1e-6)
    means = [case.model(**b).loss for b in batches]
    sample_mean = float((2 * means[0] + 4 * means[1]) / 6)
    assert abs(sample_mean - H.loss) > 1e-2  # a mean of means would be another number
    theta = case.theta()

    def loss(v):
        with sdpa_kernel(SDPBackend.MATH):
            out = torch.func.functional_call(case.model, case.unflat(v), (),
                                             {"input_ids": ids, "labels": labels})
        return out.loss

    V = torch.randn(theta.numel(), 2, generator=torch.Generator().manual_seed(0), dtype=DT)
    # transformers computes this loss in float32 (logits.float()): float32-accurate products.
    assert_close(H.matmat(V), dense_hessian(loss, theta) @ V, rtol=1e-5)
    assert_close(H.gradient(), torch.func.grad(loss)(theta), rtol=1e-5)


def test_a_dataloader_of_dict_samples_with_a_collator():
    case = bert()
    inputs, labels = case.inputs, case.labels
    samples = [{**{k: v[i] for k, v in inputs.items()}, "labels": labels[i]}
               for i in range(len(labels))]
    loader = DataLoader(samples, batch_size=3)  # the default collator stacks dicts
    V = torch.randn(sum(p.numel() for p in case.model.parameters()), 2, dtype=DT)
    a = hessian.HessianOperator(case.model, case.loss_fn, loader)
    b = hessian.HessianOperator(case.model, case.loss_fn, case.batches)
    assert_close(a.matmat(V), b.matmat(V), rtol=1e-12)
    assert a.num_samples == 5 and a.loss == pytest.approx(b.loss, rel=1e-14)


def _pad(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A padding collator: right-pad ``input_ids`` with 0 (mask 0) and labels with -100."""
    T = max(len(s["input_ids"]) for s in samples)

    def padded(key: str, value: int) -> torch.Tensor:
        return torch.stack([nn.functional.pad(s[key], (0, T - len(s[key])), value=value)
                            for s in samples])

    return {"input_ids": padded("input_ids", 0), "attention_mask": padded("attention_mask", 0),
            "labels": padded("labels", -100)}


def test_a_dataloader_with_a_padding_collator_and_the_models_own_loss():
    """Sequences of lengths 2..5 padded per batch: the loss is the token mean of all data."""
    case = gpt2()
    gen = torch.Generator().manual_seed(3)
    samples = []
    for length in (5, 2, 4, 3, 5, 2):
        ids = torch.randint(1, 11, (length,), generator=gen)
        samples.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                        "labels": ids.clone()})
    loader = DataLoader(samples, batch_size=2, collate_fn=_pad)  # batches of T = 5, 4, 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # transformers' float32 loss
        H = hessian.HessianOperator(case.model, None, loader)
    assert H.num_loss_terms == sum(len(s["input_ids"]) - 1 for s in samples)
    theta = case.theta()

    def loss(v):  # sum of every sequence's next-token losses / number of targets
        total = 0.0
        for s in samples:
            batch = {k: t.unsqueeze(0) for k, t in s.items()}
            with sdpa_kernel(SDPBackend.MATH):
                out = torch.func.functional_call(case.model, case.unflat(v), (), batch)
            total = total + out.loss * (len(s["input_ids"]) - 1)
        return total / H.num_loss_terms

    assert_close(H.loss, loss(theta), rtol=1e-6)
    V = torch.randn(theta.numel(), 2, generator=torch.Generator().manual_seed(1), dtype=DT)
    HV = torch.stack([torch.func.jvp(torch.func.grad(loss), (theta,), (v,))[1] for v in V.T], 1)
    assert_close(H.matmat(V), HV, rtol=1e-5)  # exact Hessian-vector products of the oracle


def test_compare_hugging_face_checkpoints_on_dict_batches():
    case = bert()
    tuned = {k: v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(2),
                                       dtype=v.dtype) if v.is_floating_point() else v
             for k, v in case.model.state_dict().items()}
    kw = dict(prior=1.0, observations="logits", soft=1e2, method="exact")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # untrained: not interpolating
        result = ntk_compare({"init": case.model.state_dict(), "tuned": tuned},
                             lambda: bert().model, case.batches, **kw)
        direct = {}
        for name, sd in (("init", case.model.state_dict()), ("tuned", tuned)):
            model = bert().model
            model.load_state_dict(sd)
            direct[name] = iic(model, case.batches, **kw).value
    for name, value in direct.items():
        assert_close(result.results[name].value, value, rtol=1e-12)
    assert result.rows[0]["name"] == min(direct, key=direct.get)


def test_masks_that_vmap_cannot_trace_take_the_batched_path():
    case = bert()
    kw = dict(params=None, prior=None, mode="full", outputs="raw", output_key=None,
              outputs_fn=None, dtype=None, max_memory=None, chunk_size=None,
              allow_train_mode=False)
    K, plan = _gram(case.model, case.inputs, None, method="jacobian", **kw)
    assert plan.jacobian_path == "batched"
    op = ntk.GramOperator(case.model, case.inputs)  # products never vmap over samples
    assert_close(K, op.dense(), rtol=1e-10)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)
    _, plan = _gram(net, torch.randn(5, 3, dtype=DT), None, method="jacobian", **kw)
    assert plan.jacobian_path == "vmap"


def test_iic_with_per_token_constraints():
    case = gpt2()
    ids = case.inputs["input_ids"]
    data = ({"input_ids": ids[:, :-1]}, ids[:, 1:])  # next-token targets, aligned
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # untrained: not interpolating
        res = iic(case.model, data, observations="logits", soft=10.0, prior=1.0)
    n, T = ids.shape
    assert res.num_constraints == n * (T - 1) * 11  # tokens as samples, 11 logits each
    assert 0 <= res.train_error <= 1 and math.isfinite(res.value)
    padded = ids[:, 1:].clone()
    padded[0, -1] = -100
    with pytest.raises(ValueError, match="class for every position.*-100"):
        iic(case.model, ({"input_ids": ids[:, :-1]}, padded), observations="logits")
    with pytest.raises(ValueError, match="classes of shape .* values of shape"):
        iic(case.model, ({"input_ids": ids}, ids[:, :2]), observations="logits")


def test_ggn_needs_a_loss_on_the_outputs():
    case = bert()
    with pytest.raises(ValueError, match="loss_fn\\(outputs, targets\\) for a GGNOperator"):
        hessian.GGNOperator(case.model, None, case.batches)
    with pytest.raises(ValueError, match="targets for the model's own loss"):
        hessian.HessianOperator(case.model, None, {"input_ids": case.inputs["input_ids"]})


class FusedAttention(nn.Module):
    """Self-attention written with F.scaled_dot_product_attention (fused kernels by default)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        h = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(h).mean(1)


def test_fused_attention_gets_exact_second_derivatives():
    torch.manual_seed(0)
    net = FusedAttention().to(DT).eval()
    x, y = torch.randn(6, 5, 4, dtype=DT), torch.randn(6, 2, dtype=DT)
    H = hessian.HessianOperator(net, nn.MSELoss(), (x, y))
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    shapes = [(n, p.shape) for n, p in net.named_parameters()]

    def loss(v):
        out, i = {}, 0
        for name, shape in shapes:
            out[name] = v[i : i + shape.numel()].reshape(shape)
            i += shape.numel()
        with sdpa_kernel(SDPBackend.MATH):  # the oracle in the exact math kernel
            return nn.functional.mse_loss(torch.func.functional_call(net, out, (x,)), y)

    V = torch.randn(theta.numel(), 3, dtype=DT)
    for method in ("graph", "func"):
        H.method = method
        assert_close(H.matmat(V), dense_hessian(loss, theta) @ V, rtol=1e-10)


def test_cli_on_a_hugging_face_entry_point(tmp_path, capsys):
    entry = f"{ROOT / 'docs' / 'examples' / 'tiny_gpt2.py'}:build"
    fast = ["--probes", "2", "--steps", "6", "--k", "2", "--trace-matvecs", "6", "--quiet"]
    assert main(["spectrum", entry, "--loss", "model", "--out", str(tmp_path / "a"),
                 *fast]) == 0
    doc = json.loads((tmp_path / "a" / "report.json").read_text())
    assert doc["model"]["loss_fn"].startswith("the model's own")
    assert any("float32" in note for note in doc["notes"])  # transformers' float32 loss
    assert main(["spectrum", entry, "--ntk-samples", "2", "--output-key", "logits",
                 "--out", str(tmp_path / "b"), *fast]) == 0
    doc = json.loads((tmp_path / "b" / "report.json").read_text())
    assert doc["ntk"]["size"] == 2 * 10 * 32 and doc["model"]["output_key"] == "logits"
    assert main(["quantization", entry, "--loss", "model", "--bits", "4", "8",
                 "--metric", "trace", "--trace-matvecs", "4", "--no-measure", "--quiet",
                 "--out", str(tmp_path / "c")]) == 0


def test_own_loss_without_num_items_in_batch_warns_with_its_label_count():
    # BertForMaskedLM's forward takes no num_items_in_batch: batches are weighted by their
    # samples (the README says so), with a warning that counts the batch's labels
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(2)
    config = BertConfig(vocab_size=13, hidden_size=6, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=8, max_position_embeddings=8)
    model = BertForMaskedLM(config).to(torch.float64).eval()
    ids = torch.randint(1, 13, (4, 6), generator=torch.Generator().manual_seed(3))
    labels = torch.full_like(ids, -100)
    labels[0, :1] = ids[0, :1]
    labels[1:, :5] = ids[1:, :5]  # batch 0: 1 + 5 labels, batch 1: 10
    batches = [{"input_ids": ids[:2], "labels": labels[:2]},
               {"input_ids": ids[2:], "labels": labels[2:]}]
    with pytest.warns(RuntimeWarning, match=r"no num_items_in_batch") as caught:
        H = hessian.HessianOperator(model, None, batches)
    said = [str(w.message) for w in caught]
    assert any("(6 labels are not -100" in m for m in said)
    assert any("(10 labels are not -100" in m for m in said)
    assert H.num_loss_terms == 4  # samples
    with torch.no_grad():
        means = [float(model(**b).loss) for b in batches]
    assert H.loss == pytest.approx((2 * means[0] + 2 * means[1]) / 4, rel=1e-12)


def test_own_loss_of_a_model_that_takes_no_labels_is_refused_with_the_fix(tmp_path, capsys):
    net = nn.Sequential(nn.Linear(3, 2)).to(DT)
    batch = (torch.randn(4, 3, dtype=DT), torch.tensor([0, 1, 1, 0]))
    with pytest.raises(ValueError, match=r"Sequential does not take labels.*Pass loss_fn"):
        hessian.HessianOperator(net, None, batch)
    entry = tmp_path / "no_loss.py"
    entry.write_text("import torch\nfrom torch import nn\n\n\ndef build():\n"
                     "    torch.manual_seed(0)\n"
                     "    return nn.Sequential(nn.Linear(3, 2)), None, "
                     "(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))\n")
    assert main(["spectrum", f"{entry}:build", "--out", str(tmp_path / "o"), "--threads",
                 "1"]) == 2
    err = capsys.readouterr().err
    assert "Return a loss_fn(outputs, targets) from the entry point" in err
    assert "loss_fn=None" not in err and "Traceback" not in err
