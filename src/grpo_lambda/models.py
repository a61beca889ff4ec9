"""The training stages' models: loading (model and tokenizer) and saving a finished run as a plain model folder (LoRA
runs merged). Checkpoints, and which one a run resumes from: grpo_lambda.checkpoints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.layout import EMBEDDED_PREFIX

# Model names with a prefix that a layer above registers → the local folder they name. The CPU test bench registers
# `embedded:` (models built without a download) when it is switched on (grpo_lambda.testbench.enable).
MODEL_SOURCES: dict[str, Callable[[str], str]] = {}


def register_model_source(prefix: str, resolve: Callable[[str], str]) -> None:
    MODEL_SOURCES[prefix] = resolve


def model_path(name: str) -> str:
    """A Hub id or a folder as it is; a registered prefix's name as the folder its source gives."""
    for prefix, resolve in MODEL_SOURCES.items():
        if name.startswith(prefix):
            return resolve(name)
    if name.startswith(EMBEDDED_PREFIX):
        raise GRPOLambdaError(
            f"{name} is a test-bench model: train it through `make train` (python -m grpo_lambda.jobs.launch), or "
            "run python -m grpo_lambda.testbench.train grpo|sft, which builds it."
        )
    return name


def load_model_and_tokenizer(model_args, trust_remote_code: bool = False):
    """The training stages' model and tokenizer (a Hub id or a folder): applies `dtype`, and gives the tokenizer a
    pad token (its eos) where it has none."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_path(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.model_revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        revision=model_args.model_revision,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=trust_remote_code,
    )
    return model, tokenizer


ADAPTER_FOLDER = "adapter"  # <output_dir>/adapter: the LoRA adapter of a run whose merged weights are in output_dir


def save_final_model(trainer, model_args, output_dir: str) -> None:
    """Save a finished run as a plain model folder that `from_pretrained` and vLLM load.

    Full fine-tuning: the trainer's own save (it gathers ZeRO-3's partitioned parameters). LoRA (7B, Table 2): the
    trainer saves the adapter (gathered the same way) to <output_dir>/adapter; then the main process merges it into
    the base model in a fresh Python process and saves the merged weights to output_dir. The trainer's own modules
    are never merged (under ZeRO-3 each rank holds a shard of them), and the base model is not loaded here either
    (under ZeRO-3, `from_pretrained` would partition it across ranks that are not loading it).
    """
    if not model_args.use_peft:
        trainer.save_model(output_dir)
        return
    adapter = os.path.join(output_dir, ADAPTER_FOLDER)
    trainer.save_model(adapter)  # every rank takes part: ZeRO-3 gathers the adapter's shards
    if trainer.accelerator.is_main_process:
        merge = "import sys; from grpo_lambda.models import merge_lora; merge_lora(*sys.argv[1:])"
        base = model_path(model_args.model_name_or_path)
        arguments = [base, adapter, output_dir, str(model_args.dtype or "auto"), model_args.model_revision or "main"]
        subprocess.run([sys.executable, "-c", merge, *arguments], check=True)
        trainer.processing_class.save_pretrained(output_dir)


# What a checkpoint holds besides the model (and its tokenizer): the trainer's own state
_TRAINER_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin")


def final_model_from_checkpoint(checkpoint: str, model_args, output_dir: str) -> None:
    """The final model of a run whose last checkpoint reached max_steps but whose final save did not complete (a
    kill or a full disk during it), taken from that checkpoint without training: resuming there, transformers would
    train one step past max_steps. Full fine-tuning: the checkpoint's model and tokenizer files (ZeRO-3 too: its
    checkpoints hold the gathered 16-bit weights, `zero3_save_16bit_model`), each copied to a temporary name and
    renamed. LoRA: the checkpoint's adapter into <output_dir>/adapter, merged as `save_final_model` does. Call it on
    one process."""
    source = Path(checkpoint)
    files = [
        f
        for f in sorted(source.iterdir())
        if f.is_file() and f.name not in _TRAINER_STATE_FILES and not f.name.startswith("rng_state")
    ]
    target = Path(output_dir) / ADAPTER_FOLDER if model_args.use_peft else Path(output_dir)
    target.mkdir(parents=True, exist_ok=True)
    for file in files:
        partial = target / f".{file.name}.partial"
        shutil.copyfile(file, partial)
        os.replace(partial, target / file.name)
    if model_args.use_peft:
        merge = "import sys; from grpo_lambda.models import merge_lora; merge_lora(*sys.argv[1:])"
        base = model_path(model_args.model_name_or_path)
        arguments = [
            base,
            str(target),
            output_dir,
            str(model_args.dtype or "auto"),
            model_args.model_revision or "main",
        ]
        subprocess.run([sys.executable, "-c", merge, *arguments], check=True)
        for file in files:
            if not file.name.startswith("adapter_"):  # the tokenizer beside the merged weights
                shutil.copyfile(file, Path(output_dir) / f".{file.name}.partial")
                os.replace(Path(output_dir) / f".{file.name}.partial", Path(output_dir) / file.name)


def merge_lora(base: str, adapter: str, output_dir: str, dtype: str = "auto", revision: str = "main") -> None:
    """Load `base` on the CPU, merge the LoRA `adapter` into it and save the merged weights to `output_dir`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        base, revision=revision, dtype=dtype if dtype == "auto" else getattr(torch, dtype)
    )
    PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(output_dir)
