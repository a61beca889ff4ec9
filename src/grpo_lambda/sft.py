"""Format SFT before RL (§4.2, "Mitigate reward hacking"), open-r1's `sft.py` shape.

    accelerate launch --config_file recipes/accelerate_configs/zero2.yaml -m grpo_lambda.sft \
        --config recipes/<model>/sft/config_<dataset>.yaml

Worked solutions are rendered in the same prompt template as the RL stage and the evaluation, ending with the final
answer where that template reads it. The output folder's run record (grpo_lambda.reruns) names its base model, so
`make train MODEL=<it>` finds the base model's GRPO recipes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from transformers import set_seed
from trl import ModelConfig, SFTTrainer, get_peft_config

from grpo_lambda.callbacks import EXIT_PREEMPTED, STOP_FILE, JsonlMetricsCallback, PreemptionCallback
from grpo_lambda.checkpoints import AtomicCheckpoints, checkpoint_to_resume
from grpo_lambda.configs import FormatSFTConfig, SFTScriptArguments, parse_sft_args
from grpo_lambda.data import solution_dataset
from grpo_lambda.errors import exit_status
from grpo_lambda.models import load_model_and_tokenizer, save_final_model
from grpo_lambda.reruns import check_settings, claim_output_dir, final_step, mark_finished
from grpo_lambda.tracking import announce_wandb

logger = logging.getLogger(__name__)


class FormatSFTTrainer(AtomicCheckpoints, SFTTrainer):
    """TRL's SFTTrainer, its checkpoints complete or absent (grpo_lambda.checkpoints)."""


def main(script_args: SFTScriptArguments, training_args: FormatSFTConfig, model_args: ModelConfig):
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
    announce_wandb(training_args.report_to, training_args.output_dir)
    set_seed(training_args.seed)

    check_settings("sft", (script_args, training_args, model_args))
    record = {
        "stage": "sft",
        "model": model_args.model_name_or_path,  # the base model: `make train MODEL=<this folder>` uses its recipes
        "dataset": script_args.dataset_name,
        "prompt_template": script_args.prompt_template,
    }
    claim_output_dir(training_args.output_dir, record, write=training_args.process_index == 0)
    done = final_step(training_args.output_dir)
    if done is not None and (training_args.max_steps <= 0 or done >= training_args.max_steps):
        logger.warning("%s is a finished SFT run (step %s): nothing to train", training_args.output_dir, done)
        return 0
    preemption = PreemptionCallback(Path(training_args.output_dir) / STOP_FILE, training_args.save_minutes)
    model, tokenizer = load_model_and_tokenizer(model_args)
    with training_args.main_process_first(desc="loading the training set"):  # one download, then the cache
        train_dataset = solution_dataset(
            script_args.dataset_name,
            script_args.prompt_template,
            script_args.dataset_train_split,
            path=script_args.dataset_path,
            **script_args.arithmetic(),
        )
    train_dataset = script_args.first_rows(train_dataset)

    trainer = FormatSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[JsonlMetricsCallback(Path(training_args.output_dir) / "metrics.jsonl"), preemption],
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
    # LoRA (7B, Table 2): merged weights, so that the RL stage loads a plain model folder (the adapter in adapter/)
    save_final_model(trainer, model_args, training_args.output_dir)
    if trainer.accelerator.is_main_process:
        mark_finished(training_args.output_dir, trainer.state.global_step)  # last: a kill before leaves it unfinished
    logger.info("model saved to %s", training_args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(lambda: main(*parse_sft_args())))
