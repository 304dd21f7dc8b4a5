"""Pack 22: the Mamba-3 MIMO backward does not build at N=16 through mamba3_mimo (8 warps, 4-warp GEMMs).

mamba3_mimo's autograd backward calls mamba_mimo_bwd_combined with its default bb_threads=256. At upstream's
own grid point N16_P64_R4_C8 TileLang cannot split the bwd_bwd kernel's GEMMs over 8 warps and stops with
"m_warp * n_warp must equal num_warps"; upstream's backward test passes bb_threads=128 there, so it passes
while training through the public function cannot. Measured here, through mamba3_mimo itself:
  the bug shape  N16_P64_R4_C8: does the backward build, and are its 14 gradients within REL_TOL of an
                 fp32 recurrent reference (stable max-relative error, upstream's MIMO tolerance)?
  the control    N32_P64_R4_C16, which builds with 256 threads: the same check (the reference and the
                 setup must hold there, or nothing is shown).
  BUG_REPRODUCED  the bug shape raises the warp-partition check and the control holds;
  FIX_VALIDATED   both build and both are within REL_TOL;
  INCONCLUSIVE    anything else (the control fails, another error, a gradient off the reference).

Run: PYTHONPATH=<mamba checkout> python repro.py   (tilelang 0.1.8; skip mamba_ssm's top-level __init__, which
imports a compiled extension these kernels never use, as pack 05's README shows)
"""

import json
import math
import sys

import torch
import torch.nn.functional as F

SEED = 0
B, S, H, G, ROT_DIV = 2, 128, 8, 1, 4
BUG, CONTROL = (16, 64, 4, 8), (32, 64, 4, 16)  # (N, P, R, chunk)
WARP_CHECK = "m_warp * n_warp must equal num_warps"
REL_TOL = 0.10
NAMES = ("Q", "K", "V", "ADT", "DT", "Trap", "Q_bias", "K_bias", "MIMO_V", "MIMO_Z", "MIMO_Out", "Angles", "D", "Z")


def make_inputs(N, P, R, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, device="cuda", generator=g)  # noqa: E731
    uni = lambda *shape: torch.rand(*shape, device="cuda", generator=g)  # noqa: E731
    dt = F.softplus(rnd(B, H, S) - 3.0)
    x = {"Q": rnd(B, S, R, G, N).bfloat16(), "K": rnd(B, S, R, G, N).bfloat16(), "V": rnd(B, S, H, P).bfloat16(),
         "ADT": -dt * (0.5 + uni(B, H, S)), "DT": dt, "Trap": (uni(B, H, S) * 0.5).bfloat16(),
         "Q_bias": rnd(H, R, N), "K_bias": rnd(H, R, N), "MIMO_V": rnd(H, R, P) / R, "MIMO_Z": rnd(H, R, P) / R,
         "MIMO_Out": rnd(H, R, P) / R, "Angles": uni(B, S, H, N // ROT_DIV), "D": rnd(H),
         "Z": rnd(B, S, H, P).bfloat16()}
    return x, rnd(B, S, H, P).bfloat16()


def rotate(x, theta):
    """Rotary embedding in the kernels' layout (divisor 4): block 0 rotates against block 2."""
    blocks = x.unflatten(-1, (ROT_DIV, x.shape[-1] // ROT_DIV))
    a, b = blocks[..., 0, :], blocks[..., 2, :]
    cos, sin = torch.cos(theta), torch.sin(theta)
    return torch.stack([a * cos - b * sin, blocks[..., 1, :], a * sin + b * cos, blocks[..., 3, :]], dim=-2).flatten(-2)


def reference(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, MIMO_V, MIMO_Z, MIMO_Out, Angles, D, Z):
    """Mamba-3 MIMO, one time step at a time, fp32 (the reference of packs 05 and 20)."""
    q = Q.repeat_interleave(H // G, dim=3) + Q_bias.transpose(0, 1)
    k = K.repeat_interleave(H // G, dim=3) + K_bias.transpose(0, 1)
    theta = torch.cumsum(torch.tanh(Angles) * DT.transpose(1, 2)[..., None] * math.pi, dim=1)
    q, k = rotate(q, theta[:, :, None]), rotate(k, theta[:, :, None])
    v, z = torch.einsum("bshp,hrp->bsrhp", V, MIMO_V), torch.einsum("bshp,hrp->bsrhp", Z, MIMO_Z)
    trap, alpha = torch.sigmoid(Trap), torch.exp(ADT)
    beta, gamma = (1 - trap) * DT * alpha, trap * DT
    state = V.new_zeros(B, H, V.shape[-1], Q.shape[-1])
    prev_kv, out = torch.zeros_like(state), []
    for t in range(S):
        kv = torch.einsum("brhp,brhn->bhpn", v[:, t], k[:, t])
        a, b, c = (w[:, :, t, None, None] for w in (alpha, beta, gamma))
        state = a * state + b * prev_kv + c * kv
        prev_kv = kv
        y = torch.einsum("bhpn,brhn->brhp", state, q[:, t]) + D[None, None, :, None] * v[:, t]
        out.append(torch.einsum("brhp,hrp->bhp", y * F.silu(z[:, t]), MIMO_Out))
    return torch.stack(out, dim=1)


def check(mimo, N, P, R, chunk) -> dict:
    """The 14 gradients through mamba3_mimo against autograd through the fp32 reference, or the build error."""
    x, dout = make_inputs(N, P, R, SEED)
    row = {"N": N, "P": P, "R": R, "chunk": chunk}
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in x.items()}
    try:
        out = mimo(**leaves, chunk_size=chunk, rotary_dim_divisor=ROT_DIV, dtype=torch.bfloat16)
        got = torch.autograd.grad(out, [leaves[n] for n in NAMES], dout)
    except Exception as exc:  # noqa: BLE001 - a backward that does not build is the measurement
        checks = [ln.strip() for ln in str(exc).splitlines() if "Check failed" in ln] or [str(exc)[-300:]]
        return {**row, "built": False, "error": f"{type(exc).__name__}: {checks[-1]}"}
    ref_leaves = {n: t.detach().float().requires_grad_(True) for n, t in x.items()}
    ref = torch.autograd.grad(reference(**ref_leaves), [ref_leaves[n] for n in NAMES], dout.float())
    rel = {n: ((g.float() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
           for n, g, r in zip(NAMES, got, ref, strict=True)}
    return {**row, "built": True, "finite": all(torch.isfinite(g).all().item() for g in got), "max_rel_err": rel,
            "worst": max(rel, key=rel.get), "within_tol": all(e < REL_TOL for e in rel.values())}


def main() -> int:
    if not torch.cuda.is_available():
        print("pack 22: no CUDA GPU visible; this reproducer needs one", file=sys.stderr)
        return 2
    import tilelang
    from mamba_ssm.ops.tilelang.mamba3.mamba3_mimo import mamba3_mimo

    torch.manual_seed(SEED)
    control, bug = check(mamba3_mimo, *CONTROL), check(mamba3_mimo, *BUG)
    ev = {"pack": "22-mamba3-mimo-bwd-n16-threads", "device": torch.cuda.get_device_name(),
          "versions": {"torch": torch.__version__, "tilelang": tilelang.__version__},
          "shape": {"B": B, "S": S, "H": H, "G": G, "rotary_dim_divisor": ROT_DIV, "dtype": "bfloat16"},
          "thresholds": {"rel_tol": REL_TOL, "metric": "max|g - g_ref| / max|g_ref| per gradient"},
          "control": control, "bug_shape": bug}
    holds = lambda r: r["built"] and r["finite"] and r["within_tol"]  # noqa: E731
    if not holds(control):
        ev["reason"] = "the control shape does not hold: the setup or the reference is off, nothing is shown"
        verdict = "INCONCLUSIVE"
    elif not bug["built"] and WARP_CHECK in bug["error"]:
        verdict = "BUG_REPRODUCED"
    elif holds(bug):
        verdict = "FIX_VALIDATED"
    else:
        ev["reason"] = "the bug shape neither fails the warp check nor holds against the reference"
        verdict = "INCONCLUSIVE"
    print("EVIDENCE " + json.dumps(ev, sort_keys=True))
    print(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
