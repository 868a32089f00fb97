"""Explicit NTK Grams against dense jacrev Jacobians and closed forms (float64, tiny models)."""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch
from torch import nn

from hessntk.ntk import (
    gram,
    gram_diagonal,
    jacobian,
    per_sample_grad_norms,
    simplex_basis,
    structural_nullity,
    structured,
)
from tests.helpers import assert_close
from tests.ntk.models import DT, Reuse, cases, mlp, reference_jacobian

# ``hessntk.ntk.gram`` is the function; the module holds the planner and block size.
gram_module = importlib.import_module("hessntk.ntk.grams")
CASES = cases()
METHODS = ["auto", "structured", "jacobian", "ntk_vp"]


def _blocks(K: torch.Tensor, n: int, c: int) -> torch.Tensor:
    return torch.stack([K[i * c : (i + 1) * c, i * c : (i + 1) * c] for i in range(n)])


def _trace(K: torch.Tensor, n1: int, n2: int, c: int) -> torch.Tensor:
    return K.reshape(n1, c, n2, c).diagonal(dim1=1, dim2=3).sum(-1)


# -- closed forms ---------------------------------------------------------------------------


def test_linear_model_gram_is_x_xt():
    torch.manual_seed(0)
    X = torch.randn(6, 4, dtype=DT)
    net = nn.Linear(4, 1, bias=False).to(DT)
    for method in METHODS:
        assert_close(gram(net, X, method=method), X @ X.T)


def test_multi_output_linear_gram_is_kron():
    torch.manual_seed(1)
    X = torch.randn(5, 3, dtype=DT)
    c = 4
    net = nn.Linear(3, c).to(DT)  # with bias: (X X^T + 1) kron I_c
    expected = torch.kron(X @ X.T + 1, torch.eye(c, dtype=DT))
    for method in METHODS:
        assert_close(gram(net, X, method=method), expected)
    assert_close(gram(net, X, mode="trace"), c * (X @ X.T + 1))


# -- against jacrev --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("method", METHODS)
def test_gram_matches_reference(name, method):
    model, x = CASES[name]
    J = reference_jacobian(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        K = gram(model, x, method=method)
    assert_close(K, J @ J.T)


@pytest.mark.parametrize("name", list(CASES))
def test_modes_and_cross_kernel(name):
    model, x = CASES[name]
    x2 = x[:3]
    n1, n2 = x.shape[0], 3
    J1, J2 = reference_jacobian(model, x), reference_jacobian(model, x2)
    c = J1.shape[0] // n1
    Kc = gram(model, x, x2)
    assert Kc.shape == (n1 * c, n2 * c)
    assert_close(Kc, J1 @ J2.T)
    assert_close(gram(model, x, x2, mode="trace"), _trace(J1 @ J2.T, n1, n2, c))
    assert_close(gram(model, x, mode="trace"), _trace(J1 @ J1.T, n1, n1, c))
    D = gram(model, x, mode="diagonal")
    assert D.shape == (n1, c, c)
    assert_close(D, _blocks(J1 @ J1.T, n1, c))


@pytest.mark.parametrize("method", ["jacobian", "ntk_vp"])
def test_cross_kernel_generic_methods(method):
    model, x = CASES["conv"]
    x2 = x[1:3]
    J1, J2 = reference_jacobian(model, x), reference_jacobian(model, x2)
    assert_close(gram(model, x, x2, method=method), J1 @ J2.T)
    assert_close(gram(model, x2, x, method=method, mode="trace"), _trace(J2 @ J1.T, 2, 4, 2))


@pytest.mark.parametrize("strategy", ["contract", "materialize"])
@pytest.mark.parametrize("name", ["tokens", "seq", "conv", "twice"])
def test_token_strategies_agree(monkeypatch, name, strategy):
    model, x = CASES[name]
    monkeypatch.setattr(structured, "token_strategy", lambda *a: strategy)
    J = reference_jacobian(model, x)
    n, c = x.shape[0], J.shape[0] // x.shape[0]
    _, plan = gram_module._gram(
        model, x, None, params=None, prior=None, mode="full", method="structured",
        outputs="raw", output_key=None, outputs_fn=None, dtype=None, max_memory=None,
        chunk_size=None, allow_train_mode=False,
    )
    assert plan.generic == []  # every parameter took the structured path
    assert_close(gram(model, x), J @ J.T)
    assert_close(gram(model, x, mode="diagonal"), _blocks(J @ J.T, n, c))
    assert_close(gram(model, x, x[:2], mode="trace"), _trace(J @ J[: 2 * c].T, n, 2, c))


def test_reused_weight_falls_back_with_warning():
    torch.manual_seed(0)
    model, x = Reuse().to(DT).eval(), torch.randn(4, 3, dtype=DT)
    J = reference_jacobian(model, x)
    with pytest.warns(RuntimeWarning, match="'a' takes the generic"):
        K = gram(model, x)
    assert_close(K, J @ J.T)


def test_tied_weights_take_generic_path_once():
    model, x = CASES["tied"]
    _, plan = gram_module._gram(
        model, x, None, params=None, prior=None, mode="full", method="auto", outputs="raw",
        output_key=None, outputs_fn=None, dtype=None, max_memory=None, chunk_size=None,
        allow_train_mode=False,
    )
    assert plan.generic == ["a.weight"] and plan.structured == []


def test_blockwise_paths_and_mirror(monkeypatch):
    """Small blocks (partition not dividing n), chunked generic engines, recomputed rows."""
    torch.manual_seed(3)
    model, x = mlp(c=2), torch.randn(7, 4, dtype=DT)
    J = reference_jacobian(model, x)
    monkeypatch.setattr(gram_module, "MAX_BLOCK", 3)
    for method in METHODS:
        assert_close(gram(model, x, method=method, chunk_size=2), J @ J.T)
        assert_close(gram(model, x, method=method, mode="trace", chunk_size=3),
                     _trace(J @ J.T, 7, 7, 2))
    # A budget too small for the whole Jacobian forces recomputed row chunks.
    K = gram(model, x, method="jacobian", chunk_size=2, max_memory=3000)
    assert_close(K, J @ J.T)


def test_subset_of_parameters():
    model, x = CASES["mlp"]
    names = ["0.weight", "2.bias"]
    J = reference_jacobian(model, x, params=names)
    for method in METHODS:
        assert_close(gram(model, x, params=names, method=method), J @ J.T)
    assert jacobian(model, x, params=names).shape == J.shape


# -- invariants ------------------------------------------------------------------------------


def test_symmetric_positive_semidefinite():
    model, x = CASES["conv"]
    K = gram(model, x)
    assert torch.equal(K, K.T)  # mirrored blocks: exactly symmetric
    assert torch.linalg.eigvalsh(K).min() > -1e-12 * K.diagonal().max()


def test_trace_equals_sum_of_squared_per_sample_gradient_norms():
    model, x = CASES["seq"]
    K = gram(model, x)
    J = reference_jacobian(model, x)
    norms = per_sample_grad_norms(model, x)
    assert norms.shape == (4, 2)
    assert_close(norms.square().sum(), torch.trace(K))
    assert_close(gram_diagonal(model, x), (J * J).sum(1))
    for method in ["jacobian", "ntk_vp"]:
        assert_close(gram_diagonal(model, x, method=method), K.diagonal())


def test_float32_model_float64_result():
    model, x = CASES["mlp"]
    J = reference_jacobian(model, x)
    K32 = gram(model.float(), x.float(), dtype=torch.float64)
    model.double()
    assert K32.dtype == torch.float64
    assert_close(K32, J @ J.T, rtol=1e-5)  # float32 forward/backward: 1e-5 relative


# -- priors ----------------------------------------------------------------------------------


def _prior_vector(model, variances) -> torch.Tensor:
    return torch.cat([
        torch.as_tensor(variances.get(k, 1.0), dtype=DT).expand_as(p).reshape(-1)
        for k, p in model.named_parameters()
    ])


@pytest.mark.parametrize("method", METHODS)
def test_prior_weighting_equals_j_s_jt(method):
    model, x = CASES["seq"]
    J = reference_jacobian(model, x)
    priors = {
        "scalar": (0.3, {k: 0.3 for k, _ in model.named_parameters()}),
        "dict": ({"emb.weight": 2.0, "out.bias": 0.5}, {"emb.weight": 2.0, "out.bias": 0.5}),
        "init": ("init", {"emb.weight": 2 / 4, "lin.weight": 2 / 4, "lin.bias": 1.0,
                          "out.weight": 2 / 15, "out.bias": 1.0}),
    }
    for spec, variances in priors.values():
        s = _prior_vector(model, variances)
        assert_close(gram(model, x, prior=spec, method=method), (J * s) @ J.T)
        assert_close(gram(model, x, x[:2], prior=spec, method=method, mode="trace"),
                     _trace((J * s) @ J[:4].T, 4, 2, 2))


def test_elementwise_prior_tensor():
    model, x = CASES["mlp"]
    torch.manual_seed(0)
    v = torch.rand(6, 4, dtype=DT)
    J = reference_jacobian(model, x)
    s = _prior_vector(model, {"0.weight": v})
    assert_close(gram(model, x, prior={"0.weight": v}), (J * s) @ J.T)


# -- outputs ---------------------------------------------------------------------------------


def test_probability_outputs_have_predicted_null_space():
    torch.manual_seed(2)
    n, c = 6, 4
    model, x = mlp(c=c, h=16), torch.randn(n, 4, dtype=DT)
    K = gram(model, x, outputs="probabilities")
    ones = torch.kron(torch.eye(n, dtype=DT), torch.ones(c, 1, dtype=DT))  # (n c, n)
    assert_close(K @ ones, torch.zeros(n * c, n, dtype=DT), atol=1e-12 * K.abs().max())
    eig = torch.linalg.eigvalsh(K)
    assert structural_nullity(n, "probabilities") == n
    assert (eig.abs() < 1e-10 * eig.max()).sum() == n
    # The simplex-tangent Gram is the projected one, and nonsingular.
    Q = simplex_basis(c)
    P = torch.kron(torch.eye(n, dtype=DT), Q)  # (n c, n (c-1))
    Ks = gram(model, x, outputs="simplex")
    assert Ks.shape == (n * (c - 1), n * (c - 1))
    assert_close(Ks, P.T @ K @ P)
    assert torch.linalg.eigvalsh(Ks).min() > 1e-8 * eig.max()
    assert structural_nullity(n, "simplex") == 0


def test_simplex_basis_is_orthonormal_complement_of_ones():
    for c in (2, 3, 10):
        Q = simplex_basis(c)
        assert_close(Q.T @ Q, torch.eye(c - 1, dtype=DT))
        assert_close(Q.sum(0), torch.zeros(c - 1, dtype=DT), atol=1e-14)


def test_dict_output_tuple_inputs_and_callable_outputs():
    from tests.ntk.models import DictOut

    torch.manual_seed(0)
    model = DictOut().to(DT).eval()
    x, z = torch.randn(4, 3, dtype=DT), torch.randn(4, 2, dtype=DT)

    def logits(q):
        out = torch.func.functional_call(model, q, (x, z))["logits"]
        return out.reshape(-1)

    p = {k: v.detach() for k, v in model.named_parameters()}
    Jd = torch.func.jacrev(logits)(p)
    J = torch.cat([Jd[k].reshape(8, -1) for k in p], 1)
    assert_close(gram(model, (x, z), output_key="logits"), J @ J.T)
    K2 = gram(model, (x, z), outputs_fn=lambda out: out["logits"], outputs=lambda o: 2 * o)
    assert_close(K2, 4 * J @ J.T)
    assert_close(jacobian(model, (x, z), output_key="logits"), J)


@pytest.mark.parametrize(
    ("name", "generic"),
    [
        ("attention", []),
        ("attention_seq", []),
        ("cross_attention", ["attn.in_proj_weight", "attn.in_proj_bias"]),  # packed, split
        ("attention_kdim", ["attn.in_proj_bias"]),  # one bias vector for q, k, v
        ("encoder", [f"layer.norm{i}.{r}" for i in (1, 2) for r in ("weight", "bias")]),
    ],
)
def test_attention_projections_take_structured_path(name, generic):
    """nn.MultiheadAttention's projections (and the Linear layers of a sequence-first
    encoder) are structured; the Gram equals the dense one (the generic ones are named)."""
    model, x = CASES[name]
    J = reference_jacobian(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no structured check failed
        K, plan = gram_module._gram(
            model, x, None, params=None, prior=None, mode="full", method="auto",
            outputs="raw", output_key=None, outputs_fn=None, dtype=None, max_memory=None,
            chunk_size=None, allow_train_mode=False,
        )
    assert sorted(plan.generic) == sorted(generic)
    assert_close(K, J @ J.T)
    n, c = x.shape[0], J.shape[0] // x.shape[0]
    assert_close(gram(model, x, mode="diagonal"), _blocks(J @ J.T, n, c))
