"""pytest plugin for --upstream-tests with [tests].pin_autotune: one config per Mamba-3 Triton autotuner (4
warps, the fewest stages), so upstream's tests do not spend minutes benchmarking configurations. Loaded by
upstream's pytest in the pack's environment; imports nothing of the harness."""

import sys


def pytest_collection_finish(session):
    import triton

    for name, mod in list(sys.modules.items()):
        if not name.startswith("mamba_ssm.ops.triton.mamba3"):
            continue
        for obj in vars(mod).values():
            if isinstance(obj, triton.runtime.autotuner.Autotuner) and len(obj.configs) > 1:
                ok = [c for c in obj.configs if c.num_warps == 4 and getattr(c, "maxnreg", None) is None]
                obj.configs = [min(ok, key=lambda c: c.num_stages) if ok else obj.configs[0]]
