"""HessianOperator and GGNOperator against dense float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hessntk.hessian import GGNOperator, HessianOperator
from hessntk.spectral import LinearOperator
from tests.helpers import assert_close
from tests.hessian.models import CASES, DT, TwoInputs, case, dense_ggn, dense_hessian, mlp


def dense(op: LinearOperator) -> torch.Tensor:
    return op.matmat(torch.eye(op.shape[0], dtype=op.dtype))


@pytest.fixture(scope="module", params=CASES)
def hessian_case(request):
    model, loss, batches, opts = case(request.param)
    op = HessianOperator(model, loss, batches, **opts)
    ref = dense_hessian(model, loss, batches, op.layout.names, opts.get("output_key"))
    return request.param, model, loss, batches, opts, op, ref


@pytest.mark.parametrize("method", ["graph", "func"])
def test_hessian_matches_dense(hessian_case, method: str) -> None:
    _, model, loss, batches, opts, _, ref = hessian_case
    op = HessianOperator(model, loss, batches, method=method, **opts)
    assert op.shape == tuple(ref.shape) and op.dtype == DT and op.backend == "torch"
    assert_close(dense(op), ref)
    v = torch.linspace(-1, 1, op.shape[0], dtype=DT)
    assert_close(op.matvec(v), ref @ v)


def test_auto_method_matvec_and_matmat_agree(hessian_case) -> None:
    *_, op, ref = hessian_case
    V = torch.randn(op.shape[0], 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    op = HessianOperator(op.model, op.loss_fn, op.data, output_key=op.output_key)
    assert op.batched_method == "graph"  # the rule on CPU
    assert_close(op.matmat(V), ref @ V)
    assert_close(op.matmat(V[:, :2]), ref @ V[:, :2])
    assert_close(op @ V[:, 0], ref @ V[:, 0])  # one vector: cached gradient graph
    assert_close(op @ V[:, 1], ref @ V[:, 1])  # the cached graph is reusable


@pytest.mark.parametrize("cache_graph", [True, False])
def test_graph_method_in_chunks(cache_graph: bool) -> None:
    model, loss, batches, _ = case("mlp_tanh", sizes=[7, 3])
    op = HessianOperator(
        model, loss, batches, method="graph", chunk_size=2, cache_graph=cache_graph
    )
    ref = dense_hessian(model, loss, batches, op.layout.names)
    V = torch.randn(op.shape[0], 5, generator=torch.Generator().manual_seed(0), dtype=DT)
    assert_close(op.matmat(V), ref @ V)
    assert_close(op.matmat(V), ref @ V)  # again: from the cache, or rebuilt
    assert len(op._graphs) == (2 if cache_graph else 0)


def test_symmetric(hessian_case) -> None:
    *_, op, _ = hessian_case
    g = torch.Generator().manual_seed(1)
    u, v = (
        torch.randn(op.shape[0], generator=g, dtype=DT),
        torch.randn(op.shape[0], generator=g, dtype=DT),
    )
    a, b = u @ op.matvec(v), v @ op.matvec(u)
    assert abs(float(a - b)) <= 1e-12 * max(1.0, abs(float(a)))


@pytest.mark.parametrize("name", ["mlp_tanh", "cnn", "transformer", "tied"])
def test_ggn_matches_dense_and_is_psd(name: str) -> None:
    model, loss, batches, opts = case(name, sizes=None)
    for method in ("graph", "func", "auto"):
        op = GGNOperator(model, loss, batches, method=method, **opts)
        ref = dense_ggn(model, loss, batches, op.layout.names, opts.get("output_key"))
        G = dense(op)
        assert_close(G, ref)
        assert_close(op.matvec(G[:, 0]), ref @ ref[:, 0])
        assert float(torch.linalg.eigvalsh(G).min()) >= -1e-12 * float(G.abs().max())


@pytest.mark.parametrize("name", ["mlp_tanh", "transformer", "tied"])
def test_ragged_batches_equal_full_batch(name: str) -> None:
    model, loss, full, opts = case(name)
    n = full[0][1].shape[0]
    sizes = [n // 2 - 1, n // 2 - 1, 2][:3] if n > 6 else [4, 2]
    sizes[-1] = n - sum(sizes[:-1])
    _, _, parts, _ = case(name, sizes=sizes)
    assert len(parts) >= 2 and len({len(p[1]) for p in parts}) == 2  # ragged
    for cls in (HessianOperator, GGNOperator):
        A, B = dense(cls(model, loss, full, **opts)), dense(cls(model, loss, parts, **opts))
        assert_close(B, A)
        # several batches are not cached: each product rebuilds (and frees) their graphs
        assert not cls(model, loss, parts, **opts).cache_graph
    H = HessianOperator(model, loss, parts, **opts)
    assert H.num_samples == n and not H.cache_graph
    v = torch.ones(H.shape[0], dtype=DT)
    assert_close(
        H.matvec(v), dense_hessian(model, loss, parts, H.layout.names, opts.get("output_key")) @ v
    )


def test_dataloader_with_ragged_last_batch() -> None:
    model, loss, [(x, y)], _ = case("mlp_tanh")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    assert_close(
        dense(HessianOperator(model, loss, loader)), dense(HessianOperator(model, loss, (x, y)))
    )


def test_ggn_equals_hessian_for_linear_model_with_mse() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(DT)
    x = torch.randn(12, 4, dtype=DT)
    y = torch.randn(12, 3, dtype=DT)
    H = dense(HessianOperator(model, nn.MSELoss(), (x, y)))
    G = dense(GGNOperator(model, nn.MSELoss(), (x, y)))
    assert_close(G, H)


def test_least_squares_closed_form() -> None:
    # L = mean((X theta - y)^2) = (1/n) ||X theta - y||^2, so H = 2 X^T X / n (docs/theory.md 7.8)
    g = torch.Generator().manual_seed(3)
    X, y = torch.randn(20, 5, generator=g, dtype=DT), torch.randn(20, 1, generator=g, dtype=DT)
    model = nn.Linear(5, 1, bias=False).to(DT)
    ref = 2 * X.T @ X / 20
    for method in ("graph", "func"):
        op = HessianOperator(model, nn.MSELoss(), (X, y), method=method)
        assert_close(dense(op), ref)
    assert_close(dense(GGNOperator(model, nn.MSELoss(), [(X[:7], y[:7]), (X[7:], y[7:])])), ref)


def test_loss_linear_in_a_parameter_gives_zero_rows() -> None:
    # A loss linear in the last bias: its gradient has no graph, its Hessian rows are zero.
    model = mlp()
    x = torch.randn(6, 3, dtype=DT)
    op = HessianOperator(
        model,
        lambda out, y: out.sum(dim=1).mean(),
        (x, torch.zeros(6, dtype=DT)),
        params=["2.bias"],
    )
    assert torch.equal(dense(op), torch.zeros(2, 2, dtype=DT))
    assert torch.equal(op.matvec(torch.ones(2, dtype=DT)), torch.zeros(2, dtype=DT))


class _TwoHeads(nn.Module):
    """A body with the head the loss reads and an auxiliary head it does not."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.cls, self.aux = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.body(x))
        return {"logits": self.cls(h), "aux": self.aux(h)}


@pytest.mark.parametrize("cls", [HessianOperator, GGNOperator])
@pytest.mark.parametrize("method", ["auto", "graph", "func"])
def test_parameters_the_loss_does_not_reach_have_zero_rows(cls, method) -> None:
    # The unused head's rows are zero on the full operator, and its block is zero (no
    # output depends on it: the graph methods must not differentiate an output without one).
    torch.manual_seed(0)
    model = _TwoHeads().to(DT)
    x, y = torch.randn(8, 3, dtype=DT), torch.randint(0, 2, (8,))
    op = cls(model, nn.CrossEntropyLoss(), (x, y), output_key="logits", blocks="layer",
             method=method)
    full = dense(op)
    aux = op.block_slices[op.blocks.index("aux")]
    assert torch.equal(full[aux], torch.zeros_like(full[aux]))
    block = op.block("aux")
    assert torch.equal(dense(block), torch.zeros(5, 5, dtype=DT))
    assert torch.equal(block.matvec(torch.ones(5, dtype=DT)), torch.zeros(5, dtype=DT))
    used = [i for i in range(full.shape[0]) if i not in range(full.shape[0])[aux]]
    ref = dense(cls(model, nn.CrossEntropyLoss(), (x, y), output_key="logits",
                    params=["body.weight", "body.bias", "cls.weight", "cls.bias"]))
    assert_close(full[used][:, used], ref)


def test_tuple_inputs_and_outputs_fn() -> None:
    torch.manual_seed(0)
    model = TwoInputs().to(DT)
    x1, x2, y = (
        torch.randn(5, 3, dtype=DT),
        torch.randn(5, 2, dtype=DT),
        torch.randn(5, 2, dtype=DT),
    )
    op = HessianOperator(model, nn.MSELoss(), [((x1, x2), y)])
    names = op.layout.names

    def ref_loss(v):
        p, o = {}, 0
        for k in names:
            s = dict(model.named_parameters())[k].shape
            p[k] = v[o : o + s.numel()].reshape(s)
            o += s.numel()
        return nn.functional.mse_loss(torch.func.functional_call(model, p, (x1, x2)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert_close(dense(op), torch.func.hessian(ref_loss)(theta))
    hf_model, loss, batches, _ = case("hf_style")
    a = dense(HessianOperator(hf_model, loss, batches, output_key="logits"))
    b = dense(HessianOperator(hf_model, loss, batches, outputs_fn=lambda out: out.logits))
    assert_close(a, b)


def test_parameter_subset_is_the_dense_sub_block() -> None:
    model, loss, batches, _ = case("mlp_relu")
    full = HessianOperator(model, loss, batches)
    ref = dense_hessian(model, loss, batches, full.layout.names)
    sub = HessianOperator(model, loss, batches, params=lambda n, p: n.startswith("2."))
    ix = torch.arange(full.layout.slices["2.weight"].start, full.layout.n)
    assert sub.layout.names == ["2.weight", "2.bias"]
    assert_close(dense(sub), ref[ix][:, ix])


def test_products_leave_model_unchanged() -> None:
    model, loss, batches, _ = case("batchnorm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    op = HessianOperator(model, loss, batches)
    op.matmat(torch.ones(op.shape[0], 2, dtype=DT))
    op.matvec(torch.ones(op.shape[0], dtype=DT))
    GGNOperator(model, loss, batches).matvec(torch.ones(op.shape[0], dtype=DT))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_tied_weights_counted_once() -> None:
    model, loss, batches, _ = case("tied")
    op = HessianOperator(model, loss, batches)
    assert op.layout.names == ["embed.weight", "mix.weight", "mix.bias"]
    assert op.shape[0] == 6 * 3 + 3 * 3 + 3


def test_loss_attribute_and_repr() -> None:
    model, loss, batches, _ = case("mlp_tanh", sizes=[6, 4])
    op = HessianOperator(model, loss, batches)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        assert abs(op.loss - loss(model(x), y).item()) <= 1e-12
    assert "HessianOperator(n=32" in repr(op) and op.num_samples == 10


def test_unravel_roundtrip() -> None:
    model, loss, batches, _ = case("cnn")
    op = HessianOperator(model, loss, batches)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    parts = op.unravel(flat)
    assert {k: v.shape for k, v in parts.items()} == {
        k: p.shape for k, p in model.named_parameters()
    }
    cols = op.unravel(np.stack([flat.numpy(), 2 * flat.numpy()], axis=1), dim=0)
    assert torch.equal(cols["fc.bias"][:, 1], 2 * model.fc.bias.detach())


@pytest.mark.parametrize("name", ["layernorm", "instnorm"])
def test_reference_is_right_where_torch_func_is_not(name: str) -> None:
    # Guards the choice of reference: autograd double backward matches central finite
    # differences of the gradient; torch.func.hessian does not (torch 2.13, fused norms).
    model, loss, batches, _ = case(name)
    names = [k for k, _ in model.named_parameters()]
    ref = dense_hessian(model, loss, batches, names)
    x, y = batches[0]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def grad_at(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(v, model.parameters())
        g = torch.autograd.grad(loss(model(x), y), list(model.parameters()))
        return torch.cat([t.reshape(-1) for t in g])

    eps = 1e-6
    cols = [
        (grad_at(theta + eps * e) - grad_at(theta - eps * e)) / (2 * eps)
        for e in torch.eye(theta.numel(), dtype=DT)[::5]
    ]
    torch.nn.utils.vector_to_parameters(theta, model.parameters())
    # finite differences: error ~ eps^2 * third derivative + rounding / eps
    assert_close(torch.stack(cols, 1), ref[:, ::5], rtol=1e-7)
    func_ref = dense_hessian(model, loss, batches, names, func=True)
    assert float((func_ref - ref).abs().max()) > 1e-3 * float(ref.abs().max())


def test_train_mode_batchnorm_when_allowed() -> None:
    # Batch statistics: torch.func alone gets these second derivatives wrong (torch 2.13);
    # both methods must agree with autograd double backward.
    model, loss, batches, _ = case("batchnorm")
    model.train()
    names = [k for k, _ in model.named_parameters()]
    ref = dense_hessian(model, loss, batches, names)
    for method in ("graph", "func"):
        op = HessianOperator(model, loss, batches, method=method, allow_train_mode=True)
        assert_close(dense(op), ref)



def test_auto_method_is_a_fixed_rule_so_numbers_never_depend_on_timing(hessian_case) -> None:
    *_, op, ref = hessian_case
    V = torch.randn(op.shape[0], 9, generator=torch.Generator().manual_seed(1), dtype=DT)
    a = HessianOperator(op.model, op.loss_fn, op.data, output_key=op.output_key)
    b = HessianOperator(op.model, op.loss_fn, op.data, output_key=op.output_key)
    assert a.batched_method == "graph"  # on CPU
    first = a.matmat(V)
    assert_close(first, ref @ V)
    # a second operator, or the same one later, gives the same bits
    assert torch.equal(b.matmat(V), first) and torch.equal(a.matmat(V), first)


def test_auto_method_takes_heavy_batches_one_vector_at_a_time_on_cpu() -> None:
    from hessntk.hessian.operators import ONE_AT_A_TIME_SAMPLES, ONE_AT_A_TIME_WORK

    small, loss, batches, _ = case("mlp_tanh")
    assert not HessianOperator(small, loss, batches).one_at_a_time  # small ones stay batched
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(),
                          nn.Linear(256, 1)).double()
    n = sum(p.numel() for p in model.parameters())
    x, y = torch.randn(256, 16, dtype=DT), torch.randn(256, 1, dtype=DT)
    assert 256 >= ONE_AT_A_TIME_SAMPLES and 256 * n >= ONE_AT_A_TIME_WORK
    auto = HessianOperator(model, nn.MSELoss(), (x, y))
    assert auto.one_at_a_time and auto.batched_method == "graph"
    # the same products as the batched graph and forward-over-reverse, to rounding
    V = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    ref = HessianOperator(model, nn.MSELoss(), (x, y), method="func").matmat(V)
    assert_close(auto.matmat(V), ref)
    assert_close(HessianOperator(model, nn.MSELoss(), (x, y), method="graph").matmat(V), ref)
    assert torch.equal(auto.matmat(V)[:, 1], auto.matvec(V[:, 1]))  # each one a matvec
    # an explicit method, or one sample fewer, keeps the chunks
    assert not HessianOperator(model, nn.MSELoss(), (x, y), method="graph").one_at_a_time
    assert not HessianOperator(model, nn.MSELoss(), (x[:255], y[:255])).one_at_a_time
