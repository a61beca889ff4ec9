"""What a checkpoint costs: the time of a GRPO trainer's checkpoint save (grpo_lambda.checkpoints.AtomicCheckpoints:
model, optimizer and scheduler, RNG state, trainer state, staged then renamed) and its size on disk, per trained
parameter, so that a bigger model's cost can be estimated from its parameter count (docs/performance.md).

The trainer takes one real step first, so that AdamW's two moments exist and are saved, as in a run.

    python scripts/bench_checkpoint.py                                        # the tiny random model
    python scripts/bench_checkpoint.py --model embedded:SmolLM2-135M-Instruct --saves 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo_lambda.configs import GRPOLambdaConfig
from grpo_lambda.data import arithmetic_dataset, to_prompts
from grpo_lambda.testbench.models import build_tiny_model, resolve_model
from grpo_lambda.trainer import GRPOLambdaTrainer


def length_reward(completions, **kwargs):
    return [float(len(str(completion))) for completion in completions]


def folder_bytes(folder: Path) -> dict[str, int]:
    """Bytes on disk by part: the model weights, the optimizer state, everything else."""
    parts = {"model": 0, "optimizer": 0, "other": 0}
    for path in folder.rglob("*"):
        if path.is_file():
            name = path.name
            part = "model" if name.startswith("model") else "optimizer" if name.startswith("optimizer") else "other"
            parts[part] += path.stat().st_size
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="tiny", help="'tiny' (random Qwen2), embedded:SmolLM2-135M-Instruct, a path"
    )
    parser.add_argument("--saves", type=int, default=5, help="timed saves (median)")
    parser.add_argument("--output", default=None, help="where the checkpoints go (default: a temporary folder)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory(dir=args.output) as scratch:
        model_path = build_tiny_model(f"{scratch}/tiny") if args.model == "tiny" else resolve_model(args.model)
        config = GRPOLambdaConfig(
            output_dir=f"{scratch}/run",
            per_device_train_batch_size=2,
            num_generations=2,
            max_completion_length=4,
            max_steps=1,
            save_strategy="no",
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            report_to="none",
            seed=0,
        )
        trainer = GRPOLambdaTrainer(
            model=AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
            reward_funcs=length_reward,
            args=config,
            train_dataset=to_prompts(arithmetic_dataset(8, 0), "no"),
            processing_class=AutoTokenizer.from_pretrained(model_path),
        )
        trainer.train()
        trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        seconds = []
        for save in range(args.saves):
            trainer.state.global_step = save + 2  # a new folder each time, as a run's saves
            start = time.perf_counter()
            trainer._save_checkpoint(trainer.model, trial=None)
            seconds.append(time.perf_counter() - start)
        parts = folder_bytes(Path(config.output_dir) / f"checkpoint-{args.saves + 1}")

    total = sum(parts.values())
    print(f"model {args.model}: {trained / 1e6:.2f} M trained parameters (float32, AdamW), {args.saves} saves")
    print(f"{'save s (median)':>16} {'MB':>9} {'model MB':>9} {'optim. MB':>10} {'B/param':>8} {'MB/s':>8}")
    median = statistics.median(seconds)
    print(
        f"{median:>16.3f} {total / 1e6:>9.1f} {parts['model'] / 1e6:>9.1f} {parts['optimizer'] / 1e6:>10.1f} "
        f"{total / trained:>8.2f} {total / 1e6 / median:>8.1f}"
    )


if __name__ == "__main__":
    main()
