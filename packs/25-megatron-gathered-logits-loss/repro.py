"""Pack 25: Megatron's GPTModel computes the loss from gathered logits with the vocab-parallel cross entropy.

Standalone: needs torch (CPU is enough) and megatron.core on PYTHONPATH (the checkout, or pip install
megatron-core==0.19.0). Prints one EVIDENCE line and one sentinel.

With parallel_output=False (or runtime_gather_output=True) the output layer gathers the full-vocabulary logits
onto every tensor-parallel rank, and GPTModel then hands them, with the labels, to
vocab_parallel_cross_entropy, which takes its input for one rank's vocabulary shard: every rank sees the
whole vocabulary, the all-reduced sum of exponentials is TP times too large, and only rank 0 finds the
targets. The loss is the correct loss plus log(TP), and the gradients are wrong.

What is measured, on two processes forming one tensor-parallel group of 2 (gloo, on the CPU), with one small
GPTModel built identically on both (seed 0): the per-token loss with labels for parallel_output True (the
shards: the correct use) and False (gathered), against the cross entropy of the gathered logits computed
with plain PyTorch in fp64; and the relative difference of all parameter gradients between the two paths.

Test scaffolding, not part of what is checked: CUDA-only calls Megatron makes on a CPU-only machine are
replaced (torch.cuda.current_device returns "cpu"; the CUDA RNG tracker's fork is a no-op: dropout is 0)."""

import contextlib
import json
import math
import os
import socket
import sys
import tempfile

os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the claim is about the loss's arithmetic, on the CPU (also on a GPU machine)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

TP = 2
SEED = 0
VOCAB, SEQ, BATCH = 64, 8, 2
LOSS_TOL = 1e-5  # fp32 model, fp64 reference: the correct paths agree to about 1e-7
GRAD_TOL = 1e-5
OFFSET_TOL = 1e-4  # the bug's signature: the gathered path is off by log(TP) to this tolerance


def _cpu_shims() -> list[str]:
    from megatron.core.tensor_parallel import random as mrandom

    mrandom.get_cuda_rng_tracker().fork = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.current_device = lambda: "cpu"
    return ["torch.cuda.current_device -> 'cpu'", "CUDA RNG tracker fork -> no-op (dropout 0)"]


def worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=TP)
    from megatron.core import parallel_state
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig

    shims = _cpu_shims()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=TP)
    cfg = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, use_cpu_initialization=True,
                            attention_dropout=0.0, hidden_dropout=0.0, tensor_model_parallel_size=TP)
    torch.manual_seed(SEED)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    labels = ids.roll(-1, 1)
    pos = torch.arange(SEQ).expand(BATCH, SEQ)
    mask = torch.ones(BATCH, 1, SEQ, SEQ, dtype=torch.bool).tril().logical_not()

    def build(parallel_output: bool):
        torch.manual_seed(SEED)
        return GPTModel(cfg, get_gpt_layer_local_spec(), vocab_size=VOCAB, max_sequence_length=SEQ,
                        parallel_output=parallel_output)

    results = {}
    grads = {}
    for parallel_output in (True, False):
        model = build(parallel_output)
        loss = model(ids, pos, mask, labels=labels)  # [b, s] per-token loss
        loss.mean().backward()
        results[parallel_output] = loss.detach().double()
        grads[parallel_output] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    # the reference: the gathered logits (no labels: GPTModel returns them) and plain cross entropy in fp64
    logits = build(False)(ids, pos, mask).detach().double()  # [b, s, v]
    reference = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), reduction="none").reshape(BATCH, SEQ)
    record = {
        "rank": rank,
        "sharded_max_abs_err": (results[True] - reference).abs().max().item(),
        "gathered_max_abs_err": (results[False] - reference).abs().max().item(),
        "gathered_mean_offset": (results[False] - reference).mean().item(),
        "gathered_offset_spread": (results[False] - reference - math.log(TP)).abs().max().item(),
        "grad_rel_diff_gathered_vs_sharded": ((grads[False] - grads[True]).norm() / grads[True].norm()).item(),
        "reference_loss_mean": reference.mean().item(), "shims": shims,
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(record, fh)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(free_port(), out), nprocs=TP, join=True)
        ranks = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(TP)]
    sharded_ok = all(r["sharded_max_abs_err"] <= LOSS_TOL for r in ranks)
    gathered_ok = all(r["gathered_max_abs_err"] <= LOSS_TOL and r["grad_rel_diff_gathered_vs_sharded"] <= GRAD_TOL
                      for r in ranks)
    offset_is_log_tp = all(abs(r["gathered_mean_offset"] - math.log(TP)) <= OFFSET_TOL
                           and r["gathered_offset_spread"] <= OFFSET_TOL for r in ranks)
    evidence = {
        "tp": TP, "backend": "gloo (CPU)", "seed": SEED, "model": {"num_layers": 1, "hidden_size": 32,
        "num_attention_heads": 4, "vocab": VOCAB, "seq": SEQ, "batch": BATCH}, "dtype": "float32",
        "reference": "F.cross_entropy of the gathered logits in fp64",
        "log_tp": math.log(TP), "tolerances": {"loss": LOSS_TOL, "grad": GRAD_TOL, "offset": OFFSET_TOL},
        "ranks": ranks, "sharded_matches_reference": sharded_ok, "gathered_matches_reference": gathered_ok,
        "gathered_off_by_log_tp": offset_is_log_tp, "torch": torch.__version__,
    }
    print("EVIDENCE " + json.dumps(evidence))
    if not sharded_ok:
        print("INCONCLUSIVE")  # the correct path itself disagrees with plain PyTorch: something else is wrong
    elif offset_is_log_tp and not gathered_ok:
        print("BUG_REPRODUCED")
    elif gathered_ok:
        print("FIX_VALIDATED")
    else:
        print("INCONCLUSIVE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
