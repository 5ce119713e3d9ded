"""Prove that a Triton refactor changed no machine code: compile the same kernel variants
from the working tree and from a git revision, for sm_80 and sm_90, and compare their SASS
instruction streams (addresses, encodings and the function header stripped).

    python benchmarks/sass_diff.py --base HEAD~1 --kernel _pair_kernel
    python benchmarks/sass_diff.py --base HEAD --kernel _pair_kernel --kernel _hardest_kernel
    python benchmarks/sass_diff.py --base 18f6cdb --head 13fcb47 --all

Each side runs in its own interpreter with that side's ``contrastive_kernels`` first on
``sys.path`` (the revision is unpacked with ``git archive``), enumerates its own AOT
variant list (``contrastive_kernels.proof.aot``, or ``ops.aot`` before the layout change)
and hashes the SASS of every variant of the named kernels. Variants are matched by name;
the exit status is 1 when any matched variant differs or a side lacks one.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent

_SIDE = r'''
import hashlib, importlib, json, os, re, subprocess, sys, tempfile
os.environ["TRITON_INTERPRET"] = "0"
sys.path.insert(0, sys.argv[1])
# An editable install's finder would map the package to the checkout whatever sys.path says.
sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
for name in ("contrastive_kernels.proof.aot", "contrastive_kernels.ops.aot"):
    try:
        aot = importlib.import_module(name)
        break
    except ImportError:
        continue
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
kernels = set(sys.argv[2].split(","))
assert aot.__file__.startswith(sys.argv[1]), aot.__file__
inst = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;")
out = {}


def jobs():
    """(name, arch, src, options) of every binary of the named kernels: run-time specs
    (catalogue) where the revision has them, else its hand-written variant list."""
    if hasattr(aot, "variant_name"):
        from contrastive_kernels.proof import specialize
        for spec in aot.engine_variants():
            if spec.name in kernels:
                src, opts = specialize.compile_spec(spec)
                yield aot.variant_name(spec), spec.target.arch, src, opts
        return
    pkg = getattr(aot, "KERNEL_PACKAGE", aot.__package__)
    for v in aot.engine_variants():
        if v.kernel not in kernels:
            continue
        module = importlib.import_module(f"{pkg}.{v.module}")
        src = ASTSource(fn=getattr(module, v.kernel), signature=v.signature,
                        constexprs=v.constexprs)
        opts = {"num_warps": v.num_warps, "num_stages": v.num_stages}
        if v.maxnreg is not None:
            opts["maxnreg"] = v.maxnreg
        for arch in aot.ARCHES:
            yield v.name, arch, src, opts


for name, arch, src, opts in jobs():
    c = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(c.asm["cubin"])
    sass = subprocess.run([aot._tool("cuobjdump"), "-sass", f.name], capture_output=True,
                          text=True, check=True).stdout
    os.unlink(f.name)
    code = "\n".join(inst.findall(sass))
    out[f"{name}@sm_{arch}"] = [hashlib.sha256(code.encode()).hexdigest(),
                                code.count("\n") + 1]
print(json.dumps(out))
'''


ALL_KERNELS = ("_softmax_fwd_kernel", "_softmax_bwd_kernel", "_merge_kernel",
               "_inv_norm_kernel", "_norm_backward_kernel", "_pair_kernel",
               "_hardest_kernel", "_sq_norm_kernel")


def _start(root: str, kernels: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _SIDE, root, ",".join(kernels)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tempfile.gettempdir())


def _finish(proc: subprocess.Popen, root: str) -> dict:
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"compiling at {root} failed:\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _unpack(rev: str, into: str) -> str:
    os.makedirs(into)
    archive = subprocess.run(["git", "archive", rev, "contrastive_kernels"], cwd=REPO,
                             capture_output=True, check=True).stdout
    path = os.path.join(into, "archive.tar")
    pathlib.Path(path).write_bytes(archive)
    with tarfile.open(path) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--head", help="git revision to compare (default: the working tree)")
    ap.add_argument("--kernel", action="append", default=[],
                    help="kernel function name (repeatable), e.g. _pair_kernel")
    ap.add_argument("--all", action="store_true", help="every kernel of the AOT list")
    args = ap.parse_args()
    kernels = list(ALL_KERNELS) if args.all else args.kernel
    if not kernels:
        ap.error("name a --kernel or pass --all")
    with tempfile.TemporaryDirectory() as tmp:
        base_root = _unpack(args.base, os.path.join(tmp, "base"))
        head_root = _unpack(args.head, os.path.join(tmp, "head")) if args.head else str(REPO)
        # The two sides compile at once, one process each.
        procs = [_start(base_root, kernels), _start(head_root, kernels)]
        base, head = _finish(procs[0], base_root), _finish(procs[1], head_root)
    names = sorted(set(base) | set(head))
    bad = 0
    for name in names:
        b, h = base.get(name), head.get(name)
        same = b is not None and b == h
        bad += not same
        print(f"{'same' if same else 'DIFFERS':8} {name}  "
              f"{b[1] if b else '-'} -> {h[1] if h else '-'} instructions")
    print(f"{len(names) - bad} of {len(names)} compiled kernels have identical SASS "
          f"({args.base} vs {args.head or 'the working tree'})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
