"""The DLPack bridge is zero-copy; importing hessntk never imports jax; a clear ImportError."""

import ast
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax not installed: pip install 'hessntk[jax]'")
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402

import hessntk  # noqa: E402
from hessntk.jax import GramOperator  # noqa: E402
from hessntk.jax.bridge import TorchView, to_jax, to_torch  # noqa: E402
from tests.helpers import assert_close  # noqa: E402
from tests.jax.models import mlp  # noqa: E402


def test_zero_copy_both_ways():
    x = jnp.arange(12.0).reshape(3, 4)
    t = to_torch(x)
    assert t.data_ptr() == x.unsafe_buffer_pointer() and t.dtype == torch.float64
    assert t.shape == (3, 4) and t[2, 3].item() == 11.0
    u = torch.arange(12.0, dtype=torch.float64).reshape(4, 3)
    v = to_jax(u)
    assert v.unsafe_buffer_pointer() == u.data_ptr() and v.dtype == jnp.float64
    w = to_jax(u.T)  # a strided (transposed) view: still no copy
    assert w.unsafe_buffer_pointer() == u.data_ptr()
    assert_close(np.asarray(w), u.T.numpy())


def test_torch_view_of_a_jax_operator(jax_mlp, oracle):
    params, (x, _) = jax_mlp
    op = GramOperator(mlp, params, x, prior="init")
    view = TorchView(op)
    assert view.backend == "torch" and view.dtype == torch.float64 and view.shape == (75, 75)
    V = torch.from_numpy(np.random.default_rng(0).standard_normal((75, 2)))
    K = (oracle["J"] * oracle["s"]) @ oracle["J"].T
    out = view.matmat(V)
    assert isinstance(out, torch.Tensor)
    assert_close(out, K @ V.numpy())
    assert_close(view.diagonal(), np.diag(K))
    assert view.structural_nullity == 0


def test_import_hessntk_never_imports_jax():
    """No module outside hessntk/jax imports jax (or hessntk.jax) at module level."""
    root = Path(hessntk.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if "jax" in path.relative_to(root).parts[:1]:
            continue
        for node in ast.parse(path.read_text()).body:  # module level only: lazy imports pass
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names
                          if n.split(".")[0] == "jax" or n.startswith("hessntk.jax")]
    assert not offenders, offenders


def test_missing_jax_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "hessntk.jax" or m.startswith("hessntk.jax.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "jax", None)  # as if jax were not installed
    with pytest.raises(ImportError, match=r"pip install 'hessntk\[jax\]'"):
        importlib.import_module("hessntk.jax")
