"""`agent probe`: print this node's profile as JSON."""
from __future__ import annotations

import argparse
import json
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent", description="fleetbench agent: this node's side")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe", help="print this node's profile as JSON")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="a node label, as Ray would carry it (e.g. fleet.kind=intel)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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
