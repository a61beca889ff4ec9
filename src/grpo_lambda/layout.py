"""Where things live on disk, for every layer: the repository root (recipes), a model's name tail, the one rule that
tells a local path from a Hub id or a dataset name, and the record every training output folder keeps of its run
(`grpo_lambda_run.json`: its stage, model, training set, template and, once its final model is saved, the step it
finished at; written by grpo_lambda.reruns)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import GRPOLambdaError

RUN_RECORD = "grpo_lambda_run.json"  # in every GRPO and SFT output folder (grpo_lambda.reruns writes it)
SETTINGS_RECORD = "recipe.yaml"  # in every output folder `make train` / `make sft` launched: the resolved settings
EMBEDDED_PREFIX = "embedded:"  # models built on this machine without a download (grpo_lambda.testbench.models)
EMBEDDED_MODELS = ("embedded:SmolLM2-135M-Instruct", "embedded:tiny-qwen2")  # every name the test bench builds
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".yaml", ".yml")


def repo_root() -> Path:
    """The checkout whose recipes/ the launcher and the evaluation read ($GRPO_LAMBDA_ROOT overrides it)."""
    return Path(os.environ.get("GRPO_LAMBDA_ROOT", Path(__file__).resolve().parents[2]))


def model_tail(name: str) -> str:
    """'Qwen/Qwen2.5-Math-1.5B-Instruct' → 'Qwen2.5-Math-1.5B-Instruct'; '/data/gsm_8k/' → 'gsm_8k';
    'embedded:SmolLM2-135M-Instruct' → 'SmolLM2-135M-Instruct'."""
    return Path(name.removeprefix(EMBEDDED_PREFIX).rstrip("/")).name


def local_path(name: str | None, base: str | os.PathLike | None = None) -> Path | None:
    """The one rule for "a local path, or a Hub id / dataset name?", for models, training sets and suites alike:
    `name` is a path when it exists (relative names start in `base`, default the current folder), or when it can
    only be one: it starts with '/', '.' or '~', ends with '/', holds more than one '/', or ends with a data file's
    suffix (.jsonl, ...). Returns it absolute, or None for a Hub id (`org/name`), a name (`gsm8k`) or an `embedded:`
    model."""
    if not name or name.startswith(EMBEDDED_PREFIX):
        return None
    expanded = os.path.expanduser(name)
    candidate = Path(base or os.getcwd()) / expanded
    if (
        candidate.exists()
        or name.startswith(("/", ".", "~"))
        or name.endswith("/")
        or name.count("/") > 1
        or name.lower().endswith(_DATA_SUFFIXES)
    ):
        return Path(os.path.abspath(candidate))
    return None


def run_record(folder: str | os.PathLike) -> dict | None:
    """The run record of a training output folder (RUN_RECORD), or None where there is none. A damaged one (a hand
    edit: it is written whole, through a rename) is refused with its path."""
    path = Path(folder) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_bytes())
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise GRPOLambdaError(f"{path} is not a run record (JSON object): restore it or delete the run folder.")
    return record


def run_folder_of(path: str | os.PathLike) -> Path | None:
    """The training output folder that holds `path` (the folder itself, or a checkpoint-N or other folder inside
    it): the nearest folder at or above `path` with a run record."""
    folder = Path(path).absolute()
    for candidate in (folder, *folder.parents):
        if (candidate / RUN_RECORD).is_file():
            return candidate
    return None


def recipe_model(model: str) -> str:
    """The model whose recipes apply: an SFT output folder stands for the base model it was trained from."""
    record = run_record(model) if os.path.isdir(model) else None
    if record and record.get("stage") == "sft":
        return record["model"]
    return model


def model_recipes(model: str, stage: str, root: Path | None = None) -> list[Path]:
    """The recipe files of a model (recipes/<model tail>/<grpo|sft>/config_*.yaml; an SFT output folder: its base
    model's), [] for a model without recipes."""
    folder = (root or repo_root()) / "recipes" / model_tail(recipe_model(model)) / stage
    return sorted(folder.glob("config_*.yaml"))
