"""Hostile sweep files: each is refused with exit 2 and exactly the lines expected (no Ray, no traceback).

Every case runs `coordinator validate` in this process on a file written here; the expected text of
each line is `<file>:<line>:<column>: <field path>: <message>`.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from fleetbench.coordinator.cli import main

GOOD = textwrap.dedent("""\
    name: hostile
    models:
      - name: m
        source: timm:test_resnet
        num_classes: 10
        input_size: [3, 32, 32]
    dataset: {kind: synthetic, limit: 8}
    compression: [none]
    backends: [pytorch]
    batch_sizes: [1]
    targets: [all]
    measure: {warmup_iters: 1, min_iters: 3, min_duration_s: 0, max_duration_s: 5}
    timeout_s: 60
    """)


def validate(tmp_path: Path, content, capsys, name: str = "sweep.yaml") -> tuple[int, list[str], Path]:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    rc = main(["validate", str(path), "--db", str(tmp_path / "r.duckdb")])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, [ln.removeprefix("coordinator: ") for ln in err.splitlines()], path


def edit(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


# (id, sweep text, expected "line:col: path: message" of the one error)
ONE_ERROR = [
    # duplicate keys, at every level
    ("dup-top", GOOD + "name: other\n", "14:1: name: duplicate key (first given at line 1)"),
    ("dup-model", edit("    num_classes: 10\n", "    num_classes: 10\n    num_classes: 11\n"),
     "6:5: models[0].num_classes: duplicate key (first given at line 5)"),
    ("dup-flow-map", edit("{kind: synthetic, limit: 8}", "{kind: synthetic, kind: digits}"),
     "7:28: dataset.kind: duplicate key (first given at line 7)"),
    ("dup-measure", edit("min_iters: 3,", "min_iters: 3, min_iters: 4,"),
     "12:42: measure.min_iters: duplicate key (first given at line 12)"),
    # no coercion
    ("bool-batch", edit("batch_sizes: [1]", "batch_sizes: [true]"),
     "10:15: batch_sizes[0]: expected an integer, got the boolean true"),
    ("str-batch", edit("batch_sizes: [1]", 'batch_sizes: ["1"]'),
     "10:15: batch_sizes[0]: expected an integer, got the text '1'"),
    ("float-batch", edit("batch_sizes: [1]", "batch_sizes: [1.0]"),
     "10:15: batch_sizes[0]: expected an integer, got the number 1.0"),
    ("str-classes", edit("num_classes: 10", 'num_classes: "10"'),
     "5:18: models[0].num_classes: expected an integer, got the text '10'"),
    ("bool-threads", edit("max_duration_s: 5}", "max_duration_s: 5, threads: true}"),
     "12:89: measure.threads: expected an integer, got the boolean true"),
    ("str-pretrained", edit("    num_classes: 10\n", "    num_classes: 10\n    pretrained: \"yes\"\n"),
     "6:17: models[0].pretrained: expected true or false, got the text 'yes'"),
    ("yes-pretrained", edit("    num_classes: 10\n", "    num_classes: 10\n    pretrained: 1\n"),
     "6:17: models[0].pretrained: expected true or false, got the number 1"),
    ("number-name", edit("name: hostile", "name: 123"), "1:7: name: expected text (quote it), got the number 123"),
    ("bool-name", edit("name: hostile", "name: yes"), "1:7: name: expected text (quote it), got the boolean true"),
    ("date-name", edit("name: hostile", "name: 2024-01-01"),
     "1:7: name: expected text (quote it), got a date (2024-01-01)"),
    ("str-timeout", edit("timeout_s: 60", 'timeout_s: "60"'), "13:12: timeout_s: expected a number, got the text '60'"),
    ("bool-timeout", edit("timeout_s: 60", "timeout_s: true"),
     "13:12: timeout_s: expected a number, got the boolean true"),
    ("str-percent", edit("compression: [none]", "compression: [{method: prune, percent: '50'}]"),
     "8:40: compression[0].percent: expected a number, got the text '50'"),
    ("bool-clusters", edit("compression: [none]", "compression: [{method: cluster, clusters: true}]"),
     "8:43: compression[0].clusters: expected an integer, got the boolean true"),
    ("float-size", edit("input_size: [3, 32, 32]", "input_size: [3, 32.5, 32]"),
     "6:21: models[0].input_size[1]: expected an integer, got the number 32.5"),
    # finite numbers in documented ranges
    ("inf-timeout", edit("timeout_s: 60", "timeout_s: .inf"), "13:12: timeout_s: must be a finite number, got inf"),
    ("nan-timeout", edit("timeout_s: 60", "timeout_s: .nan"), "13:12: timeout_s: must be a finite number, got nan"),
    ("neg-timeout", edit("timeout_s: 60", "timeout_s: -1"), "13:12: timeout_s: must be greater than 0, got -1"),
    ("huge-timeout", edit("timeout_s: 60", "timeout_s: 1.0e+9"),
     "13:12: timeout_s: must be less than or equal to 604800, got 1000000000.0"),
    ("inf-duration", edit("max_duration_s: 5}", "max_duration_s: .inf}"),
     "12:77: measure.max_duration_s: must be a finite number, got inf"),
    ("huge-batch", edit("batch_sizes: [1]", "batch_sizes: [1000000000000]"),
     "10:15: batch_sizes[0]: must be less than or equal to 4096, got 1000000000000"),
    ("zero-batch", edit("batch_sizes: [1]", "batch_sizes: [0]"),
     "10:15: batch_sizes[0]: must be greater than 0, got 0"),
    ("neg-warmup", edit("warmup_iters: 1", "warmup_iters: -1"),
     "12:25: measure.warmup_iters: must be greater than or equal to 0, got -1"),
    ("zero-classes", edit("num_classes: 10", "num_classes: 0"),
     "5:18: models[0].num_classes: must be greater than 0, got 0"),
    ("huge-classes", edit("num_classes: 10", "num_classes: 10000000"),
     "5:18: models[0].num_classes: must be less than or equal to 100000, got 10000000"),
    ("zero-threads", edit("max_duration_s: 5}", "max_duration_s: 5, threads: 0}"),
     "12:89: measure.threads: must be greater than 0, got 0"),
    ("neg-seed", edit("limit: 8}", "limit: 8, seed: -1}"), "7:44: dataset.seed: must be greater than or equal to 0, got -1"),
    ("one-cluster", edit("compression: [none]", "compression: [cluster-1]"),
     "8:15: compression[0]: clusters must be in [2, 65536], got 1"),
    ("short-size", edit("input_size: [3, 32, 32]", "input_size: [3, 32]"),
     "6:17: models[0].input_size[2]: required"),
    # empty lists that would plan nothing
    ("empty-compression", edit("compression: [none]", "compression: []"), "8:14: compression: must not be empty"),
    ("empty-targets", edit("targets: [all]", "targets: []"), "11:10: targets: must not be empty"),
    ("empty-backends", edit("backends: [pytorch]", "backends: []"), "9:11: backends: must not be empty"),
    ("empty-batches", edit("batch_sizes: [1]", "batch_sizes: []"), "10:14: batch_sizes: must not be empty"),
    ("empty-devices", GOOD + "devices: []\n", "14:10: devices: must not be empty"),
    ("empty-models", edit("models:\n  - name: m\n    source: timm:test_resnet\n    num_classes: 10\n"
                          "    input_size: [3, 32, 32]\n", "models: []\n"), "2:9: models: must not be empty"),
    # near-misses name what was meant
    ("typo-key", GOOD + "bakends: [openvino]\n", "14:1: bakends: unknown key (did you mean 'backends'?)"),
    ("typo-nested-key", edit("warmup_iters: 1", "warmup_iter: 1"),
     "12:11: measure.warmup_iter: unknown key (did you mean 'warmup_iters'?)"),
    ("typo-backend", edit("backends: [pytorch]", "backends: [onnxruntme]"),
     "9:12: backends[0]: unknown backend 'onnxruntme' (did you mean 'onnxruntime'?) "
     "(valid: pytorch, torchscript, onnxruntime, openvino, tensorrt, tflite)"),
    ("typo-scheme", edit("source: timm:", "source: tim:"),
     "4:13: models[0].source: unknown scheme 'tim' (did you mean 'timm'?) (valid: timm, python, onnx)"),
    ("typo-dataset-kind", edit("kind: synthetic", "kind: synthetc"),
     "7:17: dataset.kind: 'synthetc' is not one of digits, imagefolder, synthetic (did you mean 'synthetic'?)"),
    ("typo-method", edit("compression: [none]", "compression: [clustr-8]"),
     "8:15: compression[0]: unknown method 'clustr-8' (did you mean 'cluster'?) (valid: none, fp16, bf16, "
     "int8-dynamic, int8-static, prune, prune-channels, cluster; prune-<percent>, prune-channels-<percent>, "
     "cluster-<k>)"),
    ("typo-target-kind", edit("targets: [all]", "targets: [kind:nvidai]"),
     "11:11: targets[0]: unknown kind 'nvidai' (did you mean 'nvidia'?) (valid: cpu, nvidia, intel)"),
    # unsafe or odd YAML
    ("python-tag", edit("name: hostile", "name: !!python/object/apply:os.system ['touch pwned']"),
     "1:7: name: YAML tag !!python/object/apply:os.system is not allowed (plain values, lists and mappings only)"),
    ("binary-tag", edit("name: hostile", "name: !!binary aGVsbG8="),
     "1:7: name: YAML tag !!binary is not allowed (plain values, lists and mappings only)"),
    ("local-tag", edit("name: hostile", "name: !secret x"),
     "1:7: name: YAML tag !secret is not allowed (plain values, lists and mappings only)"),
    ("set-tag", edit("backends: [pytorch]", "backends: !!set {pytorch: null}"),
     "9:11: backends: YAML tag !!set is not allowed (plain values, lists and mappings only)"),
    ("merge-key", "base: &b {name: x}\n<<: *b\n", "2:1: (top level): merge keys (<<) are not allowed; write the keys out"),
    ("int-key", GOOD + "1: x\n", "14:1: (top level): mapping keys must be plain text, got !!int '1'"),
    ("recursive-alias", edit("targets: [all]", "targets: &t [*t]"),
     "11:10: targets[0]: an alias refers to a value that contains it (recursive); refused"),
    ("alias-bomb", "".join([f"a0: &a0 [{', '.join(['x'] * 10)}]\n"]
                           + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)]),
     "1:37: a4[7][8][8][8][9]: the document expands to more than 100000 values (aliases repeated too often); refused"),
    ("deep-nesting", "name: " + "[" * 70 + "]" * 70 + "\n",
     "1:71: name[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]"
     "[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: "
     "nested deeper than 64 levels; refused"),
    ("bad-int-tag", edit("timeout_s: 60", "timeout_s: !!int abc"), None),
    ("syntax", edit("backends: [pytorch]", "backends: [pytorch"), None),
    ("two-documents", GOOD + "---\nname: second\n", "14:1: invalid YAML: but found another document"),
    ("top-level-list", "- name: x\n", "1:1: expected a mapping at top level, got a list"),
    ("empty-file", "", "1:1: expected a mapping at top level, got an empty file"),
    ("comment-only", "# nothing\n", "1:1: expected a mapping at top level, got an empty file"),
]


@pytest.mark.parametrize("case,text,expect", ONE_ERROR, ids=[c[0] for c in ONE_ERROR])
def test_one_error_one_line(tmp_path, capsys, case, text, expect):
    rc, lines, path = validate(tmp_path, text, capsys)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"{path}:"), lines
    if expect is not None:
        assert lines[0] == f"{path}:{expect}", lines[0]


def test_bad_scalar_and_syntax_lines_name_the_place(tmp_path, capsys):
    rc, lines, path = validate(tmp_path, edit("timeout_s: 60", "timeout_s: !!int abc"), capsys)
    assert rc == 2 and lines == [f"{path}:13:12: timeout_s: cannot read 'abc' as int "
                                 "(invalid literal for int() with base 10: 'abc')"]
    rc, lines, path = validate(tmp_path, edit("backends: [pytorch]", "backends: [pytorch"), capsys)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"{path}:10:12: invalid YAML: expected ',' or ']'")


def test_mapping_instead_of_list(tmp_path, capsys):
    text = edit("models:\n  - name: m", "models:\n    name: m")
    rc, lines, path = validate(tmp_path, text, capsys)
    assert rc == 2 and lines == [f"{path}:3:5: models: expected a list, got a mapping"]


def test_every_error_at_once_in_line_order(tmp_path, capsys):
    text = (edit("num_classes: 10", 'num_classes: "10"').replace("backends:", "backnds:")
            .replace("timeout_s: 60", "timeout_s: .inf") + "name: again\n")
    rc, lines, path = validate(tmp_path, text, capsys)
    assert rc == 2
    assert lines == [
        f"{path}:1:1: backends: required",
        f"{path}:5:18: models[0].num_classes: expected an integer, got the text '10'",
        f"{path}:9:1: backnds: unknown key (did you mean 'backends'?)",
        f"{path}:13:12: timeout_s: must be a finite number, got inf",
        f"{path}:14:1: name: duplicate key (first given at line 1)",
    ]


# -- the file itself ----------------------------------------------------------------------------

def test_not_utf8(tmp_path, capsys):
    rc, lines, path = validate(tmp_path, GOOD.replace("hostile", "caf\xe9").encode("latin-1"), capsys)
    assert rc == 2 and lines == [f"{path}:1: not UTF-8 text (byte 0xe9 at offset 9)"]


def test_binary_file(tmp_path, capsys):
    rc, lines, path = validate(tmp_path, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", capsys)
    assert rc == 2 and lines == [f"{path}: binary file (NUL byte at offset 8), not a YAML sweep"]


def test_utf16_file(tmp_path, capsys):
    rc, lines, path = validate(tmp_path, GOOD.encode("utf-16"), capsys)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"{path}: binary file (NUL byte")


def test_directory(tmp_path, capsys):
    (tmp_path / "sweep.yaml").mkdir()
    rc, lines, path = validate(tmp_path, None, capsys)
    assert rc == 2 and lines == [f"{path}: is a directory, not a sweep file"]


def test_missing_file(tmp_path, capsys):
    rc, lines, path = validate(tmp_path, None, capsys)
    assert rc == 2 and lines == [f"{path}: no such file"]


def test_oversized_file(tmp_path, capsys):
    rc, lines, path = validate(tmp_path, GOOD + "#" * (2 << 20) + "\n", capsys)
    assert rc == 2 and lines == [f"{path}: {len(GOOD) + (2 << 20) + 1} bytes, over the 1024 KiB limit of a sweep file"]


def test_fifo_is_not_opened(tmp_path, capsys):
    os.mkfifo(tmp_path / "sweep.yaml")      # opening it would block forever
    rc, lines, path = validate(tmp_path, None, capsys)
    assert rc == 2 and lines == [f"{path}: not a regular file"]


def test_python_tag_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = edit("name: hostile", "name: !!python/object/apply:os.system ['touch pwned']")
    rc, _, _ = validate(tmp_path, text, capsys)
    assert rc == 2 and not (tmp_path / "pwned").exists()


def test_good_sweep_passes(tmp_path, capsys):
    rc, lines, _ = validate(tmp_path, GOOD, capsys)
    assert rc == 0 and lines == []


def test_schema_command_matches_the_shipped_schema_and_the_loader(capsys):
    """`coordinator schema` is what examples/sweep.schema.json holds (editors use it), and it agrees
    with the loader on the examples and on a few refusals."""
    import json

    import jsonschema
    import yaml
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    repo = Path(__file__).resolve().parents[2]
    assert schema == json.loads((repo / "examples" / "sweep.schema.json").read_text()), \
        "regenerate: coordinator schema > examples/sweep.schema.json"
    jsonschema.Draft202012Validator.check_schema(schema)
    check = jsonschema.Draft202012Validator(schema)
    for name in ("sweep.yaml", "compression.yaml"):
        text = (repo / "examples" / name).read_text()
        assert text.startswith("# yaml-language-server: $schema=sweep.schema.json\n")
        assert list(check.iter_errors(yaml.safe_load(text))) == []
    good = yaml.safe_load(GOOD)
    assert list(check.iter_errors(good)) == []
    for key, value in (("batch_sizes", [True]), ("batch_sizes", [5000]), ("compression", []),
                       ("bakends", ["x"]), ("timeout_s", "9"), ("timeout_s", 1e9), ("targets", [])):
        assert list(check.iter_errors({**good, key: value})), (key, value)
