"""Property: whatever text a sweep file holds, loading it returns a Sweep or raises SweepError whose
every line names the file; never another exception (no traceback reaches the user)."""
from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetbench.shared.errors import SweepError
from fleetbench.shared.sweep import Sweep, parse_sweep
from fleetbench.shared.yamlread import parse_yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_TEXT = (REPO / "examples" / "sweep.yaml").read_text()
EXAMPLE = yaml.safe_load(EXAMPLE_TEXT)
SETTINGS = settings(max_examples=1000, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def load_text(text: str) -> None:
    try:
        doc = parse_yaml(text, "sweep.yaml")
        assert isinstance(parse_sweep(doc.data, "sweep.yaml", doc), Sweep)
    except SweepError as e:
        lines = str(e).splitlines()
        assert lines and all(ln.startswith("sweep.yaml") for ln in lines), lines


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["all", "cpu", "none", "pytorch", "cluster-8",
                                                           "prune-50", "kind:cpu", "timm:x", "onnx:m.onnx"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
KEYS = ["name", "models", "dataset", "compression", "backends", "devices", "batch_sizes", "targets",
        "measure", "timeout_s", "source", "num_classes", "input_size", "kind", "method", "percent"]


@SETTINGS
@given(values)
def test_random_documents(data):
    load_text(yaml.safe_dump(data, allow_unicode=True))


def _mutate(data, path_choice, key, value, delete):
    """Replace, delete or add one value somewhere in a copy of the example sweep."""
    import copy
    data = copy.deepcopy(data)
    node, parents = data, []
    for step in path_choice:
        if isinstance(node, dict) and node:
            k = sorted(node)[step % len(node)]
            parents.append((node, k))
            node = node[k]
        elif isinstance(node, list) and node:
            i = step % len(node)
            parents.append((node, i))
            node = node[i]
        else:
            break
    if not parents:
        data[key] = value
        return data
    container, k = parents[-1]
    if delete and isinstance(container, dict):
        del container[k]
    elif isinstance(node, dict):
        node[key] = value
    else:
        container[k] = value
    return data


@SETTINGS
@given(st.lists(st.integers(0, 20), max_size=4), st.sampled_from(KEYS), values, st.booleans())
def test_mutations_of_the_example(path_choice, key, value, delete):
    load_text(yaml.safe_dump(_mutate(EXAMPLE, path_choice, key, value, delete), allow_unicode=True))


@settings(max_examples=500, deadline=None, database=None)
@given(st.integers(0, len(EXAMPLE_TEXT)), st.integers(0, 40),
       st.lists(st.sampled_from(list("[]{}:,-&*!|>'\"#%@`\t\n ?<=abc01.\ufeff\x85\u2028")
                                + ["!!python/object ", "<<: ", "&a ", "*a"]), max_size=8).map("".join))
def test_text_edits_of_the_example(at, cut, insert):
    load_text(EXAMPLE_TEXT[:at] + insert + EXAMPLE_TEXT[at + cut:])
