"""Pack 03: an FP8 QuantizedTensor reaches Megatron's TileLang SparseMLA with no bf16 storage behind it.

TransformerEngine's QuantizedTensor / Float8Tensor is a wrapper subclass: .dtype says bf16, data_ptr()
is 0 (the FP8 bytes live in ._data), .contiguous() returns the wrapper, and any other op dequantizes.
Megatron's SparseMLA decides from .dtype alone. Two paths, at DeepSeek-V3.2 dims (576 = 512 + 64):
  direct      SparseMLA.apply(q8, kv8, ...) with batch 2: the wrapper reaches the kernel, which gets
              a NULL data pointer;
  dispatcher  fused_sparse_mla_absorbed(q8, kv8, ...): query.permute() silently dequantizes, so the
              kernel runs on a bf16 copy and nothing says the FP8 storage was dropped.
The reference is the same kernel on the dequantized bf16 tensors (plain tensors).
  BUG_REPRODUCED  the direct launch fails on the NULL pointer ("null_pointer") and/or the dispatcher
                  dequantized without a word ("silent_dequant"); evidence names which;
  FIX_VALIDATED   both paths return outputs within REL_TOL of the reference and the dequantizing
                  fallback was announced (a warning naming the wrapper).
The FP8 tensor is TE's own Float8Tensor when transformer_engine imports, else FP8StandIn below (built as
TE 2.20.2 builds QuantizedTensor); EVIDENCE says which.

Run: PYTHONPATH=<Megatron-LM> python repro.py  (tilelang 0.1.8) -> EVIDENCE {...} and one sentinel.
"""

import json
import re
import sys
import warnings
from importlib import metadata

import torch

BATCH, SEQ, HEADS, TOPK, D, D_V = 2, 256, 16, 128, 576, 512  # SEQ a multiple of the kernels' 256 bucket
REL_TOL = 1e-3  # max|out - ref| / max|ref|; the same kernel on the same bf16 values should agree exactly
NULL_RE = re.compile(r"non-NULL|NULL pointer", re.IGNORECASE)
E4M3_MAX = 448.0


class FP8StandIn(torch.Tensor):
    """Per-tensor-scaled e4m3 storage behind a bf16-looking wrapper, as TE builds QuantizedTensor
    (transformer_engine/pytorch/quantized_tensor.py, TE 2.20.2: __new__ at 717-745 makes a
    _make_wrapper_subclass with the logical dtype; __torch_dispatch__ at 858-1027 dequantizes the
    arguments of any op it does not handle, "Default op: dequantize and perform op" at 1023) and
    Float8Tensor.contiguous (tensor/float8_tensor.py 554-573: returns self when the data is contiguous)."""

    dequantize_calls = 0

    @staticmethod
    def __new__(cls, x: torch.Tensor):
        scale = E4M3_MAX / x.float().abs().max().clamp_min(1e-12)
        strides = torch.empty(x.shape, device="meta").stride()
        self = torch.Tensor._make_wrapper_subclass(cls, x.shape, strides=strides, storage_offset=0,
                                                   dtype=x.dtype, layout=torch.strided, device=x.device)
        self._data = (x.float() * scale).to(torch.float8_e4m3fn).view(torch.uint8)
        self._scale_inv = (1.0 / scale).reshape(1)
        return self

    def dequantize(self, *, dtype=None):
        type(self).dequantize_calls += 1
        x = self._data.view(torch.float8_e4m3fn).float() * self._scale_inv
        return x.to(dtype or self.dtype)

    def contiguous(self, memory_format=torch.contiguous_format):
        return self

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args, kwargs=None):
        unwrap = lambda a: a.dequantize() if isinstance(a, FP8StandIn) else a  # noqa: E731
        return func(*torch.utils._pytree.tree_map(unwrap, args), **torch.utils._pytree.tree_map(unwrap, kwargs or {}))


def fp8_factory():
    """(name, quantize, count of dequantize() calls so far): TE's Float8Tensor where TE imports."""
    try:
        import transformer_engine.pytorch as te
        import transformer_engine_torch as tex
    except Exception:  # noqa: BLE001 - any import failure means: no usable TE here
        return ("stand-in FP8StandIn (TransformerEngine not importable)", FP8StandIn,
                lambda: FP8StandIn.dequantize_calls)
    from transformer_engine.pytorch.tensor.float8_tensor import Float8Tensor

    def quantize(x):
        scale = (E4M3_MAX / x.float().abs().max()).reshape(1)
        return te.Float8Quantizer(scale, torch.zeros(1, device=x.device), tex.DType.kFloat8E4M3)(x)

    calls = {"n": 0}
    plain = Float8Tensor.dequantize

    def counted(self, *, dtype=None):
        calls["n"] += 1
        return plain(self, dtype=dtype)

    Float8Tensor.dequantize = counted
    return f"TransformerEngine {metadata.version('transformer-engine')} Float8Tensor", quantize, lambda: calls["n"]


OPS = {  # what Megatron's entry points do to q/kv before a kernel sees them, and their neighbours
    "contiguous": lambda t: t.contiguous(), "view": lambda t: t.view(t.shape),
    "reshape": lambda t: t.reshape(t.shape), "permute": lambda t: t.permute(1, 0, 2, 3),
    "transpose": lambda t: t.transpose(0, 1), "squeeze_unsqueeze": lambda t: t.squeeze(0).unsqueeze(0),
    "detach": lambda t: t.detach(), "clone": lambda t: t.clone(),
}


def unwrap_table(quantize, wrapper_type: type) -> dict:
    """For each op on a small wrapped tensor: "wrapper" (the result is still the FP8 wrapper: its bytes
    kept) or "plain" (a dequantized tensor), or the error."""
    x = quantize(torch.randn(1, 4, 2, 64, device="cuda").bfloat16())
    out = {}
    for name, op in OPS.items():
        try:
            out[name] = "wrapper" if isinstance(op(x), wrapper_type) else "plain"
        except Exception as exc:  # noqa: BLE001 - recorded, not a verdict input
            out[name] = f"error: {type(exc).__name__}"
    return out


def sparse_indices(gen: torch.Generator) -> torch.Tensor:
    """Causal top-k like DSA's indexer, [b, s, k]: row q picks keys <= q; -1 pads the rest."""
    scores = torch.rand(BATCH, SEQ, SEQ, generator=gen, device="cuda")
    scores = scores.masked_fill(~torch.ones(SEQ, SEQ, dtype=torch.bool, device="cuda").tril(), -1.0)
    vals, idx = scores.topk(TOPK, dim=-1)
    return idx.masked_fill(vals < 0, -1).to(torch.int32)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def run_path(fn, dequantize_count) -> dict:
    """Call fn() and record what happened: output or error, dequantize calls, warnings raised."""
    before = dequantize_count()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out, error = fn(), None
        except Exception as exc:  # noqa: BLE001 - the message is measured against NULL_RE
            out, error = None, f"{type(exc).__name__}: {str(exc)[:300]}"
    said = [str(w.message)[:200] for w in caught if "dequantiz" in str(w.message).lower()]
    return {"out": out, "error": error, "dequantize_calls": dequantize_count() - before, "warnings": said}


def main() -> int:
    if not torch.cuda.is_available():
        print("pack 03: no CUDA GPU visible; this reproducer needs one", file=sys.stderr)
        return 2
    import megatron.core.parallel_state  # noqa: F401 - before megatron.core.utils (they import each other)
    import tilelang
    from megatron.core.transformer.experimental_attention_variant.ops.sparse_mla import SparseMLA
    from megatron.core.transformer.experimental_attention_variant.ops.tilelang_dsa import fused_sparse_mla_absorbed

    which, quantize, dequantize_count = fp8_factory()
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(BATCH, SEQ, HEADS, D, generator=gen, device="cuda").bfloat16()
    kv = torch.randn(BATCH, SEQ, 1, D, generator=gen, device="cuda").bfloat16()
    idx = sparse_indices(gen)
    scale = D**-0.5
    # [b, s, ...] for SparseMLA.apply, [s, b, ...] for the dispatcher: quantized apart (a transpose would
    # dequantize), from the same values
    q8, kv8 = quantize(q), quantize(kv)
    q8_sb, kv8_sb = quantize(q.transpose(0, 1).contiguous()), quantize(kv.transpose(0, 1).contiguous())
    ref_in = {name: t.dequantize() for name, t in (("q", q8), ("kv", kv8), ("q_sb", q8_sb), ("kv_sb", kv8_sb))}
    evidence = {"pack": "03-te-fp8-wrapper-sparse-mla", "fp8_tensor": which,
                "wrapper": {"type": f"{type(q8).__module__}.{type(q8).__name__}", "dtype": str(q8.dtype),
                            "data_ptr": q8.data_ptr(), "storage": str(q8._data.dtype),
                            "storage_bytes": q8._data.numel() * q8._data.element_size(),
                            "ops": unwrap_table(quantize, type(q8))},
                "shape": {"batch": BATCH, "seq": SEQ, "heads": HEADS, "topk": TOPK, "d": D, "d_v": D_V},
                "thresholds": {"rel_tol": REL_TOL}, "device": torch.cuda.get_device_name(),
                "versions": {"torch": torch.__version__, "tilelang": tilelang.__version__}}

    with torch.no_grad():
        ref_direct = SparseMLA.apply(ref_in["q"], ref_in["kv"], idx.unsqueeze(2).contiguous(), scale)[0]
        ref_disp = fused_sparse_mla_absorbed(ref_in["q_sb"], ref_in["kv_sb"], idx, scale, D_V)
        paths = {
            "direct": run_path(lambda: SparseMLA.apply(q8, kv8, idx.unsqueeze(2).contiguous(), scale)[0],
                               dequantize_count),
            "dispatcher": run_path(lambda: fused_sparse_mla_absorbed(q8_sb, kv8_sb, idx, scale, D_V),
                                   dequantize_count),
        }
    for name, ref in (("direct", ref_direct), ("dispatcher", ref_disp)):
        got = paths[name].pop("out")
        paths[name]["rel_err"] = None if got is None or ref is None else rel_err(got, ref)
        paths[name]["finite"] = None if got is None else bool(torch.isfinite(got).all())
    evidence["paths"] = paths

    direct, disp = paths["direct"], paths["dispatcher"]
    if ref_direct is None or ref_disp is None:
        evidence["reason"] = "the plain bf16 reference did not run (the dispatcher declined): no conclusion"
        verdict = "INCONCLUSIVE"
    else:
        bugs = []
        if direct["error"] and NULL_RE.search(direct["error"]):
            bugs.append("null_pointer")
        if disp["error"] is None and disp["dequantize_calls"] > 0 and not disp["warnings"]:
            bugs.append("silent_dequant")
        ok = all(p["error"] is None and p["finite"] and p["rel_err"] <= REL_TOL and p["warnings"]
                 for p in (direct, disp))
        evidence["bug_paths"] = bugs
        if bugs:
            verdict = "BUG_REPRODUCED"
        elif ok:
            verdict = "FIX_VALIDATED"
        else:
            evidence["reason"] = "neither the bug's signature nor an announced, matching fallback on both paths"
            verdict = "INCONCLUSIVE"
    print("EVIDENCE " + json.dumps(evidence, sort_keys=True))
    print(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
