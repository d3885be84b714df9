"""`coordinator run --model timm:resnet18 ...`: a one-model sweep from flags, without a YAML file.

The flags become a dict of the sweep file's shape, validated by the same schema (shared/sweep.py);
each error names the flag it came from. `--save-sweep F` writes that dict as the YAML file it ran,
so `coordinator run F` runs the same jobs (the same job ids) again.
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any, Optional

from fleetbench.shared.errors import SweepError
from fleetbench.shared.sweep import BACKENDS, Sweep, parse_sweep

# the sweep field each flag sets (errors at these paths are reported under the flag's name)
FLAG_OF = {"models[0].source": "--model", "models[0].checkpoint": "--checkpoint", "models[0].pretrained": "--pretrained",
           "models[0].num_classes": "--num-classes", "models[0].input_size": "--input-size",
           "models[0].name": "--model", "name": "--model", "compression": "--compression", "backends": "--backends",
           "batch_sizes": "--batch-sizes", "dataset": "--dataset", "dataset.limit": "--limit",
           "measure": "--measure"}
FLAGS = ("checkpoint", "pretrained", "num_classes", "input_size", "compression", "backends", "batch_sizes",
         "dataset", "limit", "measure", "save_sweep", "force")
ORIGIN = "sweep"   # what read_sweep and parse_sweep call a sweep that is not a file


def add_arguments(run: argparse.ArgumentParser) -> None:
    g = run.add_argument_group("one model without a sweep file (instead of SWEEP)")
    g.add_argument("--model", metavar="SOURCE", help="timm:<arch>, onnx:<file> or python:<module>:<callable>; "
                   "its name in the rows is the arch, file or callable name")
    g.add_argument("--checkpoint", metavar="FILE", help="weights to load (.safetensors, .pt, .pth)")
    g.add_argument("--pretrained", action="store_true", help="timm's pretrained weights (where the hub is reachable)")
    g.add_argument("--num-classes", type=int, metavar="N",
                   help="classes of the model's head (default: 10 for digits, the number of class folders for "
                        "imagefolder, 1000 for synthetic)")
    g.add_argument("--input-size", metavar="C,H,W", help="input size (default: 3,224,224)")
    g.add_argument("--compression", metavar="LIST", help="comma-separated: none, fp16, bf16, int8-dynamic, "
                   "int8-static, prune-<percent>, prune-channels-<percent>, cluster-<k> (default: none)")
    g.add_argument("--backends", metavar="LIST", help=f"comma-separated, or all (default: all = {','.join(BACKENDS)})")
    g.add_argument("--batch-sizes", metavar="LIST", help="comma-separated (default: 1)")
    g.add_argument("--dataset", metavar="KIND", help="digits (built in), synthetic, or imagefolder:PATH "
                   "(default: digits)")
    g.add_argument("--limit", type=int, metavar="N", help="evaluate on at most N items of the dataset")
    g.add_argument("--measure", metavar="K=V,...", help="timing settings, as the sweep file's measure: "
                   "(e.g. min_duration_s=0.5,min_iters=20,warmup_iters=2)")
    g.add_argument("--save-sweep", metavar="FILE", help="write the sweep it runs as YAML to FILE, before it runs")
    g.add_argument("--force", action="store_true", help="let --save-sweep replace an existing file")


def given(args: argparse.Namespace) -> list[str]:
    """The sweep-building flags given besides --model (an error with a sweep file)."""
    return ["--" + f.replace("_", "-") for f in FLAGS if getattr(args, f, None) not in (None, False)]


def _name(source: str) -> str:
    """The model's name in the rows: the arch, the file's stem or the callable."""
    target = source.partition(":")[2]
    if source.startswith("onnx:"):
        return Path(target).stem or target
    return target.rpartition(":")[2] or source


def _ints(flag: str, text: str, problems: list[str], count: Optional[int] = None) -> Optional[list[int]]:
    """Comma-separated integers, or None with the problem noted."""
    try:
        values = [int(p.strip()) for p in text.split(",")]
    except ValueError:
        problems.append(f"{flag}: {text!r}: expected comma-separated integers"
                        + (f" ({count} of them, e.g. 3,224,224)" if count else ""))
        return None
    if count is not None and len(values) != count:
        problems.append(f"{flag}: {text!r}: expected {count} integers (e.g. 3,224,224), got {len(values)}")
        return None
    return values


def _words(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()] or [text]


def _measure(text: str, problems: list[str]) -> dict[str, Any]:
    """`k=v,k=v` as a mapping; values read as YAML scalars (numbers, true/false, null)."""
    import yaml
    out: dict[str, Any] = {}
    for part in _words(text):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            problems.append(f"--measure: {part!r}: expected KEY=VALUE (e.g. min_duration_s=0.5)")
            continue
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            problems.append(f"--measure: {part!r}: {value!r} is not a number, true, false or null")
    return out


def _dataset(text: str) -> dict[str, Any]:
    kind, sep, path = text.partition(":")
    if kind == "imagefolder":
        if not path:
            raise SweepError("--dataset: imagefolder needs a folder: imagefolder:PATH")
        return {"kind": kind, "path": path}
    if sep:
        raise SweepError(f"--dataset: {kind} takes no path (only imagefolder:PATH does)")
    return {"kind": kind}


def _classes(dataset: dict[str, Any]) -> int:
    if dataset["kind"] == "imagefolder":
        folder = Path(dataset["path"]).expanduser()
        if not folder.is_dir():
            raise SweepError(f"--dataset: {dataset['path']}: no such directory")
        return max(1, sum(1 for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
    return 1000 if dataset["kind"] == "synthetic" else 10


def sweep_dict(args: argparse.Namespace, problems: Optional[list[str]] = None) -> dict[str, Any]:
    """The sweep the flags describe, as the dict a sweep file would hold (paths as given). A flag that
    cannot be read is left out of the dict and its problem appended to `problems` (else raised)."""
    noted: list[str] = []
    dataset = _dataset(args.dataset or "digits")
    if args.limit is not None:
        dataset["limit"] = args.limit
    model: dict[str, Any] = {"name": _name(args.model), "source": args.model}
    if args.checkpoint:
        model["checkpoint"] = args.checkpoint
    if args.pretrained:
        model["pretrained"] = True
    model["num_classes"] = args.num_classes if args.num_classes is not None else _classes(dataset)
    size = _ints("--input-size", args.input_size, noted, 3) if args.input_size else None
    if size is not None:
        model["input_size"] = size
    backends = _words(args.backends or "all")
    data = {"name": model["name"], "models": [model], "dataset": dataset, "compression": _words(args.compression or "none"),
            "backends": list(BACKENDS) if backends == ["all"] else backends,
            "batch_sizes": _ints("--batch-sizes", args.batch_sizes or "1", noted) or [1]}
    if args.measure:
        data["measure"] = _measure(args.measure, noted)
    if noted:
        if problems is None:
            raise SweepError("\n".join(noted))
        problems.extend(noted)
    return data


def _flag_line(line: str) -> str:
    """`flags: models[0].source: unknown scheme ...` -> `--model: unknown scheme ...`."""
    rest = line.removeprefix(f"{ORIGIN}: ")
    path, sep, msg = rest.partition(": ")
    if not sep:
        return rest
    for field in sorted(FLAG_OF, key=len, reverse=True):
        if path == field:
            return f"{FLAG_OF[field]}: {msg}"
        if path.startswith((field + "[", field + ".")):
            return f"{FLAG_OF[field]} ({path}): {msg}"
    return rest


def build(args: argparse.Namespace) -> Sweep:
    """The validated sweep of the flags; SweepError lists every problem, each under its flag."""
    problems: list[str] = []
    data = sweep_dict(args, problems)
    try:
        sweep = parse_sweep(data, ORIGIN)
    except SweepError as e:
        problems += [_flag_line(line) for line in str(e).splitlines()]
    if problems:
        raise SweepError("\n".join(problems))
    return sweep


@contextlib.contextmanager
def named_errors():
    """Errors about the sweep (a file missing, a target matching no node) name the flag, not `sweep`."""
    try:
        yield
    except SweepError as e:
        raise SweepError("\n".join(_flag_line(line) for line in str(e).splitlines())) from None


def check_save(args: argparse.Namespace) -> None:
    """--save-sweep's file may be written: a regular file or none, not the database, not there yet unless --force."""
    if args.save_sweep:
        from fleetbench.coordinator.outputs import check_output
        check_output(args.save_sweep, "--save-sweep", force=args.force, db=args.db)


def save(args: argparse.Namespace, path: str) -> None:
    """Write the sweep the flags describe as YAML, paths as given: a relative one is found from the
    working directory first, as in any sweep file, so the file runs the same jobs (same job ids)."""
    import yaml

    from fleetbench.coordinator.outputs import write_atomic
    text = yaml.safe_dump(sweep_dict(args), sort_keys=False, default_flow_style=None)
    write_atomic(path, f"# the sweep of: coordinator run {' '.join(command(args))}\n{text}")


def command(args: argparse.Namespace) -> list[str]:
    """The flags that describe this sweep, as a command line would give them."""
    out = ["--model", args.model]
    for f in FLAGS:
        value = getattr(args, f, None)
        if f in ("save_sweep", "force") or value in (None, False):
            continue
        out += ["--" + f.replace("_", "-")] + ([] if value is True else [str(value)])
    return out
