"""The HTML report rendered in a real headless browser (Debian's chromium; skipped without it):
the page loads, every image resolves, no table overflows its box, every CSV link resolves
(issue 18). CI installs chromium; elsewhere the test skips."""

from __future__ import annotations

import html.parser
import io
import json
import re
import shutil
import subprocess
import sys

import pytest

from hessntk.cli import main
from tests.test_cli import ENTRY, FAST, TINY_DEMO

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium to render the report")

HARNESS = """<!DOCTYPE html><html><body>
<iframe id="f" src="report.html" style="width:1280px;height:900px;border:0"></iframe>
<script>
const f = document.getElementById("f");
f.onload = () => {
  const d = f.contentDocument;
  const images = [...d.images].map(i => ({src: i.getAttribute("src"),
                                          ok: i.complete && i.naturalWidth > 0}));
  const overflow = [...d.querySelectorAll("table")].filter(t =>
      t.getBoundingClientRect().width > t.parentElement.clientWidth + 1).map(t =>
      t.closest("section").querySelector("h2").textContent);
  const body = d.documentElement.scrollWidth > f.clientWidth + 1;
  const sections = [...d.querySelectorAll("h2")].map(h => h.textContent);
  document.body.setAttribute("data-result",
      JSON.stringify({images, overflow, body, sections}));
};
</script></body></html>"""


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):  # noqa: ANN001, ANN201
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href"]


def _render(folder):
    (folder / "harness.html").write_text(HARNESS)
    done = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
         "--virtual-time-budget=15000", "--dump-dom", (folder / "harness.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    found = re.search(r'data-result="([^"]*)"', done.stdout)
    assert found, done.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


def _report(argv):
    buf, stdout = io.StringIO(), sys.stdout
    sys.stdout = buf
    try:
        assert main(argv) == 0
    finally:
        sys.stdout = stdout


@pytest.mark.parametrize("command", ["demo", "compare"])
def test_report_renders_complete_in_a_browser(command, tmp_path):
    out = tmp_path / command
    if command == "demo":
        _report([*TINY_DEMO, "--out", str(out)])
    else:
        import torch

        import tests.cli_models as cli_models

        torch.save(cli_models.train(3), tmp_path / "a.pt")
        torch.save(cli_models.train(60), tmp_path / "b.pt")
        _report(["compare", ENTRY, str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--out",
                 str(out), *FAST])
    result = _render(out)
    assert result["images"] and all(i["ok"] for i in result["images"]), result["images"]
    assert result["overflow"] == [] and not result["body"]
    assert result["sections"][0] == "Summary"
    assert {"Glossary", "Settings and versions"} <= set(result["sections"])
    links = _Links()
    links.feed((out / "report.html").read_text())
    csvs = [h for h in links.hrefs if h.endswith(".csv")]
    assert csvs and all((out / h).stat().st_size > 0 for h in csvs)
