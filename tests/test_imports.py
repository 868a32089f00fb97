"""Import hygiene: which backends each package imports, and the JAX side without torch.

- ``spectral``, ``criteria`` and ``report`` (and the backend-free helpers) import neither torch
  nor jax at module level: they see arrays through ``hessntk.spectral._backend``.
- ``import hessntk`` never imports jax, and imports torch only when a torch builder is used.
- ``hessntk.jax`` imports nothing of torch, and runs every criterion in a process where torch
  cannot be imported at all.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hessntk

ROOT = Path(hessntk.__file__).parent
BACKEND_FREE = ["spectral", "criteria", "report", "_memory.py", "_observations.py",
                "_priors.py", "_io.py", "_progress.py", "__init__.py"]
TORCH_SIDE = ("torch", "hessntk.hessian", "hessntk.ntk", "hessntk._model", "hessntk.checkpoints",
              "hessntk.cli")


def _module_level_imports(path: Path) -> list[str]:
    names = []
    for node in ast.parse(path.read_text()).body:  # module level only: lazy imports pass
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def _files(*parts: str) -> list[Path]:
    out = []
    for part in parts:
        target = ROOT / part
        out += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    return out


def _offenders(files: list[Path], banned: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(ROOT)}: {name}" for path in files
            for name in _module_level_imports(path)
            if any(name == b or name.startswith(b + ".") for b in banned)]


def test_backend_free_packages_import_neither_torch_nor_jax():
    bad = _offenders(_files(*BACKEND_FREE), ("torch", "jax", "jaxlib", "hessntk.jax",
                                             "hessntk.hessian", "hessntk.ntk",
                                             "hessntk._model", "hessntk.cli"))
    assert not bad, bad


def test_import_hessntk_never_imports_jax():
    """No module outside hessntk/jax imports jax (or hessntk.jax) at module level."""
    files = [p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] != "jax"]
    bad = _offenders(files, ("jax", "hessntk.jax"))
    assert not bad, bad


def test_the_jax_package_imports_nothing_of_torch():
    bad = _offenders(_files("jax"), TORCH_SIDE)
    assert not bad, bad


def test_missing_jax_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "hessntk.jax" or m.startswith("hessntk.jax.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "jax", None)  # as if jax were not installed
    with pytest.raises(ImportError, match=r"pip install 'hessntk\[jax\]'"):
        importlib.import_module("hessntk.jax")


_WITHOUT_TORCH = textwrap.dedent('''
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
            return None

    sys.meta_path.insert(0, NoTorch())
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import hessntk
    import hessntk.jax as hj
    from hessntk import criteria

    rng = np.random.default_rng(0)
    X, Y = jnp.asarray(rng.standard_normal((4, 10))), jnp.asarray(rng.standard_normal((4, 1)))
    f = lambda p, x: x @ p["w"]
    params = {"w": jnp.linalg.pinv(X) @ Y}
    res = hj.iic(f, params, (X, Y), prior=1.0)
    assert res.valid and res.num_constraints == 4, res
    K = hj.GramOperator(f, params, data=(X, Y), prior=1.0)
    assert criteria.iic(K, convention="A").multiplier_correction == 0.0  # linear in theta
    loss = lambda p, b: jnp.mean((b[0] @ p["w"][0] - b[1]) ** 2)
    sens = hj.quantization_sensitivity(loss, {"w": params["w"].T}, (X, Y[:, 0]), bits=(2, 8),
                                       metric="trace", num_matvecs=10)
    assert sens.layers == ("['w']",) and np.isfinite(sens.predictions()).all()
    meas = hj.measure_quantization(loss, {"w": params["w"].T}, (X, Y[:, 0]), bits=(2, 8))
    assert meas.increase.shape == (1, 2)
    top = hessntk.eigsh(hj.HessianOperator(loss, {"w": params["w"].T}, (X, Y[:, 0])), k=1)
    assert top.converged
    assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
    try:
        hessntk.hessian
    except ImportError as err:
        assert "hessntk[torch]" in str(err), err
    else:
        raise AssertionError("hessntk.hessian imported without torch")
    import contextlib, io, tempfile
    from hessntk.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["demo", "--quick", "--quiet", "--out", tempfile.mkdtemp()])
    assert code == 2 and "pip install 'hessntk[torch]'" in err.getvalue(), err.getvalue()
    print("ok")
''')


def test_jax_side_runs_every_criterion_without_torch():
    pytest.importorskip("jax", reason="jax not installed: pip install 'hessntk[jax]'")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_load_checkpoint_is_still_reachable_from_the_criteria():
    import hessntk.checkpoints
    import hessntk.criteria

    assert hessntk.criteria.load_checkpoint is hessntk.checkpoints.load_checkpoint
