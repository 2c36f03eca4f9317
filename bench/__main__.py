"""``python -m bench``: run the benchmarks and store their results; ``compare`` guards them.

    python -m bench                      # run the default set, write bench/results/*.json
    python -m bench run semantic         # one benchmark by name
    python -m bench compare              # run again, write, judge each figure vs HEAD's file
    python -m bench compare --no-run     # judge the working tree's results vs HEAD's

A guarded figure that moved by more than 20 % is flagged; a regression makes ``compare`` exit 1.
Commit the new results with the change that moved them (docs/benchmarks.md says which command
printed each figure).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from bench.guard import RESULTS, changes, committed, describe, record, run_one, selected


def run(names: Sequence[str]) -> int:
    for bench in selected(names):
        write(record(bench, run_one(bench)))
    return 0


def write(entry: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{entry['bench']}.json"
    path.write_text(json.dumps(entry, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path.relative_to(RESULTS.parent.parent)}")


def compare(names: Sequence[str], rerun: bool) -> int:
    found = []
    for bench in selected(names):
        before = committed(bench.name)
        if before is None:
            print(f"{bench.name}: no committed result; run `python -m bench run {bench.name}`")
            continue
        if rerun:
            after = record(bench, run_one(bench))
            write(after)  # commit it with the change that moved it
        else:
            path = RESULTS / f"{bench.name}.json"
            after = json.loads(path.read_text()) if path.is_file() else before
        if before["machine"] != after["machine"]:
            print(f"{bench.name}: note: committed on {before['machine']}, now {after['machine']}")
        found.extend(changes(bench.name, before, after))
    print("\nguarded figures vs the committed results (flagged beyond ±20 %):")
    for change in found:
        print(describe(change))
    regressed = [c for c in found if c.verdict == "regressed"]
    if regressed:
        print(f"\n{len(regressed)} figure(s) regressed by more than 20 %", file=sys.stderr)
    return 1 if regressed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    run_p = sub.add_parser("run", help="run benchmarks and write bench/results/NAME.json")
    run_p.add_argument("names", nargs="*")
    cmp_p = sub.add_parser("compare", help="judge each guarded figure against HEAD's result")
    cmp_p.add_argument("names", nargs="*")
    cmp_p.add_argument("--no-run", action="store_true", help="use the working tree's results")
    args = parser.parse_args(argv)
    if args.command == "compare":
        return compare(args.names, rerun=not args.no_run)
    return run(getattr(args, "names", []))


if __name__ == "__main__":
    sys.exit(main())
