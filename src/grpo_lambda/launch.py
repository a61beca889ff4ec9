"""`make train`: find the recipe for MODEL × DATASET × METHOD and launch it with `accelerate launch`.

    python -m grpo_lambda.launch --model Qwen/Qwen2.5-Math-1.5B-Instruct --dataset gsm8k --method grpo-lambda \
        --accelerate zero2 --args "--trace_lambda 0.98" [--dry-run]

Lookup: recipes/<model name tail>/grpo/config_<dataset tag>_<method>.yaml; when a model has no recipe for that
dataset, recipes/default/grpo/config_<method>.yaml with --model_name_or_path / --dataset_name passed through.
A MODEL or DATASET given explicitly is always passed on the command line, so an SFT checkpoint folder can stand
in for the model a recipe names.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from grpo_lambda.models import EMBEDDED_PREFIX

METHODS = ("grpo", "grpo-lambda")
ACCELERATE_CONFIGS = ("auto", "cpu", "ddp", "zero2", "zero3")


def repo_root() -> Path:
    return Path(os.environ.get("GRPO_LAMBDA_ROOT", Path(__file__).resolve().parents[2]))


def name_tail(name: str) -> str:
    """'Qwen/Qwen2.5-Math-1.5B-Instruct' → 'Qwen2.5-Math-1.5B-Instruct'; '/data/gsm_8k/' → 'gsm_8k'."""
    return Path(name.removeprefix(EMBEDDED_PREFIX).rstrip("/")).name


def resolve_recipe(root: Path, model: str | None, dataset: str | None, method: str) -> tuple[Path, list[str]]:
    """The recipe file and the command-line overrides that go with it."""
    if method not in METHODS:
        raise SystemExit(f"grpo_lambda: METHOD={method!r} is not one of {', '.join(METHODS)}.")
    overrides = []
    model = os.path.abspath(model) if model and os.path.exists(model) else model
    dataset = os.path.abspath(dataset) if dataset and os.path.exists(dataset) else dataset
    if model:
        overrides += ["--model_name_or_path", model]
    if dataset:
        overrides += ["--dataset_name", dataset]
    if model and dataset:
        specific = root / "recipes" / name_tail(model) / "grpo" / f"config_{name_tail(dataset)}_{method}.yaml"
        if specific.is_file():
            return specific, overrides
    return root / "recipes" / "default" / "grpo" / f"config_{method}.yaml", overrides


def accelerate_config(root: Path, name: str) -> tuple[Path, list[str]]:
    """recipes/accelerate_configs/<name>.yaml; 'auto' is zero2 where CUDA is visible, else cpu. On GPUs the
    process count follows the visible devices rather than the file's 8."""
    if name not in ACCELERATE_CONFIGS:
        raise SystemExit(f"grpo_lambda: ACCEL={name!r} is not one of {', '.join(ACCELERATE_CONFIGS)}.")
    import torch

    gpus = torch.cuda.device_count()
    if name == "auto":
        name = "zero2" if gpus else "cpu"
    extra = ["--num_processes", str(gpus)] if gpus and name != "cpu" else []
    return root / "recipes" / "accelerate_configs" / f"{name}.yaml", extra


def build_command(args: argparse.Namespace, root: Path) -> list[str]:
    recipe, overrides = resolve_recipe(root, args.model, args.dataset, args.method)
    config, accelerate_extra = accelerate_config(root, args.accelerate)
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *accelerate_extra,
        "-m", "grpo_lambda.grpo", "--config", str(recipe), *overrides, *shlex.split(args.args or ""),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Hub id, local folder or embedded:SmolLM2-135M-Instruct.")
    parser.add_argument("--dataset", default=None, help="arithmetic, a save_to_disk folder or a Hub dataset id.")
    parser.add_argument("--method", default="grpo-lambda", choices=METHODS)
    parser.add_argument("--accelerate", default="auto", choices=ACCELERATE_CONFIGS)
    parser.add_argument("--args", default="", help="Extra trainer flags, e.g. '--trace_lambda 0.98'.")
    parser.add_argument("--dry-run", action="store_true", help="Print the recipe and the command; run nothing.")
    args = parser.parse_args(argv)
    root = repo_root()
    command = build_command(args, root)
    recipe = command[command.index("--config") + 1]
    print(f"recipe: {os.path.relpath(recipe, root)}")
    print("command: " + shlex.join(command), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(command, cwd=root)


if __name__ == "__main__":
    sys.exit(main())
