"""The HTML report in a real headless chromium, offline: loads without console errors, its tables hold
the database's rows, every plot draws, and a screenshot is taken (kept next to the test's files)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import duckdb
import pytest

from fleetbench.coordinator.cli import main
from fleetbench.coordinator.store import Store

from .conftest import CONFIGS, add_samples, result

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (make browser installs it)")

# Test harness only (the product's page has no script): measure each plot and catch errors into the DOM.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener('load', () => {
  const plots = [...document.querySelectorAll('figure svg')].map(s => {
    const b = s.getBoundingClientRect();
    return {w: b.width, h: b.height, marks: s.querySelectorAll('path, use, text, rect').length};
  });
  const tables = {};
  for (const t of document.querySelectorAll('table')) {
    (tables[t.className] = tables[t.className] || []).push(t.tBodies[0].rows.length);
  }
  const overflow = [...document.querySelectorAll('.scroll')].filter(d => d.scrollWidth > d.clientWidth + 1)
    .map(d => d.firstElementChild.className + ' ' + d.scrollWidth + '>' + d.clientWidth);
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({plots, tables, errors: window.__errors,
    fetched: performance.getEntriesByType('resource').map(r => r.name), overflow,
    width: document.documentElement.scrollWidth, client: document.documentElement.clientWidth});
  document.body.appendChild(pre);
});
</script>"""
OFFLINE = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr",
           "--v=0", "--window-size=1280,2400", "--virtual-time-budget=5000"]


def chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(cwd)}    # a private profile: nothing shared with other runs
    return subprocess.run([CHROMIUM, *OFFLINE, f"--user-data-dir={cwd / 'profile'}", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=180, env=env)


def console_messages(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "CONSOLE" in ln or "Failed to load" in ln]


LONG = ("cv 31% > 15%; other processes used 1.75 cores during the window (> 0.25): python pid 28930 0.26, "
        "python pid 31836 0.27, coordinator pid 18909 0.30; min_iters not reached (14 < 50)")


def _batch_8_and_an_invalid_node(db: Path, run: str) -> None:
    """Alpha also at batch 8; every ok row of beta judged invalid with a long reason (the widest mark cell)."""
    samples = {}
    with Store(db) as store:
        for comp, backend, pa, _pb, f1, size, zsize in CONFIGS:
            r = result(run, "alpha", "id-a1", comp, backend, pa * 3, f1, size, zsize, batch_size=8)
            r.job_id += "-bs8"
            store.put_result(r)
            samples[r.job_id] = [pa * 3 * (1 + i / 400) for i in range(200)]
        for comp, backend, *_ in CONFIGS:
            store.mark_invalid(run, f"beta-{comp}-{backend}", LONG)
    add_samples(db, run, samples)


def _figure_labels(html: str, caption: str) -> list[str]:
    figure = re.search(rf"<figcaption>{re.escape(caption)}</figcaption>(.*?)</figure>", html, re.S).group(1)
    return re.findall(r"<text[^>]*>([^<]*)</text>", figure)


def test_report_html_in_headless_chromium(demo_db, tmp_path):
    db, first, _ = demo_db
    _batch_8_and_an_invalid_node(db, first)
    page = tmp_path / "report.html"
    assert main(["report", "--db", str(db), "--run", first, "--html", str(page), "--quiet"]) == 0

    shot = tmp_path / "report.png"
    done = chromium(f"--screenshot={shot}", page.as_uri(), cwd=tmp_path)
    assert shot.is_file(), done.stderr[-2000:]
    assert console_messages(done.stderr) == []

    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</head>", PROBE + "</head>", 1))
    dumped = chromium("--dump-dom", probed.as_uri(), cwd=tmp_path)
    assert console_messages(dumped.stderr) == []
    probe = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dumped.stdout, re.S).group(1)
                       .replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["errors"] == [] and probe["fetched"] == []    # self-contained: nothing fetched at all
    assert len(probe["plots"]) == 8      # four plots per batch size of the run (1 and 8)
    html = page.read_text()
    for bs in (1, 8):                    # every point names its configuration: engine by legend, compression by label
        for caption in (f"Latency vs quality per node, batch {bs} (Pareto set ringed)", f"Size vs latency per node, batch {bs}"):
            labels = _figure_labels(html, caption)
            assert sorted(t for t in labels if t in {c[0] for c in CONFIGS}) == sorted(c[0] for c in CONFIGS), caption
            assert {c[1] for c in CONFIGS} <= set(labels), caption
    beta = html[html.index(">beta — "):]
    assert beta.index('<p class="warning">Every measured row of this node (5) was judged invalid') < beta.index("<table")
    assert "other processes used (5 of 5)" in beta and "cv (5 of 5)" in beta
    assert "no valid ok row with latency_p50_ms (5 ok row(s) judged invalid)" in html   # beta's recommendation
    for plot in probe["plots"]:
        assert plot["w"] > 300 and plot["h"] > 100 and plot["marks"] > 20, plot
    assert probe["width"] <= probe["client"] <= 1280, "the page scrolls sideways at 1280 px"
    assert probe["overflow"] == [], "a table is wider than the page at 1280 px"

    con = duckdb.connect(str(db), read_only=True)
    per_node = dict(con.execute("SELECT node, count(*) FILTER (WHERE status = 'ok') FROM course "
                                "WHERE run_id = ? GROUP BY node ORDER BY node", [first]).fetchall())
    configs = con.execute("SELECT count(DISTINCT (model, compression, backend, device, batch_size)) FROM course "
                          "WHERE run_id = ? AND status = 'ok'", [first]).fetchone()[0]
    con.close()
    assert probe["tables"]["course"] == list(per_node.values())
    assert probe["tables"]["hardware"] == [configs]
    assert probe["tables"]["best"] == [len(per_node)]
    for node in per_node:
        assert f">{node} — " in dumped.stdout

    from PIL import Image
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2400)
    colors = img.resize((64, 120)).getcolors(64 * 120)
    assert colors is not None and len(colors) > 20   # drawn: not a blank page
    pdf = tmp_path / "report.pdf"     # printable: chromium's print path lays it out into pages
    printed = chromium(f"--print-to-pdf={pdf}", "--no-pdf-header-footer", page.as_uri(), cwd=tmp_path)
    assert pdf.is_file() and pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 20_000, printed.stderr[-500:]
    keep = os.environ.get("FLEETBENCH_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / "report.png")
