"""Lower (no device compile, no GPU) the two Mamba-3 MIMO backward kernels of a mamba checkout for sm_90,
with TMA lowering on or off. Run from the checkout root: python lower_mimo_bwd.py tma|notma

Seen 2026-11-23 (CPU, tilelang 0.1.8): mamba main e9594ce as is, TMA on: both kernels fail with
"Check failed: (shared_layout->InputDim() == 2) is false: Cannot detect TMA layout."; with the draft patch
(07-...draft.patch: 2-D shared tiles for Q, K, QK_DOT), TMA on: both lower, 5 tma_load each.
Flattening the rank-3 *fragments* too (qk_dot_frag, dgamma_diag_prereduce_frag -> [c, R*R]) makes
mamba_mimo_bwd_bwd fail even with TMA off: "Check failed: pb->value != 0 (0 vs. 0) : Divide by zero"
(pack 13's signature); on tilelang 0.1.12 that variant fails instead with "Loop layout is not injective"
on `qk_dot_frag[i, j] = qk_dot_shared[i, j]`.
"""
import importlib
import inspect
import sys
import time
import types

import tilelang
from tilelang import tvm

tilelang.jit = lambda *a, **k: (lambda f: f)  # the decorated builders then return their PrimFunc
pkg = types.ModuleType("mamba_ssm")
pkg.__path__ = ["mamba_ssm"]
sys.modules["mamba_ssm"] = pkg  # skip mamba_ssm/__init__ (compiled extension)
mod = importlib.import_module("mamba_ssm.ops.tilelang.mamba3.mamba3_mimo_bwd")

tma = sys.argv[1] == "tma"
new = tuple(int(x) for x in tilelang.__version__.split(".")[:3]) >= (0, 1, 12)
target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}) if new else tvm.target.Target("cuda -arch=sm_90")
config = {"tl.disable_tma_lower": not tma, "tl.disable_warp_specialized": True}
for name in ("mamba_mimo_bwd_fwd", "mamba_mimo_bwd_bwd"):
    fn = getattr(mod, name)
    kwargs = dict(B=1, S=64, H=4, G=1, N=64, P=32, R=4, hasZ=True, hasD=True, reduceO=False)
    prim = fn(**{k: v for k, v in kwargs.items() if k in inspect.signature(fn).parameters})
    t = time.time()
    try:
        with target, tvm.transform.PassContext(opt_level=3, config=config):
            art = tilelang.lower(prim, target=target, enable_device_compile=False)
        src = getattr(art, "kernel_source", "") or ""
        print(tilelang.__version__, name, f"lowered in {time.time() - t:.0f} s; tma_load x{src.count('tma_load')}")
    except Exception as e:
        lines = [ln for ln in str(e).splitlines() if "Check failed" in ln or "not injective" in ln]
        print(tilelang.__version__, name, "FAILED:", (lines or str(e).strip().splitlines()[-1:])[0][:300])
