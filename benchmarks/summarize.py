"""A pytest-benchmark JSON file as a markdown table (median time, peak memory), optionally
written into benchmarks/RESULTS.md between <!-- NAME:BEGIN --> and <!-- NAME:END -->.

    python benchmarks/summarize.py benchmarks/.results/cpu_scaling.json [--write SCALING]
"""
from __future__ import annotations

import argparse
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent


def table(path: str) -> str:
    data = json.loads(pathlib.Path(path).read_text())
    rows = {}
    for b in data["benchmarks"]:
        e = b["extra_info"]
        key = (e["loss"], e["mode"], e["n"], e["d"])
        rows.setdefault(key, {})[e["provider"]] = (b["stats"]["median"], e["peak_bytes"])
    machine = data.get("machine_info", {})
    lines = [f"From `{pathlib.Path(path).name}` ({data.get('datetime', '?')[:10]}, "
             f"{machine.get('cpu', {}).get('brand_raw', machine.get('machine', '?'))}, "
             f"{machine.get('cpu', {}).get('count', '?')} CPUs). Peak = resident (CPU) or "
             "allocated (CUDA) memory above the inputs, during the timed calls.",
             "",
             "| loss | mode | N | D | provider | median ms | peak MiB | vs torch |",
             "|---|---|---|---|---|---|---|---|"]
    for (loss, mode, n, d), provs in sorted(rows.items()):
        ref = provs.get("torch")
        for prov, (t, peak) in sorted(provs.items(), key=lambda kv: kv[0] != "torch"):
            speed = f"{ref[0] / t:.2f}x" if ref else "(no ref)"
            lines.append(f"| {loss} | {mode} | {n} | {d} | {prov} | {t * 1e3:.1f} | "
                         f"{peak / 2**20:.0f} | {speed} |")
    return "\n".join(lines)


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
