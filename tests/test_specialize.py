"""proof/specialize.py: recorded interpreter launches replayed through Triton's run-time
specialization for a GPU target, compiled, and compared with hand-written signatures."""
import dataclasses
import os

import pytest
import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import make_backend
from triton.runtime import jit as tjit

import contrastive_kernels as ck
from contrastive_kernels.proof import aot
from contrastive_kernels.proof import specialize as sp

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="the recorder sees interpreted launches only")
needs_toolchain = pytest.mark.skipif(not aot.toolchain_available(),
                                     reason="triton's bundled ptxas/cuobjdump are missing")
SM90 = GPUTarget("cuda", 90, 32)


@triton.jit
def _probe(X, Y, n, step, big, odd_big, huge, one, neg, f, FLAG: tl.constexpr,
           BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    m = offs < n
    tl.store(Y + offs, tl.load(X + offs, mask=m).to(Y.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["n"], do_not_specialize_on_alignment=["X"])
def _probe_dns(X, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(X + offs, tl.load(X + offs, mask=offs < n), mask=offs < n)


def _probe_args(x=None, y=None, n=17):
    x = torch.zeros(64) if x is None else x
    y = torch.zeros(65, dtype=torch.float16)[1:] if y is None else y  # 2 bytes past 256
    return (x, y, n, 32, 2**33, 2**31 + 1, 2**63 + 16, 1, -5, 0.5)


def _record_probe(**kw):
    with sp.launch_recorder() as launches:
        _probe[(1,)](*_probe_args(**kw), FLAG=True, BLOCK=64, num_warps=2)
    assert len(launches) == 1
    return launches[0]


def test_probe_follows_the_jit_rules():
    launch = _record_probe()
    assert launch.options == {"num_warps": 2} and launch.num_warps == 2
    assert launch.constexprs == {"FLAG": True, "BLOCK": 64}
    assert launch.args["Y"].alignment == 2 and launch.args["X"].alignment == 256
    spec = sp.runtime_specialization(launch, SM90)
    assert spec.signature == {
        "X": "*fp32", "Y": "*fp16", "n": "i32", "step": "i32", "big": "i64",
        "odd_big": "i64", "huge": "u64", "one": "constexpr", "neg": "i32", "f": "fp32",
        "FLAG": "constexpr", "BLOCK": "constexpr"}
    # an int equal to 1 is compiled in as a constant
    assert spec.named_constexprs == {"one": 1, "FLAG": True, "BLOCK": 64}
    assert spec.divisible_by_16 == {"X", "step", "big", "huge"}
    assert spec.named_attrs["X"] == [["tt.divisibility", 16]]
    assert spec.options["num_warps"] == 2 and spec.options["arch"] == "sm90"


def test_matches_the_jit_binder_on_real_tensors():
    """Triton's binder fed the CPU tensors themselves (a fresh CPU allocation is 64-byte
    aligned, the fp16 view 2 bytes off) gives the specialization recorded ones get."""
    spec = sp.runtime_specialization(_record_probe(), SM90)
    jf = tjit.JITFunction(_probe.fn)
    binder = tjit.create_function_from_signature(jf.signature, jf.params, make_backend(SM90))
    _, specialization, _ = binder(*_probe_args(), FLAG=True, BLOCK=64, num_warps=2)
    assert tuple(specialization) == spec.specialization


def test_binary_key_dedupes_equivalent_launches():
    key = lambda **kw: sp.binary_key(_record_probe(**kw), SM90)
    assert key(n=17) == key(n=33)           # both plain i32
    assert key(n=32) != key(n=17)           # divisible by 16
    assert key(n=1) != key(n=17)            # constexpr 1
    assert key(n=2**31) != key(n=2**31 + 16 + 1)  # i64 with/without the hint
    assert sp.binary_key(_record_probe(), GPUTarget("cuda", 80, 32)) \
        != key(n=17)
    specs = [sp.runtime_specialization(_record_probe(n=n), SM90) for n in (17, 33, 32, 1)]
    assert [s.signature["n"] for s in sp.dedupe(specs)] == ["i32", "i32", "constexpr"]


def test_storage_offset_decides_pointer_alignment():
    base = torch.zeros(256)
    launch = _record_probe(x=base[4:68])  # 16 bytes in: still divisible by 16
    assert "X" in sp.runtime_specialization(launch).divisible_by_16
    launch = _record_probe(x=base[2:66])  # 8 bytes in
    assert launch.args["X"].alignment == 8
    assert "X" not in sp.runtime_specialization(launch).divisible_by_16


def test_do_not_specialize_parameters():
    x = torch.zeros(64)
    with sp.launch_recorder() as launches:
        for n in (1, 16):
            _probe_dns[(1,)](x, n, BLOCK=64)
    specs = [sp.runtime_specialization(l) for l in launches]
    assert [s.signature["n"] for s in specs] == ["i32", "i32"]
    assert specs[0].key == specs[1].key and not specs[0].named_attrs


def test_recorder_unhooks_on_exception():
    from triton.runtime.interpreter import InterpretedFunction
    original = InterpretedFunction.run
    with pytest.raises(ZeroDivisionError):
        with sp.launch_recorder():
            assert InterpretedFunction.run is not original
            1 / 0
    assert InterpretedFunction.run is original
    with sp.launch_recorder() as outer, sp.launch_recorder() as inner:
        _probe[(1,)](*_probe_args(), FLAG=False, BLOCK=64)
    assert len(outer) == len(inner) == 1
    assert InterpretedFunction.run is original


def _ttir(spec):
    src, options = sp.compile_spec(spec)
    return triton.compile(src, target=spec.target, options=options).asm["ttir"]


@needs_toolchain
def test_compile_spec_reaches_the_compiler():
    """The hints and the constant 1 are in the TTIR compiled in a fresh (compiling) process."""
    spec = sp.runtime_specialization(_record_probe(), SM90)
    (ttir,) = sp.in_fresh_processes(_ttir, [spec])
    head = ttir[ttir.index("tt.func"):].split("\n")[0]
    assert "%X: !tt.ptr<f32> {tt.divisibility = 16 : i32}" in head
    assert "%Y: !tt.ptr<f16>" in head and "%Y: !tt.ptr<f16> {" not in head
    assert "%step: i32 {tt.divisibility = 16 : i32}" in head
    assert "%big: i64 {tt.divisibility = 16 : i32}" in head
    assert "%one" not in head  # a constant, not a parameter


# ---- the library: CLIP forward + backward ---------------------------------------------
@pytest.fixture(scope="module")
def clip_launches():
    torch.manual_seed(0)
    img = torch.randn(48, 32, requires_grad=True)
    txt = torch.randn(48, 32, requires_grad=True)
    with sp.launch_recorder() as launches:
        ck.clip_loss(img, txt, torch.tensor(10.0), backend="triton").backward()
    return launches


def _first(launches, kernel):
    return next(l for l in launches if l.name == kernel)


def test_clip_launches_all_specialize(clip_launches):
    names = {l.name for l in clip_launches}
    assert {"_softmax_fwd_kernel", "_softmax_bwd_kernel"} <= names
    specs = []
    for launch in clip_launches:
        spec = sp.runtime_specialization(launch, SM90)
        assert list(spec.signature) == list(launch.args)
        for name, arg in launch.args.items():
            if isinstance(arg, sp.TensorArg):
                assert spec.signature[name].startswith("*")
                assert (name in spec.divisible_by_16) == (arg.alignment >= 16), name
        specs.append(spec)
    unique = sp.dedupe(specs)
    assert len({s.key for s in specs}) == len(unique) <= len(specs)


@needs_toolchain
def test_clip_runtime_specs_compile_for_sm90(clip_launches):
    specs = [sp.runtime_specialization(_first(clip_launches, k), SM90)
             for k in ("_softmax_fwd_kernel", "_softmax_bwd_kernel")]
    reports = aot.compile_all(variants=specs)
    assert not [r for r in reports if isinstance(r, str)], reports
    for r in reports:
        assert r.registers > 0 and r.arch == 90 and r.dtype == "float32"
        print(f"{r.kernel} sm_90 runtime signature: {r.registers} registers, "
              f"{r.spill_bytes} B spilled")


def test_diverges_finds_planted_differences(clip_launches):
    spec = sp.runtime_specialization(_first(clip_launches, "_softmax_fwd_kernel"), SM90)
    attrs = dict(spec.named_attrs)
    assert sp.diverges(spec.signature, attrs, spec, spec.named_constexprs) == []
    assert sp.diverges(spec.signature, spec.attrs, spec) == []  # triton's path keys work too
    stride = next(k for k in spec.signature if k.startswith("stride"))
    ptr = next(k for k in spec.divisible_by_16 if spec.signature[k].startswith("*"))
    block = next(k for k in spec.named_constexprs if k.startswith("BLOCK"))
    planted_sig = {**spec.signature, stride: "i64"}
    del planted_sig["SCALE"]
    planted_attrs = {k: v for k, v in attrs.items() if k != ptr}
    planted_ce = {**spec.named_constexprs, block: spec.named_constexprs[block] * 2}
    out = sp.diverges(planted_sig, planted_attrs, spec, planted_ce)
    assert len(out) == 4, out
    assert f"{stride}: hand i64, runtime i32" in out
    assert any(m.startswith("SCALE: missing from the hand signature") for m in out)
    assert f"{ptr}: hand attrs none, runtime attrs tt.divisibility=16" in out
    assert any(m.startswith(f"{block}: hand constexpr") for m in out)
    # aot.py's convention (i64 strides, no hints) diverges from a real launch
    aot_style = {k: ("i64" if k.startswith("stride") else t) for k, t in spec.signature.items()}
    assert len(sp.diverges(aot_style, {}, spec)) > 1
