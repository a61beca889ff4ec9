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

    python scripts/bench_step.py --model tiny --rounds 10
    python scripts/bench_step.py --model embedded:SmolLM2-135M-Instruct --rounds 3 --generation vllm
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOTrainer

from grpo_lambda.configs import GRPOLambdaConfig
from grpo_lambda.data import arithmetic_dataset, to_prompts
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


def make_trainer(args, output_dir: str, model_path: str, backend: str) -> GRPOLambdaTrainer:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = GRPOLambdaConfig(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        num_iterations=args.num_iterations,
        beta=0.04,  # Table 2
        loss_type="grpo",
        trace_lambda=0.99,  # Table 2
        reward_weights=[1.0, 0.0],  # Table 2
        temperature=1.0,
        learning_rate=0.0,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        report_to="none",
        seed=0,
        use_vllm=backend == "vllm",
        vllm_mode="colocate",
        vllm_max_model_length=args.vllm_max_model_length,
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


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_backend(args, output_dir: str, model_path: str, backend: str) -> dict[str, dict[str, list[float]]]:
    trainer = make_trainer(args, output_dir, model_path, backend)
    optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=0.0)
    raw = raw_batch(trainer, args.batch, args.num_generations)
    batch = generate(trainer, raw)
    if args.num_iterations > 1 and "old_per_token_logps" not in batch:
        raise SystemExit("num_iterations > 1 but TRL produced no old_per_token_logps")
    lengths = batch["completion_mask"].sum(-1).tolist()
    print(f"{backend}: completion lengths {lengths} (max {args.max_completion_length})", flush=True)
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
    parser.add_argument("--max_completion_length", type=int, default=64)
    parser.add_argument("--num_iterations", type=int, default=1, help="> 1 makes ε-trace take the off-policy path")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--generation", nargs="+", default=list(BACKENDS), choices=BACKENDS, help="backends to time")
    parser.add_argument("--skip_generation", action="store_true", help="time only the steps without generation")
    parser.add_argument("--vllm_max_model_length", type=int, default=512, help="prompt + completion tokens")
    parser.add_argument("--vllm_gpu_memory_utilization", type=float, default=0.3, help="on a GPU: vLLM's share")
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
    tables = {}
    with tempfile.TemporaryDirectory() as output_dir:
        model_path = build_tiny_model(f"{output_dir}/tiny") if args.model == "tiny" else resolve_model(args.model)
        for backend in args.generation:
            tables[backend] = bench_backend(args, output_dir, model_path, backend)

    print(f"\n{'generation':<10} {'step':<20} {'variant':<18} {'median s':>9} {'× trl':>7}")
    for backend, results in tables.items():
        for mode, times in results.items():
            for name in args.variants:
                ratios = [t / s for t, s in zip(times[name], times[STOCK])]
                median, ratio = statistics.median(times[name]), statistics.median(ratios)
                print(f"{backend:<10} {mode:<20} {name:<18} {median:>9.3f} {ratio:>7.3f}")


if __name__ == "__main__":
    main()
