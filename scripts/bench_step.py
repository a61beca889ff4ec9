"""Time of a whole training step: stock TRL GRPO vs each GRPO-λ variant, on the same model, batch and generation
backend (transformers `generate` and vLLM colocated; vLLM on a CPU through grpo_lambda.testbench.vllm_cpu).

One trainer per generation backend, one model. `trl` is TRL's own `GRPOTrainer`: the trainer's class is switched to
it for that row, so TRL's methods run on the same weights, optimizer, batch and vLLM engine; the other rows are
GRPOLambdaTrainer with `loss_variant`, `trace_style` and `adv_clamp_min` changed between steps (`grpo` is ours
with TRL's loss: the cost of our hooks alone). A step is

- without generation: the loss on a batch generated once (policy forward with the variant's hooks, backward,
  gradient clipping, AdamW step);
- with generation: TRL's `_generate_and_score_completions` from the same seed (with vLLM: the weight sync into the
  engine first, as after every real update; then sampling, rewards, reference log-probabilities), then the same.

The learning rate is 0, so the weights never change and every variant regenerates the same completions. Rounds
are interleaved (each runs every variant once, in a rotated order); a ratio is the median over rounds of (variant /
trl in the same round), which cancels slow drifts in the load of a shared machine.

The real step (scripts/gpu_check.sh): `--model random:Qwen2.5-Math-1.5B` builds, without any download, a randomly
initialised model with that architecture (QWEN25_MATH_15B below, from the model's config.json; vocabulary 151 936)
and the tiny tokenizer padded to the same vocabulary; `--suppress_eos` makes every completion exactly
`--max_completion_length` tokens long; several lengths give one table each; on CUDA the peak memory of each step.

    python scripts/bench_step.py --model tiny --rounds 10
    python scripts/bench_step.py --model embedded:SmolLM2-135M-Instruct --rounds 3 --generation vllm
    python scripts/bench_step.py --model random:Qwen2.5-Math-1.5B --batch 16 --num_generations 8 --dtype bfloat16 \
        --gradient_checkpointing --suppress_eos --max_completion_length 1024 3000 --skip_generation --rounds 3
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOTrainer

from grpo_lambda.configs import GRPOLambdaConfig
from grpo_lambda.data import arithmetic_dataset, to_prompts
from grpo_lambda.records import replace_file
from grpo_lambda.rewards import get_reward_funcs
from grpo_lambda.testbench.models import build_tiny_model, resolve_model
from grpo_lambda.testbench.vllm_cpu import support_cpu_test_bench
from grpo_lambda.trainer import GRPOLambdaTrainer

STOCK = "trl"
VARIANTS = {
    STOCK: {},
    "grpo": dict(loss_variant="grpo", adv_clamp_min=None),
    "eps_trace/both": dict(loss_variant="eps_trace", trace_style="both", adv_clamp_min=-0.1),
    "eps_trace/recent": dict(loss_variant="eps_trace", trace_style="recent", adv_clamp_min=-0.1),
    "eps_weight/both": dict(loss_variant="eps_weight", trace_style="both", adv_clamp_min=-0.1),
    "eps_weight/recent": dict(loss_variant="eps_weight", trace_style="recent", adv_clamp_min=-0.1),
}
BACKENDS = ("generate", "vllm")
# Qwen/Qwen2.5-Math-1.5B's config.json: the architecture of the paper's 1.5B runs, built here with random weights
QWEN25_MATH_15B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=4096,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
RANDOM_MODELS = {"random:Qwen2.5-Math-1.5B": QWEN25_MATH_15B}


def build_random_model(output_dir: str, numbers: dict, dtype: torch.dtype) -> str:
    """A randomly initialised Qwen2 model with `numbers` (no download), and the tiny model's tokenizer padded with
    placeholder tokens to the model's vocabulary, so that every id the model samples decodes."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(f"{output_dir}/tokenizer"))
    tokenizer.add_tokens([f"<unused{i}>" for i in range(numbers["vocab_size"] - len(tokenizer))])
    config = Qwen2Config(
        **numbers, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # 1.5 B parameters initialise faster there
        model = Qwen2ForCausalLM(config).to(dtype)
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = tokenizer.eos_token_id
    path = f"{output_dir}/random-model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    print(f"built {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B random parameters ({dtype})", flush=True)
    return path


def make_trainer(args, output_dir: str, model_path: str, backend: str, length: int) -> GRPOLambdaTrainer:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    suppress = {}  # EOS suppressed: every completion `length` tokens (vLLM and transformers name it differently)
    if args.suppress_eos:
        suppress = {"min_tokens": length} if backend == "vllm" else {"min_new_tokens": length}
    config = GRPOLambdaConfig(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch,
        num_generations=args.num_generations,
        max_completion_length=length,
        generation_kwargs=suppress or None,
        gradient_checkpointing=args.gradient_checkpointing,
        num_iterations=args.num_iterations,
        beta=0.04,  # Table 2
        loss_type="grpo",
        trace_lambda=0.99,  # Table 2
        reward_weights=[1.0, 0.0],  # Table 2
        temperature=1.0,
        learning_rate=0.0,
        use_cpu=not torch.cuda.is_available(),
        bf16=dtype == torch.bfloat16,
        report_to="none",
        seed=0,
        use_vllm=backend == "vllm",
        vllm_mode="colocate",
        vllm_max_model_length=max(args.vllm_max_model_length, length + 256),
        vllm_gpu_memory_utilization=args.vllm_gpu_memory_utilization,
    )
    support_cpu_test_bench(config)
    trainer = GRPOLambdaTrainer(
        model=model,
        reward_funcs=get_reward_funcs(["accuracy", "format"], "no"),
        args=config,
        train_dataset=to_prompts(arithmetic_dataset(64, seed=0), "no"),
        processing_class=tokenizer,
    )
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def use_variant(trainer: GRPOLambdaTrainer, name: str) -> None:
    """TRL's GRPOTrainer for `trl`, else GRPOLambdaTrainer with the variant's settings."""
    trainer.__class__ = GRPOTrainer if name == STOCK else GRPOLambdaTrainer
    for key, value in VARIANTS[name].items():
        setattr(trainer.args, key, value)


def raw_batch(trainer: GRPOLambdaTrainer, batch: int, num_generations: int) -> list[dict]:
    """What TRL's sampler hands one process: batch/num_generations prompts, each repeated num_generations times."""
    rows = trainer.train_dataset.select(range(batch // num_generations))
    return [dict(row) for row in rows for _ in range(num_generations)]


def generate(trainer: GRPOLambdaTrainer, raw: list[dict]) -> dict:
    torch.manual_seed(0)  # also vLLM's sampler, which runs in this process
    if trainer.use_vllm:
        trainer._last_loaded_step = -1  # sync the weights into the engine, as after every update
    return trainer._generate_and_score_completions(raw)


def train_on(trainer: GRPOLambdaTrainer, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed(fn) -> tuple[float, float | None]:
    """Seconds, and on CUDA the peak GiB allocated during the call."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30
    return time.perf_counter() - start, None


def bench_backend(args, output_dir: str, model_path: str, backend: str, length: int) -> dict:
    """mode → variant → [(seconds, peak GiB or None)] over the rounds."""
    trainer = make_trainer(args, output_dir, model_path, backend, length)
    optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=0.0)
    raw = raw_batch(trainer, args.batch, args.num_generations)
    batch = generate(trainer, raw)
    if args.num_iterations > 1 and "old_per_token_logps" not in batch:
        raise SystemExit("num_iterations > 1 but TRL produced no old_per_token_logps")
    lengths = batch["completion_mask"].sum(-1).tolist()
    print(f"{backend}: completion lengths {lengths} (max {length})", flush=True)
    modes = {"without generation": lambda: train_on(trainer, optimizer, batch)}
    if not args.skip_generation:
        modes["with generation"] = lambda: train_on(trainer, optimizer, generate(trainer, raw))

    results = {mode: {name: [] for name in args.variants} for mode in modes}
    for name in args.variants:  # warm-up
        use_variant(trainer, name)
        for step in modes.values():
            step()
    for round_index in range(args.rounds):
        shift = round_index % len(args.variants)
        for name in args.variants[shift:] + args.variants[:shift]:
            use_variant(trainer, name)
            for mode, step in modes.items():
                results[mode][name].append(timed(step))
        print(f"{backend}: round {round_index + 1}/{args.rounds} done", flush=True)
    use_variant(trainer, "grpo")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="tiny", help="'tiny' (random Qwen2), embedded:SmolLM2-135M-Instruct, a path"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--batch", type=int, default=8, help="completions per step (the default recipe: 8)")
    parser.add_argument("--num_generations", type=int, default=4)
    parser.add_argument("--max_completion_length", type=int, nargs="+", default=[64], help="one table per length")
    parser.add_argument("--suppress_eos", action="store_true", help="every completion max_completion_length tokens")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--gradient_checkpointing", action="store_true", help="as the paper recipes")
    parser.add_argument(
        "--config", nargs="*", default=[], help="random:<arch> only: override its numbers, e.g. num_hidden_layers=1"
    )
    parser.add_argument("--num_iterations", type=int, default=1, help="> 1 makes ε-trace take the off-policy path")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--generation", nargs="+", default=list(BACKENDS), choices=BACKENDS, help="backends to time")
    parser.add_argument("--skip_generation", action="store_true", help="time only the steps without generation")
    parser.add_argument("--vllm_max_model_length", type=int, default=512, help="prompt + completion tokens")
    parser.add_argument("--vllm_gpu_memory_utilization", type=float, default=0.3, help="on a GPU: vLLM's share")
    parser.add_argument("--json", default=None, help="also write every measurement to this file, after each table")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if STOCK not in args.variants:
        args.variants.insert(0, STOCK)

    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"model {args.model}; {device}, {torch.get_num_threads()} threads; batch {args.batch} "
        f"({args.num_generations} per prompt), max completion {args.max_completion_length}; "
        f"num_iterations {args.num_iterations}; {args.rounds} interleaved rounds\n",
        flush=True,
    )
    report = {"settings": {**vars(args), "device": device, "threads": torch.get_num_threads()}, "rows": []}
    with tempfile.TemporaryDirectory() as output_dir:
        if args.model in RANDOM_MODELS:
            numbers = {**RANDOM_MODELS[args.model], **{k: int(v) for k, v in (c.split("=") for c in args.config)}}
            model_path = build_random_model(output_dir, numbers, getattr(torch, args.dtype))
        elif args.model == "tiny":
            model_path = build_tiny_model(f"{output_dir}/tiny")
        else:
            model_path = resolve_model(args.model)
        for length in args.max_completion_length:
            for backend in args.generation:
                try:
                    results = bench_backend(args, output_dir, model_path, backend, length)
                except torch.OutOfMemoryError as error:
                    print(f"{backend}, {length} tokens: out of memory ({str(error).splitlines()[0]})", flush=True)
                    results = None
                # each table as soon as it is measured: a run cut short (a time limit) keeps the ones before
                rows = table_rows(args, backend, length, results)
                print_table(rows)
                report["rows"] += rows
                if args.json:  # replaced whole after each table
                    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                    replace_file(Path(args.json), json.dumps(report, indent=1) + "\n")
                gc.collect()  # the trainer of this length, before the next one is built
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()


def table_rows(args, backend: str, length: int, results: dict | None) -> list[dict]:
    """One row per (step, variant): median seconds, median per-round ratio to `trl`, peak GiB, and every round."""
    if results is None:
        return [{"generation": backend, "tokens": length, "out_of_memory": True}]
    rows = []
    for mode, runs in results.items():
        for name in args.variants:
            times = [t for t, _ in runs[name]]
            peaks = [p for _, p in runs[name] if p is not None]
            rows.append(
                {
                    "generation": backend,
                    "tokens": length,
                    "step": mode,
                    "variant": name,
                    "median_s": statistics.median(times),
                    "ratio_to_trl": statistics.median(t / s for t, (s, _) in zip(times, runs[STOCK])),
                    "peak_gib": max(peaks) if peaks else None,
                    "seconds": times,
                }
            )
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'generation':<10} {'tokens':>6} {'step':<20} {'variant':<18} {'median s':>9} {'× trl':>7} {'peak GiB':>9}"
    )
    for row in rows:
        if row.get("out_of_memory"):
            print(f"{row['generation']:<10} {row['tokens']:>6} out of memory")
            continue
        peak = f"{row['peak_gib']:>9.1f}" if row["peak_gib"] is not None else f"{'-':>9}"
        print(
            f"{row['generation']:<10} {row['tokens']:>6} {row['step']:<20} {row['variant']:<18} "
            f"{row['median_s']:>9.3f} {row['ratio_to_trl']:>7.3f} {peak}"
        )
    print(flush=True)


if __name__ == "__main__":
    main()
