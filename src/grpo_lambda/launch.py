"""`make train` / `make sft`: find the recipe for MODEL × DATASET × METHOD [× LAMBDA × STYLE × UPDATE] and launch
it with `accelerate launch`, as open-r1 does.

    python -m grpo_lambda.launch --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --dataset math12k \
        --method grpo-lambda --lambda 0.99 --style both --update trace --accelerate zero2 [--dry-run]

Lookup: recipes/<model name tail>/grpo/config_<dataset>_<method tag>.yaml (recipes/<model>/sft/config_<dataset>.yaml
for SFT). Unset LAMBDA / STYLE / UPDATE pick the paper's preferred run among the recipes that exist (λ 0.99,
ε-trace, `both`; §4.1). A model or dataset without recipes falls back to recipes/default/<stage>/ with your
model, dataset and trace settings passed on the command line. An SFT output folder (it records its base model)
finds its base model's recipes. `--recipe` names the recipe file itself (the SLURM scripts use it).

A running training checkpoints and stops at the end of its current step when the file <output_dir>/STOP_REQUESTED
appears (or on SIGUSR1): that is how the SLURM runner (grpo_lambda.sweep) handles the warning before a time limit.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from grpo_lambda.models import EMBEDDED_PREFIX

METHODS = ("grpo", "grpo-lambda")
UPDATES = ("trace", "weight")
STYLES = ("both", "recent")
ACCELERATE_CONFIGS = ("auto", "cpu", "ddp", "zero2", "zero3")
SFT_RECORD = "grpo_lambda_sft.json"  # written by grpo_lambda.sft into its output folder


def repo_root() -> Path:
    return Path(os.environ.get("GRPO_LAMBDA_ROOT", Path(__file__).resolve().parents[2]))


def name_tail(name: str) -> str:
    """'Qwen/Qwen2.5-Math-1.5B-Instruct' → 'Qwen2.5-Math-1.5B-Instruct'; '/data/gsm_8k/' → 'gsm_8k'."""
    return Path(name.removeprefix(EMBEDDED_PREFIX).rstrip("/")).name


def recipe_model(model: str) -> str:
    """The model whose recipes apply: an SFT output folder stands for the base model it was trained from."""
    record = Path(model) / SFT_RECORD
    if record.is_file():
        return json.loads(record.read_text())["base_model"]
    return model


def _preference(path: Path) -> tuple:
    """Sort key putting the paper's preferred GRPO-λ run first (§4.1: λ 0.99, ε-trace, `both`)."""
    _, lam, style, update = path.stem.split("_", 2)[-1].rsplit("-", 3)
    return (lam != "0.99", update != "trace", style != "both", path.name)


def resolve_recipe(root: Path, args: argparse.Namespace) -> tuple[Path, list[str], str]:
    """The recipe, the command-line overrides that go with it, and a note on how it was chosen."""
    model = os.path.abspath(args.model) if args.model and os.path.exists(args.model) else args.model
    dataset = os.path.abspath(args.dataset) if args.dataset and os.path.exists(args.dataset) else args.dataset
    overrides = ["--model_name_or_path", model] if model else []
    trace = {"lambda": args.trace_lambda, "style": args.style, "update": args.update}
    if args.stage == "sft" and any(trace.values()):
        raise SystemExit("grpo_lambda: LAMBDA, STYLE and UPDATE apply to METHOD=grpo-lambda training, not to SFT.")
    if args.method == "grpo" and any(trace.values()):
        raise SystemExit("grpo_lambda: LAMBDA, STYLE and UPDATE need METHOD=grpo-lambda.")

    stage_folder = "sft" if args.stage == "sft" else "grpo"
    folder = root / "recipes" / name_tail(recipe_model(model)) / stage_folder if model else None
    if folder is not None and folder.is_dir() and not dataset:
        recipes = sorted(folder.glob("config_*.yaml"))
        if args.stage == "sft" and len(recipes) == 1:
            return recipes[0], overrides, f"the SFT recipe of {name_tail(recipe_model(model))}"
        datasets = sorted({p.stem.removeprefix("config_").split("_")[0] for p in recipes})
        raise SystemExit(
            f"grpo_lambda: set DATASET for {name_tail(recipe_model(model))}: one of {', '.join(datasets)}."
        )
    if folder is not None and dataset and folder.is_dir():
        tag = name_tail(dataset)
        if args.stage == "sft":
            candidates = [folder / f"config_{tag}.yaml"]
        elif args.method == "grpo":
            candidates = [folder / f"config_{tag}_grpo.yaml"]
        else:
            pattern = (
                f"config_{tag}_grpo-lambda-{args.trace_lambda or '*'}-{args.style or '*'}-{args.update or '*'}.yaml"
            )
            candidates = sorted(folder.glob(pattern), key=_preference)
        candidates = [c for c in candidates if c.is_file()]
        if candidates:
            return candidates[0], overrides, f"recipe of {name_tail(recipe_model(model))} on {tag}"
        available = sorted(p.name for p in folder.glob(f"config_{tag}_*.yaml")) or sorted(
            p.name for p in folder.glob("*.yaml")
        )
        if available:
            raise SystemExit(
                f"grpo_lambda: no recipe in {folder.relative_to(root)} for dataset={tag} method={args.method} "
                f"lambda={args.trace_lambda} style={args.style} update={args.update}; it has: {', '.join(available)}."
            )

    default = (
        root
        / "recipes"
        / "default"
        / stage_folder
        / ("config_sft.yaml" if args.stage == "sft" else f"config_{args.method}.yaml")
    )
    if dataset:
        overrides += ["--dataset_name", dataset]
    if args.method == "grpo-lambda" and args.stage == "train":
        if args.trace_lambda:
            overrides += ["--trace_lambda", args.trace_lambda]
        if args.style:
            overrides += ["--trace_style", args.style]
        if args.update:
            overrides += ["--loss_variant", f"eps_{args.update}"]
    note = "default recipe" + (f" (no recipe for {name_tail(model)})" if model else "")
    return default, overrides, note


def accelerate_config(root: Path, name: str, machines: dict | None = None) -> tuple[Path, list[str]]:
    """recipes/accelerate_configs/<name>.yaml; 'auto' is zero2 where CUDA is visible, else cpu. The process count
    follows the visible GPUs (times the machines, for a multi-node run); without a GPU, a DeepSpeed or DDP config
    runs one process in full precision."""
    import torch

    gpus = torch.cuda.device_count()
    if name == "auto":
        name = "zero2" if gpus else "cpu"
    if name == "cpu":
        extra = []
    elif gpus:
        extra = ["--num_processes", str(gpus * (machines["num_machines"] if machines else 1))]
    else:
        extra = ["--num_processes", "1", "--mixed_precision", "no"]
    if machines:
        extra += [f"--{key}={value}" for key, value in machines.items()]
    return root / "recipes" / "accelerate_configs" / f"{name}.yaml", extra


def _machines(args: argparse.Namespace) -> dict | None:
    """accelerate's multi-node flags; the machine rank defaults to SLURM_PROCID (one task per node under srun)."""
    if args.num_machines <= 1:
        return None
    if not args.main_process_ip:
        raise SystemExit("grpo_lambda: --num-machines > 1 needs --main-process-ip (the first training node).")
    rank = args.machine_rank if args.machine_rank is not None else int(os.environ.get("SLURM_PROCID", "0"))
    return {
        "num_machines": args.num_machines,
        "machine_rank": rank,
        "main_process_ip": args.main_process_ip,
        "main_process_port": args.main_process_port,
    }


def build_command(args: argparse.Namespace, root: Path) -> tuple[list[str], str]:
    if args.recipe:
        recipe = Path(args.recipe).resolve()
        if not recipe.is_file():
            raise SystemExit(f"grpo_lambda: no recipe file {args.recipe}.")
        overrides, note = (["--model_name_or_path", args.model] if args.model else []), "recipe given"
    else:
        recipe, overrides, note = resolve_recipe(root, args)
    config, accelerate_extra = accelerate_config(root, args.accelerate, _machines(args))
    if args.vllm_mode:
        overrides += ["--vllm_mode", args.vllm_mode]
    module = "grpo_lambda.sft" if args.stage == "sft" else "grpo_lambda.grpo"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *accelerate_extra,
        "-m", module, "--config", str(recipe), *overrides, *shlex.split(args.args or ""),
    ]  # fmt: skip
    return command, note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="train", choices=("train", "sft"))
    parser.add_argument("--recipe", default=None, help="A recipe file; skips the MODEL/DATASET/METHOD lookup.")
    parser.add_argument("--model", default=None, help="Hub id, local folder or embedded:SmolLM2-135M-Instruct.")
    parser.add_argument("--dataset", default=None, help="gsm8k, math12k, math-rl-16k, orz-57k, arithmetic, a path.")
    parser.add_argument("--method", default="grpo-lambda", choices=METHODS)
    parser.add_argument("--lambda", dest="trace_lambda", default=None, help="GRPO-λ's λ, e.g. 0.99.")
    parser.add_argument("--style", default=None, choices=STYLES)
    parser.add_argument("--update", default=None, choices=UPDATES, help="trace (ε-trace) or weight (ε-weight).")
    parser.add_argument("--accelerate", default="auto", choices=ACCELERATE_CONFIGS)
    parser.add_argument("--vllm-mode", default=None, choices=("colocate", "server"))
    parser.add_argument("--args", default="", help="Extra trainer flags, e.g. '--learning_rate 2e-6'.")
    parser.add_argument("--num-machines", type=int, default=1, help="Training nodes of a multi-node run.")
    parser.add_argument("--machine-rank", type=int, default=None, help="This node's rank (default: SLURM_PROCID).")
    parser.add_argument("--main-process-ip", default=None, help="Address of the rank-0 training node.")
    parser.add_argument("--main-process-port", type=int, default=29500)
    parser.add_argument("--dry-run", action="store_true", help="Print the recipe and the command; run nothing.")
    args = parser.parse_args(argv)
    root = repo_root()
    command, note = build_command(args, root)
    recipe = command[command.index("--config") + 1]
    print(f"recipe: {os.path.relpath(recipe, root)}  ({note})")
    print("command: " + shlex.join(command), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(command, cwd=root)


if __name__ == "__main__":
    sys.exit(main())
