"""Data-parallel operators on 2 gloo ranks against the single-process oracle.

Every rank runs the same public calls (products, eigsh, slq with a sharded basis, trace, the
IIC, quantization sensitivity) on its shard (37 samples: 18 + 19, ragged batches); the
results must be bit-identical across ranks and equal the single-process ones to
``1e-12`` relative in float64 (the sums over ranks are ordered differently).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import problems  # noqa: E402
from launch import run_ranks  # noqa: E402

#: Relative agreement of a distributed float64 result with the single-process one.
RTOL = 1e-12
#: transformers computes GPT-2's own loss in float32 (logits.float()): float32 rounding.
LOOSER = {"HV_gpt2": 1e-6, "loss_gpt2": 1e-6}

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")


def _load(out: Path, job: str, rank: int) -> dict:
    return torch.load(out / f"{job}.rank{rank}.pt", weights_only=False)


def _job(tmp: Path, job: str, timeout: float = 120.0, size: int = 2
         ) -> tuple[list[dict | None], list, float]:
    ranks, wall = run_ranks(job, tmp, size=size, timeout=timeout)
    results = [_load(tmp, job, r) if (tmp / f"{job}.rank{r}.pt").exists() else None
               for r in range(len(ranks))]
    return results, ranks, wall


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict]:
    results, ranks, _ = _job(tmp_path_factory.mktemp("core"), "core")
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].output + ranks[1].output
    return results, problems.results(problems.operators())


@pytest.mark.parametrize("key", problems.KEYS)
def test_two_ranks_give_the_single_process_numbers(core: tuple, key: str) -> None:
    (rank0, rank1), reference = core
    assert np.array_equal(rank0[key], rank1[key])  # replicated: the same bits on every rank
    expected = reference[key]
    scale = max(np.max(np.abs(expected)), np.finfo(np.float64).tiny)
    assert np.max(np.abs(rank0[key] - expected)) <= LOOSER.get(key, RTOL) * scale


def test_every_reference_result_is_compared(core: tuple) -> None:
    (rank0, _), reference = core
    assert set(reference) == set(problems.KEYS) == set(rank0) - {"basis_rows"}


def test_one_rank_gives_the_single_process_numbers(tmp_path: Path, core: tuple) -> None:
    (rank0,), ranks, _ = _job(tmp_path, "core", size=1)
    assert ranks[0].returncode == 0, ranks[0].output
    _, reference = core
    for key in problems.KEYS:
        scale = max(np.max(np.abs(reference[key])), np.finfo(np.float64).tiny)
        assert np.max(np.abs(rank0[key] - reference[key])) <= LOOSER.get(key, RTOL) * scale, key


def test_sharded_basis_keeps_each_ranks_slice(core: tuple) -> None:
    (rank0, rank1), reference = core
    n = reference["gradient"].shape[0]  # 51 parameters: 25 + 26
    assert (int(rank0["basis_rows"]), int(rank1["basis_rows"])) == (n // 2, n - n // 2)


def test_a_rank_that_exits_stops_the_other_with_a_clear_error(tmp_path: Path) -> None:
    (rank0, _), ranks, wall = _job(tmp_path, "rank_exits", timeout=60)
    assert ranks[1].returncode == 3 and ranks[0].returncode == 0, ranks[0].output
    assert "Rank 0 of 2 could not complete" in rank0["error"]
    assert "timeout" in rank0["error"]
    assert rank0["seconds"] < 20.0  # a closed connection is seen before the group timeout


def test_a_stalled_rank_times_out_the_other(tmp_path: Path) -> None:
    (rank0, _), ranks, _ = _job(tmp_path, "rank_stalls", timeout=60)
    assert ranks[0].returncode == 0, ranks[0].output
    assert "Timed out" in rank0["error"] or "timed out" in rank0["error"]
    assert 3.0 <= rank0["seconds"] <= 15.0  # the group timeout is 4 s


def test_an_error_on_one_rank_stops_every_rank_at_once(tmp_path: Path) -> None:
    (rank0, rank1), ranks, _ = _job(tmp_path, "nan_on_one_rank", timeout=60)
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].output
    assert rank1["error"].startswith("FloatingPointError") and "batch 0" in rank1["error"]
    assert rank0["error"].startswith("DistributedError: Rank(s) [1] of 2 failed in the check")
    assert rank0["seconds"] < 10.0  # not the 20 s timeout


@pytest.mark.parametrize(("job", "message"), [
    ("other_parameters", "Expected the same parameters"),
    ("same_data", "Expected each rank to hold its own data shard"),
    ("padding_sampler", "pads 37 samples to 38"),
    ("other_vectors", "Expected the same vectors of the Hessian-vector product"),
])
def test_inconsistent_ranks_are_refused_on_every_rank(tmp_path: Path, job: str,
                                                      message: str) -> None:
    results, ranks, _ = _job(tmp_path, job, timeout=60)
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].output
    for result in results:
        assert message in result["error"]


def test_a_distributed_sampler_without_padding_gives_the_full_data_mean(tmp_path: Path) -> None:
    from hessntk.hessian import HessianOperator

    (rank0, rank1), ranks, _ = _job(tmp_path, "exact_sampler", timeout=60)
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].output
    net, loss, x, y = problems.mlp()
    H = HessianOperator(net, loss, (x[:36], y[:36]))
    expected = H @ torch.ones(H.shape[0], dtype=torch.float64)
    assert torch.equal(rank0["HV"], rank1["HV"])
    torch.testing.assert_close(rank0["HV"], expected, rtol=RTOL, atol=RTOL * expected.abs().max())
    assert abs(rank0["loss"] - H.loss) <= RTOL * H.loss


def test_default_groups_follow_the_rank_with_the_least_free_memory(tmp_path: Path) -> None:
    (rank0, rank1), ranks, _ = _job(tmp_path, "unequal_memory", timeout=60)
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].output + ranks[1].output
    assert rank0["widths"] == rank1["widths"] == [1] * 18  # 3 groups of 1 probe x 6 steps
    assert torch.equal(rank0["nodes"], rank1["nodes"])
    # trace's groups too: rank 1's room (rank 0 alone would take the 6 probes at once)
    assert rank0["trace_widths"] == rank1["trace_widths"] == [3, 3]
    assert rank0["trace"] == rank1["trace"]
