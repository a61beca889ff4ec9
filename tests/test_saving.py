"""A finished LoRA run (7B, Table 2) is a plain model folder: the adapter merged into the base model, also when
ZeRO-3 has partitioned the trainer's parameters across processes (the merge must not read the shards)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import REPO_ROOT
from grpo_lambda.models import ADAPTER_FOLDER
from grpo_lambda.testbench.models import build_tiny_model

LORA = "--use_peft true --lora_r 4 --lora_alpha 8 --lora_target_modules q_proj v_proj"


def assert_merged(output_dir, base_dir, trained: bool = True):
    """output_dir holds base + adapter merged (compared with peft's own merge of the saved adapter), and the adapter
    moved the weights it targets (`trained`: a first GRPO step of a random model may have no reward signal)."""
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    reference = PeftModel.from_pretrained(base, output_dir / ADAPTER_FOLDER).merge_and_unload().state_dict()
    saved = load_file(output_dir / "model.safetensors")
    assert not (output_dir / "adapter_config.json").exists()  # a plain folder: vLLM and from_pretrained load it
    assert saved.keys() <= reference.keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, reference[name]), name
    moved = [n for n in saved if not torch.equal(saved[n], before[n])]
    assert all("q_proj" in n or "v_proj" in n for n in moved) and (moved or not trained)


def launch(*argv: str, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "grpo_lambda.jobs.launch", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_lora_grpo_saves_merged_weights(tiny_model_dir, tmp_path):
    """Before, a LoRA GRPO run saved the adapter alone; its evaluation then could not start vLLM."""
    output_dir = tmp_path / "grpo-lora"
    launch(
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "arithmetic",
        "--loss_variant",
        "eps_trace",
        "--args",
        f"{LORA} --max_steps 1 --save_steps 1 --num_generations 2 --per_device_train_batch_size 4 "
        f"--max_completion_length 8 --learning_rate 1e-2 --output_dir {output_dir}",
    )
    assert_merged(output_dir, tiny_model_dir, trained=False)


@pytest.mark.slow
def test_lora_sft_under_zero3_on_two_processes_merges_gathered_weights(tmp_path):
    """2 CPU processes under ZeRO-3 with weights large enough to be partitioned (512 × 512 > DeepSpeed's
    persistence threshold of 1e5 elements). Merging the trainer's own modules failed here: their weights are empty
    shards on each rank."""
    model_dir = build_tiny_model(tmp_path / "model", hidden_size=512, num_heads=8)
    output_dir = tmp_path / "sft-lora"
    launch(
        "--stage",
        "sft",
        "--model",
        str(model_dir),
        "--accelerate",
        "zero3",
        "--num-processes",
        "2",
        "--args",
        f"{LORA} --max_steps 2 --save_steps 100 --max_length 128 --learning_rate 1e-3 --output_dir {output_dir}",
    )
    assert_merged(output_dir, model_dir)
