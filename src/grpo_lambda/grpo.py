"""GRPO / GRPO-λ training entry point (open-r1's `grpo.py` shape).

    accelerate launch --config_file recipes/accelerate_configs/zero2.yaml -m grpo_lambda.grpo \
        --config recipes/<model>/grpo/config_<tag>.yaml [--trace_lambda 0.98 ...]
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed
from trl import ModelConfig, get_peft_config

from grpo_lambda.configs import GRPOLambdaConfig, GRPOScriptArguments, parse_grpo_args
from grpo_lambda.data import load_problem_dataset, to_prompts
from grpo_lambda.launch import EXIT_PREEMPTED, STOP_FILE
from grpo_lambda.models import checkpoint_to_resume, load_model_and_tokenizer, save_final_model
from grpo_lambda.rewards import get_reward_funcs
from grpo_lambda.tracking import announce_wandb
from grpo_lambda.trainer import GRPOLambdaTrainer

logger = logging.getLogger(__name__)


class JsonlMetricsCallback(TrainerCallback):
    """Appends every log record (reward, kl, trace/…, completion lengths) to `<output_dir>/metrics.jsonl`.

    A resumed run first drops the records past its checkpoint's step (written after the last checkpoint by the
    attempt that crashed or was preempted), so the log holds each step once."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.is_file():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= state.global_step]
        if len(kept) != len(lines):
            logger.info("metrics.jsonl: dropped %d records past step %d", len(lines) - len(kept), state.global_step)
            staging = self.path.with_suffix(".jsonl.tmp")
            staging.write_text("".join(kept))
            os.replace(staging, self.path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as stream:
                stream.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class PreemptionCallback(TrainerCallback):
    """When `stop_file` appears (the SLURM runner creates it on the warning signal before the time limit) or the
    process gets `signum`, finish the current step, save a checkpoint and stop; `preempted` then tells the entry
    point to exit with EXIT_PREEMPTED.

    A file rather than a signal to every process: it reaches the ranks on every node through the shared output
    folder, and it spares the helper processes (grading pool, data workers) that a signal would kill. Ranks may see
    it at different steps, so they agree (a max all-reduce of one flag per step) and all save at the same step."""

    def __init__(self, stop_file: Path, signum: int = signal.SIGUSR1):
        self.stop_file = stop_file
        self.signalled = False
        self.preempted = False
        signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame):
        self.signalled = True

    def _agreed(self) -> bool:
        requested = self.signalled or self.stop_file.exists()
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return requested
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        flag = torch.tensor([float(requested)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # a request left by the attempt that stopped: this one runs on
            self.stop_file.unlink(missing_ok=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed():
            logger.warning("stop requested: saving a checkpoint at step %d and stopping", state.global_step)
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True
        return control


def _load_datasets(script_args: GRPOScriptArguments):
    train = load_problem_dataset(
        script_args.dataset_name,
        script_args.dataset_train_split,
        script_args.dataset_config,
        path=script_args.dataset_path,
        **script_args.arithmetic(),
    )
    if script_args.max_train_samples is not None:
        train = train.select(range(min(script_args.max_train_samples, len(train))))
    return to_prompts(train, script_args.prompt_template)


def main(script_args: GRPOScriptArguments, training_args: GRPOLambdaConfig, model_args: ModelConfig):
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
    announce_wandb(training_args.report_to, training_args.output_dir)
    set_seed(training_args.seed)

    preemption = PreemptionCallback(Path(training_args.output_dir) / STOP_FILE)
    model, tokenizer = load_model_and_tokenizer(model_args, training_args.trust_remote_code)
    train_dataset = _load_datasets(script_args)

    trainer = GRPOLambdaTrainer(
        model=model,
        reward_funcs=get_reward_funcs(
            script_args.reward_funcs, script_args.prompt_template, script_args.grading_timeout_s
        ),
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[JsonlMetricsCallback(Path(training_args.output_dir) / "metrics.jsonl"), preemption],
    )
    logger.info(
        "loss_variant=%s trace_style=%s trace_lambda=%s trace_gamma=%s adv_clamp_min=%s loss_type=%s",
        training_args.loss_variant,
        training_args.trace_style,
        training_args.trace_lambda,
        training_args.trace_gamma,
        training_args.adv_clamp_min,
        training_args.loss_type,
    )

    checkpoint = checkpoint_to_resume(training_args)
    if checkpoint is not None:
        logger.info("resuming from %s", checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    if preemption.preempted:
        logger.warning("stopped at step %d on request; rerun to resume", trainer.state.global_step)
        return EXIT_PREEMPTED
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    save_final_model(trainer, model_args, training_args.output_dir)  # LoRA: merged weights, adapter in adapter/
    logger.info("model saved to %s", training_args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(*parse_grpo_args()))
