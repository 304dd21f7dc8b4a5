"""Pack 21 (contract): an author-style Mamba-3 block in Megatron's Mamba layer slot gets no pre-in_proj norm.

The author block (mamba_ssm's Mamba3) projects its input with a plain nn.Linear and expects the residual
stream RMS-normalized before it (mamba_ssm's own Block applies the norm). Megatron's hybrid stack builds
MambaLayer with `norm` left at IdentityOp and fuses the norm into its own mixer's in_proj
(TELayerNormColumnParallelLinear). Measured:
  spec       (CPU, Megatron's source, parsed) the mamba layer spec passes no `norm` (MambaLayerSubmodules'
             default is IdentityOp) and its mixer's in_proj is a LayerNorm-fused linear;
  stream     (GPU) from embeddings initialized as Megatron's (std 0.02), LAYERS real Mamba3 blocks
             in Megatron's MambaLayer order (residual + mixer(norm(h)), mamba_ssm's Mamba3 as the
             mixer), once with the slot as Megatron's spec leaves it (identity) and once with an
             explicit RMSNorm restored: the RMS of every block's in_proj input.
Contract: every block sees an RMS-normalized input, in_proj input RMS within RMS_TOL of 1 at every layer.
  CONTRACT_BROKEN  the spec leaves the slot empty and the identity-slot stream leaves the band (the
                   measured growth is printed); the restored stream must stay in it, or INCONCLUSIVE;
  CONTRACT_HELD    the spec provides a norm in the slot, or the identity-slot stream stays in the band.
"""

import ast
import importlib.util
import json
import sys
from pathlib import Path

import torch

SEED = 0
LAYERS, D_MODEL, D_STATE, HEADDIM, B, S = 8, 256, 64, 64, 2, 512
RMS_TOL = 0.25  # |rms - 1| allowed at an in_proj input (RMSNorm gives 1 up to its eps and weight init of 1)
# The stream starts as Megatron's embeddings do: N(0, init_method_std^2), init_method_std = 0.02 by default
# (transformer_config.py), so its RMS is ~0.02, not the ~1 an author block's own pre-norm would hand it.
EMBED_STD = 0.02
DTYPE = torch.bfloat16  # the blocks' and the stream's dtype, as the author runs Mamba-3


def spec_facts(root: Path) -> dict:
    """Parse hybrid_layer_specs.py: the mamba_layer spec's norm argument and its mixer's in_proj."""
    tree = ast.parse((root / "megatron/core/models/hybrid/hybrid_layer_specs.py").read_text())
    found = []
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "MambaLayerSubmodules":
            kwargs = {k.arg: k.value for k in call.keywords}
            in_proj = [k.value for c in ast.walk(kwargs.get("mixer", ast.Constant(None))) if isinstance(c, ast.Call)
                       for k in c.keywords if k.arg == "in_proj"]
            found.append({"line": call.lineno, "norm": ast.unparse(kwargs["norm"]) if "norm" in kwargs else None,
                          "mixer_in_proj": ast.unparse(in_proj[0]) if in_proj else None})
    layer = (root / "megatron/core/ssm/mamba_layer.py").read_text()
    default = "norm: LayerNormBuilder = IdentityOp" in layer or "norm: Union[ModuleSpec, type] = IdentityOp" in layer
    return {"mamba_layer_specs": found, "norm_default_is_identity": default}


class Layer(torch.nn.Module):
    """Megatron MambaLayer's order (mamba_layer.py: residual, norm, mixer, bias-dropout-add) around a Mamba3."""

    def __init__(self, mixer: torch.nn.Module, norm: torch.nn.Module):
        super().__init__()
        self.norm, self.mixer = norm, mixer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.mixer(self.norm(h))


def stream(mamba3_cls, restored: bool) -> list[float]:
    torch.manual_seed(SEED)
    layers = []
    for _ in range(LAYERS):
        block = mamba3_cls(D_MODEL, d_state=D_STATE, headdim=HEADDIM, chunk_size=64, device="cuda", dtype=DTYPE)
        norm = torch.nn.RMSNorm(D_MODEL, eps=1e-5, device="cuda", dtype=DTYPE) if restored else torch.nn.Identity()
        layers.append(Layer(block, norm))
    seen = []
    for layer in layers:
        layer.mixer.in_proj.register_forward_pre_hook(
            lambda m, args: seen.append(args[0].float().pow(2).mean().sqrt().item()))
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    h = (torch.randn(B, S, D_MODEL, device="cuda", generator=gen) * EMBED_STD).to(DTYPE)
    with torch.no_grad():
        for layer in layers:
            h = layer(h)
    return seen


def main() -> int:
    if not torch.cuda.is_available():
        print("pack 21: no CUDA GPU visible; this reproducer needs one", file=sys.stderr)
        return 2
    from mamba_ssm.modules.mamba3 import Mamba3

    # only to find the checkout's root; nothing of Megatron is imported or run here
    root = Path(importlib.util.find_spec("megatron").submodule_search_locations[0]).parent
    facts = spec_facts(root)
    identity, restored = stream(Mamba3, restored=False), stream(Mamba3, restored=True)
    band = lambda xs: all(abs(x - 1) <= RMS_TOL for x in xs)  # noqa: E731
    ev = {"pack": "21-mamba3-preproj-norm-seam", "spec": facts, "device": torch.cuda.get_device_name(),
          "shape": {"layers": LAYERS, "d_model": D_MODEL, "d_state": D_STATE, "headdim": HEADDIM, "B": B, "S": S},
          "in_proj_input_rms": {"identity_slot": identity, "rmsnorm_restored": restored},
          "growth_identity_last_over_first": identity[-1] / identity[0],
          "thresholds": {"rms_tol": RMS_TOL}, "embedding_std": EMBED_STD, "dtype": str(DTYPE),
          "versions": {"torch": torch.__version__}}
    slot_empty = facts["norm_default_is_identity"] and any(s["norm"] is None for s in facts["mamba_layer_specs"])
    if not band(restored):
        ev["reason"] = "the restored RMSNorm does not bring the inputs into the band: no conclusion"
        verdict = "INCONCLUSIVE"
    elif slot_empty and not band(identity):
        verdict = "CONTRACT_BROKEN"
    else:
        verdict = "CONTRACT_HELD"
    print("EVIDENCE " + json.dumps(ev, sort_keys=True))
    print(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
