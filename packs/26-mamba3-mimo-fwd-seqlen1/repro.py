"""Pack 26: Mamba-3's MIMO forward raises at seqlen 1 (TileLang's stride check on a size-1 dimension).

Standalone: needs torch, triton, tilelang 0.1.8, einops and mamba_ssm's sources on PYTHONPATH (its top-level
__init__ skipped, see README), one CUDA GPU. Prints one EVIDENCE line and one sentinel.

Mamba3.forward rearranges DT and ADT from (B, L, H) to (B, H, L). At L = 1 their strides are (H, 1, H), and
torch's contiguous() leaves them so (a size-1 dimension's stride does not count for contiguity); the tensors
derived from them inherit it. TileLang 0.1.8's host wrapper checks every stride of its arguments against the
row-major value and raises before the kernel runs. What is measured: a MIMO Mamba3 block (bf16, seed 0) on the
same input at seqlen 2 (the control, which runs) and at seqlen 1: the exception, or, when it runs, the seqlen-1
output against the first token of the seqlen-2 output (the block is causal: token 0 cannot depend on token 1),
as max|y1 - y2[:, :1]| / max|y2[:, :1]|."""

import json
import re
import sys

import torch

SEED = 0
D_MODEL, D_STATE, HEADDIM, RANK, CHUNK = 128, 64, 32, 4, 16  # nheads 8; the MIMO shape pack 16 runs
BATCH = 2
TOL = 2.0**-6  # bf16 rounding of one token's output, with margin; the two runs share every chunk boundary
BUG_RE = re.compile(r"strides\[\d+\] expected 1, but got \d+")


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import tilelang
    from mamba_ssm.modules.mamba3 import Mamba3

    torch.manual_seed(SEED)
    block = Mamba3(D_MODEL, d_state=D_STATE, headdim=HEADDIM, is_mimo=True, mimo_rank=RANK, chunk_size=CHUNK,
                   device="cuda", dtype=torch.bfloat16).eval()
    x = torch.randn(BATCH, 2, D_MODEL, device="cuda", dtype=torch.bfloat16)
    evidence = {"block": {"d_model": D_MODEL, "d_state": D_STATE, "headdim": HEADDIM, "nheads": block.nheads,
                          "mimo_rank": RANK, "chunk_size": CHUNK, "dtype": "bfloat16"}, "batch": BATCH,
                "seed": SEED, "tolerance": TOL, "device": torch.cuda.get_device_name(),
                "versions": {"torch": torch.__version__, "tilelang": tilelang.__version__}}
    with torch.no_grad():
        y2 = block(x)  # the control: seqlen 2 runs on every version
        control = y2[:, :1].float()
        evidence["seqlen2"] = {"finite": bool(torch.isfinite(y2).all()), "max_abs": control.abs().max().item()}
        try:
            y1 = block(x[:, :1].contiguous())
        except Exception as exc:  # noqa: BLE001 - the message is the measurement; checked against BUG_RE
            evidence["seqlen1"] = {"raised": f"{type(exc).__name__}: {str(exc)[:300]}",
                                   "is_the_stride_check": bool(BUG_RE.search(str(exc)))}
            print("EVIDENCE " + json.dumps(evidence))
            if evidence["seqlen1"]["is_the_stride_check"] and evidence["seqlen2"]["finite"]:
                print("BUG_REPRODUCED")
                return 0
            raise  # another failure is not this bug
    err = ((y1.float() - control).abs().max() / control.abs().max()).item()
    finite = bool(torch.isfinite(y1).all())
    evidence["seqlen1"] = {"finite": finite, "shape": list(y1.shape), "max_rel_err_vs_seqlen2_token0": err}
    guard = evidence["seqlen2"]["finite"] and evidence["seqlen2"]["max_abs"] > 1e-3
    evidence["control_not_near_zero"] = guard
    print("EVIDENCE " + json.dumps(evidence))
    print("FIX_VALIDATED" if guard and finite and err <= TOL else "INCONCLUSIVE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
