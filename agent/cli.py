"""`agent probe`: print this node's profile as JSON. `agent cache prune`: trim this node's caches."""
from __future__ import annotations

import argparse
import json
import logging
import sys


def days(text: str) -> float:
    """A number of days: finite, 0 or more (argparse type)."""
    import math
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number of days, 0 or more")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent", description="fleetbench agent: this node's side")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe", help="print this node's profile as JSON")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="a node label, as Ray would carry it (e.g. fleet.kind=intel)")
    c = sub.add_parser("cache", help="this node's caches (prepared work, engines, shipped checkpoints)")
    csub = c.add_subparsers(dest="cache_cmd", required=True)
    pr = csub.add_parser("prune", help="remove entries not used for --older-than days")
    pr.add_argument("--older-than", type=days, default=30.0, metavar="DAYS",
                    help="age in days since last use (default 30; 0 removes everything)")
    pr.add_argument("--adopt", action="store_true", help="a cache folder of an older fleetbench (no marker): "
                    "mark it as fleetbench's first, if it holds only what a fleetbench cache holds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.cmd == "cache":
        from fleetbench.agent.cache import NotACache, base_dir, prune
        try:
            removed = prune(args.older_than * 86400, adopt_folder=args.adopt)
        except NotACache as e:
            print(f"agent: {e}", file=sys.stderr)
            return 2
        print(f"{base_dir()}: removed {len(removed)} cache entr{'y' if len(removed) == 1 else 'ies'} "
              f"unused for over {args.older_than:g} day(s)")
        return 0
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"agent: --label {item!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        labels[key] = value
    from fleetbench.agent.probe import probe
    print(json.dumps(probe(labels).to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
