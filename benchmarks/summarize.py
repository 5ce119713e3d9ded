"""A pytest-benchmark JSON file as a markdown table (median time, peak memory), optionally
written into benchmarks/RESULTS.md between <!-- NAME:BEGIN --> and <!-- NAME:END -->.

    python benchmarks/summarize.py benchmarks/.results/cpu_scaling.json [--write SCALING]
"""
from __future__ import annotations

import argparse
import pathlib

from plot import load, table as provider_table
from results_md import write_block


def table(path: str) -> str:
    """The table of plot.py (one row per problem, one column per provider) for one JSON
    file."""
    return f"From `{pathlib.Path(path).name}`. " + provider_table(*load(path))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--write", metavar="NAME")
    args = ap.parse_args()
    text = table(args.json)
    print(text)
    if args.write:
        write_block(args.write, text)


if __name__ == "__main__":
    main()
