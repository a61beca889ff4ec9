"""Forward+backward time and peak memory of the per-token policy loss: GRPO, the dense trace matrix, and ours.

Every op takes the same [B, T] float32 log-probabilities (TRL's fused LM head returns float32), right-padded masks
of random lengths in [T/2, T], [B] advantages, and returns TRL's `grpo` loss (clipped surrogate, per-sequence mean,
batch mean); backward is to the log-probabilities. Rows:

- grpo: exp(log πθ − log πold), clipped surrogate: plain GRPO, the baseline of every ratio.
- dense: the paper's form, exp((Δ·mask) @ Wᵀ) with W = trace_matrix(T) (float64, built per call on the ops'
  device, Eq. 17–18).
- on-policy: ε-trace with πold = πθ (num_iterations = 1): `on_policy_traced_log_probs` with `credit_weights`.
- off-policy: ε-trace with a stale πold: `eligibility_traced_log_probs` (the scan, adjoint backward).
- eps-weight: ε-weight (Alg. 2): `eps_weight_trace_weights` of πold times the advantages, GRPO's surrogate.

Time: median over `--repeats` rounds × `--block` calls (CPU: one thread by default, `--threads`). Each round runs
every op as a block of calls, in a rotated order so that load from other processes falls on all of them alike; the
first call of a block is not timed (timed one call at a time between unrelated ops, a small op's time depends on
which ops ran beside it, whose buffers and code evict its own). On CPU the script first allocates and frees a
30 MiB tensor, as every training process has done long before its loss (weights, logits): glibc then serves [B, T]
tensors from its heap, as in training, instead of mapping fresh, page-faulting memory for each (`--no-prime`
measures that state). Memory: on CUDA, torch.cuda.max_memory_allocated during one call, minus what was allocated
before it; on CPU, torch's MemTracker (a dispatch mode that adds up the storage of every tensor the op creates and
subtracts it when the storage is freed), i.e. the peak of live tensor bytes the op allocated, inputs excluded. The
allocator's caching and fragmentation are not counted on either device.

    python scripts/bench_traces.py                                    # T = 256 … 8192 on CPU (32768 on CUDA)
    python scripts/bench_traces.py --lengths 64 --repeats 1            # smoke test
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import torch

from grpo_lambda.loss import eligibility_traced_log_probs, eps_weight_trace_weights, on_policy_traced_log_probs
from grpo_lambda.traces import TRACE_STYLES, TraceSpec, trace_matrix

EPSILON = 0.2


def grpo_loss(logps: torch.Tensor, old: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """TRL's clipped surrogate with loss_type `grpo` (per-sequence token mean, then batch mean)."""
    ratio = torch.exp(logps - old)
    per_token = -torch.minimum(ratio * advantages, ratio.clamp(1 - EPSILON, 1 + EPSILON) * advantages)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def make_ops(lam: float, style: str, floor: float) -> dict[str, Callable]:
    trace = TraceSpec(1.0, lam, style, floor)

    def grpo(logps, old, mask, advantages):
        return grpo_loss(logps, old, mask, advantages[:, None])

    def dense(logps, old, mask, advantages):
        matrix = trace_matrix(logps.shape[-1], trace, device=logps.device)
        traced = ((logps - old).double() * mask) @ matrix.T
        return grpo_loss(old + traced.to(logps.dtype), old, mask, advantages[:, None])

    def on_policy(logps, old, mask, advantages):
        traced = on_policy_traced_log_probs(logps, mask, trace)
        return grpo_loss(traced, logps.detach(), mask, advantages[:, None])

    def off_policy(logps, old, mask, advantages):
        traced = eligibility_traced_log_probs(logps, old, mask, trace)
        return grpo_loss(traced, old, mask, advantages[:, None])

    def eps_weight(logps, old, mask, advantages):
        weights = eps_weight_trace_weights(old, mask, trace)
        return grpo_loss(logps, old, mask, weights.mul_(advantages[:, None]))  # in place, as the trainer does

    return {"grpo": grpo, "dense": dense, "on-policy": on_policy, "off-policy": off_policy, "eps-weight": eps_weight}


def make_inputs(batch: int, length: int, device: torch.device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logps = -torch.rand(batch, length, generator=generator) * 3
    old = logps + 0.05 * torch.randn(batch, length, generator=generator)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    advantages = torch.randn(batch, generator=generator)
    return [x.to(device) for x in (logps, old, mask, advantages)]


def timed_block(op: Callable, inputs, device: torch.device, calls: int) -> list[float]:
    """`calls` timed calls after one untimed one (caches and allocator settle after the previous op)."""
    run_once(op, inputs, device)
    return [run_once(op, inputs, device) for _ in range(calls)]


def run_once(op: Callable, inputs, device: torch.device) -> float:
    logps, old, mask, advantages = inputs
    x = logps.detach().requires_grad_()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    op(x, old, mask, advantages).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_bytes(op: Callable, inputs, device: torch.device) -> int:
    logps, old, mask, advantages = inputs
    x = logps.detach().requires_grad_()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        op(x, old, mask, advantages).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(x, old, mask, advantages)  # else a view of an input (x.detach()) counts as allocated
    with tracker:
        before = tracker.get_tracker_snapshot("current")[device]["Total"]
        op(x, old, mask, advantages).backward()
    return int(tracker.get_tracker_snapshot("peak")[device]["Total"] - before)


def dense_bytes_estimate(length: int) -> int:
    """The dense form holds about four float64 [T, T] buffers at once (lags, powers, their max, the tril)."""
    return 4 * 8 * length * length


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


PRIME_BYTES = 30 * 2**20  # under glibc's 32 MiB cap on its dynamic mmap threshold


def prime_allocator() -> None:
    """Allocate, touch and free one block as large as a training process's: glibc's malloc then keeps blocks up to
    that size on its heap (dynamic mmap and trim thresholds), as it does during training."""
    block = torch.empty(PRIME_BYTES, dtype=torch.uint8)
    block.fill_(0)
    del block


def bench(args) -> list[dict]:
    device = torch.device(args.device)
    if device.type == "cpu" and args.prime:
        prime_allocator()
    ops = make_ops(args.trace_lambda, args.trace_style, args.trace_floor)
    rows = []
    for length in args.lengths:
        inputs = make_inputs(args.batch, length, device)
        names = [n for n in ops if n != "dense" or dense_bytes_estimate(length) <= args.dense_max_gib * 2**30]
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_index in range(args.repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                calls = args.block if name != "dense" else args.dense_repeats - len(times[name])
                if calls > 0:
                    times[name].extend(timed_block(ops[name], inputs, device, min(calls, args.block)))
        grpo_time = statistics.median(times["grpo"])
        grpo_mem = peak_bytes(ops["grpo"], inputs, device)
        tokens = args.batch * length
        for name in ops:
            row = {"T": length, "op": name}
            if name not in names:
                rows.append(row | {"skipped": True})
                continue
            median = statistics.median(times[name])
            memory = grpo_mem if name == "grpo" else peak_bytes(ops[name], inputs, device)
            rows.append(
                row
                | {
                    "ms": median * 1e3,
                    "time_ratio": median / grpo_time,
                    "peak": memory,
                    "mem_ratio": memory / grpo_mem,
                    "bytes_per_token": memory / tokens,
                }
            )
        print_rows([r for r in rows if r["T"] == length], header=length == args.lengths[0])
    return rows


def print_rows(rows: list[dict], header: bool) -> None:
    if header:
        print(f"{'T':>6}  {'op':<22} {'ms':>9} {'× grpo':>7} {'peak mem':>10} {'× grpo':>7} {'B/token':>8}")
    for r in rows:
        if r.get("skipped"):
            print(f"{r['T']:>6}  {r['op']:<22} {'skipped (T×T buffers over --dense-max-gib)':>45}")
            continue
        print(
            f"{r['T']:>6}  {r['op']:<22} {r['ms']:>9.3f} {r['time_ratio']:>7.2f} {fmt_bytes(r['peak']):>10} "
            f"{r['mem_ratio']:>7.2f} {r['bytes_per_token']:>8.1f}"
        )
    print(flush=True)


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="completion lengths T")
    parser.add_argument("--batch", type=int, default=16, help="sequences B")
    parser.add_argument("--repeats", type=int, default=41, help="rounds (median over rounds × block)")
    parser.add_argument("--block", type=int, default=5, help="timed calls of an op in a row, per round")
    parser.add_argument("--dense-repeats", type=int, default=3, help="timed calls of the dense form in all")
    parser.add_argument("--dense-max-gib", type=float, default=3.0 if not cuda else 40.0, help="skip dense above")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--trace-lambda", type=float, default=0.99)
    parser.add_argument("--trace-style", choices=TRACE_STYLES, default="both")
    parser.add_argument("--trace-floor", type=float, default=0.0)
    parser.add_argument("--no-prime", dest="prime", action="store_false", help="skip the allocator warm-up (CPU)")
    args = parser.parse_args()
    if args.block < 1 or args.dense_repeats < 1 or args.repeats < 1:
        parser.error("--repeats, --block and --dense-repeats must be at least 1")
    torch.set_num_threads(args.threads)
    if args.lengths is None:
        args.lengths = [256, 1024, 4096, 8192] + ([16384, 32768] if args.device.startswith("cuda") else [])
    name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"B = {args.batch}, λ = {args.trace_lambda}, style = {args.trace_style}, floor = {args.trace_floor}; "
        f"{name}; torch {torch.__version__}; median of {args.repeats} interleaved rounds × {args.block} calls "
        f"(dense: {args.dense_repeats} calls){'' if args.prime or args.device != 'cpu' else '; allocator not primed'}\n"
    )
    bench(args)


if __name__ == "__main__":
    main()
