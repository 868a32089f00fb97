"""Plain-text tables, CSV and JSON of the criteria's results (one writer for each format).

The result types' ``table``, ``to_csv`` and ``to_json`` methods and the command line call
these, so a ranking or a sensitivity reads the same in a notebook and in a report folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from hessntk._io import atomic_write
from hessntk.report.jsonio import to_jsonable

__all__ = [
    "RANKING_COLUMNS",
    "allocation_table",
    "comparison_json",
    "comparison_table",
    "frontier_csv",
    "measurement_table",
    "ranking_csv",
    "ranking_table",
    "sensitivity_table",
    "write_csv",
    "write_json",
]

#: The IIC terms shown per checkpoint in a ranking.
RANKING_COLUMNS = ("value", "regularization", "sharpness", "sharpness_stderr", "curvature",
                   "correction")


def _write(text: str, path: str | os.PathLike | None) -> str:
    if path is not None:
        atomic_write(path, text)
    return text


def write_json(data: Any, path: str | os.PathLike | None = None) -> str:
    """Strict JSON text of ``data`` (nan/inf as null); also written to ``path`` when given."""
    return _write(json.dumps(to_jsonable(data), indent=2, allow_nan=False), path)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike | None = None,
              fields: Sequence[str] | None = None) -> str:
    """CSV text of ``rows`` (empty cells for None and nan); also written to ``path``."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(fields or rows[0]), extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows([{k: _cell(v) for k, v in r.items()} for r in rows])
    return _write(buf.getvalue(), path)


def _cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (list, tuple)):
        return "; ".join(map(str, v))
    return v


def _num(x: Any, width: int = 11) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return f"{'-':>{width}}"
    return f" {x:>{width - 1}.4g}"


# -- quantization -------------------------------------------------------------------------------


def _layer_names(names: Any) -> tuple[dict[Any, str], int]:
    """Each layer's label for a table column, and the column's width: the full names up to
    40 characters (at least 16), longer ones cut on the left ("..." and their tail, which
    tells apart ``transformer.h.0.attn.c_attn`` from ``transformer.h.1.attn.c_attn``), or
    all in full where two tails would read alike."""
    labels = [name or "<root>" for name in names]
    longest = max((len(label) for label in labels), default=0) + 1
    width = max(16, min(40, longest))
    cut = [label if len(label) < width else "..." + label[-(width - 4):] for label in labels]
    if len(set(cut)) < len(set(labels)):  # tails alike (encoder / decoder): the full names
        cut, width = labels, max(16, longest)
    return dict(zip(names, cut, strict=True)), width


def sensitivity_table(sens: Any) -> str:
    """One line per (layer, bit width) of a sensitivity, layers in rank order."""
    rows = list(sens.rows())
    label, w = _layer_names(list(dict.fromkeys(row["layer"] for row in rows)))
    head = (f"{'rank':>4}  {'layer':<{w}}{'params':>8}{'avg tr H':>11}{'+-':>9}"
            f"{'lam_max':>11}{'bits':>5}{'|dW|^2':>11}{'g.dW':>11}{'direct':>11}"
            f"{'trace':>11}{'eigen':>11}")  # fmt: skip
    lines = [head]
    for row in rows:
        first = row["bits"] == sens.bits[0]
        left = (f"{row['rank']:>4}  {label[row['layer']]:<{w}}{row['num_params']:>8}"
                f"{_num(row['average_trace'])}{_num(row['average_trace_stderr'], 9)}"
                f"{_num(row['top_eigenvalue'])}") if first else " " * (45 + w)  # fmt: skip
        lines.append(
            f"{left}{row['bits']:>5}{_num(row['error'])}{_num(row['gradient_term'])}"
            f"{_num(row['predicted_direct'])}{_num(row['predicted_trace'])}"
            f"{_num(row['predicted_eigenvalue'])}"
        )
    return "\n".join(lines)


def measurement_table(meas: Any) -> str:
    """The measured increases of a measurement, layers by bit widths."""
    label, w = _layer_names(list(meas.layers))
    lines = [f"{'layer':<{w}}{'params':>8}" + "".join(f"{f'{b} bits':>12}" for b in meas.bits)]
    for i, name in enumerate(meas.layers):
        cells = "".join(_num(v, 12) for v in meas.increase[i])
        lines.append(f"{label[name]:<{w}}{int(meas.num_params[i]):>8}{cells}")
    return "\n".join(lines)


def allocation_table(alloc: Any) -> str:
    """The chosen bit widths of an allocation, its size, predicted (and measured) increase."""
    label, w = _layer_names(list(alloc.bits))
    lines = [f"{'layer':<{w}}{'bits':>6}"]
    lines += [f"{label[k]:<{w}}{v:>6}" for k, v in alloc.bits.items()]
    lines.append(
        f"size {alloc.size_bits} bits (average {alloc.average_bits:.3g}, budget "
        f"{alloc.budget_bits:.6g}); predicted increase {alloc.predicted_increase:.4g} "
        f"({alloc.predictor})"
    )
    if alloc.verified and alloc.uniform is not None:
        lines.append(f"measured increase {alloc.measured_increase:.4g}; uniform "
                     f"{alloc.uniform['bits']}-bit {alloc.uniform['measured_increase']:.4g}")
    lines += list(alloc.notes)
    return "\n".join(lines)


def frontier_csv(alloc: Any, path: str | os.PathLike | None = None) -> str:
    """The Pareto frontier of an allocation: one row per point, one column per layer's bits."""
    rows = [
        {
            "size_bits": p["size_bits"],
            "average_bits": p["average_bits"],
            "predicted_increase": p["predicted_increase"],
            **{f"bits[{k}]": v for k, v in p["bits"].items()},
        }
        for p in alloc.frontier
    ]
    return write_csv(rows, path)


# -- rankings -------------------------------------------------------------------------------------


def ranking_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Checkpoints ranked by the IIC, one line each (missing or undefined terms as ``-``),
    then the reasons of every value that is not valid."""
    width = max([len(str(r["name"])) for r in rows] + [10])
    cols = {c: max(12, len(c) + 2) for c in RANKING_COLUMNS}
    head = f"{'rank':>4}  {'name':<{width}}" + "".join(f"{c:>{w}}" for c, w in cols.items())
    lines = [head + f"{'valid':>7}"]
    for r in rows:
        cells = "".join(_num(r.get(c), w) for c, w in cols.items())
        lines.append(f"{r['rank']:>4}  {str(r['name']):<{width}}{cells}{str(r['valid']):>7}")
    for r in rows:  # why each value is not valid, below the table
        if not r["valid"] and r.get("reasons"):
            lines.append(f"  {r['name']} not valid: " + "; ".join(map(str, r["reasons"])))
    return "\n".join(lines)


def ranking_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike | None = None) -> str:
    """The ranking as CSV: rank, name, the IIC terms, validity, reasons, checkpoint."""
    fields = ["rank", "name", *RANKING_COLUMNS, "valid", "reasons", "checkpoint"]
    return write_csv([{k: r.get(k) for k in fields} for r in rows], path, fields)


def comparison_table(comparison: Any) -> str:
    """:func:`ranking_table` of a :class:`~hessntk.criteria.Comparison`."""
    return ranking_table(comparison.rows)


def comparison_json(comparison: Any, path: str | os.PathLike | None = None) -> str:
    """A comparison as JSON: the ranking rows and every term of every checkpoint."""
    results = {k: v if isinstance(v, Mapping) else v.to_dict()
               for k, v in comparison.results.items()}
    return write_json({"rows": list(comparison.rows), "results": results}, path)
