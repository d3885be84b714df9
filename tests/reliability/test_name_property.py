"""Property: whatever text a stored name holds (arbitrary Unicode, control characters, rich markup, Markdown
and HTML metacharacters), every renderer shows it as text: the terminal (rich and plain), the Markdown and
HTML reports and every query format. Nothing crashes, nothing is obeyed, nothing is added to the page.

One real results database is read once (`tests/fixtures/hostile_db.py`, every name a placeholder); each
example puts its name where the placeholder was in the rows read back, so hundreds of names cost
milliseconds each, and the renderers see exactly what a database with that name would give them."""
from __future__ import annotations

import copy
import csv
import io
import json
import os
from html.parser import HTMLParser
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from fleetbench.coordinator.formats import render as render_format
from fleetbench.coordinator.report import compose, data, render_html, render_md, render_term
from fleetbench.shared.errors import printable, unsafe_char
from tests.fixtures.hostile_db import PLACEHOLDER, hostile

FRAGMENTS = ["[/bold]", "[bold red]", "[link=https://evil.example]", "[/link]", "[/]", "\x1b[31m", "\x1b[2J",
             "\x1b]8;;http://evil\x07", "\x07", "\x00", "\n# Injected\n", "\r", "\t", "\x7f", "\x85", "\u2028",
             "\u202e", "\u200b", "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "</td></tr>", "|",
             "\\", "`", "*", "_", "__", "**", "~~", "$", "$x^2$", "&amp;", "&", "<", ">", "#", "[x](javascript:1)",
             "![i](http://x/i.png)", "<http://x>", "---", "===", " ", "\u00a0", "漢字", "é", "🙂", "\ufeff"]
NAMES = st.one_of(st.text(max_size=24),
                  st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), min_size=1, max_size=6)
                  .map("".join))
SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "code", "div", "table",
             "thead", "tbody", "tr", "th", "td"}


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> data.RunData:
    db, _, _ = hostile(tmp_path_factory.mktemp("names"), PLACEHOLDER, tmp_path_factory.getbasetemp())
    return data.load(db)


def named(stored: data.RunData, name: str) -> data.RunData:
    """The run as a database holding `name` would give it."""
    def sub(v):
        if isinstance(v, str):
            return v.replace(PLACEHOLDER, name)
        if isinstance(v, dict):
            return {sub(k): sub(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(sub(x) for x in v)
        return v
    run = copy.copy(stored)
    run.run = copy.copy(stored.run)
    run.run.sweep = sub(stored.run.sweep)
    run.rows, run.hardware_columns, run.hardware_rows = sub(stored.rows), sub(stored.hardware_columns), \
        sub(stored.hardware_rows)
    return run


def obeyed(text: str) -> set[str]:
    return {c for c in text if c != "\n" and unsafe_char(c)}


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@settings(SETTINGS, max_examples=30)    # rich lays out every table: the slowest renderer
@given(NAMES)
def test_terminal(stored, name):
    rep = compose.compose(named(stored, name))
    with mock.patch.dict(os.environ, {"TERM": "dumb", "COLUMNS": "600", "LINES": "50"}):
        for out in (Tty(), io.StringIO()):       # rich tables, then plain text
            render_term.render(rep, file=out)
            text = out.getvalue()
            assert obeyed(text) == set()
            title = f"fleetbench report: sweep {printable(name)}, run {rep.data.run.run_id}"
            assert text.splitlines()[0].rstrip() == title


@SETTINGS
@given(NAMES)
def test_markdown_report(stored, name):
    rep = compose.compose(named(stored, name))
    page = render_md.render(rep)
    tokens = MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(page)
    inline = [c for t in tokens for c in (t.children or [])]
    assert not {t.type for t in tokens + inline} & {"html_block", "html_inline", "link_open", "image", "em_open",
                                                   "strong_open", "s_open", "hr"}
    assert sum(t.type == "code_inline" for t in inline) == 2          # the page's own `none` and SQL
    heads = [tokens[i + 1] for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert [t.tag for i, t in enumerate(tokens) if t.type == "heading_open"] == ["h1", "h2", "h2", "h3", "h2"]
    model = "".join(c.content for c in heads[3].children if c.type == "text")
    assert model.strip() == printable(name).strip()
    assert obeyed(page) == set()


@SETTINGS
@given(NAMES)
def test_html_report(stored, name):
    rep = compose.compose(named(stored, name))
    tags: list[str] = []
    texts: list[str] = [""]     # the text between two tags

    class Reader(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append(tag)
            texts.append("")

        def handle_endtag(self, tag):
            texts.append("")

        def handle_data(self, d):
            texts[-1] += d
    Reader(convert_charrefs=True).feed(render_html.render(rep, []))
    assert set(tags) <= PAGE_TAGS
    assert tags.count("h3") == 2 and tags.count("script") == 0
    assert f"model {printable(name)}" in texts
    assert not any(obeyed(t) for t in texts)


@SETTINGS
@given(NAMES)
def test_query_formats(name):
    columns, rows = [name, "p50_ms"], [[name, 1.5], ["x", None]]
    table = render_format(columns, rows, "table")
    assert obeyed(table) == set() and len(table.splitlines()) == 5
    md = render_format(columns, rows, "markdown")
    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    assert [t.type for t in tokens].count("th_open") == 2 and [t.type for t in tokens].count("td_open") == 4
    assert not {c.type for t in tokens for c in (t.children or [])} & {"html_inline", "link_open", "image"}
    assert list(csv.reader(io.StringIO(render_format(columns, rows, "csv"), newline=""))) == [
        [name, "p50_ms"], [name, "1.5"], ["x", ""]]
    if name != "p50_ms":     # two columns of one name: another matter
        assert json.loads(render_format(columns, rows, "json")) == [{name: name, "p50_ms": 1.5},
                                                                     {name: "x", "p50_ms": None}]


@settings(SETTINGS, max_examples=200)
@given(NAMES, NAMES)
def test_load_accepts_exactly_the_plain_names(sweep_name, model_name):
    from fleetbench.shared.errors import SweepError
    from fleetbench.shared.sweep import parse_sweep

    def plain(n: str) -> bool:
        return bool(n.strip()) and len(n) <= 200 and not any(unsafe_char(c) for c in n)
    data = {"name": sweep_name, "models": [{"name": model_name, "source": "timm:resnet18", "num_classes": 10}],
            "backends": ["pytorch"]}
    try:
        parse_sweep(data, "sweep.yaml")
    except SweepError as e:
        lines = str(e).splitlines()
        assert [ln.split(": ")[1] for ln in lines] == [p for p, n in (("name", sweep_name),
                                                                       ("models[0].name", model_name)) if not plain(n)]
        assert not any(obeyed(ln) for ln in lines)
    else:
        assert plain(sweep_name) and plain(model_name)
