"""Pack 04: the Mamba-3 SISO backward dqkv kernel asks for V @ dO^T three times per chunk.

Standalone: torch, triton 3.6 and mamba_ssm's ops (see README for the top-level __init__) on one
CUDA GPU. Code clarity / compiler-robustness pack, not a speed-up.

What is measured
  ir       in the *frontend* Triton IR of mamba3_siso_bwd_kernel_dqkv (the module the code generator
           builds from the Python source, before Triton's own passes), the number of tt.dot ops whose
           operands are v_block and tl.trans(do_block): identical products the source asks for. The
           total tt.dot count there and after Triton's TTIR passes (which run CSE) is reported too.
           Bug: more than one such product. Fixed: exactly one.
  outputs  the seven outputs of compute_dqkv (dQ, dK, dV, dADT, dQK_dot, dD, d_input_ssm_state) for a
           batched and a varlen input, recorded through the public autograd backward. With a reference
           from the unpatched code (REPRO_ARTIFACTS from the runner's clean stage, or --ref PATH), the
           fix also needs every output bitwise identical to it.
  timing   (side-car) compute_dqkv of this code vs the reference's kernel source loaded in the same
           process, in alternating blocks of 10 calls, 50 calls each: GPU kernel time per call (the CUDA
           kernels CUPTI records through torch.profiler, summed per call) and stream time (CUDA events);
           PERF_WITHIN_NOISE when the kernel-time median ratio is within the relative interquartile
           spread of the reference's own kernel times.
Every Mamba-3 Triton kernel's autotune list is pinned to one config (num_warps=4, fewest stages) for both
versions: the same kernel config on both sides, and minutes of autotuning saved.
"""

import argparse
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

SEED = 0
B, S, H, G, N, P, CHUNK = 2, 1024, 8, 1, 128, 64, 64  # batch, seqlen, nheads, nheads_qk, headdim_qk/v, chunk
VARLEN = [0, 384, 1024]  # two sequences packed in one row
ITERS, BLOCK = 50, 10  # timed calls per version, in alternating blocks of BLOCK
OUT_NAMES = ("dQ_mid", "dK_mid", "dV", "dADT", "dQK_dot", "dD", "d_input_ssm_state")


def inputs(batch, cu_seqlens=None):
    nseq = batch if cu_seqlens is None else len(cu_seqlens) - 1
    dev, bf = "cuda", torch.bfloat16
    dt = 1e-3 * 100.0 ** torch.rand(batch, H, S, device=dev)  # log-uniform in [1e-3, 0.1]
    x = {
        "Q": F.rms_norm(torch.randn(batch, S, G, N, device=dev, dtype=bf), (N,)),
        "K": F.rms_norm(torch.randn(batch, S, G, N, device=dev, dtype=bf), (N,)),
        "V": torch.randn(batch, S, H, P, device=dev, dtype=bf),
        "ADT": -torch.empty(batch, H, S, device=dev).uniform_(1.0, 16.0) * dt, "DT": dt,
        "Trap": torch.rand(batch, H, S, device=dev, dtype=bf), "Q_bias": torch.randn(H, N, device=dev, dtype=bf),
        "K_bias": torch.randn(H, N, device=dev, dtype=bf), "Angles": torch.randn(batch, S, H, N // 4, device=dev),
        "D": torch.ones(H, device=dev), "Z": torch.randn(batch, S, H, P, device=dev, dtype=bf),
    }
    states = (torch.randn(nseq, H, N // 4, device=dev), torch.randn(nseq, H, P, N, device=dev),
              torch.randn(nseq, H, N, device=dev), torch.randn(nseq, H, P, device=dev))
    return x, states, torch.randn(batch, S, H, P, device=dev, dtype=bf)


def record_dqkv_outputs(combined_mod):
    """Run the public forward + backward on a batched and a varlen input; return compute_dqkv's
    outputs and the keyword arguments of the batched call (for the timing side-car)."""
    seen = []
    original = combined_mod.compute_dqkv

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append((kwargs, out))
        return out

    combined_mod.compute_dqkv = spy
    try:
        results = {}
        for name, batch, cu in (("batched", B, None), ("varlen", 1, VARLEN)):
            torch.manual_seed(SEED)
            x, states, dout = inputs(batch, cu)
            leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
            cu_t = torch.tensor(cu, device="cuda", dtype=torch.int32) if cu else None
            out = combined_mod.mamba3_siso_combined(**leaves, Input_States=states, chunk_size=CHUNK, cu_seqlens=cu_t)
            out.backward(dout)
            results[name] = {n: t.detach().cpu() for n, t in zip(OUT_NAMES, seen[-1][1]) if t is not None}
        return results, seen[0][0]
    finally:
        combined_mod.compute_dqkv = original


def dot_counts(kernel):
    """Frontend and post-pass tt.dot counts of the compiled (non-varlen) dqkv kernel."""
    from triton._C.libtriton import ir
    from triton.compiler.compiler import make_backend

    jit = kernel.fn  # the Autotuner wraps the JITFunction
    compiled = [k for cache in jit.device_caches.values() for k in cache[0].values()]

    def is_varlen(k):
        consts = {(jit.arg_names[c[0]] if isinstance(c, tuple) else c): v for c, v in k.src.constants.items()}
        return consts.get("IS_VARLEN")

    chosen = next(k for k in compiled if not is_varlen(k))
    backend = make_backend(chosen.metadata.target)
    opts = backend.parse_options({"num_warps": chosen.metadata.num_warps, "num_stages": chosen.metadata.num_stages})
    ctx = ir.context()
    ir.load_dialects(ctx)
    backend.load_dialects(ctx)
    frontend = str(chosen.src.make_ir(chosen.metadata.target, opts, backend.get_codegen_implementation(opts),
                                      backend.get_module_map(), ctx))
    trans_of = dict(re.findall(r"(%[\w.]+) = tt\.trans (%[\w.]+)", frontend))
    dots = re.findall(r"= tt\.dot (%[\w.]+), (%[\w.]+),", frontend)
    vdo = [d for d in dots if d[0].startswith("%v_block") and trans_of.get(d[1], "").startswith("%do_block")]
    return {"frontend_dots": len(dots), "frontend_v_doT_dots": len(vdo),
            "post_pass_dots": len(re.findall(r"= tt\.dot ", chosen.asm["ttir"])),
            "target": f"{chosen.metadata.target.backend} sm_{chosen.metadata.target.arch}"}


def load_module_from_source(source, name, directory):
    path = Path(directory) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernel_ms_per_call(fn, calls: int) -> list[float] | None:
    """GPU kernel time of each of `calls` calls: the CUDA kernels (and memsets) CUPTI records through
    torch.profiler, in the order they ran on the stream, summed per call; None when the kernels do not
    divide evenly into calls (then a call's kernels cannot be told apart)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    device = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    if not device or len(device) % calls:
        return None
    k = len(device) // calls
    return [sum(e.device_time_total for e in device[i * k:(i + 1) * k]) / 1e3 for i in range(calls)]


def stream_ms_per_call(fn, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def timing(ref_mod, new_mod, kwargs, pin):
    pin(ref_mod)
    mods = {"reference": ref_mod, "this": new_mod}
    for name in mods:  # compile + warm up
        for _ in range(3):
            mods[name].compute_dqkv(**kwargs)
    kernel: dict[str, list] = {name: [] for name in mods}
    stream: dict[str, list] = {name: [] for name in mods}
    for _ in range(ITERS // BLOCK):  # alternating blocks: a slow drift of the GPU reaches both versions
        for name, mod in mods.items():
            call = lambda mod=mod: mod.compute_dqkv(**kwargs)  # noqa: E731
            got = kernel_ms_per_call(call, BLOCK)
            if got is None:
                return {"error": f"{name}: the profiled kernels do not divide into {BLOCK} calls"}
            kernel[name] += got
            stream[name] += stream_ms_per_call(call, BLOCK)
    q = {k: sorted(v) for k, v in kernel.items()}
    med = {k: v[ITERS // 2] for k, v in q.items()}
    spread = (q["reference"][3 * ITERS // 4] - q["reference"][ITERS // 4]) / med["reference"]
    smed = {k: sorted(v)[ITERS // 2] for k, v in stream.items()}
    return {"kernel_ms_median": med, "ratio_this_over_reference": med["this"] / med["reference"],
            "reference_iqr_rel": spread, "stream_ms_median": smed,
            "stream_ratio_this_over_reference": smed["this"] / smed["reference"],
            "methods": {"kernel_ms": "per call, the CUDA kernel durations CUPTI records (torch.profiler), summed",
                        "stream_ms": "per call, CUDA events around it (kernels plus host gaps)",
                        "calls": f"{ITERS} per version, in alternating blocks of {BLOCK}; medians"}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--save-ref", help="save this code's outputs and kernel source (run on the old code)")
    parser.add_argument("--ref", help="compare against outputs saved by --save-ref (run on the new code)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("pack 04: no CUDA GPU visible; this reproducer needs one", file=sys.stderr)
        return 2
    import mamba_ssm.ops.triton.mamba3.mamba3_siso_bwd as bwd_mod
    import mamba_ssm.ops.triton.mamba3.mamba3_siso_combined as combined_mod
    import triton

    def pin(*mods):
        """One autotune config per kernel (num_warps=4, fewest stages, no maxnreg): the same config
        for both versions, and minutes of autotuning saved."""
        for mod in mods or [m for n, m in list(sys.modules.items()) if n.startswith("mamba_ssm.ops.triton.mamba3")]:
            for obj in vars(mod).values():
                if isinstance(obj, triton.runtime.autotuner.Autotuner) and len(obj.configs) > 1:
                    ok = [c for c in obj.configs if c.num_warps == 4 and getattr(c, "maxnreg", None) is None]
                    obj.configs = [min(ok, key=lambda c: c.num_stages) if ok else obj.configs[0]]

    artifacts = os.environ.get("REPRO_ARTIFACTS")
    ref_path = args.ref or (os.path.join(artifacts, "pack04-ref.pt") if artifacts else None)
    save_path = args.save_ref
    if args.ref is None and artifacts and not os.path.exists(ref_path):
        save_path, ref_path = ref_path, None  # the runner's first stage: it becomes the reference
    elif ref_path and not os.path.exists(ref_path):
        ref_path = None

    pin()
    outputs, dqkv_kwargs = record_dqkv_outputs(combined_mod)
    counts = dot_counts(bwd_mod.mamba3_siso_bwd_kernel_dqkv)
    source = Path(bwd_mod.__file__).read_text()
    evidence = {
        "pack": "04-mamba3-siso-bwd-shared-vdo",
        "ir": counts,
        "ir_counts": "tt.dot ops with operands v_block and tl.trans(do_block) in the frontend TTIR of "
        "mamba3_siso_bwd_kernel_dqkv (IS_VARLEN=False, CHUNK_SIZE=64, HEADDIM_QK=128, HEADDIM_V=64)",
        "thresholds": {"bug": "frontend_v_doT_dots > 1", "fix": "frontend_v_doT_dots == 1 and, with a "
                       "reference, all outputs bitwise equal", "perf": "|ratio - 1| <= reference_iqr_rel, "
                       "on GPU kernel time"},
        "shapes": {"batched": [B, S, H, G, N, P], "varlen_cu_seqlens": VARLEN, "chunk_size": CHUNK},
        "pinned_config": "every mamba3 Triton kernel: num_warps=4, fewest num_stages, no maxnreg",
        "seed": SEED,
        "versions": {"torch": torch.__version__, "triton": triton.__version__},
        "device": torch.cuda.get_device_name(),
    }
    extra = []
    if save_path:
        torch.save({"outputs": outputs, "kernel_source": source}, save_path)
        evidence["saved_reference"] = save_path
    if ref_path:
        ref = torch.load(ref_path)
        diffs = [f"{case}.{n}" for case in ref["outputs"] for n in ref["outputs"][case]
                 if not torch.equal(ref["outputs"][case][n], outputs[case].get(n, torch.empty(0)))]
        evidence["compared_to_reference"] = ref_path
        evidence["outputs_not_bitwise_equal"] = diffs
        ref_mod = load_module_from_source(ref["kernel_source"], "mamba3_siso_bwd_reference", os.path.dirname(ref_path))
        evidence["timing"] = timing(ref_mod, bwd_mod, dqkv_kwargs, pin)
        t = evidence["timing"]
        if "error" not in t and abs(t["ratio_this_over_reference"] - 1) <= t["reference_iqr_rel"]:
            extra.append("PERF_WITHIN_NOISE")

    n = counts["frontend_v_doT_dots"]
    if n > 1:
        verdict = "BUG_REPRODUCED"
    elif n == 1 and not evidence.get("outputs_not_bitwise_equal"):
        verdict = "FIX_VALIDATED"
        if not ref_path:
            evidence["note"] = "no reference outputs: FIX_VALIDATED rests on the IR count alone"
    else:
        evidence["reason"] = "no V @ dO^T product found in the IR" if n == 0 else "outputs differ from the reference"
        verdict = "INCONCLUSIVE"
    print("EVIDENCE " + json.dumps(evidence, sort_keys=True))
    print(verdict)
    for sentinel in extra:
        print(sentinel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
