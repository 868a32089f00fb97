"""Progress bars: silent by default (the library never prints), drawn only under reporting()."""

from __future__ import annotations

import io

import numpy as np
import torch

from hessntk import _progress
from hessntk._progress import active, progress, reporting
from hessntk.criteria import compare
from hessntk.spectral import aslinearoperator, eigsh, lanczos, slq


def _op(n: int = 30):
    return aslinearoperator(np.diag(np.linspace(1.0, 2.0, n)))


def test_default_is_silent_and_returns_the_iterable_itself(capsys):
    items = [1, 2, 3]
    assert progress(items, "x") is items
    assert list(progress(3, "x")) == [0, 1, 2]
    slq(_op(), num_probes=4, num_matvecs=10, max_basis_bytes=8 * 30 * 10 * 2)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert not active()


def test_not_a_terminal_draws_nothing():
    buf = io.StringIO()
    with reporting(file=buf):
        assert not active()
        items = [1, 2]
        assert progress(items, "x") is items
    assert buf.getvalue() == ""


def test_forced_bars_name_the_loops_and_close_on_break():
    buf = io.StringIO()
    with reporting(file=buf, force=True):
        for i in progress(10, "short loop"):
            if i == 3:
                break
        lanczos(_op(), 5)
        slq(_op(), num_probes=4, num_matvecs=10, max_basis_bytes=8 * 30 * 10 * 2)
        eigsh(_op(), k=2, seed=0)
    text = buf.getvalue()
    assert "short loop" in text and "Lanczos steps" in text and "SLQ probe groups" in text
    assert "eigsh products" in text
    assert not active()  # the context restored the default


def test_short_loops_get_no_bar_and_contexts_nest():
    buf = io.StringIO()
    with reporting(file=buf, force=True):
        items = [1]
        assert progress(items, "one") is items
        with reporting(enabled=False):
            assert not active()
        assert active()
    assert buf.getvalue() == ""


def test_checkpoint_loop_of_compare_reports():
    X = torch.randn(3, 5, dtype=torch.float64)
    Y = torch.randn(3, 1, dtype=torch.float64)
    w = (torch.linalg.pinv(X) @ Y).T
    buf = io.StringIO()
    with reporting(file=buf, force=True):
        compare({"a": {"weight": w}, "b": {"weight": w}},
                lambda: torch.nn.Linear(5, 1, bias=False).double(), (X, Y), prior=1.0)
    assert "checkpoints" in buf.getvalue()


def test_numbers_do_not_depend_on_reporting():
    quiet = slq(_op(), num_probes=3, num_matvecs=8, seed=1)
    with reporting(file=io.StringIO(), force=True):
        loud = slq(_op(), num_probes=3, num_matvecs=8, seed=1)
    assert np.array_equal(quiet.nodes, loud.nodes) and np.array_equal(quiet.weights, loud.weights)
    assert _progress._STATE.enabled is False
