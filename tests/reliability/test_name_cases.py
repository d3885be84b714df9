"""Hostile names: refused at load when they are not plain text; shown, never obeyed, by every renderer.

A sweep's names are checked when the file is loaded (one line per bad name, exit 2). A results database
may still hold any text (rows of an older version, or written by hand): every command that shows it
escapes it for its medium. Terminal: no markup parsed, control characters as their escapes. Markdown: no
new line, heading, link or HTML. HTML: escaped text."""
from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from fleetbench.coordinator.cli import main
from fleetbench.shared.errors import printable, unsafe_char
from tests.fixtures.hostile_db import hostile as hostile_db
from tests.fixtures.hostile_db import set_name
from tests.reliability.test_sweep_cases import GOOD, validate

# Every kind of trouble at once: rich markup, ANSI colour, BEL, NUL, a newline that starts a Markdown heading,
# HTML that runs script, a table cell break, a right-to-left override, Markdown link and emphasis, mathtext.
EVIL = ("[/bold][link=https://evil.example]x[/link]\x1b[31mred\x07\x00\n# Injected <script>alert(1)</script>"
        "<img src=x onerror=alert(2)>|cell\u202eevil **b** [l](javascript:alert(3)) $\\foo$")


class Tty(io.StringIO):
    """A captured terminal: rich draws its tables here (TERM=dumb: no colour codes of its own)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, str, str]:
    return hostile_db(tmp_path_factory.mktemp("names"), EVIL, tmp_path_factory.getbasetemp())


def use_tty(monkeypatch) -> Tty:
    """stdout as a terminal, for the rest of this test (set in the test body: pytest's capture resets a
    fixture's stdout when the test starts)."""
    monkeypatch.setenv("TERM", "dumb")
    monkeypatch.setenv("COLUMNS", "3000")    # wide: a name stays on one line (rich needs both)
    monkeypatch.setenv("LINES", "50")
    out = Tty()
    monkeypatch.setattr(sys, "stdout", out)
    return out


def raw_controls(text: str) -> set[str]:
    """Characters a terminal would obey (newlines are the renderer's own)."""
    return {c for c in text if c != "\n" and unsafe_char(c)}


# -- at load: names are plain text ----------------------------------------------------------------

@pytest.mark.parametrize("case,value,what", [
    ("newline", r"a\nb", r"'\n' at position 1"),
    ("ansi-escape", r"a\e[31mred", r"'\x1b' at position 1"),
    ("bell", r"bell\a", r"'\x07' at position 4"),
    ("nul", r"nul\0", r"'\x00' at position 3"),
    ("tab", r"a\tb", r"'\t' at position 1"),
    ("carriage-return", r"a\rb", r"'\r' at position 1"),
    ("delete", r"a\x7fb", r"'\x7f' at position 1"),
    ("c1-next-line", r"a\x85b", r"'\x85' at position 1"),
    ("line-separator", r"a\u2028b", r"'\u2028' at position 1"),
    ("rtl-override", r"a\u202Eb", r"'\u202e' at position 1"),
])
def test_control_character_in_a_model_name_is_refused(tmp_path, capsys, case, value, what):
    rc, lines, path = validate(tmp_path, GOOD.replace("  - name: m\n", f'  - name: "{value}"\n'), capsys)
    assert rc == 2
    assert lines == [f"{path}:3:11: models[0].name: must be plain text: control character {what} "
                     "(no newline, tab, escape, NUL or direction mark)"]


@pytest.mark.parametrize("value", ['""', '"   "', '"\\t"', '"\\u3000"'])
def test_blank_sweep_name_is_refused(tmp_path, capsys, value):
    rc, lines, path = validate(tmp_path, GOOD.replace("name: hostile", f"name: {value}"), capsys)
    assert rc == 2
    assert lines == [f"{path}:1:7: name: must not be blank"]


def test_every_bad_name_at_once_one_line_each(tmp_path, capsys):
    models = "".join(f"  - name: {n}\n    source: timm:test_resnet\n    num_classes: 10\n"
                     for n in ('"a\\nb"', '" "', "ok"))
    text = GOOD.replace("name: hostile", 'name: "s\\x1bweep"').replace("models:\n", "models:\n" + models)
    rc, lines, path = validate(tmp_path, text, capsys)
    assert rc == 2
    assert [ln.split(": ")[1] for ln in lines] == ["name", "models[0].name", "models[1].name"]
    assert all(ln.startswith(f"{path}:") for ln in lines) and len(lines) == 3


def test_markup_and_html_characters_are_plain_text_and_accepted(tmp_path, capsys):
    rc, lines, _ = validate(tmp_path, GOOD.replace("  - name: m\n", '  - name: "[/bold] <b>x</b> | # $a$"\n'),
                            capsys)
    assert rc == 0 and lines == []


def test_node_target_with_a_control_character_is_refused(tmp_path, capsys):
    rc, lines, path = validate(tmp_path, GOOD.replace("targets: [all]", 'targets: ["node:a\\e[2J"]'), capsys)
    assert rc == 2
    assert lines == [f"{path}:11:11: targets[0]: bad target 'node:a\\x1b[2J': a node name is plain text "
                     "(no control characters)"]


# -- from a results database: shown, never obeyed --------------------------------------------------

def test_report_on_a_terminal_shows_markup_and_escapes_literally(hostile, monkeypatch):
    db, _, _ = hostile
    tty = use_tty(monkeypatch)
    assert main(["report", "--db", str(db)]) == 0
    out = tty.getvalue()
    assert raw_controls(out) == set()
    flat = "".join(out.split())     # rich folds long names over lines
    assert "".join(printable(EVIL).split()) in flat
    assert "[/bold][link=https://evil.example]x[/link]\\x1b[31mred\\x07\\x00\\n#" in flat


def test_report_markdown_adds_no_heading_link_or_html(hostile, tmp_path, capsys):
    db, _, _ = hostile
    md = tmp_path / "r.md"
    assert main(["report", "--db", str(db), "--md", str(md), "--quiet"]) == 0
    tokens = MarkdownIt("commonmark").enable("table").parse(md.read_text())
    kinds = {t.type for t in tokens} | {c.type for t in tokens for c in (t.children or [])}
    assert not kinds & {"html_block", "html_inline", "link_open", "image", "em_open", "strong_open"}
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    # title, Recommendation, the node, the model, Across hardware: nothing injected by the newline
    assert len(headings) == 5 and not any(h.startswith("Injected") for h in headings)
    model = tokens[[i for i, t in enumerate(tokens) if t.type == "heading_open"][3] + 1]
    assert "".join(c.content for c in model.children if c.type == "text") == printable(EVIL)


def test_report_html_has_only_its_own_tags(hostile, tmp_path, capsys):
    db, _, _ = hostile
    page = tmp_path / "r.html"
    assert main(["report", "--db", str(db), "--html", str(page), "--quiet"]) == 0   # plots: `$\foo$` is text
    tags, texts = read_html(page.read_text())
    assert not tags & {"script", "img", "a", "iframe", "link"}
    assert f"model {printable(EVIL)}" in texts
    assert not any(raw_controls(t) for t in texts)


def read_html(page: str) -> tuple[set[str], list[str]]:
    tags: set[str] = set()
    texts: list[str] = []

    class Reader(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.add(tag)

        def handle_data(self, data):
            texts.append(data)
    Reader(convert_charrefs=True).feed(page)
    return tags, texts


@pytest.mark.parametrize("argv,terminal", [
    (["runs"], True), (["best"], True), (["compare", "A", "B", "--all"], True), (["runs"], False),
    (["logs", "last"], False), (["query", "SELECT sweep, model, compression, hostname, error FROM results"], False)])
def test_commands_show_stored_names_as_text(hostile, monkeypatch, capsys, argv, terminal):
    db, first, second = hostile
    out = use_tty(monkeypatch) if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    argv = [first if a == "A" else second if a == "B" else a for a in argv]
    rc = main(argv + ["--db", str(db)])
    assert rc in (0, 1) and "Traceback" not in capsys.readouterr().err   # compare: 1 = the regression
    text = out.getvalue()
    assert raw_controls(text) == set()
    assert "\\x1b[31mred" in "".join(text.split())


def test_logs_keep_the_traceback_lines_and_escape_the_rest(hostile, capsys):
    db, _, _ = hostile
    assert main(["logs", "last", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "-- traceback\nTraceback (most recent call last):\n[/bold]" in out
    assert "\\x1b[31mred\\x07\\x00\n# Injected" in out      # the stored newline stays a line break
    assert raw_controls(out) == set()


def test_query_exports_keep_the_exact_text(hostile, capsys):
    db, _, _ = hostile
    sql = "SELECT DISTINCT model FROM results"
    assert main(["query", sql, "--db", str(db), "--format", "csv"]) == 0
    assert list(csv.reader(io.StringIO(capsys.readouterr().out)))[1] == [EVIL]
    assert main(["query", sql, "--db", str(db), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"model": EVIL}]
    assert main(["query", sql, "--db", str(db), "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and raw_controls(lines[2]) == set()
    cell = MarkdownIt("commonmark").enable("table").parse("\n".join(lines))
    assert [t.content for t in cell if t.type == "inline"][1] == lines[2][2:-2].replace("\\|", "|")   # one cell
    assert not {c.type for t in cell for c in (t.children or [])} & {"html_inline", "link_open", "strong_open"}


def test_query_table_names_its_hostile_column(hostile, capsys):
    db, _, _ = hostile
    assert main(["query", 'SELECT 1 AS "[/bold]\x1b[2J\x07"', "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "[/bold]\\x1b[2J\\x07" and raw_controls(out) == set()


def test_an_error_naming_a_hostile_path_is_escaped(tmp_path, capsys):
    db = tmp_path / "a\x1b[31m\x07b.duckdb"
    assert main(["report", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err == f"coordinator: {printable(str(db))}: no such results database\n"


def test_a_job_error_with_escapes_is_one_escaped_progress_line():
    from fleetbench.coordinator.run import Progress
    from tests.fixtures.hostile_db import _row
    stream = io.StringIO()
    bar = Progress(1, {"node-1": "n1"}, True, stream=stream)
    bar.result(_row("r", "m", "none", "pytorch", 1.0, status="failed", stage="build", error="bad\x1b[2J\nnext",
                    latency_p50_ms=None))
    bar.close()
    assert stream.getvalue().splitlines() == [
        "[1/1] n1: m/none/pytorch:cpu/bs1 failed (build: bad\\x1b[2J\\nnext) | ok 0, failed 1, unsupported 0"]


def test_sweep_name_of_only_markup_renders_in_report_and_runs(hostile, tmp_path, monkeypatch):
    tty = use_tty(monkeypatch)
    db = tmp_path / "r.duckdb"
    shutil.copy(hostile[0], db)
    set_name(db, "[/bold]")
    assert main(["report", "--db", str(db)]) == 0
    assert main(["runs", "--db", str(db)]) == 0
    assert "sweep [/bold], run" in tty.getvalue()


def test_renamed_in_place_database_renders_the_new_name(hostile, tmp_path, monkeypatch):
    tty = use_tty(monkeypatch)
    db = tmp_path / "copy.duckdb"
    shutil.copy(hostile[0], db)
    set_name(db, "\u202egnp.exe\x1b]8;;http://evil\x07link\x1b]8;;\x07")    # a direction trick and an OSC 8 link
    assert main(["report", "--db", str(db)]) == 0
    out = tty.getvalue()
    assert raw_controls(out) == set() and "\\u202egnp.exe\\x1b]8;;http://evil\\x07" in "".join(out.split())


def test_csv_quotes_a_bare_carriage_return(hostile, capsys):
    db, _, _ = hostile
    assert main(["query", "SELECT 'a' || chr(13) || 'b' AS \"c\rd\", 1 AS n", "--db", str(db), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out == '"c\rd","n"\n"a\rb","1"\n'
    assert list(csv.reader(io.StringIO(out, newline=""))) == [["c\rd", "n"], ["a\rb", "1"]]


def test_all_invalid_warning_with_a_hostile_reason_is_one_escaped_line(hostile, tmp_path, monkeypatch):
    import duckdb
    db = tmp_path / "invalid.duckdb"
    shutil.copy(hostile[0], db)
    con = duckdb.connect(str(db))
    con.execute("UPDATE results SET valid = false, validity = ? WHERE status = 'ok'", ["cv 40%\x1b[2J\n[/bold]"])
    con.close()
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["report", "--db", str(db), "--md", str(tmp_path / "r.md")]) == 0
    warning = next(ln for ln in out.getvalue().splitlines() if "was judged invalid" in ln)
    assert warning.endswith("For example: cv 40%\\x1b[2J [/bold]") and raw_controls(out.getvalue()) == set()
    assert "For example: cv 40%\\\\x1b\\[2J \\[/bold\\]**" in (tmp_path / "r.md").read_text()


def test_python_api_report_repr_is_plain_text(hostile):
    from fleetbench.coordinator.api import open as open_results
    rep = open_results(hostile[0]).report()
    assert raw_controls(repr(rep)) == set() and "\\x1b[31mred" in repr(rep)
    assert raw_controls(rep.text) == set()
