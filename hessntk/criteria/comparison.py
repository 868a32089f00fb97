"""Rank checkpoints of one architecture by the IIC, with common random numbers."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hessntk._io import atomic_write
from hessntk._progress import progress
from hessntk.criteria.criterion import IICResult, iic

Checkpoint = Mapping[str, torch.Tensor] | nn.Module | str | os.PathLike

_COLUMNS = ("name", "value", "regularization", "sharpness", "sharpness_stderr", "curvature",
            "correction", "valid")


@dataclass(frozen=True)
class Comparison:
    """Checkpoints ranked by IIC (lower is better; invalid or undefined values last).

    Attributes
    ----------
    rows : tuple of dict
        One row per checkpoint, best first: ``name``, ``rank``, every IIC term, its standard
        error, validity and reasons.
    results : dict
        ``name -> IICResult``.
    """

    rows: tuple[dict[str, Any], ...]
    results: dict[str, IICResult]

    def table(self) -> str:
        """A plain-text table of the ranking."""
        cols = _COLUMNS[1:7]
        width = [max(12, len(c)) + 2 for c in cols]
        head = f"{'rank':>4}  {'name':<20}" + "".join(
            f"{c:>{w}}" for c, w in zip(cols, width, strict=True))
        lines = [head + f"{'valid':>7}"]
        for r in self.rows:
            cells = "".join(f"{r[c]:>{w}.5g}" for c, w in zip(cols, width, strict=True))
            lines.append(f"{r['rank']:>4}  {str(r['name'])[:20]:<20}{cells}{str(r['valid']):>7}")
        return "\n".join(lines)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Return the ranking as JSON (every term of every checkpoint); write it to ``path``."""
        text = json.dumps({"rows": list(self.rows),
                           "results": {k: v.to_dict() for k, v in self.results.items()}},
                          indent=2, default=float)
        if path is not None:
            atomic_write(path, text)
        return text

    def __str__(self) -> str:
        return self.table()


def load_checkpoint(source: Checkpoint) -> dict[str, torch.Tensor]:
    """Return a state dict from a dict, a module, or a ``.pt``/``.pth``/``.safetensors`` file.

    Files are read with ``torch.load(weights_only=True)``: a pickle that needs arbitrary code
    (a custom class) is refused. A file holding ``{"state_dict": ...}`` or ``{"model": ...}``
    is unwrapped.

    Raises
    ------
    ValueError
        A file that cannot be read safely or holds no state dict.
    """
    if isinstance(source, nn.Module):
        return source.state_dict()
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ValueError(f"Expected a checkpoint file; {path!r} does not exist.")
        if path.endswith(".safetensors"):
            try:
                from safetensors.torch import load_file
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError("Reading .safetensors needs: pip install safetensors") from err
            state = load_file(path)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - any unpickling failure means refuse
                raise ValueError(
                    f"Could not load {path!r} with torch.load(weights_only=True): it is not a "
                    f"plain tensor checkpoint (untrusted pickles are refused). {err}"
                ) from err
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = dict(state[key])
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"Expected a state dict of tensors in checkpoint {source!r}.")
    return dict(state)


def compare(
    checkpoints: Sequence[Checkpoint] | Mapping[str, Checkpoint],
    build_model: Callable[[], nn.Module],
    data: Any,
    **iic_kwargs: Any,
) -> Comparison:
    """Rank checkpoints of one architecture by the IIC.

    Every checkpoint is evaluated with the same ``seed`` (in ``iic_kwargs``, default 0), so
    stochastic (SLQ) terms use the same probe vectors for every checkpoint: common random
    numbers make the *differences* between checkpoints far less noisy than the values.

    Parameters
    ----------
    checkpoints : sequence or mapping name -> checkpoint
        State dicts, modules, or ``.pt``/``.pth``/``.safetensors`` paths.
    build_model : callable
        Returns a fresh model of the architecture; each checkpoint is loaded into it with
        ``load_state_dict(strict=True)``.
    data : (inputs, targets) or iterable of batches
        The training data.
    **iic_kwargs
        Passed to :func:`hessntk.criteria.iic` (prior, method, soft, seed, ...).

    Returns
    -------
    Comparison

    Raises
    ------
    ValueError
        A checkpoint that does not match the architecture (the keys are named), or an
        unreadable checkpoint.

    Examples
    --------
    >>> import torch
    >>> X = torch.randn(3, 5, dtype=torch.float64)
    >>> Y = torch.randn(3, 1, dtype=torch.float64)
    >>> build = lambda: torch.nn.Linear(5, 1, bias=False).double()
    >>> w = (torch.linalg.pinv(X) @ Y).T
    >>> table = compare({"a": {"weight": w}, "b": {"weight": 2 * w}}, build, (X, Y), prior=1.0)
    >>> [row["name"] for row in table.rows]  # "b" does not interpolate: ranked after "a"
    ['a', 'b']
    """
    items = (list(checkpoints.items()) if isinstance(checkpoints, Mapping)
             else [(_name(c, i), c) for i, c in enumerate(checkpoints)])
    if not items:
        raise ValueError("Expected at least one checkpoint; got none.")
    results: dict[str, IICResult] = {}
    for name, source in progress(items, "checkpoints"):
        model = build_model()
        state = load_checkpoint(source)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"Checkpoint {name!r} does not match the architecture from build_model: {err}"
            ) from err
        model.eval()
        results[str(name)] = iic(model, data, **iic_kwargs)

    return rank_results(results)


def rank_key(valid: bool, value: float | None) -> tuple[int, float]:
    """Sort key of the ranking: valid finite values first, then ascending (lower is better)."""
    finite = value is not None and math.isfinite(value)
    return (0 if (valid and finite) else 1, value if finite else math.inf)


def rank_results(results: Mapping[str, IICResult]) -> Comparison:
    """Rank IIC results, valid ones first, then by value (lower is better).

    Shared by :func:`compare` and :func:`hessntk.jax.compare`.
    """

    ordered = sorted(results.items(), key=lambda item: rank_key(item[1].valid, item[1].value))
    rows = []
    for rank, (name, r) in enumerate(ordered, start=1):
        rows.append({"rank": rank, "name": name, "value": r.value,
                     "regularization": r.regularization, "sharpness": r.sharpness,
                     "sharpness_stderr": r.sharpness_stderr, "curvature": r.curvature,
                     "correction": r.correction, "valid": r.valid, "reasons": list(r.reasons),
                     "residual": r.residual, "num_constraints": r.num_constraints})
    return Comparison(tuple(rows), dict(results))


def _name(source: Any, i: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.path.basename(os.fspath(source))
    return f"checkpoint {i}"
