"""pytest-benchmark JSON -> PNG plots and a markdown table.

    python -m pytest benchmarks -c benchmarks/pytest.ini --benchmark-json=benchmarks/.results/run.json
    python benchmarks/plot.py benchmarks/.results/run.json [--write]

One figure per (loss, mode): time and peak memory against N, log-log, one line per
provider, saved as benchmarks/plots/<loss>_<mode>.png; the table lists every measurement
with the machine it came from. ``--write`` puts the table and links to the plots in the
BENCH block of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import pathlib
from collections import defaultdict

HERE = pathlib.Path(__file__).resolve().parent


def load(path) -> tuple[dict, list[dict]]:
    """(machine info, one record per benchmark: loss, provider, n, d, dtype, mode, device,
    seconds (median), peak_bytes)."""
    data = json.loads(pathlib.Path(path).read_text())
    rows = []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "loss" not in info:
            continue
        rows.append({**info, "seconds": b["stats"]["median"]})
    return data.get("machine_info", {}), rows


def table(machine: dict, rows: list[dict]) -> str:
    cpu = machine.get("cpu", {}).get("brand_raw", machine.get("machine", "?"))
    lines = [f"Machine: {cpu} ({machine.get('node', '?')}, python "
             f"{machine.get('python_version', '?')}); device "
             f"{rows[0]['device'] if rows else '?'}.", "",
             "| loss | mode | N | D | dtype | provider | median ms | peak memory MiB | "
             "vs torch |", "|---|---|---|---|---|---|---|---|---|"]
    ref = {(r["loss"], r["mode"], r["n"], r["d"], r["dtype"]): r["seconds"]
           for r in rows if r["provider"] == "torch"}
    for r in sorted(rows, key=lambda r: (r["loss"], r["mode"], r["n"], r["provider"])):
        base = ref.get((r["loss"], r["mode"], r["n"], r["d"], r["dtype"]))
        speed = f"{base / r['seconds']:.2f}x" if base else "-"
        lines.append(f"| {r['loss']} | {r['mode']} | {r['n']} | {r['d']} | {r['dtype']} | "
                     f"{r['provider']} | {r['seconds'] * 1e3:.1f} | "
                     f"{r.get('peak_bytes', 0) / 2**20:.1f} | {speed} |")
    return "\n".join(lines)


def plot(rows: list[dict], out_dir: pathlib.Path) -> list[pathlib.Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    groups = defaultdict(list)
    for r in rows:
        groups[r["loss"], r["mode"]].append(r)
    written = []
    for (loss, mode), items in sorted(groups.items()):
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
        by_provider = defaultdict(list)
        for r in items:
            by_provider[r["provider"]].append(r)
        for provider, pts in sorted(by_provider.items()):
            pts.sort(key=lambda r: r["n"])
            ns = [r["n"] for r in pts]
            ax_t.plot(ns, [r["seconds"] * 1e3 for r in pts], marker="o", label=provider)
            ax_m.plot(ns, [max(r.get("peak_bytes", 0), 1) / 2**20 for r in pts], marker="o",
                      label=provider)
        for ax, label in ((ax_t, "time (ms)"), (ax_m, "peak memory (MiB)")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("N")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
        ax_t.legend()
        fig.suptitle(f"{loss}, {mode}")
        fig.tight_layout()
        path = out_dir / f"{loss}_{mode}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--out", default=str(HERE / "plots"))
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    machine, rows = load(args.json)
    text = table(machine, rows)
    paths = plot(rows, pathlib.Path(args.out))
    links = "\n".join(f"![{p.stem}](plots/{p.name})" for p in paths)
    print(text)
    if args.write:
        from summarize import write_block
        write_block("BENCH", f"{text}\n\n{links}")
    return paths


if __name__ == "__main__":
    main()
