"""The torch builders' protocol members against torch.autograd.functional oracles (float64)."""

import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian as autograd_hessian
from torch.autograd.functional import jacobian as autograd_jacobian
from torch.func import functional_call

from hessntk.hessian import GGNOperator, HessianOperator, RegulariserOperator, layer_operator
from hessntk.ntk import GramOperator
from tests.helpers import assert_close

DT = torch.float64


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)).to(DT)
    X, y = torch.randn(30, 4, dtype=DT), torch.randint(0, 3, (30,))
    batches = [(X[:12], y[:12]), (X[12:], y[12:])]  # ragged: batches weighted by size
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def unflat(v):
        parts = torch.split(v, [s.numel() for s in shapes])
        return {n: q.reshape(s) for n, q, s in zip(names, parts, shapes, strict=True)}

    def loss(v):
        return nn.functional.cross_entropy(functional_call(net, unflat(v), (X,)), y)

    return net.eval(), batches, theta, unflat, loss, X


def test_curvature_members(problem):
    net, batches, theta, unflat, loss, _ = problem
    for cls in (HessianOperator, GGNOperator):
        H = cls(net, nn.CrossEntropyLoss(), batches, blocks="layer")
        assert_close(H.theta(), theta, rtol=0)
        assert_close(H.gradient(), autograd_jacobian(loss, theta), rtol=1e-9)
        assert H.loss_at(H.theta()) == pytest.approx(H.loss, rel=1e-14)
        d = 0.01 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(1),
                               dtype=DT)
        assert_close(H.loss_at(theta + d), loss(theta + d), rtol=1e-12)
        assert_close(H.ravel(net), theta, rtol=0)
        assert_close(H.ravel(H.unravel(theta)), theta, rtol=0)
    assert H.kind == "ggn" and HessianOperator(net, nn.CrossEntropyLoss(), batches).kind == (
        "hessian")
    with pytest.raises(ValueError, match="shape \\(63,\\)"):
        H.loss_at(torch.zeros(3, dtype=DT))


def test_layer_operator_blocks_are_the_quantizable_layers(problem):
    net, batches, *_ = problem
    op = layer_operator(net, nn.CrossEntropyLoss(), batches)
    assert op.block_params == {"0": ["0.weight"], "3": ["3.weight"]}
    op = layer_operator(net, nn.CrossEntropyLoss(), batches, quantize_biases=True,
                        curvature="ggn")
    assert op.blocks == ["0", "1", "3"] and op.kind == "ggn"


def test_regulariser_operator(problem):
    net, *_ = problem
    params = {n: p.detach() for n, p in net.named_parameters()}

    def R(p):
        v = torch.cat([t.reshape(-1) for t in p.values()])
        return 0.5 * (v * v).sum() + 0.1 * (v**4).sum() + 0.05 * v.sum() ** 2

    op = RegulariserOperator(R, params)
    theta = op.theta()
    flat_R = lambda v: R(op.unravel(v))  # noqa: E731
    assert_close(op.matmat(torch.eye(op.shape[0], dtype=DT)), autograd_hessian(flat_R, theta),
                 rtol=1e-12)
    assert_close(op.gradient(), autograd_jacobian(flat_R, theta), rtol=1e-12)
    assert op.loss == pytest.approx(float(R(params)), rel=1e-14)
    at = op.at(2 * theta)
    assert at.loss == pytest.approx(op.loss_at(2 * theta), rel=1e-14)
    with pytest.raises(ValueError, match="scalar"):
        RegulariserOperator(lambda p: p["0.weight"], params)


def test_gram_members(problem):
    net, batches, theta, unflat, _, X = problem

    def f(v):
        return functional_call(net, unflat(v), (X,)).reshape(-1)

    J = autograd_jacobian(f, theta)
    K = GramOperator(net, data=batches, prior=0.5)
    assert_close(K.variances(), torch.full_like(theta, 0.5), rtol=0)
    assert_close(K.outputs(), f(theta).reshape(30, 3), rtol=1e-12)
    assert torch.equal(K.targets(), torch.cat([y for _, y in batches]))
    assert_close(K.dense(dtype=DT), 0.5 * J @ J.T, rtol=1e-9)
    assert_close(K.dense(weighted=False), J @ J.T, rtol=1e-9)
    assert_close(K.jacobian(), J, rtol=1e-10)
    w = torch.randn(90, generator=torch.Generator().manual_seed(2), dtype=DT)
    M = autograd_hessian(lambda v: w @ f(v), theta)
    assert_close(K.output_hessian(w).matmat(torch.eye(63, dtype=DT)), M, rtol=1e-9)
    assert K.observation == "raw" and K.prior_name == "0.5"
    assert GramOperator(net, X, outputs="probabilities").structural_nullity == 30


def test_theta_is_a_copy_and_operator_calls_take_positional_arguments(problem):
    net, batches, *_ = problem
    lin = nn.Linear(3, 1, bias=False).to(DT)
    x, y = torch.randn(5, 3, dtype=DT), torch.randn(5, 1, dtype=DT)
    H = HessianOperator(lin, nn.MSELoss(), (x, y))
    before = lin.weight.detach().clone()
    t = H.theta()
    t += 1.0  # one parameter: theta() must still be a copy, not a view of the weight
    assert torch.equal(lin.weight.detach(), before)
    from hessntk.criteria import measure_quantization, quantized_loss
    from hessntk.hessian import block_traces, top_eigenvalues

    op = layer_operator(net, nn.CrossEntropyLoss(), batches)
    assert quantized_loss(op, {"0": 4}) == quantized_loss(op, assignment={"0": 4})
    assert measure_quantization(op, (2, 4)).bits == (2, 4)
    assert len(top_eigenvalues(op, 2).eigenvalues) == 2
    with pytest.raises(ValueError, match="Expected no \\['params'\\] with an operator"):
        top_eigenvalues(op, k=2, params=["0.weight"])
    with pytest.raises(TypeError, match="curvature operator with blocks"):
        block_traces(GramOperator(net, batches[0][0]))


def test_gram_targets_are_kept_only_when_they_are_per_sample(problem):
    net, batches, *_ = problem
    X, y = batches[0]
    assert torch.equal(GramOperator(net, data=(X, y), batch_size=5).targets(), y)
    assert GramOperator(net, data=(X, torch.tensor(1.0)), batch_size=5).targets() is None
    assert GramOperator(net, data=(X, y[:3]), batch_size=5).targets() is None
    from hessntk.criteria import iic

    with pytest.raises(ValueError, match="built with its targets"):
        iic(GramOperator(net, X))
    with pytest.raises(ValueError, match="regulariser operator"):
        iic(GramOperator(net, data=(X, y)), prior=torch.ones(3))
