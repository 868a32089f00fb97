"""Parameter blocks, restricted operators and the one-call spectral functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hessntk import hessian
from hessntk.hessian import GGNOperator, HessianOperator
from tests.helpers import assert_close
from tests.hessian.models import DT, case, dense_hessian


@pytest.fixture(scope="module")
def relu_case():
    model, loss, batches, _ = case("mlp_relu", sizes=[6, 4])
    names = [k for k, _ in model.named_parameters()]
    return model, loss, batches, dense_hessian(model, loss, batches, names)


@pytest.fixture(scope="module")
def tanh_case():
    model, loss, batches, _ = case("mlp_tanh")
    names = [k for k, _ in model.named_parameters()]
    return model, loss, batches, dense_hessian(model, loss, batches, names)


def _index(sl) -> np.ndarray:
    return np.arange(sl.start, sl.stop) if isinstance(sl, slice) else np.asarray(sl)


@pytest.mark.parametrize("blocks", ["tensor", "layer"])
def test_block_operators_are_dense_diagonal_blocks(relu_case, blocks: str) -> None:
    model, loss, batches, ref = relu_case
    op = HessianOperator(model, loss, batches, blocks=blocks)
    expected = {"tensor": ["0.weight", "0.bias", "2.weight", "2.bias"], "layer": ["0", "2"]}
    assert op.blocks == expected[blocks]
    covered = np.concatenate([_index(s) for s in op.block_slices])
    assert np.array_equal(np.sort(covered), np.arange(op.shape[0]))  # a partition
    for name, sl in zip(op.blocks, op.block_slices, strict=True):
        sub = op.block(name)
        ix = _index(sl)
        assert sub.shape[0] == len(ix) and sub.layout.names == op.block_params[name]
        assert_close(sub.matmat(torch.eye(len(ix), dtype=DT)), ref[ix][:, ix])


def test_custom_non_contiguous_blocks(relu_case) -> None:
    model, loss, batches, ref = relu_case
    groups = {"weights": ["0.weight", "2.weight"], "biases": ["0.bias", "2.bias"]}
    op = GGNOperator(model, loss, batches, blocks=groups)
    assert op.blocks == ["weights", "biases"]
    ix = op.block_slices[1]
    assert isinstance(ix, np.ndarray) and len(ix) == 5 + 2
    G = op.matmat(torch.eye(op.shape[0], dtype=DT))
    assert_close(op.block("biases").matmat(torch.eye(7, dtype=DT)), G[ix][:, ix])
    with pytest.raises(ValueError, match="partition"):
        HessianOperator(model, loss, batches, blocks={"a": ["0.weight"]})
    with pytest.raises(ValueError, match="block name"):
        op.block("nope")
    with pytest.raises(ValueError, match="blocks="):
        HessianOperator(model, loss, batches, blocks="module")


def test_block_traces_within_reported_error(relu_case) -> None:
    model, loss, batches, ref = relu_case
    op = HessianOperator(model, loss, batches, blocks="tensor")
    exact = {
        n: float(ref.diagonal()[_index(s)].sum())
        for n, s in zip(op.blocks, op.block_slices, strict=True)
    }
    for method in ("xtrace", "hutchinson"):
        est = hessian.block_traces(
            model, loss, batches, blocks="tensor", num_matvecs=24, method=method, seed=3
        )
        assert list(est) == op.blocks
        for name, e in est.items():
            assert e.num_matvecs <= 24 and e.stderr > 0
            assert abs(e.value - exact[name]) <= 4 * e.stderr + 1e-12, (method, name, e)
    # Hutchinson's probes in groups of 3 (the budget of 2 x 3 float64 vectors): same numbers
    n = sum(p.numel() for p in model.parameters())
    whole = hessian.block_traces(model, loss, batches, blocks="tensor", num_matvecs=24,
                                 method="hutchinson", seed=3)
    groups = hessian.block_traces(model, loss, batches, blocks="tensor", num_matvecs=24,
                                  method="hutchinson", seed=3, max_memory=2 * 3 * 8 * n)
    for name, e in groups.items():
        assert abs(e.value - whole[name].value) <= 1e-12 * abs(whole[name].value), name
    with pytest.raises(ValueError, match="max_memory"):
        hessian.trace(model, loss, batches, num_matvecs=24, max_memory=8 * n)
    # a budget of n products gives the exact traces
    exact_est = hessian.block_traces(model, loss, batches, blocks="tensor", num_matvecs=10**6)
    for name, e in exact_est.items():
        assert e.stderr == 0.0 and abs(e.value - exact[name]) <= 1e-10 * abs(ref).max()


def test_trace_and_density(tanh_case) -> None:
    model, loss, batches, ref = tanh_case
    exact = float(ref.trace())
    est = hessian.trace(model, loss, batches, num_matvecs=20, seed=0)
    assert est.num_matvecs <= 20 and abs(est.value - exact) <= 4 * est.stderr
    assert abs(hessian.trace(model, loss, batches, num_matvecs=10**6).value - exact) <= 1e-10
    # 8 probes: a standard error from 7 degrees of freedom (|t| > 4 has probability 0.5%;
    # with 3 probes it had 6%)
    d = hessian.density(model, loss, batches, num_probes=8, num_matvecs=12, seed=0)
    assert d.nodes.shape == (8, 12) and d.num_matvecs <= 96
    tr = d.trace()
    assert abs(tr.value - exact) <= 4 * tr.stderr
    # at full depth every probe's rule is exact for polynomials: nodes are eigenvalues
    full = hessian.density(model, loss, batches, num_probes=1, num_matvecs=10**6)
    lam = np.linalg.eigvalsh(ref.numpy())
    used = full.nodes[0][full.weights[0] > 1e-8]
    assert np.all(np.min(np.abs(used[:, None] - lam[None, :]), axis=1) <= 1e-8 * abs(lam).max())


def test_top_eigenvalues_and_eigenvectors(tanh_case) -> None:
    model, loss, batches, ref = tanh_case
    lam = np.linalg.eigvalsh(ref.numpy())
    res = hessian.top_eigenvalues(model, loss, batches, k=3, tol=1e-10, return_eigenvectors=True)
    assert res.converged
    with pytest.raises(ValueError, match="Krylov basis .* max_memory = 8 B"):
        hessian.top_eigenvalues(model, loss, batches, k=3, max_memory=8)
    np.testing.assert_allclose(res.eigenvalues, lam[::-1][:3], rtol=1e-9)
    vecs = torch.as_tensor(res.eigenvectors).to(DT)
    assert_close(ref @ vecs, vecs * torch.as_tensor(res.eigenvalues), rtol=1e-6)
    low = hessian.top_eigenvalues(model, loss, batches, k=2, which="SA", tol=1e-10)
    np.testing.assert_allclose(low.eigenvalues, lam[:2], rtol=1e-8, atol=1e-10 * abs(lam).max())
    ggn = hessian.top_eigenvalues(model, loss, batches, k=1, curvature="ggn", tol=1e-10)
    assert ggn.eigenvalues[0] > 0
    with pytest.raises(ValueError, match="curvature"):
        hessian.top_eigenvalues(model, loss, batches, curvature="fisher")


def test_block_top_eigenvalues_and_density(relu_case) -> None:
    model, loss, batches, ref = relu_case
    op = HessianOperator(model, loss, batches, blocks="tensor")
    res = hessian.block_top_eigenvalues(model, loss, batches, k=2, blocks="tensor", tol=1e-10)
    assert list(res) == op.blocks
    for name, sl in zip(op.blocks, op.block_slices, strict=True):
        ix = _index(sl)
        lam = np.linalg.eigvalsh(ref[ix][:, ix].numpy())[::-1]
        k = min(2, len(ix))  # "2.bias" has 2 entries: all of them, dense
        np.testing.assert_allclose(
            res[name].eigenvalues, lam[:k], rtol=1e-8, atol=1e-10 * abs(lam).max()
        )
    dens = hessian.block_density(model, loss, batches, num_probes=2, num_matvecs=8)
    assert list(dens) == ["0", "2"]
    assert dens["2"].nodes.shape == (2, 8) and dens["0"].n == 3 * 5 + 5


def test_memory_budgets_reach_the_spectral_core(relu_case) -> None:
    # max_memory / max_basis_bytes of the one-call functions are those of the core's calls
    model, loss, batches, _ = relu_case
    with pytest.raises(ValueError, match="Krylov basis .* max_memory = 8 B"):
        hessian.block_top_eigenvalues(model, loss, batches, k=2, blocks="tensor",
                                      max_memory=8)
    with pytest.raises(ValueError, match="max_basis_bytes"):
        hessian.density(model, loss, batches, num_probes=2, num_matvecs=8, max_basis_bytes=8)
    op = HessianOperator(model, loss, batches, blocks="layer")
    n = op.shape[0]
    lockstep = 8 * n * 8 * 2 * len(op.blocks)  # the basis of the one lockstep pass
    whole = hessian.block_density(op, num_probes=2, num_matvecs=8, max_basis_bytes=lockstep)
    apart = hessian.block_density(op, num_probes=2, num_matvecs=8, max_basis_bytes=lockstep - 1)
    for name in op.blocks:  # the pass per block, its SLQ within the same budget
        np.testing.assert_allclose(apart[name].nodes, whole[name].nodes, rtol=1e-10,
                                   atol=1e-12 * np.abs(whole[name].nodes).max())
    with pytest.raises(ValueError, match="max_basis_bytes"):
        hessian.block_density(op, num_probes=2, num_matvecs=8, max_basis_bytes=8)


def test_block_density_runs_the_lockstep_pass_it_chose(relu_case, monkeypatch) -> None:
    # the default budget is read once: memory taken between that reading and the pass's own
    # Lanczos (its start vectors) must not turn the chosen pass into a refusal
    import hessntk._memory

    model, loss, batches, _ = relu_case
    op = HessianOperator(model, loss, batches, blocks="layer")
    lockstep = 8 * op.shape[0] * 8 * 2 * len(op.blocks)
    readings = []

    def shrinking() -> int:  # 4 KiB fewer free at every later reading
        readings.append(1)
        return 4 * lockstep - 4096 * (len(readings) - 1)

    monkeypatch.setattr(hessntk._memory, "host_memory", shrinking)
    dens = hessian.block_density(op, num_probes=2, num_matvecs=8)
    assert list(dens) == list(op.blocks) and readings == [1]


def test_unravel_eigenvectors(tanh_case) -> None:
    model, loss, batches, _ = tanh_case
    op = HessianOperator(model, loss, batches)
    res = hessian.top_eigenvalues(model, loss, batches, k=2, return_eigenvectors=True)
    parts = op.unravel(torch.as_tensor(res.eigenvectors), dim=0)
    assert parts["0.weight"].shape == (5, 3, 2) and parts["2.bias"].shape == (2, 2)
