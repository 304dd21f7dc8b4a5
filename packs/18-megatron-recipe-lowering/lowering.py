"""The lowering under test in pack 18: a structured training recipe (plain data) to Megatron-LM's native
command-line flags, the launch environment, and the values every lowered field must hold after Megatron's own
argument handling. What Megatron cannot own natively (an unknown block family, a custom seam, an unknown
field, a setting Megatron would silently rewrite) is refused with the field named (`Refused`).

This is the code the pack checks; repro.py runs Megatron on what it produces. It imports nothing from
Megatron: the flag vocabulary below is checked against Megatron's parser by repro.py."""

import copy

import torch

NATIVE_BLOCKS = {"mamba2": "M", "attention": "*", "mla": "+", "dsa": "D", "gdn": "G", "mlp": "-", "moe": "E"}
APPROXIMATE_AS = {"mamba3": "mamba2"}  # what a naive lowering would do with a family Megatron lacks
NORMALIZATION = {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm"}
POSITION = {"rope": "rope", "none": "none"}
DISPATCHERS = ("allgather", "alltoall", "flex")
FP8_FORMATS = ("e4m3", "hybrid")
FP8_RECIPES = ("delayed", "tensorwise", "mxfp8", "blockwise")
PARAMS = {"bf16": "--bf16", "fp16": "--fp16", "fp32": None}
FIELDS = {
    None: {"name", "model", "pattern", "mtp", "mla", "moe", "parallel", "precision", "seams"},
    "model": {"hidden_size", "ffn_hidden_size", "num_attention_heads", "seq_length", "vocab_size", "normalization",
              "position_embedding", "linear_bias", "micro_batch_size"},
    "mtp": {"depth", "block"},
    "mla": {"q_lora_rank", "kv_lora_rank", "qk_head_dim", "qk_pos_emb_head_dim", "v_head_dim"},
    "moe": {"num_experts", "top_k", "dispatcher", "grouped_gemm", "ffn_hidden_size"},
    "parallel": {"tp", "pp", "sp", "cp", "ep", "etp", "dp"},
    "precision": {"params", "fp8"},
    "precision.fp8": {"format", "recipe"},
}
# Every flag the lowering can emit, with the values it may give a choice-valued one (checked against
# Megatron's parser even when no recipe here uses it).
VOCABULARY = {
    "--hidden-size": None, "--ffn-hidden-size": None, "--num-attention-heads": None, "--seq-length": None,
    "--max-position-embeddings": None, "--vocab-size": None, "--normalization": set(NORMALIZATION.values()),
    "--position-embedding-type": set(POSITION.values()), "--disable-bias-linear": None,
    "--micro-batch-size": None, "--hybrid-layer-pattern": None, "--mtp-num-layers": None,
    "--multi-latent-attention": None, "--q-lora-rank": None, "--kv-lora-rank": None, "--qk-head-dim": None,
    "--qk-pos-emb-head-dim": None, "--v-head-dim": None, "--num-experts": None, "--moe-router-topk": None,
    "--moe-token-dispatcher-type": set(DISPATCHERS), "--moe-grouped-gemm": None, "--moe-ffn-hidden-size": None,
    "--tensor-model-parallel-size": None, "--pipeline-model-parallel-size": None, "--sequence-parallel": None,
    "--context-parallel-size": None, "--expert-model-parallel-size": None, "--expert-tensor-parallel-size": None,
    "--bf16": None, "--fp16": None, "--fp8-format": set(FP8_FORMATS), "--fp8-recipe": set(FP8_RECIPES),
}


class Refused(Exception):
    """The recipe asks for something Megatron cannot own natively: fail closed, naming the field."""

    def __init__(self, field, why):
        super().__init__(f"{field}: {why}")
        self.field, self.why = field, why


class Lowered:
    def __init__(self, name):
        self.name, self.argv, self.env, self.checks, self.approximated = name, [], {}, [], []

    def flag(self, flag, value=None):
        self.argv += [flag] if value is None else [flag, str(value)]

    def expect(self, field, args_attr, value, config_attr="", since="parse"):
        """From stage `since` on (parse, or validate for what validate_args derives), `args.<args_attr>` must
        be `value`, and so must the built config's `config_attr` (the same name unless given; None: not there)."""
        self.checks.append({"field": field, "args": args_attr, "value": value, "since": since,
                            "config": config_attr if config_attr != "" else args_attr})


def _keys(section, data, strict, low):
    for key in sorted(set(data) - FIELDS[section]):
        path = f"{section}.{key}" if section else key
        if strict:
            raise Refused(path, f"unknown recipe field; the lowering owns only {sorted(FIELDS[section])}")
        low.approximated.append(f"{path}: dropped")


def lower(recipe, strict=True):
    """Recipe (plain data) -> Megatron argv + launch environment + the checks the result must pass.
    strict=False is the naive lowering a refusal guards against: it approximates instead of refusing."""
    r = copy.deepcopy(recipe)
    low = Lowered(r.get("name", "?"))
    _keys(None, r, strict, low)
    m, par, prec = r["model"], r["parallel"], r["precision"]
    _keys("model", m, strict, low)
    _keys("parallel", par, strict, low)
    _keys("precision", prec, strict, low)
    for block, seams in sorted((r.get("seams") or {}).items()):
        for seam, value in sorted(seams.items()):
            if strict:
                raise Refused(f"seams.{block}.{seam}",
                              f"custom seam ({seam}={value!r}) on '{block}': Megatron's layers own their norm and "
                              "projection placement and no native flag expresses this; lowering would silently "
                              "drop it")
            low.approximated.append(f"seams.{block}.{seam}: dropped")

    for field, value, known in (("model.normalization", m["normalization"], NORMALIZATION),
                                ("model.position_embedding", m["position_embedding"], POSITION),
                                ("precision.params", prec["params"], PARAMS),
                                ("precision.fp8.format", (prec.get("fp8") or {}).get("format", "e4m3"), FP8_FORMATS),
                                ("precision.fp8.recipe", (prec.get("fp8") or {}).get("recipe", "delayed"),
                                 FP8_RECIPES)):
        if value not in known:
            raise Refused(field, f"{value!r} is not one the lowering maps to a Megatron value ({sorted(known)})")

    # model shape
    low.flag("--hidden-size", m["hidden_size"])
    low.expect("model.hidden_size", "hidden_size", m["hidden_size"])
    low.flag("--ffn-hidden-size", m["ffn_hidden_size"])
    low.expect("model.ffn_hidden_size", "ffn_hidden_size", m["ffn_hidden_size"])
    low.flag("--num-attention-heads", m["num_attention_heads"])
    low.expect("model.num_attention_heads", "num_attention_heads", m["num_attention_heads"])
    low.flag("--seq-length", m["seq_length"])
    low.flag("--max-position-embeddings", m["seq_length"])
    low.expect("model.seq_length", "seq_length", m["seq_length"], "seq_length")  # HybridModelConfig.seq_length
    low.expect("model.seq_length", "max_position_embeddings", m["seq_length"], None)
    low.flag("--vocab-size", m["vocab_size"])
    low.expect("model.vocab_size", "vocab_size", m["vocab_size"])
    low.flag("--normalization", NORMALIZATION[m["normalization"]])
    low.expect("model.normalization", "normalization", NORMALIZATION[m["normalization"]])
    low.flag("--position-embedding-type", POSITION[m["position_embedding"]])
    low.expect("model.position_embedding", "position_embedding_type", POSITION[m["position_embedding"]])
    if not m["linear_bias"]:
        low.flag("--disable-bias-linear")
    low.expect("model.linear_bias", "add_bias_linear", bool(m["linear_bias"]))
    low.flag("--micro-batch-size", m["micro_batch_size"])
    low.expect("model.micro_batch_size", "micro_batch_size", m["micro_batch_size"], None)

    # the hybrid layer pattern: one string, '|' between pipeline stages, '/' before each MTP depth
    families = []
    stages = []
    for s, stage in enumerate(r["pattern"]):
        symbols = ""
        for i, family in enumerate(stage):
            if family not in NATIVE_BLOCKS:
                known = ", ".join(f"{sym} {fam}" for fam, sym in NATIVE_BLOCKS.items())
                why = (f"block family '{family}' has no native Megatron layer (Megatron's hybrid layer symbols: "
                       f"{known}; 'M' is Mamba-2's MambaMixer); approximating it would silently train another block")
                if strict or family not in APPROXIMATE_AS:
                    raise Refused(f"pattern[{s}][{i}]", why)
                low.approximated.append(f"pattern[{s}][{i}]: {family} -> {APPROXIMATE_AS[family]}")
                family = APPROXIMATE_AS[family]
            families.append(family)
            symbols += NATIVE_BLOCKS[family]
        stages.append(symbols)
    main = "|".join(stages)
    mtp = r.get("mtp")
    if mtp:
        _keys("mtp", mtp, strict, low)
        block = ""
        for i, family in enumerate(mtp["block"]):
            if family not in NATIVE_BLOCKS:
                raise Refused(f"mtp.block[{i}]", f"block family '{family}' has no native Megatron layer")
            families.append(family)
            block += NATIVE_BLOCKS[family]
        pattern = main + "".join("/" + block for _ in range(mtp["depth"]))
    else:
        pattern = main
    low.flag("--hybrid-layer-pattern", pattern)
    low.expect("pattern", "hybrid_layer_pattern", pattern)
    num_layers = sum(len(stage) for stage in r["pattern"])
    low.expect("pattern (layer count)", "num_layers", num_layers, since="validate")
    if mtp:
        low.flag("--mtp-num-layers", mtp["depth"])
    low.expect("mtp.depth", "mtp_num_layers", mtp["depth"] if mtp else None)

    # MLA and MoE: flags only when the pattern has their blocks; parameters without blocks are refused
    mla, moe = r.get("mla"), r.get("moe")
    if ("mla" in families) != bool(mla):
        raise Refused("mla", "MLA parameters and 'mla' blocks must come together")
    if ("moe" in families) != bool(moe):
        raise Refused("moe", "MoE parameters and 'moe' blocks must come together")
    if mla:
        _keys("mla", mla, strict, low)
        low.flag("--multi-latent-attention")
        for key in ("q_lora_rank", "kv_lora_rank", "qk_head_dim", "qk_pos_emb_head_dim", "v_head_dim"):
            low.flag("--" + key.replace("_", "-"), mla[key])
            low.expect(f"mla.{key}", key, mla[key])
    low.expect("mla", "multi_latent_attention", bool(mla))
    if moe:
        _keys("moe", moe, strict, low)
        if moe["dispatcher"] not in DISPATCHERS:
            raise Refused("moe.dispatcher", f"'{moe['dispatcher']}' is not one of Megatron's {DISPATCHERS}")
        low.flag("--num-experts", moe["num_experts"])
        low.flag("--moe-router-topk", moe["top_k"])
        low.flag("--moe-token-dispatcher-type", moe["dispatcher"])
        low.flag("--moe-ffn-hidden-size", moe["ffn_hidden_size"])
        if moe["grouped_gemm"]:
            low.flag("--moe-grouped-gemm")
        low.expect("moe.top_k", "moe_router_topk", moe["top_k"])
        low.expect("moe.dispatcher", "moe_token_dispatcher_type", moe["dispatcher"])
        low.expect("moe.ffn_hidden_size", "moe_ffn_hidden_size", moe["ffn_hidden_size"])
        low.expect("moe.grouped_gemm", "moe_grouped_gemm", bool(moe["grouped_gemm"]))
    low.expect("moe.num_experts", "num_experts", moe["num_experts"] if moe else None, "num_moe_experts")

    # parallelism; the world size is what a launcher would give (tp * pp * cp * dp)
    tp, pp, cp, ep, dp = par["tp"], par["pp"], par["cp"], par["ep"], par["dp"]
    if par["sp"] and tp == 1:
        if strict:
            raise Refused("parallel.sequence_parallel",
                          "sequence parallelism needs TP > 1; Megatron's validate_args would silently turn it "
                          "off ('Disabling sequence parallelism because tensor model parallelism is disabled')")
        low.approximated.append("parallel.sequence_parallel: passed through at TP=1")
    if len(r["pattern"]) != pp:
        raise Refused("pattern", f"{len(r['pattern'])} pipeline stages in the pattern, parallel.pp = {pp}")
    low.flag("--tensor-model-parallel-size", tp)
    low.flag("--pipeline-model-parallel-size", pp)
    low.flag("--context-parallel-size", cp)
    low.flag("--expert-model-parallel-size", ep)
    if par["sp"]:
        low.flag("--sequence-parallel")
    low.expect("parallel.tp", "tensor_model_parallel_size", tp)
    low.expect("parallel.pp", "pipeline_model_parallel_size", pp)
    low.expect("parallel.cp", "context_parallel_size", cp)
    low.expect("parallel.ep", "expert_model_parallel_size", ep)
    low.expect("parallel.sequence_parallel", "sequence_parallel", bool(par["sp"]))
    if par.get("etp") is not None:
        low.flag("--expert-tensor-parallel-size", par["etp"])
        low.expect("parallel.etp", "expert_tensor_parallel_size", par["etp"])
    low.expect("parallel.dp", "data_parallel_size", dp, None, since="validate")
    low.env = {"WORLD_SIZE": str(tp * pp * cp * dp), "RANK": "0", "LOCAL_RANK": "0"}
    if tp > 1 or cp > 1:  # Megatron asserts it for TP/CP on pre-Blackwell GPUs; a launcher sets it
        low.env["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"

    # precision
    flag = PARAMS[prec["params"]]
    if flag:
        low.flag(flag)
    low.expect("precision.params", "bf16", prec["params"] == "bf16")
    low.expect("precision.params", "fp16", prec["params"] == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[prec["params"]]
    low.expect("precision.params", "params_dtype", dtype, since="validate")
    fp8 = prec.get("fp8")
    if fp8:
        _keys("precision.fp8", fp8, strict, low)
        low.flag("--fp8-format", fp8["format"])
        low.flag("--fp8-recipe", fp8["recipe"])
        low.expect("precision.fp8.recipe", "fp8_recipe", fp8["recipe"])
    low.expect("precision.fp8.format", "fp8", fp8["format"] if fp8 else None)
    return low
