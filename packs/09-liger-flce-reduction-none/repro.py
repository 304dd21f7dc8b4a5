"""Pack 09: Liger fused linear cross-entropy with reduction="none" scales every gradient by grad_output[0].

Standalone: needs torch, triton and liger_kernel (pip install liger-kernel==0.8.1, or the checkout's
src/ on PYTHONPATH) and one CUDA GPU. Prints one EVIDENCE line and one sentinel.

What is measured: grad_input, grad_weight and grad_bias of LigerFusedLinearCrossEntropyFunction
(bf16 inputs) against fp32 eager PyTorch on the same bf16-rounded inputs, as
    err = max|g - g_ref| / max|g_ref|         (relative to the reference's largest entry)
for three upstream gradients:
    uniform: loss.sum().backward()            -> the bf16 noise floor (and why nobody noticed)
    mask:    (loss * mask).sum().backward()   -> a random 0/1 loss mask, mask[0] = 1
    weights: (loss * w).sum().backward()      -> per-token weights in [0.25, 1]
"""

import json
import sys

import torch
import torch.nn.functional as F

SEED = 0
BT, H, V = 1024, 512, 8192  # tokens, hidden, vocab: 16 chunks inside Liger's forward
IGNORE_INDEX = -100
BUG_FACTOR = 5.0  # a non-uniform case this far above the uniform floor is the bug's signature
# Every non-uniform case within this factor of the floor meets the claim. Not 1: per-token weights
# add a bf16 rounding of each scaled row before Liger's bf16 grad_bias accumulation; upstream's own
# fix (v0.8.2) measures 2.52x for grad_bias on these inputs (H100), the bug 48x to 408x.
FIX_FACTOR = 3.0
FLOOR_MIN = 2.0**-10  # the floor is clamped here so a lucky exact match cannot make a zero threshold
SANITY_MAX = 2.0**-5  # the uniform case must agree this well, or something other than this bug is wrong
REF_MIN = 1e-4  # reference gradients must not be near zero (a tolerance passes zeros)


def max_rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.float() - ref).abs().max() / ref.abs().max()).item()


def liger_grads(fn, x, weight, bias, target, upstream):
    x, weight, bias = (t.detach().clone().requires_grad_(True) for t in (x, weight, bias))
    loss = fn(x, weight, target, bias, None, IGNORE_INDEX, 0.0, 0.0, "none")[0]
    (loss * upstream).sum().backward()
    return loss.detach(), (x.grad, weight.grad, bias.grad)


def reference_grads(x, weight, bias, target, upstream):
    x, weight, bias = (t.detach().float().requires_grad_(True) for t in (x, weight, bias))
    loss = F.cross_entropy(x @ weight.t() + bias, target, ignore_index=IGNORE_INDEX, reduction="none")
    (loss * upstream).sum().backward()
    return loss.detach(), (x.grad, weight.grad, bias.grad)


def main() -> int:
    if not torch.cuda.is_available():
        print("pack 09: no CUDA GPU visible; this reproducer needs one", file=sys.stderr)
        return 2
    import liger_kernel
    from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

    torch.manual_seed(SEED)
    dev = "cuda"
    x = torch.randn(BT, H, device=dev).bfloat16()
    weight = (torch.randn(V, H, device=dev) * H**-0.5).bfloat16()
    bias = (torch.randn(V, device=dev) * 0.1).bfloat16()
    target = torch.randint(0, V, (BT,), device=dev)
    target[::17] = IGNORE_INDEX
    mask = (torch.rand(BT, device=dev) < 0.5).float()
    mask[0] = 1.0  # grad_output[0] = 1: the buggy path then keeps every row, masked or not
    upstreams = {
        "uniform": torch.ones(BT, device=dev),
        "mask": mask,
        "weights": torch.rand(BT, device=dev) * 0.75 + 0.25,
    }

    names = ("dx", "dW", "db")
    errors, ref_max, loss_err = {}, {}, None
    for case, upstream in upstreams.items():
        loss, got = liger_grads(LigerFusedLinearCrossEntropyFunction.apply, x, weight, bias, target, upstream)
        ref_loss, ref = reference_grads(x, weight, bias, target, upstream)
        if case == "uniform":
            loss_err = max_rel_err(loss, ref_loss)
        errors[case] = {n: max_rel_err(g, r) for n, g, r in zip(names, got, ref)}
        ref_max[case] = {n: r.abs().max().item() for n, r in zip(names, ref)}

    floor = {n: max(errors["uniform"][n], FLOOR_MIN) for n in names}
    ratios = {c: {n: errors[c][n] / floor[n] for n in names} for c in ("mask", "weights")}
    worst = max(r for case in ratios.values() for r in case.values())
    evidence = {
        "pack": "09-liger-flce-reduction-none",
        "metric": "max|g - g_ref| / max|g_ref|, g = Liger bf16 gradient, g_ref = fp32 eager on the same bf16 inputs",
        "shape": {"BT": BT, "H": H, "V": V, "ignored_rows": int((target == IGNORE_INDEX).sum())},
        "dtype": "bfloat16",
        "reference": "float32 eager F.cross_entropy(reduction='none')",
        "seed": SEED,
        "errors": errors,
        "reference_max_abs": ref_max,
        "noise_floor": floor,
        "ratio_to_floor": ratios,
        "worst_ratio": worst,
        "loss_forward_err": loss_err,
        "thresholds": {"bug_factor": BUG_FACTOR, "fix_factor": FIX_FACTOR, "floor_min": FLOOR_MIN,
                       "uniform_sanity_max": SANITY_MAX, "reference_min_abs": REF_MIN},
        "uniform_case_passes": max(errors["uniform"].values()) <= SANITY_MAX,
        "versions": {"torch": torch.__version__, "liger_kernel_file": liger_kernel.__file__},
        "device": torch.cuda.get_device_name(),
    }
    too_small = [f"{c}.{n}" for c in ref_max for n in names if ref_max[c][n] < REF_MIN]
    if too_small:
        evidence["reason"] = f"reference gradients near zero: {too_small}"
        verdict = "INCONCLUSIVE"
    elif not evidence["uniform_case_passes"]:
        evidence["reason"] = "even loss.sum().backward() disagrees with fp32 beyond bf16 sanity: not this bug"
        verdict = "INCONCLUSIVE"
    elif worst > BUG_FACTOR:
        verdict = "BUG_REPRODUCED"
    elif worst <= FIX_FACTOR:
        verdict = "FIX_VALIDATED"
    else:
        evidence["reason"] = f"worst ratio {worst:.2f} is between the fix ({FIX_FACTOR}) and bug ({BUG_FACTOR}) factors"
        verdict = "INCONCLUSIVE"
    print("EVIDENCE " + json.dumps(evidence, sort_keys=True))
    print(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
