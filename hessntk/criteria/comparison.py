"""Rank checkpoints of one architecture by the IIC, with common random numbers."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hessntk._progress import progress
from hessntk.criteria.iic import IICResult, iic

__all__ = ["Comparison", "compare", "rank_key", "rank_results"]


@dataclass(frozen=True)
class Comparison:
    """Checkpoints ranked by IIC (lower is better; invalid or undefined values last).

    Attributes
    ----------
    rows : tuple of dict
        One row per checkpoint, best first: ``name``, ``rank``, every IIC term, its standard
        error, validity and reasons.
    results : dict
        ``name -> IICResult`` (or its ``to_dict()`` for checkpoints given as ``known``, and a
        dict with ``value`` nan and the reason for a checkpoint whose numbers are not finite).
    """

    rows: tuple[dict[str, Any], ...]
    results: dict[str, Any]

    def table(self) -> str:
        """A plain-text table of the ranking (:func:`hessntk.report.comparison_table`)."""
        from hessntk.report.tables import comparison_table

        return comparison_table(self)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Return the ranking as JSON (every term of every checkpoint); write it to ``path``."""
        from hessntk.report.tables import comparison_json

        return comparison_json(self, path)

    def __str__(self) -> str:
        return self.table()


def compare(
    checkpoints: Sequence[Any] | Mapping[str, Any],
    build_model: Callable[[], Any] | None = None,
    data: Any = None,
    *,
    known: Mapping[str, IICResult | Mapping[str, Any]] | None = None,
    on_result: Callable[[str, IICResult], None] | None = None,
    **iic_kwargs: Any,
) -> Comparison:
    """Rank checkpoints of one architecture by the IIC.

    Every checkpoint is evaluated with the same ``seed`` (in ``iic_kwargs``, default 0), so
    stochastic (SLQ) terms use the same probe vectors for every checkpoint: common random
    numbers make the *differences* between checkpoints far less noisy than the values.

    Parameters
    ----------
    checkpoints : sequence or mapping name -> checkpoint
        With ``build_model``: torch state dicts, modules, or ``.pt``/``.pth``/
        ``.safetensors`` paths (:func:`hessntk.checkpoints.load_checkpoint`). Without it:
        Gram operators of any backend (``hessntk.jax.compare`` builds them from params
        pytrees), or torch models (with ``data``).
    build_model : callable, optional
        Returns a fresh torch model of the architecture; each checkpoint is loaded into it
        with ``load_state_dict(strict=True)``.
    data : (inputs, targets) or iterable of batches, optional
        The training data, for torch models.
    known : mapping name -> IICResult or its ``to_dict()``, optional
        Checkpoints evaluated before (e.g. by an interrupted run), ranked with the others.
    on_result : callable, optional
        ``on_result(name, result)`` after each checkpoint (e.g. to save it).
    **iic_kwargs
        Passed to :func:`hessntk.criteria.iic` (prior, method, soft, seed, ...).

    Returns
    -------
    Comparison

    Raises
    ------
    ValueError
        No checkpoint, a checkpoint that does not match the architecture (the keys are
        named), or an unreadable checkpoint.

    Notes
    -----
    A checkpoint with non-finite parameters, outputs or loss does not stop the ranking: it is
    ranked last, not valid, with the reason (``on_result`` is not called for it).

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
    if not items and not known:
        raise ValueError("Expected at least one checkpoint; got none.")
    results: dict[str, Any] = dict(known or {})
    for name, source in progress(items, "checkpoints"):
        try:
            if build_model is not None:
                from hessntk.checkpoints import load_into  # torch checkpoints

                subject = load_into(build_model, source, str(name))
            else:
                subject = source
            result = iic(subject, data, **iic_kwargs)
        except FloatingPointError as err:  # non-finite numbers: ranked last with the reason
            results[str(name)] = _failed(str(err))
            continue
        results[str(name)] = result
        if on_result is not None:
            on_result(str(name), result)
    return rank_results(results)


def _failed(reason: str) -> dict[str, Any]:
    """The row fields of a checkpoint that could not be evaluated: every number nan."""
    return {**dict.fromkeys(ROW_FIELDS, math.nan), "valid": False, "reasons": (reason,),
            "num_constraints": None}


def rank_key(valid: bool, value: float | None) -> tuple[int, float]:
    """Sort key of the ranking: valid finite values first, then ascending (lower is better)."""
    finite = value is not None and math.isfinite(value)
    return (0 if (valid and finite) else 1, value if finite else math.inf)


ROW_FIELDS = ("value", "regularization", "sharpness", "sharpness_stderr", "curvature",
              "correction", "valid", "reasons", "residual", "num_constraints")


def rank_results(results: Mapping[str, IICResult | Mapping[str, Any]]) -> Comparison:
    """Rank IIC results (or their ``to_dict()``), valid ones first, then by value."""
    fields = {name: (r if isinstance(r, Mapping) else r.to_dict()) for name, r in results.items()}
    ordered = sorted(fields.items(), key=lambda item: rank_key(item[1]["valid"],
                                                               item[1]["value"]))
    rows = tuple({"rank": rank, "name": name, **{k: d[k] for k in ROW_FIELDS}}
                 for rank, (name, d) in enumerate(ordered, start=1))
    return Comparison(rows, dict(results))


def _name(source: Any, i: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.path.basename(os.fspath(source))
    return f"checkpoint {i}"
