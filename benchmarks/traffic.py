"""Counted data movement and FLOPs of the Triton kernels' GPU launches, plus a roofline
model, into benchmarks/RESULTS.md (between the TRAFFIC markers).

    python benchmarks/traffic.py                         # CLIP, SigLIP, MoCo at full size
    python benchmarks/traffic.py --problems clip --scale 8   # quick smoke run
    python benchmarks/traffic.py --write --detail        # also per-kernel table, into RESULTS.md

Runs forward and backward through the public API under the Triton interpreter with
CONTRASTIVE_KERNELS_LAUNCH_AS=<arch>, which makes the launchers pick the launch a GPU of
that arch would get (tile table, warps, grid sized with its SM count), and counts every
launch with contrastive_kernels.proof.traffic.count_launches. ``--engine cuda`` counts the
CUDA C++ engine instead (emulated on the CPU), through
contrastive_kernels.proof.cuda_traffic.count_cuda_launches.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import pathlib
import sys
import time

from results_md import write_block

# Runnable from a checkout without an install: the repository root after everything
# else on sys.path (an installed contrastive_kernels still wins).
_ROOT = str(pathlib.Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

HEADING = "## Counted data movement (interpreter, GPU launch)"
# One block per engine, so that counting one engine never overwrites the other's table.
BLOCKS = {"triton": ("TRAFFIC", HEADING),
          "cuda": ("TRAFFIC_CUDA", "## Counted data movement: CUDA C++ engine (emulator, "
                                   "GPU launch plan)")}
# Shapes of the problems at --scale 1: rows of each side and width.
SHAPES = {"clip": (2048, 2048, 256), "siglip": (2048, 2048, 256),
          "siglip_mean": (2048, 2048, 256), "moco": (64, 4096, 128),
          "moco_bank_grad": (64, 4096, 128), "nt_xent_debiased": (1024, 1024, 128)}
# --problems moco measures the frozen bank and the bank that requires grad; --problems siglip
# the per-row loss and the mean (the one-pass mode: gradient formed in the forward).
EXPANDS = {"clip": ("clip",), "siglip": ("siglip", "siglip_mean"),
           "moco": ("moco", "moco_bank_grad"), "nt_xent_debiased": ("nt_xent_debiased",)}
LABELS = {"clip": "CLIP", "siglip": "SigLIP", "siglip_mean": "SigLIP, mean (one pass)",
          "moco": "MoCo queue, bank frozen",
          "moco_bank_grad": "MoCo queue, bank requires grad",
          "nt_xent_debiased": "NT-Xent, debiased + hard negatives (τ⁺ 0.1, β 0.5)"}
# Roofline model inputs: (name, HBM B/s, assumed L2 B/s, dense bf16 FLOP/s, SMs, arch).
GPUS = (("A100 SXM 80GB", 2.0e12, 5.0e12, 312e12, 108, "sm_80"),
        ("H100 SXM", 3.35e12, 10.0e12, 989e12, 132, "sm_90"))
MB = 1e6


def _set_environment(arch: str, engine: str) -> None:
    """Environment the library reads at import: the interpreter, the launch to stand for
    and (cuda engine) the emulated CUDA C++ backend. Must run before it is imported."""
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ["CONTRASTIVE_KERNELS_LAUNCH_AS"] = arch
    if engine == "cuda":
        os.environ["CONTRASTIVE_KERNELS_CUDA_EMULATE"] = "1"


def counter(engine: str):
    """The context-manager factory that counts launches of ``engine`` (triton | cuda);
    raises ImportError when the cuda counter module does not exist."""
    if engine == "cuda":
        from contrastive_kernels.proof.cuda_traffic import count_cuda_launches
        return count_cuda_launches
    from contrastive_kernels.proof.traffic import count_launches
    return count_launches


def _inputs(problem: str, n: int, m: int, d: int):
    """call(backend) -> the problem's loss, shape (n,) (reduction="none"; a scalar for
    siglip_mean), on seeded random bf16 inputs: n×d and m×d features (MoCo: n queries and
    keys, an m-row bank)."""
    import torch

    import contrastive_kernels as ck

    gen = torch.Generator().manual_seed(0)

    def feat(rows, grad=True):
        x = torch.randn((rows, d), generator=gen).to(torch.bfloat16)
        return x.requires_grad_(grad)

    if problem in ("clip", "siglip", "siglip_mean"):
        img, txt = feat(n), feat(m)
        scale = torch.tensor(10.0, requires_grad=True)  # learnable, as in training
        if problem == "clip":
            return lambda b: ck.clip_loss(img, txt, scale, reduction="none", normalize=True,
                                          backend=b)
        bias = torch.tensor(-10.0, requires_grad=True)
        reduction = "mean" if problem == "siglip_mean" else "none"
        return lambda b: ck.siglip_loss(img, txt, scale, bias, reduction=reduction,
                                        normalize=True, backend=b)
    if problem == "nt_xent_debiased":  # two views of n rows; the estimator's two sums
        z1, z2 = feat(n), feat(m)
        return lambda b: ck.nt_xent_loss(z1, z2, 0.2, reduction="none", normalize=True,
                                         tau_plus=0.1, beta=0.5, backend=b)
    # MoCo: the query encoder trains; the key encoder is a momentum copy (no grad).
    query, key = feat(n), feat(n, grad=False)
    bank = feat(m, grad=problem == "moco_bank_grad")
    return lambda b: ck.info_nce(query, key, negative_keys=bank, temperature=0.07,
                                 reduction="none", normalize=True, backend=b)


def snapshot_kernels() -> int:
    """Have the interpreter rewrite every Triton kernel of the backend now, from the
    sources as they are at import: it otherwise reads a kernel's source file at its first
    launch, which in a working tree being edited can be a later, inconsistent version.
    Returns the number of kernels."""
    import importlib
    import pkgutil

    from triton.runtime.interpreter import InterpretedFunction

    import contrastive_kernels.backends.triton as package
    count = 0
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for value in list(vars(module).values()):  # rewrite() adds globals
            if isinstance(value, InterpretedFunction):
                value.rewrite()
                count += 1
    return count


def measure(problem: str, scale: int = 1, engine: str = "triton") -> dict:
    """Count one problem's forward and backward: dict with problem, n, m, d (rows of the
    two sides after dividing by ``scale``, width), fwd and bwd (lists of launch records),
    seconds (wall time of both passes)."""
    import torch

    n0, m0, d = SHAPES[problem]
    n, m = max(1, n0 // scale), max(1, m0 // scale)
    count = counter(engine)
    call = _inputs(problem, n, m, d)
    start = time.time()
    with count() as fwd:
        loss = call(engine)
    upstream = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1))
    with count() as bwd:
        loss.backward(upstream.to(loss.dtype))
    return dict(problem=problem, n=n, m=m, d=d, fwd=list(fwd), bwd=list(bwd),
                seconds=time.time() - start)


def _summaries(row: dict) -> dict:
    """summarize() of the forward, the backward and both."""
    from contrastive_kernels.proof.traffic import summarize
    return {"fwd": summarize(row["fwd"]), "bwd": summarize(row["bwd"]),
            "fwd+bwd": summarize(row["fwd"] + row["bwd"])}


def _name(row: dict) -> str:
    return f"{LABELS[row['problem']]} N={row['n']} M={row['m']} D={row['d']}"


def problem_table(rows: list[dict]) -> str:
    """Markdown: per problem and pass, MB loaded/stored/atomic, FLOPs in units of N·M·D,
    FLOP per requested byte, programs of the tile launches and the launch count."""
    out = ["| problem | pass | loaded MB | stored MB | atomic MB | FLOPs | FLOP/B | "
           "programs per tile launch: min (all) | launches |",
           "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        nmd = row["n"] * row["m"] * row["d"]
        for label, s in _summaries(row).items():
            tiles = s["tile_programs"]
            progs = f"{min(tiles)} ({', '.join(map(str, tiles))})" if tiles else "-"
            out.append(f"| {_name(row)} | {label} | {s['bytes_loaded'] / MB:.2f} | "
                       f"{s['bytes_stored'] / MB:.2f} | {s['bytes_atomic'] / MB:.2f} | "
                       f"{s['flops'] / nmd:.2f}·NMD | {s['flop_per_byte']:.1f} | {progs} | "
                       f"{s['launches']} |")
    return "\n".join(out)


def detail_table(rows: list[dict]) -> str:
    """Markdown: per problem, pass and kernel name, launches, programs, MB and FLOPs."""
    from contrastive_kernels.proof.traffic import by_kernel
    out = ["| problem | pass | kernel | launches | programs | loaded MB | stored MB | "
           "atomic MB | FLOPs |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for label in ("fwd", "bwd"):
            for kernel, k in by_kernel(row[label]).items():
                out.append(f"| {_name(row)} | {label} | `{kernel}` | {k['launches']} | "
                           f"{', '.join(map(str, k['programs']))} | "
                           f"{k['bytes_loaded'] / MB:.2f} | {k['bytes_stored'] / MB:.2f} | "
                           f"{k['bytes_atomic'] / MB:.2f} | {k['flops']:.3g} |")
    return "\n".join(out)


def _launch_time(r: dict, peak: float, l2: float, sms: int) -> tuple[float, float]:
    """(compute s with wave quantization, L2 s) of one launch record."""
    waves = math.ceil(r["programs"] / sms) / (r["programs"] / sms) if r["programs"] else 1.0
    nbytes = r["bytes_loaded"] + r["bytes_stored"] + r["bytes_atomic"]
    return r["flops"] / peak * waves, nbytes / l2


def roofline(records: list[dict], gpu: tuple) -> dict:
    """Model bound of a list of launches on one GPU: per launch max(compute × wave
    factor, bytes / L2), summed (launches run one after another); also the compute, L2
    and all-from-HBM sums and the limiter of the bound."""
    _, hbm, l2, peak, sms, _ = gpu
    terms = [_launch_time(r, peak, l2, sms) for r in records]
    compute, mem = sum(t[0] for t in terms), sum(t[1] for t in terms)
    bound = sum(max(t) for t in terms)
    nbytes = sum(r["bytes_loaded"] + r["bytes_stored"] + r["bytes_atomic"] for r in records)
    return dict(compute=compute, l2=mem, hbm=nbytes / hbm, bound=bound,
                limiter="compute" if compute >= mem else "L2 bandwidth")


def roofline_table(rows: list[dict], arch: str) -> str:
    """Markdown: the roofline model of each problem (forward + backward) on A100 / H100."""
    out = ["| problem | GPU | compute µs (× waves) | L2 µs | bound µs | limiter | "
           "HBM µs if no L2 reuse |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        for gpu in GPUS:
            t = roofline(row["fwd"] + row["bwd"], gpu)
            own = "" if gpu[5] == arch else f" (launch sized for {arch})"
            out.append(f"| {_name(row)} | {gpu[0]}{own} | {t['compute'] * 1e6:.1f} | "
                       f"{t['l2'] * 1e6:.1f} | {t['bound'] * 1e6:.1f} | {t['limiter']} | "
                       f"{t['hbm'] * 1e6:.1f} |")
    return "\n".join(out)


def launch_note(arch: str, engine: str) -> str:
    """Whether CONTRASTIVE_KERNELS_LAUNCH_AS changed the tiles (GPU table) or the
    interpreter still used its small test tiles."""
    if engine == "cuda":
        return "CUDA C++ engine, emulated on the CPU (CONTRASTIVE_KERNELS_CUDA_EMULATE=1)."
    import torch

    from contrastive_kernels.backends.triton import softmax, tiles
    try:
        x = torch.empty(2048, 256, dtype=torch.bfloat16)
        fwd, bwd = softmax._tiles_for(x, x)  # what a launch on aligned bf16 rows picks
    except Exception as exc:  # the launcher's API is not ours to pin down
        return f"could not read the launch tiles ({exc!r})."
    if fwd == tiles.interpret_tiles(256):
        return (f"**CONTRASTIVE_KERNELS_LAUNCH_AS={arch} had no effect: the numbers are for "
                f"the interpreter's small test tiles and grids, not a GPU launch.**")
    return (f"CONTRASTIVE_KERNELS_LAUNCH_AS={arch}: the launchers picked the {arch} launch "
            f"(e.g. bf16 D=256, aligned rows: forward tile {fwd.block_m}×{fwd.block_n}×"
            f"{fwd.block_k}, backward {bwd.block_m}×{bwd.block_n}×{bwd.block_k}, "
            f"{fwd.num_warps} warps; ×D = the rows stay on chip).")


def report(rows: list[dict], args, seconds: float) -> str:
    """The markdown block: provenance, assumptions, the tables."""
    import triton
    gpus = "; ".join(f"{g[0]}: {g[1] / 1e12:.2f} TB/s HBM, ~{g[2] / 1e12:.0f} TB/s L2 "
                     f"(assumed), {g[3] / 1e12:.0f} TFLOP/s dense bf16, {g[4]} SMs"
                     for g in GPUS)
    parts = [
        f"Generated {datetime.date.today()} by `{args.command}` (triton "
        f"{triton.__version__} interpreter, engine {args.engine}, {seconds:.0f} s). "
        f"{launch_note(args.arch, args.engine)}",
        "",
        "- Counted per launch: bytes of every global load / store / atomic (element size of "
        "the pointer's type × unmasked lanes; `other=` fills are not loads), 2·M·N·K per "
        "`tl.dot`. These are bytes the kernels *request*: re-reads that a GPU serves from "
        "L2 count every time.",
        "- Not counted: torch operations the launchers run outside kernels (buffer "
        "allocation/zeroing, sums, divisions).",
        "- Inputs bf16, random; forward and backward (random upstream gradient of the "
        "reduction=\"none\" loss; SigLIP also with reduction=\"mean\", whose forward forms "
        "the gradient in its one pass); FLOPs in units of N·M·D (M = bank rows for MoCo). "
        "MB = 10^6 bytes; FLOP/B = FLOPs / all counted bytes.",
        "",
        problem_table(rows),
    ]
    if args.detail:
        parts += ["", detail_table(rows)]
    parts += ["", "**Roofline estimate: a model, not a measurement.** Per launch, "
              "time ≥ max(FLOPs / peak × ceil(programs/SMs)/(programs/SMs), bytes / L2 "
              "bandwidth), summed over the forward and backward launches; all counted "
              "bytes are assumed to stream at L2 bandwidth, launch overheads and the "
              "uncounted torch operations are ignored. " + gpus + ".", "",
              roofline_table(rows, args.arch)]
    return "\n".join(parts)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problems", nargs="+", choices=sorted(EXPANDS),
                   default=["clip", "siglip", "moco"])
    p.add_argument("--arch", choices=("sm_90", "sm_80"), default="sm_90")
    p.add_argument("--engine", choices=("triton", "cuda"), default="triton")
    p.add_argument("--scale", type=int, default=1, help="divide N and M by this")
    p.add_argument("--write", action="store_true", help="write the TRAFFIC block of RESULTS.md")
    p.add_argument("--detail", action="store_true", help="add the per-kernel table")
    args = p.parse_args(argv)
    args.command = " ".join(["python benchmarks/traffic.py",
                             *(sys.argv[1:] if argv is None else argv)])
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    _set_environment(args.arch, args.engine)
    try:
        counter(args.engine)
    except ImportError as exc:
        if args.engine != "cuda" or "cuda_traffic" not in str(exc):
            raise
        print(f"--engine cuda: no CUDA launch counter ({exc}): "
              "contrastive_kernels/proof/cuda_traffic.py with count_cuda_launches() is "
              "needed (written separately); nothing measured.", file=sys.stderr)
        return 2
    if args.engine == "triton":
        snapshot_kernels()
    start, rows = time.time(), []
    for problem in (p for group in args.problems for p in EXPANDS[group]):
        rows.append(measure(problem, args.scale, args.engine))
        print(f"{problem}: {rows[-1]['seconds']:.1f} s", file=sys.stderr)
    text = report(rows, args, time.time() - start)
    print(text)
    if args.write:
        block, heading = BLOCKS[args.engine]
        write_block(block, text, heading=heading)
    return 0


if __name__ == "__main__":
    sys.exit(main())
