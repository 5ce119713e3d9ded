"""What a GPU launch would compile: Triton's run-time specialization of recorded launches.

``aot.py`` compiles hand-written signatures, but on a GPU ``JITFunction.run`` specializes
every launch from its arguments, and that specialization is what runs. This module records
the launches made under the interpreter (``TRITON_INTERPRET=1``, CPU tensors) and replays
their arguments through Triton's own run-time specialization code for a GPU target, so that
the compile can be reproduced (and its registers read) without a GPU::

    with launch_recorder() as launches:
        loss = clip_loss(img, txt, scale, backend="triton"); loss.backward()
    specs = dedupe(runtime_specialization(l, GPUTarget("cuda", 90, 32)) for l in launches)
    reports = aot.compile_all(variants=specs)   # CompileReport per binary (proof/aot.py)
    diverges(hand_signature, {}, specs[0])  # what a hand-written signature gets wrong

Triton 3.8's rule (``triton/runtime/jit.py``: ``create_function_from_signature`` builds
the binder that ``JITFunction.run`` calls; each argument goes through
``native_specialize_impl``, ``python/src/specialize.cc``; ``JITFunction._pack_args`` turns
the result into ``signature``/``constexprs``/``attrs``; ``BaseBackend.parse_attr`` maps the
"D" key to ``tt.divisibility = 16``):

- int: ``i32`` if it fits in int32, else ``i64``, else ``u64`` (≥ 2^63); an int equal to 1
  becomes a ``constexpr`` 1 (a different binary); an int divisible by 16 gets the
  divisibility-16 hint. ``do_not_specialize`` parameters get neither the 1 rule nor the hint;
  ``do_not_specialize_on_alignment`` ones lose only the hint.
- tensor: ``*<dtype>`` (``*k<dtype>`` for ``const`` annotations), with the divisibility-16
  hint when ``data_ptr() % 16 == 0``.
- float: ``fp32``; bool: ``u1``; None: ``constexpr`` None; ``tl.constexpr`` parameters:
  ``constexpr`` with their value; tuples: element-wise, keyed by paths.
- an annotated parameter (``x: tl.int64``) keeps its annotated type; floats/bools never get
  a hint.

The run-time compile is ``compile(ASTSource(fn, signature, constexprs, attrs), target,
options=backend.parse_options(launch kwargs).__dict__)``, cached per kernel under
``compute_cache_key(specialization, options)``.

GPU address rule: under the interpreter a tensor lives on the CPU, so its ``data_ptr`` says
nothing about the GPU launch. We assume the storage starts 256-byte aligned, as a PyTorch
CUDA allocation does (the caching allocator hands out blocks rounded to 512 bytes), and place
the tensor at ``storage_offset × element_size`` bytes past it: a view that starts inside
another tensor's storage is aligned only as far as that byte offset is.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime import jit as _jit

DEFAULT_TARGET = GPUTarget("cuda", 90, 32)

# PyTorch CUDA storages start at least 256-byte aligned. The base is an odd multiple of 256,
# so a tensor's address is exactly as aligned as min(256, its byte offset) allows.
GPU_STORAGE_ALIGN = 256
_GPU_BASE = GPU_STORAGE_ALIGN * 0x7F0001


@dataclass(frozen=True)
class TensorArg:
    """A kernel's tensor argument as the GPU launch would see it (the data is not kept)."""
    dtype: Any                 # torch.dtype, or a tl.dtype for ``triton.reinterpret``
    shape: tuple
    stride: tuple
    storage_offset: int        # elements from the start of the storage
    element_size: int          # bytes per element of the underlying storage view

    def data_ptr(self) -> int:
        """The assumed GPU address: Triton's specializer reads this, as a tensor's."""
        return _GPU_BASE + self.storage_offset * self.element_size

    @property
    def alignment(self) -> int:
        """Largest power of two (≤ 256) dividing the assumed GPU address."""
        ptr = self.data_ptr()
        return min(GPU_STORAGE_ALIGN, ptr & -ptr)


def _describe(arg):
    if isinstance(arg, _jit.TensorWrapper):  # triton.reinterpret: the base's address
        base = arg.base
        return TensorArg(arg.dtype, tuple(base.shape), tuple(base.stride()),
                         base.storage_offset(), base.element_size())
    if isinstance(arg, torch.Tensor):
        return TensorArg(arg.dtype, tuple(arg.shape), tuple(arg.stride()),
                         arg.storage_offset(), arg.element_size())
    if isinstance(arg, tuple):  # triton specializes tuples element-wise
        items = [_describe(a) for a in arg]
        return type(arg)(*items) if hasattr(arg, "_fields") else tuple(items)
    return arg


@dataclass
class Launch:
    """One recorded kernel launch."""
    module: str                # the kernel's module and qualified name
    name: str
    args: dict                 # parameter name -> value (TensorArg for tensors), in order
    options: dict              # the other launch kwargs: num_warps, num_stages, maxnreg, ...
    grid: Any = None
    fn: Callable | None = field(default=None, repr=False, compare=False)  # the Python def
    jit_kwargs: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def constexprs(self) -> dict:
        """Values of the ``tl.constexpr`` parameters."""
        params = _jit_function(self).params
        return {p.name: self.args[p.name] for p in params if p.is_constexpr}

    @property
    def num_warps(self):
        return self.options.get("num_warps")

    @property
    def num_stages(self):
        return self.options.get("num_stages")

    @property
    def maxnreg(self):
        return self.options.get("maxnreg")

    def __getstate__(self):  # the Python def is found again by module and name
        return dict(self.__dict__, fn=None, jit_kwargs={})


@contextlib.contextmanager
def launch_recorder(execute: bool = True) -> Iterator[list[Launch]]:
    """Record every interpreted Triton kernel launch made inside the block.

    Yields a list that fills with ``Launch`` records as kernels launch. Only kernels that the
    interpreter runs are seen, i.e. those decorated while ``TRITON_INTERPRET=1``. The hook
    wraps ``InterpretedFunction.run`` (what ``kernel[grid](...)`` calls) and is removed on
    exit, also when the block raises; recorders nest. ``execute=False`` records without
    running the kernels (their outputs keep whatever the buffers held): enough to list
    launches whose arguments do not depend on earlier kernels' values.
    """
    from triton.runtime.interpreter import InterpretedFunction

    launches: list[Launch] = []
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        names = self.arg_names
        params = {k: v for k, v in kwargs.items() if k in names}
        bound = inspect.signature(self.fn).bind(*args, **params)
        bound.apply_defaults()
        launches.append(Launch(
            self.fn.__module__, self.fn.__qualname__,
            {k: _describe(v) for k, v in bound.arguments.items()},
            {k: v for k, v in kwargs.items() if k not in names},
            grid if not callable(grid) else None, self.fn, dict(self.kwargs)))
        if not execute:
            return None
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        yield launches
    finally:
        InterpretedFunction.run = original


_JIT_CACHE: dict = {}


def _python_fn(launch: Launch):
    if launch.fn is not None:
        return launch.fn, launch.jit_kwargs
    obj = importlib.import_module(launch.module)
    for part in launch.name.split("."):
        obj = getattr(obj, part)
    return obj.fn, dict(getattr(obj, "kwargs", {}))  # InterpretedFunction or JITFunction


def _jit_function(launch: Launch) -> _jit.JITFunction:
    """A JITFunction of the launch's Python def with its jit options (do_not_specialize ...):
    under the interpreter the module holds an InterpretedFunction, which has no binder."""
    if launch.fn is None:
        # Unpickled in a process without the interpreter: the module holds the JITFunction
        # itself, with its jit options (do_not_specialize ...).
        obj = importlib.import_module(launch.module)
        for part in launch.name.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, _jit.JITFunction):
            return obj
    fn, jit_kwargs = _python_fn(launch)
    if fn not in _JIT_CACHE:
        _JIT_CACHE[fn] = _jit.JITFunction(fn, **jit_kwargs)
    return _JIT_CACHE[fn]


def _as_jit(value):
    """A jit function passed as an argument specializes by its cache key, which only a
    JITFunction has."""
    from triton.runtime.interpreter import InterpretedFunction
    if isinstance(value, InterpretedFunction):
        return _jit_function(Launch(value.fn.__module__, value.fn.__qualname__, {}, {},
                                    fn=value.fn, jit_kwargs=dict(value.kwargs)))
    return value


@dataclass(frozen=True)
class RuntimeSpec:
    """What ``JITFunction.run`` would compile for one launch on ``target``."""
    module: str
    name: str
    target: GPUTarget
    signature: dict            # parameter name -> "*fp32", "i32", "i64", "constexpr", ...
    constexprs: dict           # path (tuple of parameter indices) -> value, as triton keys it
    attrs: dict                # path -> [["tt.divisibility", 16]] (or []), as triton keys it
    options: dict              # the parsed compile options (CUDAOptions.__dict__)
    specialization: tuple      # the binder's (type, key) per parameter
    key: str                   # equal keys <=> the same compiled binary

    def path_name(self, path: tuple) -> str:
        names = list(self.signature)
        return names[path[0]] + "".join(f"[{i}]" for i in path[1:])

    @property
    def named_constexprs(self) -> dict:
        return {self.path_name(p): v for p, v in self.constexprs.items()}

    @property
    def named_attrs(self) -> dict:
        """Parameter name -> its non-empty attribute list."""
        return {self.path_name(p): a for p, a in self.attrs.items() if a}

    @property
    def divisible_by_16(self) -> set:
        return {n for n, a in self.named_attrs.items() if ["tt.divisibility", 16] in a}


def runtime_specialization(launch: Launch, target: GPUTarget = DEFAULT_TARGET) -> RuntimeSpec:
    """Specialize a recorded launch as ``JITFunction.run`` would on a ``target`` GPU.

    Calls Triton's own binder (``create_function_from_signature`` → ``native_specialize_impl``
    with ``target``'s backend) and ``JITFunction._pack_args``, so the answer follows the
    installed Triton. Tensors are passed as ``TensorArg``, whose ``data_ptr`` is the assumed
    GPU address (module docstring).
    """
    jf = _jit_function(launch)
    backend = make_backend(target)
    binder = _jit.create_function_from_signature(jf.signature, jf.params, backend)
    kwargs = dict(launch.options)
    # The two options JITFunction.run adds before binding.
    kwargs["debug"] = kwargs.get("debug", jf.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    args = {k: _as_jit(v) for k, v in launch.args.items()}
    bound, specialization, options = binder(**args, **kwargs)
    key = _jit.compute_cache_key({}, specialization, options)
    options, signature, constexprs, attrs = jf._pack_args(backend, kwargs, bound,
                                                          specialization, options)
    return RuntimeSpec(launch.module, launch.name, target, signature, constexprs, attrs,
                       dict(options.__dict__), tuple(specialization),
                       f"{launch.module}:{launch.name}|{target}|{key}")


def binary_key(launch: Launch, target: GPUTarget = DEFAULT_TARGET) -> str:
    """Launches with equal keys hit the same compiled binary on ``target``."""
    return runtime_specialization(launch, target).key


def dedupe(specs: Iterable[RuntimeSpec]) -> list[RuntimeSpec]:
    """One spec per distinct binary, in first-seen order."""
    seen = {}
    for s in specs:
        seen.setdefault(s.key, s)
    return list(seen.values())


def compile_spec(spec: RuntimeSpec | Launch, target: GPUTarget | None = None, fn=None
                 ) -> tuple[ASTSource, dict]:
    """The ``(src, options)`` with which ``triton.compile(src, target=spec.target,
    options=options)`` reproduces the run-time compile.

    A ``Launch`` is specialized for ``target`` first. Needs the kernel as a JITFunction: in a
    process with ``TRITON_INTERPRET=0`` (see ``aot.compile_all``), the kernel is found by module
    and name unless ``fn`` is given.
    """
    if isinstance(spec, Launch):
        spec = runtime_specialization(spec, target or DEFAULT_TARGET)
    if fn is None:
        fn = importlib.import_module(spec.module)
        for part in spec.name.split("."):
            fn = getattr(fn, part)
    if not isinstance(fn, _jit.JITFunction):
        raise RuntimeError(f"{spec.name} is a {type(fn).__name__}, not a JITFunction: compile "
                           "in a process started with TRITON_INTERPRET=0 (aot.compile_all)")
    return ASTSource(fn, spec.signature, spec.constexprs, spec.attrs), dict(spec.options)


def in_fresh_processes(fn: Callable, jobs: list, workers: int | None = None) -> list:
    """``[fn(job) for job in jobs]`` in spawned interpreters with ``TRITON_INTERPRET=0``, where
    kernels are JITFunctions and can be compiled (as ``aot.compile_all`` does)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers or max(1, min(len(jobs), os.cpu_count() or 1)),
                                 mp_context=ctx) as pool:
            return list(pool.map(fn, jobs))
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


def _attr_set(attrs) -> set:
    return {tuple(a) for a in attrs or ()}


def _attr_text(attrs: set) -> str:
    return ", ".join(f"{a}={v}" for a, v in sorted(attrs)) or "none"


def diverges(hand_signature: dict, hand_attrs: dict | None, runtime: RuntimeSpec,
             hand_constexprs: dict | None = None) -> list[str]:
    """Human-readable differences between a hand-written compile (signature, attrs keyed by
    parameter name or triton path, optionally constexpr values) and the run-time one;
    empty when they would compile the same specialization."""
    out = []
    names = list(runtime.signature) + [n for n in hand_signature if n not in runtime.signature]
    rt_ce = runtime.named_constexprs
    for n in names:
        hand, rt = hand_signature.get(n), runtime.signature.get(n)
        rt_text = f"constexpr={rt_ce.get(n)!r}" if rt == "constexpr" else rt
        if hand is None:
            out.append(f"{n}: missing from the hand signature (runtime {rt_text})")
        elif rt is None:
            out.append(f"{n}: not a kernel parameter at run time (hand {hand})")
        elif hand != rt:
            out.append(f"{n}: hand {hand}, runtime {rt_text}")
    hand_named = {}
    for k, v in (hand_attrs or {}).items():
        hand_named[k if isinstance(k, str) else runtime.path_name(k)] = _attr_set(v)
    rt_named = {n: _attr_set(a) for n, a in runtime.named_attrs.items()}
    for n in dict.fromkeys(list(rt_named) + list(hand_named)):
        h, r = hand_named.get(n, set()), rt_named.get(n, set())
        if h != r:
            out.append(f"{n}: hand attrs {_attr_text(h)}, runtime attrs {_attr_text(r)}")
    for n, v in (hand_constexprs or {}).items():
        if n in rt_ce and rt_ce[n] != v:
            out.append(f"{n}: hand constexpr {v!r}, runtime {rt_ce[n]!r}")
    return out
