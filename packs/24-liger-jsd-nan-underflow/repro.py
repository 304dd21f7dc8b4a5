"""Pack 24: Liger's JSD kernel returns NaN when a vocabulary entry underflows under both distributions.

Standalone: needs torch, triton and liger_kernel (pip install liger-kernel==0.8.2, or the checkout's src/ on
PYTHONPATH) and one CUDA GPU (or Triton's CPU interpreter: TRITON_INTERPRET=1). Prints one EVIDENCE line
and one sentinel.

For 0 < beta < 1, _jsd_kernel forms M = beta * P + (1 - beta) * Q with P = exp(Y), Q = exp(X) and then
M * log(M): an entry whose probability underflows to 0 under both the student and the teacher gives
0 * log(0) = 0 * -inf = NaN, and one such entry makes the whole loss and gradient NaN, although the
divergence is finite (that entry contributes nothing). What is measured: LigerJSDFunction's loss and
gradient (fp32 log-probabilities, one batch of ordinary rows and one row with a doubly underflowing
entry) against an fp64 reference that forms log M with a log-add-exp, as max-relative errors; and the same
on the ordinary rows alone (the control: the kernel is right where nothing underflows)."""

import json
import os
import sys

import torch

SEED = 0
ROWS, V = 4, 512
BETA = 0.5
TOL = 1e-4  # an fp32 kernel against the fp64 reference: ordinary rows agree to about 1e-6


def reference(x, y):
    """Generalized JSD with log M = logaddexp(log beta + Y, log(1 - beta) + X), in fp64 (no 0 * log 0)."""
    log_m = torch.logaddexp(y + torch.log(torch.tensor(BETA, dtype=y.dtype)),
                            x + torch.log(torch.tensor(1 - BETA, dtype=x.dtype)))
    return (BETA * y.exp() * (y - log_m) + (1 - BETA) * x.exp() * (x - log_m)).sum() / x.shape[0]


def run(fn, x, y, device):
    xi = x.detach().clone().to(device).requires_grad_()
    loss = fn(xi, y.to(device), None, BETA, -100)
    loss.backward()
    xr = x.detach().double().requires_grad_()
    ref = reference(xr, y.double())
    ref.backward()
    grad = xi.grad.cpu().double()
    finite = bool(torch.isfinite(loss).item() and torch.isfinite(grad).all())
    return {  # EVIDENCE holds finite numbers only: a NaN or inf is reported as its name
        "loss": loss.item() if finite else str(loss.item()), "reference_loss": ref.item(), "finite": finite,
        "grad_nonfinite_entries": int((~torch.isfinite(grad)).sum()),
        "loss_rel_err": abs(loss.item() - ref.item()) / abs(ref.item()) if finite else None,
        "grad_max_rel_err": ((grad - xr.grad).abs().max() / xr.grad.abs().max()).item() if finite else None,
        "reference_grad_max": xr.grad.abs().max().item(),
    }


def main() -> int:
    interpreter = os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available() and not interpreter:
        print("needs a CUDA GPU (or TRITON_INTERPRET=1 for Triton's CPU interpreter)", file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from liger_kernel.ops.jsd import LigerJSDFunction

    torch.manual_seed(SEED)
    student = torch.randn(ROWS, V) * 2
    teacher = student + torch.randn(ROWS, V)
    student[-1, -1], teacher[-1, -1] = -200.0, -190.0  # exp underflows in fp32 (below ~1e-45) under both
    x, y = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    control = run(LigerJSDFunction.apply, x[:-1], y[:-1], device)
    case = run(LigerJSDFunction.apply, x, y, device)

    def holds(r):
        return r["finite"] and r["loss_rel_err"] <= TOL and r["grad_max_rel_err"] <= TOL

    reference_sound = all(torch.isfinite(torch.tensor([r["reference_loss"], r["reference_grad_max"]])).all()
                          and r["reference_grad_max"] > 1e-8 for r in (control, case))
    evidence = {
        "shape": {"rows": ROWS, "V": V}, "seed": SEED, "beta": BETA, "dtype": "float32", "device": device,
        "underflowing_entry": {"student_logit": -200.0, "teacher_logit": -190.0, "row": ROWS - 1},
        "metric": "max-relative error of loss and dX against an fp64 log-add-exp reference", "tolerance": TOL,
        "control_ordinary_rows": control, "with_underflow": case, "reference_finite_and_nonzero": reference_sound,
        "torch": torch.__version__,
    }
    print("EVIDENCE " + json.dumps(evidence))
    if not reference_sound or not holds(control):
        print("INCONCLUSIVE")  # the kernel is wrong where nothing underflows: another bug than this one
    elif not case["finite"]:
        print("BUG_REPRODUCED")
    elif holds(case):
        print("FIX_VALIDATED")
    else:
        print("INCONCLUSIVE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
