"""Report folders of the command line: ``report.json`` (every number), plots, CSV and HTML."""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hessntk._io import atomic_write
from hessntk.report.glossary import terms_in
from hessntk.report.jsonio import to_jsonable
from hessntk.report.plots import save_figure

__all__ = ["SCHEMA", "Report"]

SCHEMA = "hessntk.report/1"


class Report:
    """A report folder: ``report.json`` (every number), PNG plots, CSV tables and ``report.html``.

    The page leads with a summary (what the numbers say and which are trustworthy, with the
    reasons for any that are not), then one block per section: its rows and tables (real HTML
    tables, each with a CSV file beside it) next to its plots; then a glossary of the terms
    shown, the settings and the versions.

    Parameters
    ----------
    folder : path
        Created if needed.
    title : str
    data : dict
        The JSON payload (numbers, settings, versions); sections and plots are added to it.

    Attributes
    ----------
    sections : list of (title, rows)
        The human summary: rows of ``(quantity, value, note)``.
    plots : dict
        ``file name -> caption`` of the plots saved so far.
    tables : list of (title, text)
        Tables as printed in the summary.
    summary : list of str
        Lines of the page's summary (:meth:`add_summary`).
    notes : list of str
    """

    def __init__(self, folder: str | os.PathLike | None, title: str,
                 data: dict[str, Any]) -> None:
        # folder None: a report kept in memory only (the ranks but 0 under torchrun), whose
        # plots are neither drawn nor saved.
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.data = data
        self.sections: list[tuple[str, list[tuple[str, str, str]]]] = []
        self.plots: dict[str, str] = {}
        self.tables: list[tuple[str, str]] = []
        self.summary: list[str] = []
        self.notes: list[str] = []
        # per section index: its tables (title, text, rows, csv name, HTML columns) and plots
        self._blocks: dict[int, dict[str, list[Any]]] = {}

    def _block(self) -> dict[str, list[Any]]:
        if not self.sections:
            self.sections.append((self.title, []))
        return self._blocks.setdefault(len(self.sections) - 1, {"tables": [], "plots": []})

    def add_section(self, title: str, rows: Sequence[tuple[str, str, str]]) -> None:
        """Add a block of ``(quantity, value, note)`` rows to the summary (CSV beside it)."""
        self.sections.append((title, [tuple(map(str, r)) for r in rows]))
        self._block()

    def add_summary(self, line: str) -> None:
        """Add a line to the summary at the top of the page (what a number says, whether it
        can be trusted and why)."""
        self.summary.append(str(line))

    def add_table(self, title: str, text: str, rows: Sequence[dict[str, Any]] | None = None,
                  csv: str | None = None, columns: Sequence[str] | None = None) -> None:
        """Add a table to the current section: ``text`` for the printed summary, ``rows`` (one
        dict per row) for the HTML table (``columns`` of them; default all) and for the CSV
        file ``csv`` beside the report (every column)."""
        self.tables.append((title, text))
        self._block()["tables"].append((title, text, None if rows is None else list(rows),
                                        csv, None if columns is None else list(columns)))

    def add_plot(self, name: str, make: Any, caption: str) -> Path | None:
        """Save the figure ``make()`` as ``<folder>/<name>`` (PNG), beside the current section;
        note it if impossible.

        ``make`` is called here, so a missing matplotlib only skips the plot.
        """
        if self.folder is None:
            return None
        try:
            fig = make()
        except ImportError as err:
            self.notes.append(f"plot {name} skipped: {err}")
            return None
        path = save_figure(fig, self.folder / name)
        self.plots[name] = caption
        self._block()["plots"].append(name)
        return path

    def text(self) -> str:
        """The printed summary."""
        out = [self.title, ""]
        for title, rows in self.sections:
            out.append(title)
            width = max([len(r[0]) for r in rows] + [10])
            for name, value, note in rows:
                line = f"  {name:<{width}}  {value}"
                out.append(f"{line:<{width + 36}}  {note}".rstrip() if note else line)
            out.append("")
        for title, table in self.tables:
            out += [title, table, ""]
        for note in self.notes:
            out.append(f"note: {note}")
        return "\n".join(out).rstrip() + "\n"

    def csv_files(self) -> dict[str, list[dict[str, Any]]]:
        """``file name -> rows`` of every CSV file beside the report: one per section (its
        rows) and one per table given with rows."""
        files: dict[str, list[dict[str, Any]]] = {}
        named = {t[3] for block in self._blocks.values() for t in block["tables"] if t[3]}
        for i, (title, rows) in enumerate(self.sections):
            if rows:
                files[_unique({**files, **dict.fromkeys(named)}, _slug(title) + ".csv")] = [
                    {"quantity": a, "value": b, "note": c} for a, b, c in rows]
            for t_title, _, t_rows, csv, _ in self._blocks.get(i, {"tables": []})["tables"]:
                if t_rows is not None:
                    files[_unique(files, csv or _slug(t_title) + ".csv")] = t_rows
        return files

    def payload(self) -> dict[str, Any]:
        """The JSON document (``report.json``)."""
        return to_jsonable({"schema": SCHEMA, "title": self.title, **self.data,
                            "plots": dict(self.plots), "csv": list(self.csv_files()),
                            "summary": list(self.summary), "notes": list(self.notes)})

    def html(self) -> str:
        """A self-contained HTML page: summary, sections with their tables and plots side by
        side, glossary, settings and versions."""
        e = html.escape
        csvs = iter(self.csv_files())
        parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
                 "<meta name='viewport' content='width=device-width, initial-scale=1'>",
                 f"<title>{e(self.title)}</title><style>{CSS}</style></head><body>",
                 f"<h1>{e(self.title)}</h1>", "<section class='summary'><h2>Summary</h2><ul>"]
        lines = self.summary or ["See each section below; every number, with its standard "
                                 "error and settings, is in report.json."]
        parts += [f"<li>{e(line)}</li>" for line in lines]
        parts += [f"<li class='note'>note: {e(note)}</li>" for note in self.notes]
        parts.append("</ul></section>")
        for i, (title, rows) in enumerate(self.sections):
            block = self._blocks.get(i, {"tables": [], "plots": []})
            wide = any(t_rows and len(keep or t_rows[0]) > 6
                       for _, _, t_rows, _, keep in block["tables"])
            parts.append(f"<section><h2>{e(title)}</h2><div class='block'>"
                         f"<div class='tables{' wide' if wide else ''}'>")
            if rows:
                parts.append(_html_table([{"quantity": a, "value": b, "note": c}
                                          for a, b, c in rows], value_columns={"value"}))
                parts.append(_csv_link(next(csvs)))
            for t_title, text, t_rows, _, keep in block["tables"]:
                parts.append(f"<h3>{e(t_title)}</h3>")
                if t_rows is None:
                    parts.append(f"<pre>{e(text)}</pre>")
                else:
                    shown = t_rows if keep is None else [{k: r.get(k) for k in keep}
                                                         for r in t_rows]
                    parts.append(_html_table(shown) + _csv_link(next(csvs)))
            parts.append("</div>")
            if block["plots"]:
                parts.append("<div class='figures'>")
                for name in block["plots"]:
                    parts.append(f"<figure><img src='{e(name)}' alt='{e(self.plots[name])}'>"
                                 f"<figcaption>{e(self.plots[name])}</figcaption></figure>")
                parts.append("</div>")
            parts.append("</div></section>")
        shown = " ".join([self.title, *self.summary, *(t for t, _ in self.sections),
                          *(" ".join(r) for _, rows in self.sections for r in rows),
                          *(t for _, t in self.tables)])
        glossary = terms_in(shown)
        if glossary:
            parts.append("<section><h2>Glossary</h2><dl>")
            parts += [f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in glossary.items()]
            parts.append("</dl></section>")
        parts.append("<section><h2>Settings and versions</h2><div class='block'>")
        for key in ("settings", "seeds", "versions"):
            values = self.data.get(key)
            if isinstance(values, dict) and values:
                parts.append(f"<div class='tables'><h3>{e(key)}</h3>" + _html_table(
                    [{"name": k, "value": _plain(v)} for k, v in values.items()]) + "</div>")
        if self.data.get("argv"):
            parts.append("<div class='tables'><h3>command</h3><pre class='wrap'>hessntk "
                         f"{e(' '.join(map(str, self.data['argv'])))}</pre></div>")
        parts.append("</div></section>")
        parts.append("<p>Every number, with its standard error and the settings: "
                     "<a href='report.json'>report.json</a>.</p></body></html>")
        return "\n".join(parts) + "\n"

    def write(self) -> dict[str, Path]:
        """Write ``report.json``, the CSV tables and ``report.html`` (atomically); return the
        paths of the JSON and the HTML."""
        from hessntk.report.tables import write_csv

        for name, rows in self.csv_files().items():
            fields = list(dict.fromkeys(k for row in rows for k in row))
            write_csv([{k: _plain(v) for k, v in row.items()} for row in rows],
                      self.folder / name, fields)
        paths = {"json": self.folder / "report.json", "html": self.folder / "report.html"}
        atomic_write(paths["json"], json.dumps(self.payload(), indent=2, allow_nan=False)
                     + "\n")
        atomic_write(paths["html"], self.html())
        return paths


CSS = ("body{font-family:system-ui,sans-serif;max-width:1400px;margin:1.5em auto;"
       "padding:0 1em;color:#222}h2{border-bottom:1px solid #ccc;padding-bottom:.2em}"
       "section{margin-bottom:2em}.summary li{margin:.3em 0}.note{color:#8a5a00}"
       ".block{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}"
       ".tables{flex:1 1 34em;min-width:0;overflow-x:auto}.tables.wide{flex-basis:100%}"
       ".figures{flex:1 1 26em;min-width:0;max-width:48em}"
       "table{border-collapse:collapse;margin-bottom:.4em;font-size:.9em;max-width:100%}"
       "td,th{padding:.2em .6em;border-bottom:1px solid #e3e3e3;text-align:left;"
       "vertical-align:top}th{background:#f4f4f4;font-weight:600}"
       "td:first-child{white-space:nowrap}td.long{overflow-wrap:anywhere;min-width:14em}"
       "td.v{font-family:ui-monospace,monospace;white-space:nowrap}"
       "pre{background:#f6f6f6;padding:.8em;overflow-x:auto}pre.wrap{white-space:pre-wrap;"
       "overflow-wrap:anywhere}figure{margin:0 0 1em}"
       "img{max-width:100%;height:auto}figcaption{font-size:.85em;color:#555}"
       "dt{font-weight:bold;margin-top:.4em}dd{margin-left:1.5em}a.csv{font-size:.85em}")


def _html_table(rows: Sequence[dict[str, Any]], value_columns: set[str] | None = None) -> str:
    """Rows of dicts as an HTML table (numbers in monospace)."""
    e = html.escape
    if not rows:
        return "<p>(none)</p>"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = ["<table><thead><tr>" + "".join(
        "<th>" + e(str(c)).replace("_", "_<wbr>") + "</th>" for c in columns)
           + "</tr></thead><tbody>"]
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
            text = _cell(v)
            cls = ("v" if numeric or (value_columns and c in value_columns) else
                   "long" if len(text) > 24 else "")
            cells.append(f"<td class='{cls}'>{e(text)}</td>" if cls else f"<td>{e(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "; ".join(map(_cell, v))
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_cell(x)}" for k, x in v.items())
    return str(v)


def _plain(v: Any) -> Any:
    value = to_jsonable(v)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def _csv_link(name: str) -> str:
    e = html.escape
    return f"<p><a class='csv' href='{e(name)}'>{e(name)}</a></p>"


def _slug(title: str) -> str:
    """A file name from a title: ``"Hessian of the mean loss (5 parameters)"`` ->
    ``"hessian_of_the_mean_loss"``."""
    words = re.sub(r"\(.*?\)", " ", title.lower())
    slug = re.sub(r"[^a-z0-9]+", "_", words).strip("_")
    return slug[:40].rstrip("_") or "table"


def _unique(files: dict[str, Any], name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    out, k = name, 2
    while out in files:
        out, k = f"{stem}_{k}{dot}{ext}", k + 1
    return out
