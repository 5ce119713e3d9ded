"""python -m contrastive_kernels {check,bench,info} (also installed as `contrastive-kernels`)."""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch


def _default_sizes(device: torch.device, interpreter: bool) -> tuple[int, int, torch.dtype]:
    if device.type == "cuda":
        return 8192, 256, torch.bfloat16
    if interpreter:
        # Triton runs interpreted on CPU (TRITON_INTERPRET=1): keep the problem small.
        return 256, 32, torch.float32
    return 2048, 64, torch.float32


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contrastive_kernels")
    sub = parser.add_subparsers(dest="cmd", required=True)
    chk = sub.add_parser("check", help="every available backend vs the reference here")
    chk.add_argument("--n", type=int)
    chk.add_argument("--d", type=int)
    chk.add_argument("--dtype", choices=["float32", "float16", "bfloat16", "float64"])
    chk.add_argument("--interpreter", action="store_true",
                     help="on CPU, also run the Triton kernels under TRITON_INTERPRET=1 "
                          "(a correctness tool; small default size)")
    info = sub.add_parser("info", help="which backends are built and can run here")
    info.add_argument("--json", action="store_true", help="backend_info() as JSON")
    bench = sub.add_parser("bench", help="time and memory of every loss, reference vs "
                                         "the kernels, at a size fitted to this device")
    bench.add_argument("--n", type=int)
    bench.add_argument("--d", type=int)
    bench.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    bench.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined
    from . import backend_info
    from .check import compare, format_rows

    if args.cmd == "info":
        info = backend_info()
        print(json.dumps(info, indent=2) if args.json else format_info(info, device))
        return 0
    if args.cmd == "bench":
        from .bench import run_bench
        return run_bench(device, args.n, args.d, args.dtype, args.repeats)
    interpreted = device.type == "cpu" and args.cmd == "check" and args.interpreter
    n, d, dtype = _default_sizes(device, interpreted)
    n, d = args.n or n, args.d or d
    dtype = getattr(torch, args.dtype) if args.dtype else dtype
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"contrastive_kernels check on {name}: N={n} D={d} {str(dtype)[6:]}; reference "
          f"= backend 'torch' (materializes N×M); errors vs float64")
    backends = [b for b in ("triton", "cuda", "cpu") if backend_info()[b]["available"]
                and (b != "triton" or device.type == "cuda" or interpreted)]
    if not backends:
        print("no kernel backend can run here (see `python -m contrastive_kernels info`)")
        return 1
    rows = compare(n, d, dtype, device, backends, repeats=1 if interpreted else 5)
    print(format_rows(rows, n))
    if interpreted:
        print("note: on CPU the Triton kernels run under TRITON_INTERPRET=1, a correctness "
              "tool thousands of times slower than compiled code; their times are not a "
              "performance measurement.")
    failed = [r for r in rows if not r.ok]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def format_info(info: dict, device: torch.device) -> str:
    """backend_info() as a table: built, can run here, and why not."""
    lines = [f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}"
             f"; torch {torch.__version__}", "",
             f"{'backend':<8} {'built':<6} {'runs here':<10} note"]
    for name in ("torch", "triton", "cuda", "cpu", "auto"):
        entry = info[name]
        note = entry["reason"]
        if name == "cuda" and entry.get("archs"):
            note = f"archs {entry['archs']}" + (f"; {note}" if note else "")
        lines.append(f"{name:<8} {'yes' if entry['built'] else 'no':<6} "
                     f"{'yes' if entry['available'] else 'no':<10} {note}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
