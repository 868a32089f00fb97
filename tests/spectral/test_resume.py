"""SLQ in saved probe groups: pooling densities, and resuming equals an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest

import hessntk.spectral.quadrature
from hessntk.report import PartialStore, ResumeError
from hessntk.spectral import SpectralDensity, aslinearoperator, rademacher, slq


def resumable_slq(op, *, store=None, key=None, name="slq", **kwargs):
    """SLQ in probe groups saved to (and resumed from) a command line's partial store."""
    return slq(op, store=None if store is None else store.slq_groups(name, key), **kwargs)


@pytest.fixture
def op():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    lam = np.linspace(-1.0, 3.0, 60) ** 3
    return aslinearoperator((U * lam) @ U.T)


def test_concatenate_pools_probe_groups_exactly(op):
    V = rademacher(60, 5, seed=3)
    whole = slq(op, v0=V, num_matvecs=12)
    parts = [slq(op, v0=V[:, :2], num_matvecs=12), slq(op, v0=V[:, 2:], num_matvecs=12)]
    pooled = SpectralDensity.concatenate(parts)
    assert pooled.num_probes == 5 and pooled.n == 60
    assert pooled.num_matvecs == whole.num_matvecs == 60
    np.testing.assert_allclose(pooled.nodes, whole.nodes, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pooled.weights, whole.weights, rtol=1e-12, atol=1e-12)
    assert pooled.trace().value == pytest.approx(whole.trace().value, rel=1e-12)


def test_concatenate_pads_shorter_rules_and_validates(op):
    a = slq(op, num_probes=2, num_matvecs=6)
    b = slq(op, num_probes=1, num_matvecs=9, seed=1)
    pooled = SpectralDensity.concatenate([a, b])
    assert pooled.nodes.shape == (3, 9)
    np.testing.assert_array_equal(pooled.weights[:2, 6:], 0.0)
    np.testing.assert_array_equal(pooled.nodes[:2, 6:], np.repeat(a.nodes[:, -1:], 3, 1))
    np.testing.assert_allclose(pooled.weights.sum(1), 1.0)
    # Padding has weight 0: traces are the probe-weighted means of the parts.
    expected = (2 * a.trace().value + b.trace().value) / 3
    assert pooled.trace().value == pytest.approx(expected, rel=1e-12)
    small = slq(aslinearoperator(np.eye(5)), num_probes=1, num_matvecs=2)
    with pytest.raises(ValueError, match="one operator size"):
        SpectralDensity.concatenate([a, small])
    with pytest.raises(ValueError, match="at least one"):
        SpectralDensity.concatenate([])


def test_one_group_is_bitwise_slq(op):
    d = resumable_slq(op, num_probes=4, num_matvecs=15, seed=7, probes_per_group=4)
    ref = slq(op, num_probes=4, num_matvecs=15, seed=7)
    assert np.array_equal(d.nodes, ref.nodes) and np.array_equal(d.weights, ref.weights)
    assert d.num_matvecs == ref.num_matvecs


def test_groups_match_slq_probe_by_probe(op):
    d = resumable_slq(op, num_probes=5, num_matvecs=15, seed=7, probes_per_group=2)
    ref = slq(op, num_probes=5, num_matvecs=15, seed=7)
    np.testing.assert_allclose(d.nodes, ref.nodes, rtol=1e-10, atol=1e-12)


def test_resume_after_an_interruption_equals_a_straight_run(op, tmp_path, monkeypatch):
    kwargs = dict(num_probes=7, num_matvecs=15, seed=2, probes_per_group=2, key={"m": 1})
    straight = resumable_slq(op, store=PartialStore(tmp_path / "a", resume=False), **kwargs)
    real, calls = hessntk.spectral.quadrature.lanczos, []

    def crash(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(hessntk.spectral.quadrature, "lanczos", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        resumable_slq(op, store=PartialStore(tmp_path / "b", resume=False), **kwargs)
    monkeypatch.setattr(hessntk.spectral.quadrature, "lanczos", real)
    store = PartialStore(tmp_path / "b", resume=True)
    resumed = resumable_slq(op, store=store, **kwargs)
    assert store.reused == 2
    assert np.array_equal(resumed.nodes, straight.nodes)
    assert np.array_equal(resumed.weights, straight.weights)
    assert np.array_equal(resumed.exact, straight.exact)
    assert resumed.num_matvecs == straight.num_matvecs
    # Without resume the store starts empty and everything is recomputed.
    fresh = PartialStore(tmp_path / "b", resume=False)
    assert not fresh.path.exists()


def test_resume_with_other_settings_is_refused(op, tmp_path):
    store = PartialStore(tmp_path, resume=False)
    resumable_slq(op, num_probes=2, num_matvecs=10, probes_per_group=1, store=store,
                  key={"model": "a"})
    with pytest.raises(ResumeError, match="model"):
        resumable_slq(op, num_probes=2, num_matvecs=10, probes_per_group=1,
                      store=PartialStore(tmp_path, resume=True), key={"model": "b"})
    with pytest.raises(ResumeError, match="num_matvecs"):
        resumable_slq(op, num_probes=2, num_matvecs=9, probes_per_group=1,
                      store=PartialStore(tmp_path, resume=True), key={"model": "a"})


def test_a_foreign_partial_folder_is_never_deleted(tmp_path):
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "mine.txt").write_text("keep")
    with pytest.raises(ResumeError, match="not written by hessntk"):
        PartialStore(tmp_path, resume=False)
    assert (tmp_path / "partial" / "mine.txt").read_text() == "keep"


def test_a_changed_partial_result_with_the_right_key_is_refused(tmp_path):
    """Issue 14 case 10: a tampered partial file with the right key was trusted."""
    store = PartialStore(tmp_path, resume=False)
    store.save_json("a", {"value": 2.0}, key={"seed": 0})
    f = store.path / "a.json"
    f.write_text(f.read_text().replace("2.0", "3.0"))
    with pytest.raises(ResumeError, match="changed after hessntk wrote it"):
        PartialStore(tmp_path, resume=True).load_json("a", key={"seed": 0})


def test_changed_or_truncated_probe_groups_are_refused(op, tmp_path):
    """Issue 14 case 10: a truncated group file gave a bare BadZipFile."""
    kwargs = dict(num_probes=2, num_matvecs=10, probes_per_group=1, key={"model": "a"})
    resumable_slq(op, store=PartialStore(tmp_path, resume=False), **kwargs)
    group = tmp_path / "partial" / "slq-group000.npz"
    with np.load(group) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["alpha"] = arrays["alpha"] * 1.01  # same key, other numbers
    np.savez(group, **arrays)
    with pytest.raises(ResumeError, match="slq-group000.npz was changed"):
        resumable_slq(op, store=PartialStore(tmp_path, resume=True), **kwargs)
    group.write_bytes(group.read_bytes()[:100])
    with pytest.raises(ResumeError, match="slq-group000.npz is unreadable .*BadZipFile"):
        resumable_slq(op, store=PartialStore(tmp_path, resume=True), **kwargs)
