import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from hessntk.checkpoints import load_checkpoint
from hessntk.criteria import compare, iic
from tests.criteria.test_iic import _interpolating_mlp


def _build():
    return nn.Sequential(nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 1)).double()


@pytest.fixture(scope="module")
def two_checkpoints():
    a, X, Y = _interpolating_mlp(seed=0)
    b, _, _ = _interpolating_mlp(seed=3)  # other hidden weights, refit last layer on same data
    # same data for both: refit b's last layer on a's data
    with torch.no_grad():
        Phi = torch.cat([b[1](b[0](X)), torch.ones(len(X), 1, dtype=torch.float64)], 1)
        sol = Phi.T @ torch.linalg.solve(Phi @ Phi.T, Y)
        b[2].weight.copy_(sol[:-1].T)
        b[2].bias.copy_(sol[-1])
    return {"a": a.state_dict(), "b": b.state_dict()}, (X, Y)


def test_ranking_table_and_json(two_checkpoints, tmp_path):
    ckpts, data = two_checkpoints
    cmp = compare(ckpts, _build, data)
    values = [iic(_load(s), data).value for s in ckpts.values()]
    assert [r["value"] for r in cmp.rows] == sorted(values)
    assert [r["rank"] for r in cmp.rows] == [1, 2]
    text = cmp.table()
    assert "sharpness" in text and "a" in text
    out = tmp_path / "cmp.json"
    cmp.to_json(out)
    loaded = json.loads(out.read_text())
    assert loaded["rows"][0]["value"] == cmp.rows[0]["value"]


def _load(state):
    m = _build()
    m.load_state_dict(state)
    return m.eval()


def test_common_random_numbers_reduce_the_spread_of_differences(two_checkpoints):
    ckpts, data = two_checkpoints
    kw = dict(method="slq", num_probes=4, num_matvecs=12)
    same, indep = [], []
    for seed in range(8):
        cmp = compare(ckpts, _build, data, seed=seed, **kw)
        same.append(cmp.results["a"].sharpness - cmp.results["b"].sharpness)
        a = iic(_load(ckpts["a"]), data, seed=seed, **kw).sharpness
        b = iic(_load(ckpts["b"]), data, seed=seed + 100, **kw).sharpness
        indep.append(a - b)
    assert np.std(same) < 0.5 * np.std(indep)


def test_checkpoint_files_and_refusals(two_checkpoints, tmp_path):
    ckpts, data = two_checkpoints
    path = tmp_path / "a.pt"
    torch.save({"state_dict": ckpts["a"]}, path)
    assert set(load_checkpoint(path)) == set(ckpts["a"])
    st = pytest.importorskip("safetensors.torch")
    st.save_file({k: v.contiguous() for k, v in ckpts["b"].items()}, tmp_path / "b.safetensors")
    cmp = compare([path, tmp_path / "b.safetensors"], _build, data)
    assert {r["name"] for r in cmp.rows} == {"a.pt", "b.safetensors"}


class Evil:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_untrusted_pickles_and_mismatched_architectures_are_refused(two_checkpoints, tmp_path):
    ckpts, data = two_checkpoints
    bad = tmp_path / "evil.pt"
    torch.save({"weight": Evil()}, bad)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_checkpoint(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="does not match the architecture"):
        compare({"a": ckpts["a"]}, lambda: nn.Linear(6, 1).double(), data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="at least one"):
            compare([], _build, data)


def test_a_non_finite_checkpoint_is_ranked_last_with_its_reason(two_checkpoints):
    """Issue 14 case 10: one non-finite checkpoint aborted the whole ranking unnamed."""
    ckpts, data = two_checkpoints
    broken = {k: v.clone() for k, v in ckpts["a"].items()}
    broken["0.weight"][2, 1] = float("nan")
    saved = []
    cmp = compare({"broken": broken, **ckpts}, _build, data,
                  on_result=lambda name, r: saved.append(name))
    assert [r["name"] for r in cmp.rows][-1] == "broken"
    assert [r["valid"] for r in cmp.rows] == [True, True, False]
    last = cmp.rows[-1]
    assert np.isnan(last["value"])
    assert last["reasons"] == ("checkpoint 'broken' has 1 non-finite value(s) of 384 in "
                               "'0.weight'",)
    assert saved == ["a", "b"]  # a failure is not saved for resuming
    assert "broken not valid: checkpoint 'broken' has 1 non-finite" in cmp.table()
    assert json.loads(cmp.to_json())["rows"][-1]["value"] is None
