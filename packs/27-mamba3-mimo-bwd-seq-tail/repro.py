"""Pack 27: Mamba-3's dense MIMO backward fails when the sequence length is not a multiple of chunk_size.

Standalone: needs torch, triton, tilelang 0.1.8, einops and mamba_ssm's sources on PYTHONPATH (its top-level
__init__ skipped, see README), one CUDA GPU. Prints one EVIDENCE line and one sentinel.

The forward and the TileLang backward kernels handle a partial last chunk (tail_len = S % chunk_size), but two
Triton helpers of the dense backward do not: bwd_dadt_fused_triton asserts S % chunk_size == 0, and
bwd_dtrap_ddt_triton counts S // chunk_size chunks and leaves the tail's dt and trap gradients at zero.

What is measured: a MIMO Mamba3 block (bf16, seed 0), loss = sum of its output over the first S = 50 tokens,
backward; against the same block on the input zero-padded to 64 tokens (a whole number of chunks) with the
same loss on the first 50 tokens, which is the same function of the first 50 inputs (the block is causal).
Relative Frobenius error of the input gradient and of every parameter gradient, worst first. A control at
S = 64 (no tail) must run on any version."""

import json
import re
import sys

import torch

SEED = 0
D_MODEL, D_STATE, HEADDIM, RANK, CHUNK = 256, 64, 64, 4, 16  # nheads 8, N = P = 64, R = 4
BATCH, S, S_PADDED = 2, 50, 64
TOL = 0.02  # bf16 kernels on the same inputs, chunk boundaries shared; upstream's MIMO tests allow 0.10 vs fp32
BUG_RE = re.compile(r"must be divisible by chunk_size")


def grads(block, x, keep):
    block.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    block(x)[:, :keep].float().sum().backward()
    out = {"x": x.grad[:, :keep].float()}
    out.update({n: p.grad.float() for n, p in block.named_parameters() if p.grad is not None})
    return out


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import tilelang
    from mamba_ssm.modules.mamba3 import Mamba3

    torch.manual_seed(SEED)
    block = Mamba3(D_MODEL, d_state=D_STATE, headdim=HEADDIM, is_mimo=True, mimo_rank=RANK, chunk_size=CHUNK,
                   device="cuda", dtype=torch.bfloat16)
    x = torch.randn(BATCH, S, D_MODEL, device="cuda", dtype=torch.bfloat16)
    padded = torch.cat([x, torch.zeros(BATCH, S_PADDED - S, D_MODEL, device="cuda", dtype=x.dtype)], 1)
    reference = grads(block, padded, S)  # no tail: the control, on every version
    evidence = {"block": {"d_model": D_MODEL, "d_state": D_STATE, "headdim": HEADDIM, "nheads": block.nheads,
                          "mimo_rank": RANK, "chunk_size": CHUNK, "dtype": "bfloat16"}, "batch": BATCH,
                "seqlen": S, "padded_to": S_PADDED, "seed": SEED, "tolerance": TOL,
                "metric": "relative Frobenius error against the zero-padded run, loss on the first 50 tokens",
                "device": torch.cuda.get_device_name(),
                "versions": {"torch": torch.__version__, "tilelang": tilelang.__version__}}
    ref_ok = all(bool(torch.isfinite(g).all()) and g.norm().item() > 0 for g in reference.values())
    evidence["control_padded_finite_and_nonzero"] = ref_ok
    try:
        got = grads(block, x, S)
    except AssertionError as exc:
        evidence["tail"] = {"raised": f"AssertionError: {str(exc)[:300]}", "is_the_divisibility_assert":
                            bool(BUG_RE.search(str(exc)))}
        print("EVIDENCE " + json.dumps(evidence))
        print("BUG_REPRODUCED" if ref_ok and evidence["tail"]["is_the_divisibility_assert"] else "INCONCLUSIVE")
        return 0
    errors = {name: rel(got[name], reference[name]) for name in reference}
    worst = max(errors, key=errors.get)
    finite = all(bool(torch.isfinite(g).all()) for g in got.values())
    evidence["tail"] = {"finite": finite, "worst": worst, "worst_rel_err": errors[worst], "rel_err": errors}
    print("EVIDENCE " + json.dumps(evidence))
    if not ref_ok or not finite:
        print("INCONCLUSIVE")
    elif errors[worst] <= TOL:
        print("FIX_VALIDATED")
    else:
        print("BUG_REPRODUCED")  # ran, but the tail's gradients are wrong (the silent half of the bug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
