"""Pack 23: Liger's fused linear JSD computes the logits in bf16 and only then casts them to fp32.

Standalone: needs torch, triton and liger_kernel (pip install liger-kernel==0.8.2, or the checkout's src/ on
PYTHONPATH) and one CUDA GPU (or Triton's CPU interpreter: TRITON_INTERPRET=1). Prints one EVIDENCE line
and one sentinel.

fused_linear_jsd_forward says "we do computation in FP32", but computes `(x @ w.t()).to(torch.float32)`: the
matmul's output is rounded to bf16 first, so every logit carries bf16 rounding (about 2^-9 relative) before
the softmax. What is measured: grad_input and grad_weight of LigerFusedLinearJSDFunction (bf16 inputs, a
correlated teacher) against an fp64 autograd reference of the same generalized JSD computed from the same
bf16 tensors, as the relative Frobenius error ||g - g_ref|| / ||g_ref||. The floor is the error of the fp64
reference itself rounded to bf16 (what a bf16 output can at best achieve)."""

import json
import os
import sys

import torch

SEED = 0
BT, H, V = 256, 1024, 32000  # tokens, hidden, vocab (the shape)
LOGIT_STD = 4.0  # logit spread; above ~16 with 0 < beta < 1 the kernel's NaN on double underflow (pack 24) hides this
BETA, TEMPERATURE = 0.5, 1.0
BUG_FACTOR = 5.0  # grad_input error this far above the bf16 floor is the bug's signature
FIX_FACTOR = 3.0  # within this factor of the floor meets the claim (grad_logits is still bf16 before the GEMMs)
REF_MIN = 1e-8  # the reference gradients must not be near zero (a tolerance passes zeros)


def reference_loss(xs, ws, xt, wt):
    log_q = torch.log_softmax((xs @ ws.t()) / TEMPERATURE, -1)  # student, log Q
    log_p = torch.log_softmax((xt @ wt.t()) / TEMPERATURE, -1)  # teacher, log P
    m = BETA * log_p.exp() + (1 - BETA) * log_q.exp()
    return (BETA * log_p.exp() * log_p + (1 - BETA) * log_q.exp() * log_q - m * m.log()).sum() / xs.shape[0]


def rel(got, ref):
    return ((got.double() - ref).norm() / ref.norm()).item()


def main() -> int:
    interpreter = os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available() and not interpreter:
        print("needs a CUDA GPU (or TRITON_INTERPRET=1 for Triton's CPU interpreter)", file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from liger_kernel.ops.fused_linear_jsd import LigerFusedLinearJSDFunction

    torch.manual_seed(SEED)
    dt = torch.bfloat16
    xs = torch.randn(BT, H, dtype=dt)
    xt = (xs.float() + 0.5 * torch.randn(BT, H)).to(dt)
    ws = (torch.randn(V, H) * LOGIT_STD / H**0.5).to(dt)
    wt = (ws.float() + 0.5 * torch.randn(V, H) * LOGIT_STD / H**0.5).to(dt)

    ref_x, ref_w = xs.double().requires_grad_(), ws.double().requires_grad_()
    ref_loss = reference_loss(ref_x, ref_w, xt.double(), wt.double())
    ref_loss.backward()
    dx_ref, dw_ref = ref_x.grad, ref_w.grad

    x = xs.to(device).requires_grad_()
    w = ws.to(device).requires_grad_()
    loss = LigerFusedLinearJSDFunction.apply(x, w, xt.to(device), wt.to(device), None, BETA, -100, TEMPERATURE)
    loss.backward()
    dx, dw = x.grad.cpu(), w.grad.cpu()

    finite = bool(torch.isfinite(loss).item() and torch.isfinite(dx).all() and torch.isfinite(dw).all())
    floor = max(rel(dx_ref.to(dt), dx_ref), 2.0**-12)
    errors = {"dx": rel(dx, dx_ref), "dW": rel(dw, dw_ref),
              "loss": abs(loss.item() - ref_loss.item()) / abs(ref_loss.item())}
    guard = min(dx_ref.abs().max().item(), dw_ref.abs().max().item()) > REF_MIN
    bug = finite and errors["dx"] > BUG_FACTOR * floor
    fixed = finite and errors["dx"] <= FIX_FACTOR * floor and errors["dW"] <= FIX_FACTOR * max(
        rel(dw_ref.to(dt), dw_ref), 2.0**-12)
    evidence = {
        "shape": {"BT": BT, "H": H, "V": V}, "seed": SEED, "dtype": "bfloat16", "beta": BETA,
        "temperature": TEMPERATURE, "logit_std": LOGIT_STD, "device": device,
        "metric": "relative Frobenius error against fp64 autograd of the same loss on the same bf16 tensors",
        "errors": errors, "bf16_floor_dx": floor, "dx_over_floor": errors["dx"] / floor,
        "thresholds": {"bug_factor": BUG_FACTOR, "fix_factor": FIX_FACTOR}, "reference_not_near_zero": guard,
        "finite": finite, "torch": torch.__version__,
    }
    print("EVIDENCE " + json.dumps(evidence))
    if not guard or not finite:
        print("INCONCLUSIVE")
    elif bug:
        print("BUG_REPRODUCED")
    elif fixed:
        print("FIX_VALIDATED")
    else:
        print("INCONCLUSIVE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
