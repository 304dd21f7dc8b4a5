"""Pack 19 (contract): linear + cross-entropy keeps its logits-to-loss behaviour across output paths.

Three paths that must agree on loss and gradients where they claim the same semantics: plain PyTorch
(F.linear + F.cross_entropy, the fp32 reference), Liger's fused linear cross-entropy (chunked, never
materializes [tokens, vocab]) and Megatron's vocab_parallel_cross_entropy (+ a loss mask, as Megatron
reduces it). Checked, each against a stated tolerance:
  single_device    (GPU, bf16 inputs) reduction mean / sum / none with ignore_index rows, label
                   smoothing 0 and 0.1, z-loss (Liger and PyTorch only): Liger and Megatron (TP=1)
                   against the fp32 PyTorch reference;
  vocab_parallel   (CPU, gloo, fp64 inputs) Megatron at TP=2 against Megatron at TP=1 on the same logits,
                   label smoothing 0 and 0.1: every rank's loss and the gathered gradient;
  normalization    (CPU, gloo, 8 ranks, fp64) tokens split across ranks with unequal padding: the
                   mean over the global non-padding count reproduces the single-device mean gradient.
Measured, not judged: the gradient scale of dividing by local counts instead (the 8x trap), and the
memory class (GPU peak of Liger's fused path vs PyTorch's materialized logits at one larger shape).
CONTRACT_HELD when every check holds, else CONTRACT_BROKEN naming the failed checks; INCONCLUSIVE when the
control (Megatron TP=1 equals dense PyTorch without smoothing) fails.

Run: PYTHONPATH=<Megatron-LM>:<Liger-Kernel>/src python repro.py -> EVIDENCE {...} and one sentinel.
"""

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

SEED = 0
S, B, H, V = 512, 2, 512, 8192  # single-device shape: 1024 tokens
IGNORE = -100
IGNORED_FRACTION = 0.1
Z_LOSS = 1e-4  # Liger's lse_square_scale; the reference adds Z_LOSS * lse^2 per counted token
TOL_LOSS, TOL_GRAD = 0.01, 0.05  # max|x - ref| / max|ref|, bf16 paths against the fp32 reference
TOL_VP = 1e-5  # vocab-parallel vs TP=1 (fp64 inputs; Megatron's function rounds to fp32 inside: ~5e-8 seen)
TOL_FP64 = 1e-9  # the normalization check, plain fp64
MEM_SHAPE = dict(tokens=4 * 4096, hidden=2048, vocab=151936)  # the design notes' B=4, S=4096, V=151936
NORM_RANKS, NORM_TOKENS = 8, 1024  # tokens per rank before padding


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------- single device (GPU)


def reduce_tokens(per_token: torch.Tensor, counted: torch.Tensor, reduction: str) -> torch.Tensor:
    """Megatron-style: per-token losses times the loss mask, then the reduction over counted tokens."""
    masked = per_token * counted
    return {"none": masked, "sum": masked.sum(), "mean": masked.sum() / counted.sum()}[reduction]


def reference(x, w, t, reduction, ls, z):
    """fp32 PyTorch on the same bf16 values: F.cross_entropy (+ z * lse^2 per counted token)."""
    x, w = x.float().requires_grad_(), w.float().requires_grad_()
    logits = F.linear(x, w)
    loss = F.cross_entropy(logits, t, ignore_index=IGNORE, reduction="none", label_smoothing=ls)
    counted = (t != IGNORE).float()
    if z:
        loss = loss + z * torch.logsumexp(logits, dim=-1).square() * counted
    return reduce_tokens(loss, counted, reduction), x, w


def liger(flce_cls, x, w, t, reduction, ls, z):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    loss = flce_cls(ignore_index=IGNORE, lse_square_scale=z, label_smoothing=ls, reduction=reduction)(w, x, t)
    return loss, x, w


def megatron(vpce, group, x, w, t, reduction, ls):
    """vocab_parallel_cross_entropy at TP=1 on [S, B, V] logits; ignored rows masked as Megatron does."""
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    logits = F.linear(x, w).float().view(S, B, V)
    counted = (t != IGNORE).float()
    per_token = vpce(logits, t.clamp_min(0).view(S, B), ls, tp_group=group).view(-1)
    return reduce_tokens(per_token, counted, reduction), x, w


def compare(got: tuple, ref: tuple, dout) -> dict:
    (out, x, w), (ref_out, ref_x, ref_w) = got, ref
    (ref_out * dout).sum().backward()
    (out.float() * dout).sum().backward()
    return {"loss": rel(out.detach(), ref_out.detach()), "dx": rel(x.grad, ref_x.grad), "dW": rel(w.grad, ref_w.grad)}


def single_device(flce_cls, vpce, group) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    x = (torch.randn(S * B, H, device="cuda", generator=gen) * 0.5).bfloat16()
    w = (torch.randn(V, H, device="cuda", generator=gen) / H**0.5).bfloat16()
    t = torch.randint(0, V, (S * B,), device="cuda", generator=gen)
    t[torch.rand(S * B, device="cuda", generator=gen) < IGNORED_FRACTION] = IGNORE
    cases = {}
    for reduction in ("mean", "sum", "none"):
        dout = torch.rand(S * B, device="cuda", generator=gen) + 0.5 if reduction == "none" else 1.0
        for ls, z in ((0.0, 0.0), (0.1, 0.0), (0.0, Z_LOSS)):
            name = f"{reduction}/ls{ls}/z{z}"
            cases[name] = {"liger": compare(liger(flce_cls, x, w, t, reduction, ls, z),
                                            reference(x, w, t, reduction, ls, z), dout)}
            if not z:  # vocab_parallel_cross_entropy has no z-loss
                cases[name]["megatron_tp1"] = compare(megatron(vpce, group, x, w, t, reduction, ls),
                                                      reference(x, w, t, reduction, ls, z), dout)
    return cases


def memory_class(flce_cls) -> dict:
    """Peak GPU memory of forward + backward: PyTorch materialized logits vs Liger's fused path."""
    n, h, v = MEM_SHAPE["tokens"], MEM_SHAPE["hidden"], MEM_SHAPE["vocab"]
    gen = torch.Generator(device="cuda").manual_seed(SEED)
    x = (torch.randn(n, h, device="cuda", generator=gen) * 0.5).bfloat16().requires_grad_()
    w = (torch.randn(v, h, device="cuda", generator=gen) / h**0.5).bfloat16().requires_grad_()
    t = torch.randint(0, v, (n,), device="cuda", generator=gen)
    peaks, losses = {}, {}
    for name, fn in (("pytorch_materialized", lambda: F.cross_entropy(F.linear(x, w).float(), t)),
                     ("liger_fused", lambda: flce_cls()(w, x, t))):
        x.grad = w.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = fn()
        loss.backward()
        torch.cuda.synchronize()
        peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
        losses[name] = loss.item()
        del loss
    return {"shape": MEM_SHAPE, "peak_mib_above_inputs": peaks, "losses": losses,
            "materialized_over_fused": peaks["pytorch_materialized"] / peaks["liger_fused"],
            "bf16_logits_gib": n * v * 2 / 2**30}


# ------------------------------------------------------------------------- distributed (CPU, gloo)


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _vocab_parallel_worker(rank: int, world: int, port: int, out) -> None:
    _init(rank, world, port)
    import megatron.core.parallel_state  # noqa: F401 - before megatron.core.utils (they import each other)
    from megatron.core.tensor_parallel.cross_entropy import vocab_parallel_cross_entropy

    gen = torch.Generator().manual_seed(SEED)
    logits = torch.randn(64, 2, 256, generator=gen, dtype=torch.float64) * 3
    target = torch.randint(0, 256, (64, 2), generator=gen)
    shard = 256 // world
    one = [dist.new_group([r]) for r in range(world)][rank]  # TP=1: this rank alone holds the whole vocabulary
    result = {}
    for ls in (0.0, 0.1):
        full = logits.clone().requires_grad_()
        ref = vocab_parallel_cross_entropy(full, target, ls, tp_group=one)
        ref.sum().backward()
        part = logits[..., rank * shard:(rank + 1) * shard].clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(part, target, ls, tp_group=dist.group.WORLD)
        loss.sum().backward()
        losses = [torch.empty_like(loss) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        grads = [torch.empty_like(part.grad) for _ in range(world)]
        dist.all_gather(grads, part.grad)
        dense = F.cross_entropy(logits.view(-1, 256), target.view(-1), reduction="none").view(64, 2)
        scale = ref.abs().max().item()
        result[f"ls{ls}"] = {
            "loss_spread_across_ranks": max((x - losses[0]).abs().max().item() for x in losses) / scale,
            "loss_vs_tp1": max((x - ref.detach()).abs().max().item() for x in losses) / scale,
            "grad_vs_tp1": rel(torch.cat(grads, dim=-1), full.grad),
            "tp1_vs_pytorch": rel(ref.detach(), dense) if ls == 0 else None,
        }
    if rank == 0:
        out.put(result)
    dist.destroy_process_group()


def _normalization_worker(rank: int, world: int, port: int, out) -> None:
    """Tokens split across ranks (data/context parallel) with unequal padding; w is replicated."""
    _init(rank, world, port)
    gen = torch.Generator().manual_seed(SEED)
    w = torch.randn(32, 16, generator=gen, dtype=torch.float64)
    x = torch.randn(world, NORM_TOKENS, 16, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 32, (world, NORM_TOKENS), generator=gen)
    counted = torch.rand(world, NORM_TOKENS, generator=gen) > torch.linspace(0.05, 0.6, world)[:, None]

    def grad_of(loss_fn) -> torch.Tensor:
        wl = w.clone().requires_grad_()
        loss_fn(wl).backward()
        dist.all_reduce(wl.grad)  # data-parallel gradient all-reduce (SUM)
        return wl.grad

    def local_losses(wl):
        return F.cross_entropy(x[rank] @ wl.T, t[rank], reduction="none") * counted[rank]

    global_count = counted[rank].sum().clone()
    dist.all_reduce(global_count)
    g_global = grad_of(lambda wl: local_losses(wl).sum() / global_count)
    g_local_sum = grad_of(lambda wl: local_losses(wl).sum() / counted[rank].sum())
    g_local_avg = g_local_sum / world
    wl = w.clone().requires_grad_()  # the single-device answer: all tokens on one rank
    all_losses = F.cross_entropy(x.view(-1, 16) @ wl.T, t.view(-1), reduction="none") * counted.view(-1)
    (all_losses.sum() / counted.sum()).backward()
    if rank == 0:
        out.put({"ranks": world, "counted_tokens_per_rank": counted.sum(dim=1).tolist(),
                 "global_count_vs_single_device": rel(g_global, wl.grad),
                 "local_mean_then_sum_scale": (g_local_sum.norm() / wl.grad.norm()).item(),
                 "local_mean_then_average_vs_single_device": rel(g_local_avg, wl.grad)})
    dist.destroy_process_group()


def spawn(worker, world: int, port: int) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, world, port, out)) for r in range(world)]
    for p in procs:
        p.start()
    result = out.get(timeout=300)
    for p in procs:
        p.join(timeout=60)
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"{worker.__name__}: worker exit codes {[p.exitcode for p in procs]}")
    return result


# ------------------------------------------------------------------------- verdict


def failed_checks(ev: dict) -> list[str]:
    bad = []
    for case, paths in ev["single_device"].items():
        bad += [f"single_device.{case}.{p}" for p, e in paths.items()
                if not (e["loss"] <= TOL_LOSS and e["dx"] <= TOL_GRAD and e["dW"] <= TOL_GRAD)]
    for ls, e in ev["vocab_parallel"].items():
        if not (e["loss_spread_across_ranks"] <= TOL_VP and e["loss_vs_tp1"] <= TOL_VP
                and e["grad_vs_tp1"] <= TOL_VP):
            bad.append(f"vocab_parallel.{ls}")
    if not ev["normalization"]["global_count_vs_single_device"] <= TOL_FP64:
        bad.append("normalization.global_count")
    return bad


def main() -> int:
    if not torch.cuda.is_available():
        print("pack 19: no CUDA GPU visible; this reproducer needs one", file=sys.stderr)
        return 2
    import megatron.core.parallel_state  # noqa: F401 - before megatron.core.utils (they import each other)
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    from megatron.core.tensor_parallel.cross_entropy import vocab_parallel_cross_entropy

    torch.manual_seed(SEED)
    ev = {"pack": "19-ce-parity-output-paths", "device": torch.cuda.get_device_name(), "seed": SEED,
          "versions": {"torch": torch.__version__},
          "thresholds": {"loss": TOL_LOSS, "grad": TOL_GRAD, "vocab_parallel": TOL_VP, "fp64": TOL_FP64,
                         "metric": "max|x-ref|/max|ref|"},
          "single_device_shape": {"S": S, "B": B, "H": H, "V": V, "ignored_fraction": IGNORED_FRACTION,
                                  "z_loss": Z_LOSS}}
    ev["vocab_parallel"] = spawn(_vocab_parallel_worker, 2, 29511)
    ev["normalization"] = spawn(_normalization_worker, NORM_RANKS, 29512)
    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29513", rank=0, world_size=1)
    ev["single_device"] = single_device(LigerFusedLinearCrossEntropyLoss, vocab_parallel_cross_entropy,
                                        dist.group.WORLD)
    dist.destroy_process_group()
    ev["memory"] = memory_class(LigerFusedLinearCrossEntropyLoss)
    ev["failed_checks"] = failed_checks(ev)
    # Control: without smoothing, Megatron's TP=1 must match dense PyTorch, or TP=2 vs TP=1 proves nothing.
    control = ev["vocab_parallel"]["ls0.0"]["tp1_vs_pytorch"]
    if not control <= TOL_VP:
        ev["reason"] = f"control failed: Megatron TP=1 vs PyTorch without smoothing differs by {control:.3g}"
        verdict = "INCONCLUSIVE"
    else:
        verdict = "CONTRACT_BROKEN" if ev["failed_checks"] else "CONTRACT_HELD"
    print("EVIDENCE " + json.dumps(ev, sort_keys=True))
    print(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
