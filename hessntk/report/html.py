"""Report folders of the command line: ``report.json`` (every number), plots and HTML."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hessntk._io import atomic_write
from hessntk.report.jsonio import to_jsonable
from hessntk.report.plots import save_figure

__all__ = ["SCHEMA", "Report"]

SCHEMA = "hessntk.report/1"


class Report:
    """A report folder: ``report.json`` (every number), PNG plots and ``report.html``.

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
    notes : list of str
    """

    def __init__(self, folder: str | os.PathLike, title: str, data: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.data = data
        self.sections: list[tuple[str, list[tuple[str, str, str]]]] = []
        self.plots: dict[str, str] = {}
        self.tables: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def add_section(self, title: str, rows: Sequence[tuple[str, str, str]]) -> None:
        """Add a block of ``(quantity, value, note)`` rows to the summary."""
        self.sections.append((title, [tuple(map(str, r)) for r in rows]))

    def add_table(self, title: str, text: str) -> None:
        """Add a preformatted table (shown as is in the summary and the HTML)."""
        self.tables.append((title, text))

    def add_plot(self, name: str, make: Any, caption: str) -> Path | None:
        """Save the figure ``make()`` as ``<folder>/<name>`` (PNG); note it if impossible.

        ``make`` is called here, so a missing matplotlib only skips the plot.
        """
        try:
            fig = make()
        except ImportError as err:
            self.notes.append(f"plot {name} skipped: {err}")
            return None
        path = save_figure(fig, self.folder / name)
        self.plots[name] = caption
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

    def payload(self) -> dict[str, Any]:
        """The JSON document (``report.json``)."""
        return to_jsonable({"schema": SCHEMA, "title": self.title, **self.data,
                            "plots": dict(self.plots), "notes": list(self.notes)})

    def html(self) -> str:
        """A self-contained HTML page showing the summary, tables and plots."""
        e = html.escape
        parts = [
            "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
            f"<title>{e(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin-bottom:1em}td,th{padding:.2em .8em;"
            "border-bottom:1px solid #ddd;text-align:left}td.v{font-family:monospace}"
            "pre{background:#f6f6f6;padding:.8em;overflow-x:auto}"
            "figure{margin:1em 0}img{max-width:100%}</style></head><body>",
            f"<h1>{e(self.title)}</h1>",
        ]
        for title, rows in self.sections:
            parts.append(f"<h2>{e(title)}</h2><table>")
            parts.append("<tr><th>quantity</th><th>value</th><th>note</th></tr>")
            for name, value, note in rows:
                parts.append(f"<tr><td>{e(name)}</td><td class='v'>{e(value)}</td>"
                             f"<td>{e(note)}</td></tr>")
            parts.append("</table>")
        for title, table in self.tables:
            parts.append(f"<h2>{e(title)}</h2><pre>{e(table)}</pre>")
        for name, caption in self.plots.items():
            parts.append(f"<figure><img src='{e(name)}' alt='{e(caption)}'>"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
        for note in self.notes:
            parts.append(f"<p><em>note: {e(note)}</em></p>")
        parts.append("<p>Every number, with its standard error and the settings: "
                     "<a href='report.json'>report.json</a>.</p></body></html>")
        return "\n".join(parts) + "\n"

    def write(self) -> dict[str, Path]:
        """Write ``report.json`` and ``report.html`` (atomically); return their paths."""
        paths = {"json": self.folder / "report.json", "html": self.folder / "report.html"}
        atomic_write(paths["json"], json.dumps(self.payload(), indent=2, allow_nan=False)
                     + "\n")
        atomic_write(paths["html"], self.html())
        return paths
