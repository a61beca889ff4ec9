"""`grpo_lambda.grpo`'s entry point with what the distributed and vLLM tests observe, and the helpers that run it.

Run as a script (alone, or under `accelerate launch`) it trains exactly as `python -m grpo_lambda.grpo`, plus:

- every rank writes its parameters after training to <output_dir>/parameters-rank<r>.safetensors (ZeRO-3 gathers
  them first), so that a test can compare ranks;
- `--skip_vllm_sync_at_step N` (taken out of the arguments here) skips the vLLM weight sync before the generation
  at global step N, so that a test can show that a missed sync is detected (in the step logged as N + 1);
- the reward `digit_share` (the share of digits in a completion) joins the reward registry: unlike accuracy, it
  varies within every group even for a random model, so every step moves the parameters.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SKIP_SYNC_FLAG = "--skip_vllm_sync_at_step"
LOGP_DIFFERENCE = "sampling/sampling_logp_difference/mean"
# TRL's sampling/sampling_logp_difference/mean: |log π_vLLM − log π_trainer| over the sampled tokens. In float32 on
# the CPU it is ~2e-7 when vLLM holds the trainer's weights, and ~0.1 after one missed update of the tiny model.
SYNCED_LOGP_DIFFERENCE = 1e-3
# A tiny GRPO-λ run of the default recipe (ε-trace, `both`, λ 0.99, clamp −0.1, β 0.04, float32)
TINY_RUN = [
    "--config",
    str(REPO_ROOT / "recipes/default/grpo/config_arithmetic_eps_trace-both-0.99.yaml"),
    "--reward_funcs",
    "digit_share",
    "--reward_weights",
    "1.0",
    "--num_generations",
    "4",
    "--max_completion_length",
    "8",
    "--learning_rate",
    "1e-2",
    "--use_cpu",
    "true",
    "--seed",
    "0",
]


def sums_dataset(folder: Path, tokenizer_dir: Path) -> Path:
    """81 problems 'What is a + b?' (a, b = 1..9) as JSONL. All prompts have the same number of tokens, so that a
    batch split over processes is padded as the whole batch is (TRL passes no position ids)."""
    from transformers import AutoTokenizer

    problems = [(f"What is {a} + {b}?", str(a + b)) for a in range(1, 10) for b in range(1, 10)]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len({len(tokenizer(problem).input_ids) for problem, _ in problems}) == 1
    path = folder / "sums.jsonl"
    path.write_text("".join(json.dumps({"problem": p, "answer": a}) + "\n" for p, a in problems))
    return path


def observed_command(*flags: str, accelerate: str | None = None, processes: int = 2) -> list[str]:
    """This script with trainer flags: one plain process, or `processes` under an accelerate config."""
    script = [str(Path(__file__)), *flags]
    if accelerate is None:
        return [sys.executable, *script]
    from grpo_lambda.jobs.launch import free_port

    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO_ROOT / "recipes/accelerate_configs" / f"{accelerate}.yaml"),
        "--num_processes",
        str(processes),
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(free_port()),
        *script,
    ]


def run(command: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def step_records(output_dir: Path) -> list[dict]:
    """metrics.jsonl's per-step records (the final summary left out)."""
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "loss" in record]


def rank_parameters(output_dir: Path, rank: int) -> dict:
    from safetensors.torch import load_file

    return load_file(output_dir / f"parameters-rank{rank}.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() <= b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


def check_run(output_dir: Path, initial_model: Path, steps: int, processes: int) -> dict:
    """What every training run must show: each step logged once with a finite loss, every rank holding the same
    parameters, saved weights and the last checkpoint equal to them, and the parameters moved. Returns rank 0's."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    records = step_records(output_dir)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    final = rank_parameters(output_dir, 0)
    for rank in range(1, processes):
        other = rank_parameters(output_dir, rank)
        assert all(torch.equal(final[name], other[name]) for name in final), f"rank {rank} differs from rank 0"
    assert max_difference(final, load_file(output_dir / "model.safetensors")) == 0.0
    checkpoint = AutoModelForCausalLM.from_pretrained(output_dir / f"checkpoint-{steps}", dtype=torch.float32)
    assert max_difference(final, dict(checkpoint.named_parameters())) == 0.0
    assert max_difference(final, load_file(initial_model / "model.safetensors")) > 1e-3
    return final


def _main() -> int:
    import deepspeed
    import torch
    from safetensors.torch import save_file

    import grpo_lambda.grpo as entry
    import grpo_lambda.trainer as trainer_module
    from grpo_lambda import testbench
    from grpo_lambda.configs import parse_grpo_args
    from grpo_lambda.rewards import REWARD_FUNCS, completion_text

    class DigitShareReward:
        __name__ = "digit_share_reward"

        def __init__(self, template: str = "no"):
            pass

        def __call__(self, completions: list, **kwargs) -> list[float]:
            texts = [completion_text(c) for c in completions]
            return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in texts]

    argv = sys.argv[1:]
    skip_sync_at = None
    if SKIP_SYNC_FLAG in argv:
        at = argv.index(SKIP_SYNC_FLAG)
        skip_sync_at = int(argv[at + 1])
        del argv[at : at + 2]

    class ObservedTrainer(trainer_module.GRPOLambdaTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if skip_sync_at is not None:
                sync = self.vllm_generation.sync_weights

                def sync_but_once():
                    if self.state.global_step != skip_sync_at:
                        sync()

                self.vllm_generation.sync_weights = sync_but_once

        def train(self, *args, **kwargs):
            result = super().train(*args, **kwargs)
            parameters = list(self.model.parameters())
            with deepspeed.zero.GatheredParameters(parameters), torch.no_grad():
                tensors = {name: p.detach().clone().contiguous() for name, p in self.model.named_parameters()}
            rank = self.accelerator.process_index
            save_file(tensors, os.path.join(self.args.output_dir, f"parameters-rank{rank}.safetensors"))
            return result

    REWARD_FUNCS["digit_share"] = DigitShareReward
    trainer_module.GRPOLambdaTrainer = ObservedTrainer  # the class entry.main imports once the arguments parse
    script_args, training_args, model_args = parse_grpo_args(argv)
    testbench.enable(training_args)  # as grpo_lambda.testbench.train, which the launcher runs on CPUs
    return entry.main(script_args, training_args, model_args)


if __name__ == "__main__":
    sys.exit(_main())
