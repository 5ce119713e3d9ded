"""A pytest-benchmark JSON file as a markdown table (median time, peak memory), optionally
written into benchmarks/RESULTS.md between <!-- NAME:BEGIN --> and <!-- NAME:END -->.

    python benchmarks/summarize.py benchmarks/.results/cpu_scaling.json [--write SCALING]
"""
from __future__ import annotations

import argparse
import pathlib

HERE = pathlib.Path(__file__).resolve().parent


def table(path: str) -> str:
    """The table of plot.py (one row per problem, one column per provider) for one JSON
    file."""
    from plot import load, table as provider_table
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


def write_block(name: str, text: str) -> None:
    """Replace the text between <!-- NAME:BEGIN --> and <!-- NAME:END --> in RESULTS.md
    (appending the markers at the end when they are missing)."""
    begin, end = f"<!-- {name}:BEGIN -->", f"<!-- {name}:END -->"
    path = HERE / "RESULTS.md"
    doc = path.read_text()
    if begin not in doc:
        doc += f"\n{begin}\n{end}\n"
    head, rest = doc.split(begin, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":
    main()
