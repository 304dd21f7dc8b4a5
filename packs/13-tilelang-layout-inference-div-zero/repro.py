"""Pack 13: TileLang's LayoutInference divides by zero on a non-power-of-two column broadcast.

A fragment of width n is broadcast along the rows of a [64, n] fragment (x[i, j] = d[j] * 2). On
tilelang 0.1.8 lowering fails in the LayoutInference pass (a floormod by zero while inferring the
fragment index) with `Check failed: pb->value != 0 ... Divide by
zero` when n is not a power of two; tilelang 0.1.12 (the first release with b8dc37e66, #2469) lowers it.
Lowering needs no GPU (tilelang.lower(..., enable_device_compile=False) for sm_90); with a GPU the
kernel is also compiled and run and its output compared with 2 * D exactly.
  BUG_REPRODUCED  every non-power-of-two width fails with that exact check and both power-of-two
                  controls lower (and, with a GPU, run correctly);
  FIX_VALIDATED   every width lowers (and, with a GPU, every output equals 2 * D bitwise);
  INCONCLUSIVE    a control fails, or the failures are not all that check.

Run: python repro.py (tilelang 0.1.8 for the bug, 0.1.12 for the fix) -> EVIDENCE {...} and a sentinel.
"""

import json
import re
import sys
import traceback

import tilelang
import tilelang.language as T
import torch
from tilelang import tvm

ROWS = 64
CONTROLS = (32, 64)
WIDTHS = (24, 40, 48, 96)
CHECK_RE = re.compile(r"Check failed: .*pb->value != 0.*Divide by zero")
# where it fails, if the C++ frames are in the traceback: the pass, the fragment inference, the floormod
FRAMES = ("LayoutInferencer", "ParallelOpNode::InferLayout", "infer_fragment_index", "floormod")


def program(n: int):
    @T.prim_func
    def broadcast(D: T.Tensor((n,), "float32"), Out: T.Tensor((ROWS, n), "float32")):
        with T.Kernel(1, threads=128):
            d_shared = T.alloc_shared((n,), "float32")
            d = T.alloc_fragment((n,), "float32")
            x = T.alloc_fragment((ROWS, n), "float32")
            x_shared = T.alloc_shared((ROWS, n), "float32")
            T.copy(D, d_shared)
            T.copy(d_shared, d)
            for i, j in T.Parallel(ROWS, n):
                x[i, j] = d[j] * 2.0
            T.copy(x, x_shared)
            T.copy(x_shared, Out)

    return broadcast


def target():
    new = tuple(int(p) for p in tilelang.__version__.split(".")[:3]) >= (0, 1, 12)  # JSON target form from 0.1.12
    return tvm.target.Target({"kind": "cuda", "arch": "sm_90"}) if new else tvm.target.Target("cuda -arch=sm_90")


def try_width(n: int) -> dict:
    try:
        with target():
            tilelang.lower(program(n), target=target(), enable_device_compile=False)
    except Exception as exc:  # noqa: BLE001 - the message is measured against CHECK_RE
        lines = [ln.strip() for ln in str(exc).splitlines() if "Check failed" in ln] or [str(exc).strip()[-300:]]
        trace = "".join(traceback.format_exception(exc))  # TVM appends the C++ frames to the traceback
        return {"lowered": False, "error": lines[-1][:300], "is_the_check": bool(CHECK_RE.search(lines[-1])),
                "frames": [f for f in FRAMES if f in trace]}
    result = {"lowered": True}
    if torch.cuda.is_available():
        kernel = tilelang.compile(program(n), out_idx=[1])
        d = torch.randn(n, device="cuda")
        out = kernel(d)
        result["output_equals_2d"] = bool(torch.equal(out, (2 * d).expand(ROWS, n)))
    return result


def main() -> int:
    ev = {"pack": "13-tilelang-layout-inference-div-zero", "tilelang": tilelang.__version__,
          "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "rows": ROWS,
          "controls": {n: try_width(n) for n in CONTROLS}, "widths": {n: try_width(n) for n in WIDTHS}}
    ok = lambda r: r["lowered"] and r.get("output_equals_2d", True)  # noqa: E731
    if not all(ok(r) for r in ev["controls"].values()):
        ev["reason"] = "a power-of-two control failed: no conclusion"
        verdict = "INCONCLUSIVE"
    elif all(not r["lowered"] and r["is_the_check"] for r in ev["widths"].values()):
        verdict = "BUG_REPRODUCED"
    elif all(ok(r) for r in ev["widths"].values()):
        verdict = "FIX_VALIDATED"
    else:
        ev["reason"] = "some widths fail, or fail with a different error"
        verdict = "INCONCLUSIVE"
    print("EVIDENCE " + json.dumps(ev, sort_keys=True))
    print(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
