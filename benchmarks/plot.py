"""pytest-benchmark JSON -> PNG plots and a markdown table.

    python benchmarks/plot.py --run --write     # run the suite, plot, update RESULTS.md

is the one command; it is the same as the two steps

    python -m pytest benchmarks -c benchmarks/pytest.ini --benchmark-json=benchmarks/.results/run.json
    python benchmarks/plot.py benchmarks/.results/run.json --write

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


def load(*paths) -> tuple[dict, list[dict]]:
    """(machine info, one record per benchmark: loss, provider, n, d, dtype, mode, device,
    seconds (median), peak_bytes, and "error" where the provider could not run). Several
    files merge; a later file's record replaces an earlier one of the same case."""
    records, machine = {}, {}
    for path in paths:
        data = json.loads(pathlib.Path(path).read_text())
        machine = {**data.get("machine_info", {}), "datetime": data.get("datetime", "?")}
        for b in data["benchmarks"]:
            info = b.get("extra_info", {})
            if "loss" not in info:
                continue
            # bench_cpu_scaling's rows (N to 64k, D shrinking with N) plot on their own.
            series = "scaling" if "cpu_scaling" in b.get("fullname", "") else "suite"
            key = tuple(info[k] for k in ("loss", "provider", "n", "d", "dtype", "mode"))
            records[key] = {**info, "series": series, "seconds": b["stats"]["median"]}
    return machine, list(records.values())


PROVIDER_ORDER = ("torch", "torch-compiled", "cpu", "cuda", "triton")


def _semantics_note(provider: str, loss: str) -> str:
    """'' for our providers and for peers computing exactly our loss, else a footnote."""
    from peers import SAME
    note = SAME.get(provider, {}).get(loss, "same")
    return "" if note.startswith("same") else note


def table(machine: dict, rows: list[dict]) -> str:
    """A markdown table: one row per (loss, mode, N, D, dtype), one column per provider
    holding median time, peak memory and speed-up over the eager reference (torch); peers
    whose semantics differ from ours are marked † and footnoted."""
    cpu = machine.get("cpu", {})
    providers = sorted({r["provider"] for r in rows},
                       key=lambda p: (PROVIDER_ORDER.index(p) if p in PROVIDER_ORDER
                                      else len(PROVIDER_ORDER), p))
    cells, notes = defaultdict(dict), {}
    for r in rows:
        cells[r["loss"], r["mode"], r["n"], r["d"], r["dtype"]][r["provider"]] = r
    lines = [f"Run {machine.get('datetime', '?')[:10]}. Machine: {cpu.get('brand_raw', machine.get('machine', '?'))}, "
             f"{cpu.get('count', '?')} CPUs ({machine.get('node', '?')}, python "
             f"{machine.get('python_version', '?')}); device "
             f"{rows[0]['device'] if rows else '?'}. Each cell: median time, peak memory "
             "above the inputs (allocated on CUDA, resident on CPU), speed-up over torch.", "",
             "| loss | mode | N | D | dtype | " + " | ".join(providers) + " |",
             "|---" * (5 + len(providers)) + "|"]
    for key in sorted(cells):
        row, base = cells[key], cells[key].get("torch")
        out = []
        for p in providers:
            r = row.get(p)
            if r is None:
                out.append("")
                continue
            if "error" in r:
                out.append(r["error"])
                continue
            speed = f" ({base['seconds'] / r['seconds']:.2f}x)" \
                if base and "error" not in base else ""
            note = _semantics_note(p, key[0])
            mark = " †" if note else ""
            if note:
                notes[p, key[0]] = note
            out.append(f"{r['seconds'] * 1e3:.1f} ms · {max(r.get('peak_bytes', 0), 0) / 2**20:.0f} "
                       f"MiB{speed}{mark}")
        lines.append("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(out) + " |")
    if notes:
        lines += [""] + [f"† {p} on {loss}: {note}." for (p, loss), note in sorted(notes.items())]
    return "\n".join(lines)


def plot(rows: list[dict], out_dir: pathlib.Path) -> list[pathlib.Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    groups = defaultdict(list)
    for r in rows:
        if "error" not in r:
            groups[r["loss"], r["mode"], r.get("series", "suite")].append(r)
    written = []
    for (loss, mode, series), items in sorted(groups.items()):
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
        by_provider = defaultdict(list)
        configs = sorted({(r["n"], r["d"], r["dtype"]) for r in items})
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
        shapes = sorted({(d, dtype) for _, d, dtype in configs})
        if len(shapes) == 1:
            detail = f"D = {shapes[0][0]}, {shapes[0][1]}"
        else:
            detail = ", ".join(f"N={n}: D={d}" for n, d, _ in
                               sorted({(n, d, t) for n, d, t in configs}))
        fig.suptitle(f"{loss}, {mode} ({detail})")
        fig.tight_layout()
        suffix = "" if series == "suite" else f"_{series}"
        path = out_dir / f"{loss}_{mode}{suffix}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="*", default=[str(HERE / ".results" / "run.json")],
                    help="pytest-benchmark JSON files (later ones override)")
    ap.add_argument("--run", action="store_true",
                    help="first run the benchmark suite (pytest-benchmark) into JSON")
    ap.add_argument("--out", default=str(HERE / "plots"))
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    if args.run:
        _run_suite(pathlib.Path(args.json[-1]))
    machine, rows = load(*args.json)
    text = table(machine, rows)
    paths = plot(rows, pathlib.Path(args.out))
    links = "\n".join(f"![{p.stem}](plots/{p.name})" for p in paths)
    print(text)
    if args.write:
        from results_md import write_block
        write_block("BENCH", f"{text}\n\n{links}")
    return paths


def _run_suite(json_path: pathlib.Path) -> None:
    import subprocess
    import sys
    json_path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pytest", str(HERE), "-c", str(HERE / "pytest.ini"),
                    "-q", "-p", "no:cacheprovider", f"--benchmark-json={json_path}"],
                   check=True)


if __name__ == "__main__":
    main()
