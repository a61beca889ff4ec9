"""run_observed.py's training entry point with what the dynamic-sampling runs observe (tests/test_dynamic_sampling.py):

- the reward `even_sums_flat`: 0 for every completion of a problem whose answer is even (a zero-variance group),
  the completion's length mod 5 otherwise (which varies within a group of random completions);
- every rank appends each batch dynamic sampling returns to <output_dir>/batches-rank<r>.jsonl: the step, its rows,
  advantages and loss tokens, and the problems its extra rounds drew.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCRIPT = Path(__file__)


def command(*flags: str, processes: int = 1) -> list[str]:
    """This script with trainer flags: one plain process, or `processes` CPU processes under accelerate's DDP config
    (`--use_cpu true` among the flags, without which DDP on a CPU trains independent copies)."""
    if processes == 1:
        return [sys.executable, str(SCRIPT), *flags]
    from grpo_lambda.jobs.launch import free_port
    from run_observed import REPO_ROOT

    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO_ROOT / "recipes/accelerate_configs/ddp.yaml"),
        "--num_processes",
        str(processes),
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(free_port()),
        str(SCRIPT),
        *flags,
    ]


def batches(output_dir: Path, rank: int) -> list[dict]:
    path = output_dir / f"batches-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _main() -> int:
    sys.path.insert(0, str(SCRIPT.parent))
    import run_observed
    from grpo_lambda import trainer as trainer_module
    from grpo_lambda.rewards import REWARD_FUNCS, completion_text

    class EvenSumsFlat:
        __name__ = "even_sums_flat"

        def __init__(self, template: str = "no"):
            pass

        def __call__(self, completions: list, answer: list[str], **kwargs) -> list[float]:
            texts = [completion_text(c) for c in completions]
            return [0.0 if int(a) % 2 == 0 else len(t) % 5 / 4 for t, a in zip(texts, answer, strict=True)]

    class RecordingTrainer(trainer_module.GRPOLambdaTrainer):
        def _extra_round_inputs(self, round_index, rows):
            inputs = super()._extra_round_inputs(round_index, rows)
            self._extra_problems += [row["problem"] for row in inputs[:: self.num_generations]]
            return inputs

        def _dynamically_sampled_batch(self, inputs):
            self._extra_problems = []
            batch = super()._dynamically_sampled_batch(inputs)
            record = {
                "step": self.state.global_step,
                "rows": len(batch["prompt_ids"]),
                "advantages": batch["advantages"].tolist(),
                "num_items_in_batch": int(batch["num_items_in_batch"]),
                "extra_problems": self._extra_problems,
            }
            path = Path(self.args.output_dir) / f"batches-rank{self.accelerator.process_index}.jsonl"
            with path.open("a") as file:
                file.write(json.dumps(record) + "\n")
            return batch

    REWARD_FUNCS["even_sums_flat"] = EvenSumsFlat
    trainer_module.GRPOLambdaTrainer = RecordingTrainer  # run_observed's trainer subclasses it
    return run_observed._main()


if __name__ == "__main__":
    sys.exit(_main())
