"""Pack 16: Megatron's Float16Module casts Mamba-3's fp32 MIMO parameters to bf16.

A real mamba_ssm Mamba3 block (MIMO, built in bf16) keeps some parameters in fp32 on purpose: the
MIMO TileLang forward kernel declares Q_BIAS, K_BIAS, MIMO_V/Z/O and D as float32. Every fp32
parameter is marked keep-in-fp32 (Megatron main's `mark_keep_in_fp32` when the checkout has it, else
the attribute it sets), the block is wrapped in Float16Module(bf16) (its forward is not called: it
needs parallel state), and the MIMO kernel is launched with the wrapped block's parameters.

Measured: which marked parameters Float16Module left in fp32, and what the kernel launch did with
them, against the same launch with the block's parameters before wrapping.
  BUG_REPRODUCED  marked parameters were cast to bf16 and the launch raised TileLang's
                  "dtype expected float32" argument check;
  FIX_VALIDATED   every marked parameter is still fp32 and the wrapped launch's output is finite and
                  bitwise equal to the unwrapped one.

Run: PYTHONPATH=<Megatron-LM>:<mamba> python repro.py (tilelang 0.1.8; mamba_ssm's top-level __init__
skipped, see README) -> EVIDENCE {...} and one sentinel.
"""

import json
import re
import sys

import torch
import torch.nn.functional as F

SEED = 0
D_MODEL, D_STATE, HEADDIM, RANK, CHUNK = 128, 64, 32, 4, 16  # nheads = 2 * 128 / 32 = 8, rotary divisor 4
B, S = 2, 64
# kernel argument -> Mamba3 parameter (mamba_ssm/modules/mamba3.py's own call of the MIMO kernel)
KERNEL_PARAMS = {"Q_bias": "C_bias", "K_bias": "B_bias", "MIMO_V": "mimo_x", "MIMO_Z": "mimo_z",
                 "MIMO_Out": "mimo_o", "D": "D"}
BUG_RE = re.compile(r"dtype expected float32", re.IGNORECASE)


def activations(block, gen):
    """The non-parameter kernel inputs, in the dtypes Mamba3.forward passes them."""
    H, G = block.nheads, block.num_bc_heads
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=gen)  # noqa: E731
    dt = F.softplus(rnd(B, H, S) - 3.0)
    return {"Q": rnd(B, S, RANK, G, D_STATE).bfloat16(), "K": rnd(B, S, RANK, G, D_STATE).bfloat16(),
            "V": rnd(B, S, H, HEADDIM).bfloat16(), "ADT": -dt * 0.7, "DT": dt,
            "Trap": (torch.rand(B, H, S, device="cuda", generator=gen) * 0.5).bfloat16(),
            "Angles": torch.rand(B, S, H, block.num_rope_angles, device="cuda", generator=gen),
            "Z": rnd(B, S, H, HEADDIM).bfloat16()}


def launch(mimo, block, acts):
    params = {arg: getattr(block, name) for arg, name in KERNEL_PARAMS.items()}
    with torch.no_grad():
        return mimo(**acts, **params, chunk_size=CHUNK, rotary_dim_divisor=block.rotary_dim_divisor,
                    dtype=torch.bfloat16)


def main() -> int:
    if not torch.cuda.is_available():
        print("pack 16: no CUDA GPU visible; this reproducer needs one", file=sys.stderr)
        return 2
    import megatron.core.parallel_state  # noqa: F401 - before megatron.core.utils (they import each other)
    import tilelang
    from mamba_ssm.modules.mamba3 import Mamba3
    from mamba_ssm.ops.tilelang.mamba3.mamba3_mimo import mamba3_mimo
    from megatron.core.transformer import module as mcore_module
    from megatron.core.transformer.transformer_config import TransformerConfig

    torch.manual_seed(SEED)
    block = Mamba3(D_MODEL, d_state=D_STATE, headdim=HEADDIM, is_mimo=True, mimo_rank=RANK, chunk_size=CHUNK,
                   rope_fraction=0.5, device="cuda", dtype=torch.bfloat16)
    fp32 = [n for n, p in block.named_parameters() if p.dtype == torch.float32]
    mark = getattr(mcore_module, "mark_keep_in_fp32", None)
    for name in fp32:
        param = block.get_parameter(name)
        if mark is not None:
            mark(param)
        else:
            param.keep_in_fp32 = True  # the attribute Megatron main's mark_keep_in_fp32 sets
    acts = activations(block, torch.Generator(device="cuda").manual_seed(SEED))
    unwrapped = launch(mamba3_mimo, block, acts)

    # Float16Module reads three fields of its config (fp16, bf16, virtual_pipeline_model_parallel_size).
    # The config is built without __post_init__, which on main imports the whole GPT model stack.
    config = object.__new__(TransformerConfig)
    config.fp16, config.bf16, config.virtual_pipeline_model_parallel_size = False, True, None
    wrapped = mcore_module.Float16Module(config, block)
    inner = wrapped.module
    after = {n: str(p.dtype).removeprefix("torch.") for n, p in inner.named_parameters() if n in fp32}
    cast = sorted(n for n, d in after.items() if d != "float32")
    evidence = {
        "pack": "16-megatron-float16module-fp32-params",
        "block": {"class": "mamba_ssm.modules.mamba3.Mamba3", "d_model": D_MODEL, "d_state": D_STATE,
                  "headdim": HEADDIM, "nheads": block.nheads, "mimo_rank": RANK, "chunk_size": CHUNK,
                  "built_dtype": "bfloat16"},
        "fp32_params_before": fp32,
        "marked_with": "megatron mark_keep_in_fp32" if mark is not None else "attribute keep_in_fp32 = True",
        "dtypes_after_float16module": after,
        "cast_to_low_precision": cast,
        "kernel_inputs_from_params": KERNEL_PARAMS,
        "versions": {"torch": torch.__version__, "tilelang": tilelang.__version__},
        "device": torch.cuda.get_device_name(),
        "seed": SEED,
    }
    try:
        out = launch(mamba3_mimo, inner, acts)
    except Exception as exc:  # noqa: BLE001 - the message is the measurement; checked against BUG_RE below
        evidence["wrapped_launch"] = {"raised": f"{type(exc).__name__}: {str(exc)[:400]}"}
        matched = bool(BUG_RE.search(str(exc)))
        evidence["wrapped_launch"]["is_the_dtype_check"] = matched
        print("EVIDENCE " + json.dumps(evidence, sort_keys=True))
        if cast and matched:
            print("BUG_REPRODUCED")
            return 0
        raise  # a different failure is not this bug: fail the run
    finite = bool(torch.isfinite(out).all())
    equal = torch.equal(out, unwrapped)
    evidence["wrapped_launch"] = {"finite": finite, "bitwise_equal_to_unwrapped": equal,
                                  "max_abs_diff": (out.float() - unwrapped.float()).abs().max().item(),
                                  "out_max_abs": unwrapped.float().abs().max().item()}
    if not cast and finite and equal:
        verdict = "FIX_VALIDATED"
    else:
        evidence["reason"] = "the launch ran, but " + ("marked parameters were cast" if cast else
                                                       "its output differs from the unwrapped launch")
        verdict = "INCONCLUSIVE"
    print("EVIDENCE " + json.dumps(evidence, sort_keys=True))
    print(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
