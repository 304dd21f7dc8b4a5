"""Lower the column-broadcast program of tilelang's regression test for #2394 (b8dc37e66) at several widths."""
import sys
import tilelang
import tilelang.language as T
from tilelang import tvm

def program(block_n):
    @T.prim_func
    def main(D_in: T.Tensor((block_n,), "float32"), Out: T.Tensor((64, block_n), "float32")):
        with T.Kernel(1, threads=128) as bx:
            d_shared = T.alloc_shared((block_n,), "float32")
            d_local = T.alloc_fragment((block_n,), "float32")
            x = T.alloc_fragment((64, block_n), "float32")
            x_shared = T.alloc_shared((64, block_n), "float32")
            T.copy(D_in, d_shared)
            T.copy(d_shared, d_local)
            for i, j in T.Parallel(64, block_n):
                x[i, j] = d_local[j] * 2.0
            T.copy(x, x_shared)
            T.copy(x_shared, Out)
    return main

new = tuple(int(x) for x in tilelang.__version__.split(".")[:3]) >= (0, 1, 12)
target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}) if new else tvm.target.Target("cuda -arch=sm_90")
for n in (24, 32, 40, 48, 64, 96):
    try:
        with target:
            tilelang.lower(program(n), target=target, enable_device_compile=False)
        print(tilelang.__version__, n, "OK")
    except Exception as e:
        msg = [l for l in str(e).splitlines() if "Check failed" in l] or [str(e).strip().splitlines()[-1]]
        print(tilelang.__version__, n, "FAILED", msg[-1][:200])
