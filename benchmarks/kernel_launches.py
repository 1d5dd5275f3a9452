"""The Triton launches the backend really makes, captured on the CPU and specialised as a GPU launch would.

Triton specialises a kernel per call: integer arguments divisible by 16 (or equal to 1) and 16-byte aligned
pointers become compile-time facts, so a ragged batch can compile to different code than an aligned one.
To compile what is launched, each case below runs the Triton backend's autograd functions, forward and
backward, on meta tensors (no data, no device: a meta tensor's address is its byte offset, which is how a
slice of a 512-byte aligned CUDA allocation is aligned), with `launch._launch` replaced by a recorder.
Each recorded call is bound by Triton's own binder for the target (`create_function_from_signature`), which
yields the signature and attributes the JIT would compile.

    from kernel_launches import captured_variants
    variants = captured_variants()  # one entry per distinct compile: kernel, signature, attrs, constexprs
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import product

BATCHES = (1000, 65536)
DIMS = (130, 256, 1536)
DTYPES = ("fp32", "bf16", "fp16")
# (loss family, call): self mode; cross mode over extra key rows (N = B + 24, ragged) with no column term;
# the symmetric (CLIP) loss, whose backward carries the column term; the sigmoid loss (SigLIP, cross only);
# the guide-masked softmax (GISTEmbed: cross, the positive protected, a guide of GUIDE_DIM)
CALLS = (("softmax", "self"), ("softmax", "cross"), ("softmax", "symmetric"), ("circle", "self"), ("circle", "cross"),
         ("sigmoid", "cross"), ("softmax", "guided"))  # fmt: skip
GUIDE_DIM = 384
SM_COUNT = 132  # H100 SXM / H200: sets the column splits, a grid size only (never specialised)
EXTRA_KEYS = 24


@dataclass
class Variant:
    """One compile: the kernel, Triton's signature and attributes from the binder, the constexprs of the
    call (LOSS, COL_TERM, GUIDED, UPCAST, INPUT_PRECISION; the BLOCK sizes come from each config), and every case
    (batch, dim, dtype, loss, call) that launched it."""

    kernel: str
    signature: dict
    attrs: dict
    constexprs: dict
    cases: list = field(default_factory=list)

    @property
    def key(self) -> tuple:
        return (self.kernel, tuple(self.signature.items()), repr(sorted(self.attrs.items())), repr(self.constexprs))


@contextlib.contextmanager
def _recording(calls: list) -> Iterator[None]:
    """Replace the launcher's kernel launch by a recorder and fix the SM count (no device is asked)."""
    from dcr_kernels import backends
    from dcr_kernels.backends.triton import launch

    saved = launch._launch, launch.sm_count, os.environ.get("TRITON_INTERPRET")
    os.environ.pop("TRITON_INTERPRET", None)
    launch._launch = lambda name, rows, splits, x, *args, cols, **constexprs: calls.append((name, args, constexprs))
    launch.sm_count = lambda device: SM_COUNT
    backends.TRACING_LAUNCHES = True
    try:
        yield
    finally:
        backends.TRACING_LAUNCHES = False
        launch._launch, launch.sm_count = saved[:2]
        if saved[2] is not None:
            os.environ["TRITON_INTERPRET"] = saved[2]


def _run_case(batch: int, dim: int, dtype: str, loss: str, call: str, metrics: bool) -> None:
    """Forward and backward of one loss through the Triton backend's autograd functions, on meta tensors."""
    import torch

    from dcr_kernels.backends import triton as backend
    from dcr_kernels.guided_lse import guided_row_logsumexp
    from dcr_kernels.sigmoid_rows import sigmoid_rows

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    meta = dict(device="meta", dtype=torch_dtype)
    q = torch.empty(batch, dim, requires_grad=True, **meta)
    keys = batch + (EXTRA_KEYS if call in ("cross", "guided") else 0)
    k = q if call == "self" else torch.empty(keys, dim, requires_grad=True, **meta)
    if call == "guided":
        scale = torch.empty((), device="meta", dtype=torch.float32, requires_grad=True)
        guide_q, guide_k = (torch.empty(rows, GUIDE_DIM, device="meta", dtype=torch.float32) for rows in (batch, keys))
        threshold = torch.empty(batch, device="meta", dtype=torch.float32)
        lse = guided_row_logsumexp(q, k, guide_q, guide_k, scale, threshold, protect_offset=0, backend="triton")
        out = lse.sum()
    elif loss == "softmax":
        scale = torch.empty((), device="meta", dtype=torch.float32, requires_grad=True)
        columns = call == "symmetric"
        stats = backend.softmax_stats(q, k, scale, self_mode=call == "self", columns=columns, argmax=metrics)
        out = stats.lse.sum() + (stats.col_lse.sum() if stats.col_lse is not None else 0)
    elif loss == "sigmoid":
        positive = torch.empty(batch, device="meta", dtype=torch.int64)
        t, b = (torch.empty((), device="meta", dtype=torch.float32, requires_grad=True) for _ in range(2))
        out = sigmoid_rows(q, k, positive, t, b, backend="triton").sum()
    else:
        labels_q = torch.empty(batch, device="meta", dtype=torch.int64)
        labels_k = labels_q if call == "self" else torch.empty(keys, device="meta", dtype=torch.int64)
        args = dict(margin=0.25, gamma=64.0, self_mode=call == "self", argmax=metrics)
        stats = backend.circle_stats(q, k, labels_q, labels_k, **args)
        out = stats.row_loss.sum()
    out.backward()


def capture(
    batch: int, dim: int, dtype: str, loss: str, call: str, precision: str = "tf32", metrics: bool = False
) -> list[tuple]:
    """The launcher's calls (kernel name, positional arguments, constexprs) for one case."""
    calls: list = []
    saved = os.environ.get("DCR_INPUT_PRECISION")
    os.environ["DCR_INPUT_PRECISION"] = precision
    try:
        with _recording(calls):
            _run_case(batch, dim, dtype, loss, call, metrics)
    finally:
        if saved is None:
            os.environ.pop("DCR_INPUT_PRECISION")
        else:
            os.environ["DCR_INPUT_PRECISION"] = saved
    return calls


def bind(name: str, args: tuple, constexprs: dict, capability: int) -> Variant:
    """Signature and attributes of one recorded call, as Triton's JIT binder specialises it for the target."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    from dcr_kernels.backends.triton import kernels

    fn = getattr(kernels, name)
    backend = make_backend(GPUTarget("cuda", capability, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    blocks = {k: 0 for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")}  # placeholders: each config sets its own
    bound, specialization, _ = binder(*args, **constexprs, **blocks)
    signature, attrs, constants = {}, {}, dict(constexprs)
    for i, (param, (kind, attr)) in enumerate(zip(fn.params, specialization, strict=True)):
        signature[param.name] = kind
        if kind == "constexpr" and param.name not in blocks:
            constants[param.name] = bound[param.name]  # a specialised value (e.g. an integer equal to 1)
        elif kind != "constexpr" and isinstance(attr, str) and attr:
            attrs[(i,)] = backend.parse_attr(attr)
    return Variant(name, signature, attrs, constants)


def cases() -> list[tuple]:
    """(batch, dim, dtype, loss, call, fp32 dot precision, top-1 metrics) for every shape, dtype, loss and
    call, with and without the metrics (which make the forward track each row's best column)."""
    out = []
    for batch, dim, dtype, (loss, call), metrics in product(BATCHES, DIMS, DTYPES, CALLS, (False, True)):
        for precision in ("tf32", "ieee") if dtype == "fp32" or call == "guided" else ("tf32",):  # guide: fp32
            out.append((batch, dim, dtype, loss, call, precision, metrics))
    return out


def captured_variants(capability: int = 90) -> list[Variant]:
    """Every distinct compile that the cases launch on a GPU of `capability`, with the cases that launch it."""
    found: dict[tuple, Variant] = {}
    for case in cases():
        for name, args, constexprs in capture(*case):
            variant = bind(name, args, constexprs, capability)
            found.setdefault(variant.key, variant).cases.append(case)
    return list(found.values())


if __name__ == "__main__":
    for v in captured_variants():
        ints = {k: v.attrs.get((i,)) for i, k in enumerate(v.signature) if v.signature[k] in ("i32", "i64")}
        print(v.kernel, v.constexprs, len(v.cases), ints)
