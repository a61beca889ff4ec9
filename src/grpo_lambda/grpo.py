"""GRPO / GRPO-λ training entry point (open-r1's `grpo.py` shape).

    accelerate launch --config_file recipes/accelerate_configs/zero2.yaml -m grpo_lambda.grpo \
        --config recipes/<model>/grpo/config_<tag>.yaml [--trace_lambda 0.98 ...]
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from transformers import set_seed
from trl import ModelConfig, get_peft_config

from grpo_lambda.callbacks import EXIT_PREEMPTED, STOP_FILE, JsonlMetricsCallback, PreemptionCallback
from grpo_lambda.checkpoints import checkpoint_state, checkpoint_to_resume
from grpo_lambda.configs import GRPOLambdaConfig, GRPOScriptArguments, parse_grpo_args
from grpo_lambda.data import load_problem_dataset, to_prompts
from grpo_lambda.errors import GRPOLambdaError, exit_status
from grpo_lambda.methods import Method
from grpo_lambda.models import final_model_from_checkpoint, load_model_and_tokenizer, model_path, save_final_model
from grpo_lambda.reruns import check_settings, claim_output_dir, finished_step, mark_finished
from grpo_lambda.rewards import get_reward_funcs
from grpo_lambda.tracking import announce_wandb
from grpo_lambda.vllm_server import vllm_server_url, wait_for_vllm_server

logger = logging.getLogger(__name__)


def _load_datasets(script_args: GRPOScriptArguments):
    train = load_problem_dataset(
        script_args.dataset_name,
        script_args.dataset_train_split,
        script_args.dataset_config,
        path=script_args.dataset_path,
        **script_args.arithmetic(),
    )
    return to_prompts(script_args.first_rows(train), script_args.prompt_template)


def main(script_args: GRPOScriptArguments, training_args: GRPOLambdaConfig, model_args: ModelConfig):
    from grpo_lambda.trainer import GRPOLambdaTrainer, check_trl_seam  # TRL's trainer and vLLM: once parsed

    check_trl_seam()  # before anything loads

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
    announce_wandb(training_args.report_to, training_args.output_dir)
    set_seed(training_args.seed)

    processes = training_args.world_size
    per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * processes
    if training_args.global_batch_size is not None and per_step != training_args.global_batch_size:
        raise GRPOLambdaError(
            f"{training_args.per_device_train_batch_size} per device × {training_args.gradient_accumulation_steps} "
            f"accumulation × {processes} process(es) train {per_step} completions per step, not the recipe's "
            f"global_batch_size={training_args.global_batch_size} (Table 2): launch with make train, which keeps it, "
            "or set per_device_train_batch_size / gradient_accumulation_steps to match (or global_batch_size to null)."
        )
    check_settings("grpo", (script_args, training_args, model_args))
    record = {
        "stage": "grpo",
        "method": Method.from_config(training_args).tag,
        "model": model_args.model_name_or_path,
        "dataset": script_args.dataset_name,
        "prompt_template": script_args.prompt_template,
    }
    claim_output_dir(training_args.output_dir, record, write=training_args.process_index == 0)
    done = finished_step(training_args.output_dir, training_args.max_steps)
    if done is not None:
        logger.warning(
            "%s already reached max_steps=%d (step %d): nothing to train; raise max_steps to extend it",
            training_args.output_dir,
            training_args.max_steps,
            done,
        )
        return 0
    checkpoint = checkpoint_to_resume(training_args)
    reached = (checkpoint_state(checkpoint) or {}).get("global_step", 0) if checkpoint else 0
    if training_args.max_steps > 0 and reached >= training_args.max_steps:  # killed during its final save
        logger.warning("%s reached max_steps at step %d; saving its final model from it", checkpoint, reached)
        if training_args.process_index == 0:
            final_model_from_checkpoint(checkpoint, model_args, training_args.output_dir)
            mark_finished(training_args.output_dir, reached)
        return 0

    preemption = PreemptionCallback(Path(training_args.output_dir) / STOP_FILE, training_args.save_minutes)
    model, tokenizer = load_model_and_tokenizer(model_args, training_args.trust_remote_code)
    with training_args.main_process_first(desc="loading the training set"):  # one download, then the cache
        train_dataset = _load_datasets(script_args)
    if training_args.use_vllm and training_args.vllm_mode == "server" and training_args.process_index == 0:
        served = model_path(model_args.model_name_or_path)  # the folder an embedded: model is served from
        wait_for_vllm_server(vllm_server_url(training_args), training_args.vllm_server_timeout, model=served)

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
    if trainer.accelerator.is_main_process:
        mark_finished(training_args.output_dir, trainer.state.global_step)  # last: a kill before leaves it unfinished
    logger.info("model saved to %s", training_args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(lambda: main(*parse_grpo_args())))
