"""Where things live on disk, for every layer: the repository root (recipes), a model's name tail, and the record
an SFT output folder keeps of its base model."""

from __future__ import annotations

import json
import os
from pathlib import Path

SFT_RECORD = "grpo_lambda_sft.json"  # written by grpo_lambda.sft into its output folder
EMBEDDED_PREFIX = "embedded:"  # models built on this machine without a download (grpo_lambda.testbench.models)


def repo_root() -> Path:
    """The checkout whose recipes/ the launcher and the evaluation read ($GRPO_LAMBDA_ROOT overrides it)."""
    return Path(os.environ.get("GRPO_LAMBDA_ROOT", Path(__file__).resolve().parents[2]))


def model_tail(name: str) -> str:
    """'Qwen/Qwen2.5-Math-1.5B-Instruct' → 'Qwen2.5-Math-1.5B-Instruct'; '/data/gsm_8k/' → 'gsm_8k';
    'embedded:SmolLM2-135M-Instruct' → 'SmolLM2-135M-Instruct'."""
    return Path(name.removeprefix(EMBEDDED_PREFIX).rstrip("/")).name


def recipe_model(model: str) -> str:
    """The model whose recipes apply: an SFT output folder stands for the base model it was trained from."""
    record = Path(model) / SFT_RECORD
    if record.is_file():
        return json.loads(record.read_text())["base_model"]
    return model
