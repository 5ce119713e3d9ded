"""python -m contrastive_kernels {check,info}"""
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
    sub.add_parser("info", help="which backends are built and can run here")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are defined
    from . import backend_info
    from .check import compare, format_rows

    if args.cmd == "info":
        print(json.dumps(backend_info(), indent=2))
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
