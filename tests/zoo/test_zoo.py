"""Every path on real architectures: GPT-2, BERT with padding masks, Llama, ViT, a ResNet.

Each operator, Gram matrix and criterion is checked against dense float64 oracles of the tiny
models (``torch.autograd.functional`` on the flat parameters), on Hugging Face style dict
batches. See tests/zoo/models.py for the zoo.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch.autograd.functional import hessian as dense_hessian
from torch.autograd.functional import jacobian as dense_jacobian

pytest.importorskip("transformers", reason="the zoo needs transformers (a test dependency)")

from hessntk import hessian, ntk  # noqa: E402
from hessntk.criteria import iic, quantization_sensitivity, quantize  # noqa: E402
from tests.helpers import assert_close  # noqa: E402
from tests.zoo.models import DT, ZOO  # noqa: E402


@pytest.fixture(scope="module", params=list(ZOO))
def zoo(request):
    """A case of the zoo with its dense oracles: Hessian, GGN, Jacobian of the logits."""
    case = ZOO[request.param]()
    theta = case.theta()
    H = dense_hessian(case.loss, theta)
    J = dense_jacobian(lambda v: case.logits(v).reshape(-1), theta)
    n = len(case.labels)
    G = torch.zeros_like(H)
    for b in case.batches:
        inputs = {k: t for k, t in b.items() if k != "labels"}
        logits = case.logits(theta, inputs)
        Lam = dense_hessian(lambda o, b=b, s=logits.shape: case.loss_fn(o.reshape(s),
                                                                          b["labels"]),
                            logits.reshape(-1))
        Jb = dense_jacobian(lambda v, i=inputs: case.logits(v, i).reshape(-1), theta)
        G += len(b["labels"]) / n * Jb.T @ Lam @ Jb
    V = torch.randn(theta.numel(), 2, generator=torch.Generator().manual_seed(0), dtype=DT)
    return case, {"H": H, "G": G, "J": J, "theta": theta, "V": V}


def test_hessian_ggn_and_block_traces(zoo):
    case, o = zoo
    for method in ("graph", "func"):
        H = hessian.HessianOperator(case.model, case.loss_fn, case.batches, blocks="layer",
                                    method=method)
        assert_close(H.matmat(o["V"]), o["H"] @ o["V"], rtol=case.rtol)
    for method in ("graph", "func"):
        G = hessian.GGNOperator(case.model, case.loss_fn, case.batches, method=method)
        assert_close(G.matmat(o["V"]), o["G"] @ o["V"], rtol=case.rtol)
        assert_close(G.matmat(o["V"][:, :1]), o["G"] @ o["V"][:, :1], rtol=case.rtol)
    traces = hessian.block_traces(H, num_matvecs=H.shape[0])  # exact: n products
    for name, sl in zip(H.blocks, H.block_slices, strict=True):
        idx = torch.as_tensor(np.arange(H.shape[0])[sl])
        assert_close(traces[name].value, o["H"][idx][:, idx].trace(), rtol=case.rtol)


def test_ntk_gram_operator_and_jacobian(zoo):
    case, o = zoo
    J, V = o["J"], o["V"]
    K_ref = J @ J.T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # layers that take the generic path
        K = ntk.gram(case.model, case.inputs)
    assert_close(K, K_ref, rtol=case.rtol)
    op = ntk.GramOperator(case.model, data=case.batches)
    W = torch.randn(op.shape[0], 2, generator=torch.Generator().manual_seed(1), dtype=DT)
    assert_close(op.matmat(W), K_ref @ W, rtol=case.rtol)
    assert_close(op.jvp(V), J @ V, rtol=case.rtol)
    assert_close(ntk.jacobian(case.model, case.inputs), J, rtol=case.rtol)
    assert_close(op.diagonal(), torch.diagonal(K_ref), rtol=case.rtol)


def test_iic_against_its_terms_from_the_oracle(zoo):
    case, o = zoo
    soft = 1e2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untrained: not interpolating (flagged in reasons)
        res = iic(case.model, case.batches, prior=1.0, observations="logits", soft=soft,
                  method="exact")
    J, theta = o["J"], o["theta"]
    N = J.shape[0]
    lam = torch.linalg.eigvalsh(J @ J.T)
    expected = (math.log(0.5 * float(theta @ theta)) + float(torch.log(lam + 1 / soft).mean())
                - math.log(N))
    assert res.num_constraints == N and res.num_params == theta.numel()
    assert_close(res.value, expected, rtol=max(case.rtol, 1e-10))
    assert res.train_error is not None  # class targets: per sample, or per position


def test_quantization_sensitivity_against_the_dense_hessian(zoo):
    case, o = zoo
    sens = quantization_sensitivity(case.model, case.loss_fn, case.batches, bits=(4,),
                                    metric="trace", num_matvecs=10)
    g = dense_jacobian(case.loss, o["theta"])
    offsets, i = {}, 0
    for name, p in case.model.named_parameters():
        offsets[name] = slice(i, i + p.numel())
        i += p.numel()
    params = dict(case.model.named_parameters())
    for j, layer in enumerate(sens.layers):
        dw = torch.zeros_like(o["theta"])
        for name in sens.params[layer]:
            w = params[name].detach()
            dw[offsets[name]] = (quantize(w, 4) - w).reshape(-1)
        assert_close(sens.quadratic_term[j, 0], 0.5 * dw @ o["H"] @ dw, rtol=case.rtol)
        assert_close(sens.gradient_term[j, 0], g @ dw, rtol=max(case.rtol, 1e-8))


def test_eigsh_partial_reorthogonalisation_in_float32(zoo):
    # The default partial reorthogonalisation on the float32 copy of each architecture (BERT
    # with its padding mask, the ResNet's batch norm in eval mode): its top eigenpairs
    # against the float64 dense Hessian, as good as full reorthogonalisation's.
    import copy

    from hessntk import eigsh

    case, o = zoo
    lam = np.linalg.eigvalsh(o["H"].numpy())
    exact = lam[np.argsort(-np.abs(lam))][:3]
    model = copy.deepcopy(case.model).float()
    batches = [{k: t.float() if t.is_floating_point() else t for k, t in b.items()}
               for b in case.batches]
    op = hessian.HessianOperator(model, case.loss_fn, batches)
    for reorth in ("partial", "full"):
        res = eigsh(op, k=3, which="LM", reorth=reorth, tol=1e-5)
        assert res.converged
        np.testing.assert_allclose(res.eigenvalues, exact, rtol=0,
                                   atol=1e-5 * np.abs(lam).max())
        Y = res.eigenvectors.numpy()
        assert np.abs(Y.T @ Y - np.eye(3)).max() < 1e-5
        true = np.linalg.norm(o["H"].numpy() @ Y - Y * res.eigenvalues, axis=0)
        assert np.all(true <= 2e-5 * np.abs(res.eigenvalues))


def test_hutchinson_trace_in_float32(zoo):
    # Hutchinson on the float32 copy of each architecture sums z_i (A z)_i in float64 over
    # float32 row blocks (Backend.column_dots): its estimate equals the float64 mean of
    # z^T H z over the same Rademacher probes to within eps32 of mean |z|^T |H| |z| (measured:
    # 0.004-0.04 of it, 0.001-0.006 for the standard error), and so does its standard error.
    import copy

    from hessntk.spectral import trace
    from hessntk.spectral.probes import rademacher

    case, o = zoo
    H = o["H"].numpy()
    m = 40
    Z = rademacher(H.shape[0], m, 0)
    samples = np.einsum("ij,ij->j", Z, H @ Z)
    scale = np.einsum("ij,ij->j", np.abs(Z), np.abs(H) @ np.abs(Z)).mean()
    model = copy.deepcopy(case.model).float()
    batches = [{k: t.float() if t.is_floating_point() else t for k, t in b.items()}
               for b in case.batches]
    est = trace(hessian.HessianOperator(model, case.loss_fn, batches), num_matvecs=m,
                method="hutchinson", seed=0)
    eps = np.finfo(np.float32).eps
    assert abs(est.value - samples.mean()) <= eps * scale
    assert abs(est.stderr - samples.std(ddof=1) / np.sqrt(m)) <= eps * scale


@pytest.mark.parametrize("method", ["xtrace", "hutchpp"])
def test_sketched_trace_in_float32(zoo, method):
    # XTrace and Hutch++ keep a float32 operator's probes, sketches and Q in float32, with
    # float64 Grams: on the float32 copy of each architecture the estimate equals the same
    # estimator's on the dense float64 Hessian (same probes) to within eps32 sum |lambda|
    # (measured: 0.02-0.34 of it; with float64 sketches 0.002-0.67). Other probes would be
    # off by about the standard error, 1e5 times more.
    import copy

    from hessntk.spectral import aslinearoperator, trace

    case, o = zoo
    H = o["H"].numpy()
    model = copy.deepcopy(case.model).float()
    batches = [{k: t.float() if t.is_floating_point() else t for k, t in b.items()}
               for b in case.batches]
    est = trace(hessian.HessianOperator(model, case.loss_fn, batches), num_matvecs=40,
                method=method, seed=0)
    ref = trace(aslinearoperator(H), num_matvecs=40, method=method, seed=0)
    scale = np.abs(np.linalg.eigvalsh(H)).sum()
    assert abs(est.value - ref.value) <= np.finfo(np.float32).eps * scale
