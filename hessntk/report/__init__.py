"""Reports of results: strict JSON, tables and CSV, plots, HTML report folders, resume stores.

Backend-free (numpy and, for plots, matplotlib). The result types' ``table``, ``to_json``,
``to_csv`` and ``plot`` methods call :mod:`hessntk.report.tables` and
:mod:`hessntk.report.plots`; the command line writes :class:`Report` folders and resumes
long runs from a :class:`PartialStore`.

Examples
--------
>>> import json, tempfile
>>> folder = tempfile.mkdtemp()
>>> rep = Report(folder, "example", {"value": 1.5, "missing": float("nan")})
>>> rep.add_section("numbers", [("value", "1.5", "")])
>>> paths = rep.write()
>>> doc = json.loads(paths["json"].read_text())
>>> doc["value"], doc["missing"], doc["schema"]
(1.5, None, 'hessntk.report/1')
"""

from hessntk._io import atomic_write
from hessntk.report.html import SCHEMA, Report
from hessntk.report.jsonio import dumps, file_digest, fingerprint, to_jsonable
from hessntk.report.plots import (
    plot_density,
    plot_frontier,
    plot_hessian_esd,
    plot_ntk_cdf,
    plot_quantization,
    plot_ranking,
    plot_sensitivity,
    plot_tail,
    save_figure,
    smoothed_density,
)
from hessntk.report.store import PartialStore, ResumeError, SLQGroups
from hessntk.report.tables import ranking_csv, ranking_table

__all__ = [
    "SCHEMA",
    "PartialStore",
    "Report",
    "ResumeError",
    "SLQGroups",
    "atomic_write",
    "dumps",
    "file_digest",
    "fingerprint",
    "plot_density",
    "plot_frontier",
    "plot_hessian_esd",
    "plot_ntk_cdf",
    "plot_quantization",
    "plot_ranking",
    "plot_sensitivity",
    "plot_tail",
    "ranking_csv",
    "ranking_table",
    "save_figure",
    "smoothed_density",
    "to_jsonable",
]
