"""Contract: a structured training recipe, lowered to Megatron-LM's native command-line flags, comes out of
Megatron's own argument handling with every field at its intended value, and what Megatron cannot own natively
is refused by the lowering instead of approximated.

The lowering itself is lowering.py in this folder (the code under test); this file runs Megatron on its output.
Run with a Megatron-LM checkout (or the megatron-core release sdist, which carries megatron/training) on
PYTHONPATH; needs torch, numpy, packaging and triton (megatron.core imports triton at package import). CPU only.

What runs, from the checkout, for every recipe (the path of pretrain_hybrid.py up to the model build):
  1. megatron.training.arguments.parse_args(ignore_unknown_args=False) on the lowered argv (sys.argv);
  2. validate_args(args, {"tokenizer_type": "GPT2BPETokenizer"}) with WORLD_SIZE/RANK as a launcher sets them;
     its two device queries (torch.cuda.get_device_capability for the grouped-GEMM check, arguments'
     get_device_arch_version for the TP/CP connection check) are answered as an sm_90 (Hopper) GPU would,
     since there is no GPU: the evidence counts each answered query;
  3. argument_utils.hybrid_config_from_args(args): the TransformerConfig / MLATransformerConfig and the
     HybridModelConfig the model is built from. Where that needs TransformerEngine (MoE + FP8) and TE is not
     installed, the stage is reported as unavailable, not as a break.
After each stage every lowered field is compared with its intended value. Megatron's flag vocabulary (flags and
choices of add_megatron_arguments) is checked for every flag and value the lowering can emit, and its layer
symbols (Symbols.VALID_LAYERS) for every block family the lowering maps.

Refusals: recipes with an unknown block family (Mamba-3 has no Megatron layer; 'M' is Mamba-2), a custom seam
(a pre-in_proj RMSNorm), an unknown field, or a setting Megatron would silently rewrite (SP at TP=1) must be
refused with the field named. For each, the naive approximation is also run through Megatron to show whether
Megatron would have noticed. Two controls (the SP approximation, and an --mtp-num-layers that contradicts the
pattern) must be flagged by the round-trip comparison: if not, the check has lost its teeth (INCONCLUSIVE).

Prints one EVIDENCE line, then CONTRACT_HELD, CONTRACT_BROKEN (the evidence names the field) or INCONCLUSIVE.
Exit code 0 whenever it measured; 2 when Megatron cannot be imported.
"""

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import sys
import traceback
import warnings

from lowering import NATIVE_BLOCKS, VOCABULARY, Refused, lower  # the code under test, next to this file

SHIMS = []
if sys.version_info < (3, 12):
    # megatron/training/models/hybrid.py does `from typing import override` (PEP 698, Python 3.12); at run
    # time override only sets __override__ on the function. megatron-core 0.19 declares Python >= 3.12.
    import typing

    if not hasattr(typing, "override"):
        import typing_extensions

        typing.override = typing_extensions.override
        SHIMS.append("typing.override <- typing_extensions.override (Python < 3.12)")

try:
    import torch
    from megatron.core import package_info
    from megatron.core.models.hybrid.hybrid_layer_allocation import Symbols
    from megatron.training import arguments as margs
    from megatron.training.argument_utils import hybrid_config_from_args
except Exception:  # noqa: BLE001 - cannot run at all: no sentinel, a non-zero exit
    traceback.print_exc()
    print("cannot import Megatron-LM's argument handling from PYTHONPATH", file=sys.stderr)
    sys.exit(2)

SIMULATED_CAPABILITY = (9, 0)  # the collection's GPUs (H100/H200); only answers validate_args' device queries

# ----------------------------------------------------------------------------------------------------------
# Running Megatron's own argument handling on a lowered recipe
# ----------------------------------------------------------------------------------------------------------
class DeviceQueries:
    """Answers validate_args' device queries as the simulated GPU would, and counts them."""

    def __init__(self):
        self.count = {}

    def _answer(self, name, value):
        def fn(*_a, **_k):
            self.count[name] = self.count.get(name, 0) + 1
            return value
        return fn

    @contextlib.contextmanager
    def active(self):
        saved = torch.cuda.get_device_capability, margs.get_device_arch_version
        torch.cuda.get_device_capability = self._answer("torch.cuda.get_device_capability", SIMULATED_CAPABILITY)
        margs.get_device_arch_version = self._answer("get_device_arch_version", SIMULATED_CAPABILITY[0])
        try:
            yield
        finally:
            torch.cuda.get_device_capability, margs.get_device_arch_version = saved


def _plain(value):
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def _read(obj, attr):
    try:
        return getattr(obj, attr)
    except AttributeError:
        return "<missing>"


def compare(low, obj, stage, config=False):
    drift = []
    for c in low.checks:
        attr = c["config"] if config else c["args"]
        if attr is None or (stage == "parse" and c["since"] != "parse"):
            continue
        want, got = c["value"], _read(obj, attr)
        if got != want or (want is not None and type(got) is not type(want)):
            drift.append({"field": c["field"], "stage": stage, "attr": attr, "wanted": _plain(want),
                          "got": _plain(got)})
    return drift


@contextlib.contextmanager
def launch_env(env, argv):
    saved_env = {k: os.environ.get(k) for k in (*env, "CUDA_DEVICE_MAX_CONNECTIONS")}
    saved_argv = sys.argv
    os.environ.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
    os.environ.update(env)
    sys.argv = ["pretrain_hybrid.py", *argv]
    try:
        yield
    finally:
        sys.argv = saved_argv
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_megatron(low, device):
    """parse -> validate -> config, comparing after each; what Megatron said on the way."""
    out = {"argv": low.argv, "env": low.env, "stages": {}, "drift": [], "megatron_warnings": []}
    chatter, errors = io.StringIO(), io.StringIO()
    with launch_env(low.env, low.argv), device.active(), warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(errors):
        warnings.simplefilter("always")
        try:
            try:
                args = margs.parse_args(ignore_unknown_args=False)
            except SystemExit as exc:
                said = [line for line in errors.getvalue().splitlines() if "error:" in line] or ["(no message)"]
                out["stages"]["parse"] = f"refused (argparse exit {exc.code}): {said[-1].strip()[:300]}"
                return out
            out["stages"]["parse"] = "ok"
            out["drift"] += compare(low, args, "parse")
            try:
                margs.validate_args(args, {"tokenizer_type": "GPT2BPETokenizer"})
            except Exception as exc:  # noqa: BLE001 - Megatron refused the recipe: that is a result
                out["stages"]["validate"] = f"refused: {type(exc).__name__}: {str(exc)[:300]}"
                return out
            out["stages"]["validate"] = "ok"
            out["drift"] += compare(low, args, "validate")
            try:
                cfg = hybrid_config_from_args(args)
            except Exception as exc:  # noqa: BLE001
                msg = f"{type(exc).__name__}: {str(exc)[:300]}"
                needs_te = "transformer-engine" in msg.lower() or "transformer_engine" in msg.lower()
                if needs_te and not _te_installed():
                    out["stages"]["config"] = "unavailable without TransformerEngine: " + msg
                else:
                    out["stages"]["config"] = "refused: " + msg
                return out
            out["stages"]["config"] = f"ok ({type(cfg).__name__} with {type(cfg.transformer).__name__})"
            out["drift"] += compare(low, cfg, "config", config=True)
        finally:
            seen = []
            for w in caught:
                text = str(w.message).splitlines()[0][:200]
                if text not in seen:
                    seen.append(text)
            out["megatron_warnings"] = seen[:8]
    return out


def _te_installed():
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def vocabulary():
    """Every flag and choice the lowering can emit, against Megatron's parser (add_megatron_arguments)."""
    parser = margs.add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False))
    problems = []
    for flag, values in VOCABULARY.items():
        action = parser._option_string_actions.get(flag)
        if action is None:
            problems.append(f"{flag}: not a Megatron flag at this ref")
        elif values and action.choices is not None and not values <= set(action.choices):
            problems.append(f"{flag}: {sorted(values - set(action.choices))} not among Megatron's choices "
                            f"{list(action.choices)}")
    megatron_symbols = set(Symbols.VALID_LAYERS)
    for family, symbol in NATIVE_BLOCKS.items():
        if symbol not in megatron_symbols:
            problems.append(f"blocks.{family}: symbol '{symbol}' is not a Megatron layer symbol at this ref")
    unknown = sorted(megatron_symbols - set(NATIVE_BLOCKS.values()))
    return {"flags_checked": len(VOCABULARY), "families_checked": len(NATIVE_BLOCKS), "problems": problems,
            "megatron_symbols_unknown_to_lowering": unknown}


# ----------------------------------------------------------------------------------------------------------
# The recipes
# ----------------------------------------------------------------------------------------------------------
HYBRID = {
    "name": "hybrid-mla-moe-mtp-bf16",
    "model": {"hidden_size": 256, "ffn_hidden_size": 512, "num_attention_heads": 8, "seq_length": 1024,
              "vocab_size": 1024, "normalization": "rmsnorm", "position_embedding": "rope", "linear_bias": False,
              "micro_batch_size": 1},
    "pattern": [["mamba2", "mla", "mamba2", "moe"], ["mamba2", "mla", "mamba2", "moe"]],
    "mtp": {"depth": 1, "block": ["mamba2", "moe"]},
    "mla": {"q_lora_rank": 128, "kv_lora_rank": 64, "qk_head_dim": 32, "qk_pos_emb_head_dim": 16, "v_head_dim": 32},
    "moe": {"num_experts": 8, "top_k": 2, "dispatcher": "alltoall", "grouped_gemm": True, "ffn_hidden_size": 128},
    "parallel": {"tp": 2, "pp": 2, "sp": True, "cp": 2, "ep": 2, "etp": 1, "dp": 2},
    "precision": {"params": "bf16"},
}
HYBRID_FP8 = dict(copy.deepcopy(HYBRID), name="hybrid-mla-moe-mtp-fp8",
                  precision={"params": "bf16", "fp8": {"format": "hybrid", "recipe": "tensorwise"}})
HYBRID_FP8["moe"]["dispatcher"] = "allgather"
DENSE = {
    "name": "dense-attention-bf16-tp1",
    "model": dict(HYBRID["model"], position_embedding="none", linear_bias=True, micro_batch_size=2),
    "pattern": [["mamba2", "attention", "mamba2", "mlp", "mamba2", "attention", "mamba2", "mlp"]],
    "parallel": {"tp": 1, "pp": 1, "sp": False, "cp": 1, "ep": 1, "dp": 8},
    "precision": {"params": "bf16"},
}
SUPPORTED = [HYBRID, HYBRID_FP8, DENSE]


def _variant(base, name, edit):
    recipe = copy.deepcopy(base)
    recipe["name"] = name
    edit(recipe)
    return recipe


UNSUPPORTED = [  # (recipe, the field the refusal must name)
    (_variant(HYBRID, "unknown-block-mamba3", lambda r: r["pattern"][0].__setitem__(2, "mamba3")), "pattern[0][2]"),
    (_variant(HYBRID, "custom-seam-pre-in-proj-norm",
              lambda r: r.__setitem__("seams", {"mamba2": {"pre_in_proj_norm": "rmsnorm"}})),
     "seams.mamba2.pre_in_proj_norm"),
    (_variant(DENSE, "unknown-field", lambda r: r["model"].__setitem__("attention_sink", True)),
     "model.attention_sink"),
    (_variant(DENSE, "sequence-parallel-at-tp1", lambda r: r["parallel"].__setitem__("sp", True)),
     "parallel.sequence_parallel"),
]


def mtp_control():
    """The hybrid recipe's argv with --mtp-num-layers 2 against a pattern of one MTP depth."""
    low = lower(HYBRID)
    low.name = "control-mtp-depth-contradicts-pattern"
    i = low.argv.index("--mtp-num-layers")
    low.argv[i + 1] = "2"
    for c in low.checks:
        if c["field"] == "mtp.depth":
            c["value"] = 2
    return low


def main():
    device = DeviceQueries()
    evidence = {
        "contract": "recipe -> native Megatron flags round-trips through parse_args, validate_args and "
                    "hybrid_config_from_args; what Megatron cannot own is refused",
        "megatron": {"version": package_info.__version__, "arguments_py": os.path.abspath(margs.__file__)},
        "calls": ["megatron.training.arguments.parse_args(ignore_unknown_args=False)",
                  "megatron.training.arguments.validate_args(args, {'tokenizer_type': 'GPT2BPETokenizer'})",
                  "megatron.training.argument_utils.hybrid_config_from_args(args)",
                  "megatron.training.arguments.add_megatron_arguments(parser) (flag vocabulary)"],
        "simulated_device": {"capability": ".".join(map(str, SIMULATED_CAPABILITY)),
                             "real_cuda_available": torch.cuda.is_available()},
        "shims": SHIMS,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformer_engine": _te_installed()},
    }
    broken, inconclusive = [], []

    vocab = vocabulary()
    evidence["vocabulary"] = vocab
    broken += [f"vocabulary: {p}" for p in vocab["problems"]]

    supported = {}
    for recipe in SUPPORTED:
        try:
            low = lower(recipe)
        except Refused as exc:
            broken.append(f"{recipe['name']}: the lowering refused a supported recipe: {exc}")
            supported[recipe["name"]] = {"lowering": f"refused: {exc}"}
            continue
        got = run_megatron(low, device)
        got["fields_checked"] = len(low.checks)
        supported[recipe["name"]] = got
        for stage, status in got["stages"].items():
            if not status.startswith(("ok", "unavailable")):
                broken.append(f"{recipe['name']}: Megatron {stage} {status}")
        for d in got["drift"]:
            broken.append(f"{recipe['name']}: {d['field']} ({d['attr']}) after {d['stage']}: wanted {d['wanted']!r}, "
                          f"got {d['got']!r}")
        if "validate" not in got["stages"]:
            broken.append(f"{recipe['name']}: validate_args did not run")
    evidence["supported"] = supported

    refusals = {}
    for recipe, field in UNSUPPORTED:
        entry = {"expected_field": field}
        try:
            lower(recipe)
            entry["refused"] = False
            broken.append(f"{recipe['name']}: the lowering accepted it; it must refuse {field}")
        except Refused as exc:
            entry.update(refused=True, field=exc.field, message=str(exc))
            if exc.field != field:
                broken.append(f"{recipe['name']}: refused naming {exc.field}, expected {field}")
        try:
            naive = lower(recipe, strict=False)
        except Refused as exc:  # not even approximable: nothing for Megatron to accept
            entry["naive_lowering"] = {"approximated": [], "not_lowerable": str(exc), "drift": [],
                                       "megatron_noticed": None}
            refusals[recipe["name"]] = entry
            continue
        said = run_megatron(naive, device)
        entry["naive_lowering"] = {"approximated": naive.approximated,
                                   "megatron_stages": said["stages"],
                                   "megatron_noticed": any(not s.startswith(("ok", "unavailable"))
                                                           for s in said["stages"].values()),
                                   "drift": said["drift"], "megatron_warnings": said["megatron_warnings"]}
        refusals[recipe["name"]] = entry
    evidence["refusals"] = refusals

    # The round-trip comparison must see a silent rewrite when one happens.
    controls = {}
    sp = refusals["sequence-parallel-at-tp1"]["naive_lowering"]
    controls["sp-at-tp1-naive"] = {"flagged": sorted({d["field"] for d in sp["drift"]}),
                                   "detected": any(d["field"] == "parallel.sequence_parallel" for d in sp["drift"])}
    mtp = run_megatron(mtp_control(), device)
    controls["mtp-depth-contradicts-pattern"] = {
        "stages": mtp["stages"], "flagged": sorted({d["field"] for d in mtp["drift"]}),
        "detected": any(d["field"] == "mtp.depth" for d in mtp["drift"]),
        "megatron_warnings": mtp["megatron_warnings"]}
    for name, c in controls.items():
        if not c["detected"]:
            inconclusive.append(f"control {name}: the round-trip comparison did not flag the rewrite")
    evidence["controls"] = controls
    evidence["device_queries_answered"] = device.count

    evidence["summary"] = {
        "supported_recipes": len(SUPPORTED),
        "fields_checked": sum(s.get("fields_checked", 0) for s in supported.values()),
        "config_stage": {n: s.get("stages", {}).get("config", "not reached")[:40] for n, s in supported.items()},
        "refused": sum(1 for e in refusals.values() if e.get("refused") and e.get("field") == e["expected_field"]),
        "unsupported_recipes": len(UNSUPPORTED),
        "naive_accepted_silently": sorted(n for n, e in refusals.items()
                                          if e["naive_lowering"]["megatron_noticed"] is False),
        "controls_detected": sum(1 for c in controls.values() if c["detected"]),
        "broken": broken,
        "inconclusive": inconclusive,
    }
    print("EVIDENCE " + json.dumps(evidence, sort_keys=True, default=str))
    if broken:
        print("CONTRACT_BROKEN")
    elif inconclusive:
        print("INCONCLUSIVE")
    else:
        print("CONTRACT_HELD")


if __name__ == "__main__":
    main()
