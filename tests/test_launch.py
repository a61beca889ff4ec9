"""The command `make train` / `make sft` builds: processes (N on a CPU with --use_cpu, one per GPU), mixed precision
from the recipe, a port per SLURM job, a clear stop where torch cannot use the GPUs, and the method's field names."""

from __future__ import annotations

import dataclasses
import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.jobs import launch

DEFAULT_GRPO = REPO_ROOT / "recipes/default/grpo/config_arithmetic_eps_trace-both-0.99.yaml"
PAPER_RECIPE = REPO_ROOT / "recipes/Qwen2.5-Math-1.5B-Instruct/grpo/config_gsm8k_eps_trace-both-0.99.yaml"


def command(*argv: str) -> list[str]:
    return launch.build_command(launch.parser().parse_args(list(argv)), REPO_ROOT)[0]


def accelerate_part(cmd: list[str]) -> list[str]:
    return cmd[: cmd.index("-m", 2)]


def trainer_part(cmd: list[str]) -> list[str]:
    return cmd[cmd.index("-m", 2) :]


def value(cmd: list[str], flag: str) -> str:
    return cmd[len(cmd) - 1 - cmd[::-1].index(flag) + 1]


@pytest.fixture
def gpus(monkeypatch):
    """Pretend the machine has this many usable GPUs."""

    def set_count(count: int):
        monkeypatch.setattr(launch, "usable_gpus", lambda: count)

    return set_count


@pytest.mark.parametrize("accel", ["ddp", "zero2", "zero3"])
def test_several_cpu_processes_train_one_model_with_use_cpu(gpus, accel):
    """Without a GPU, NPROC=2 runs 2 processes; the trainer gets --use_cpu true, without which DDP on a CPU trains
    independent models and ZeRO-2 rejects the batch size (train_batch_size != micro batch × accumulation × world)."""
    gpus(0)
    cmd = command("--accelerate", accel, "--num-processes", "2")
    assert value(cmd, "--config_file").endswith(f"recipes/accelerate_configs/{accel}.yaml")
    assert value(accelerate_part(cmd), "--num_processes") == "2"
    assert value(trainer_part(cmd), "--use_cpu") == "true"
    assert value(accelerate_part(cmd), "--mixed_precision") == "no"  # the default recipe: bf16 false
    assert 0 < int(value(accelerate_part(cmd), "--main_process_port")) < 65536


def test_cpu_defaults_and_limits(gpus):
    gpus(0)
    cmd = command()  # ACCEL=auto without a GPU: the one-process CPU config
    assert value(cmd, "--config_file").endswith("cpu.yaml") and "--num_processes" not in cmd
    assert value(trainer_part(cmd), "--use_cpu") == "true"
    # the CPU test bench, switched on by the launcher; a module that exists
    assert trainer_part(cmd)[1:3] == ["grpo_lambda.testbench.train", "grpo"]
    assert importlib.util.find_spec(trainer_part(cmd)[1]) is not None
    assert value(accelerate_part(command("--accelerate", "ddp")), "--num_processes") == "1"
    with pytest.raises(GRPOLambdaError, match="ACCEL=cpu is one process"):
        command("--accelerate", "cpu", "--num-processes", "2")


def test_one_process_per_gpu(gpus):
    gpus(4)
    cmd = command("--model", "Qwen/Qwen2.5-Math-1.5B-Instruct", "--dataset", "gsm8k")
    assert value(cmd, "--config_file").endswith("zero2.yaml")
    assert value(accelerate_part(cmd), "--num_processes") == "4"
    assert value(accelerate_part(cmd), "--mixed_precision") == "bf16" and "--use_cpu" not in cmd
    assert trainer_part(cmd)[1] == "grpo_lambda.grpo"  # a Hub model on GPUs: the core entry point, no test bench
    # the default recipe's embedded: model
    assert trainer_part(command())[1:3] == ["grpo_lambda.testbench.train", "grpo"]
    assert value(accelerate_part(command("--num-processes", "2")), "--num_processes") == "2"
    with pytest.raises(GRPOLambdaError, match="NPROC=8, but this machine has 4 usable GPU"):
        command("--num-processes", "8")


@pytest.mark.parametrize(
    ("recipe", "args", "expected"),
    [
        (PAPER_RECIPE, "", "bf16"),
        (DEFAULT_GRPO, "", "no"),
        (PAPER_RECIPE, "--bf16 false", "no"),
        (PAPER_RECIPE, "--bf16=false --fp16", "fp16"),
        (DEFAULT_GRPO, "--learning_rate 1e-5 --bf16 true", "bf16"),
    ],
)
def test_mixed_precision_follows_the_recipe(recipe, args, expected):
    """zero2.yaml / zero3.yaml / ddp.yaml say bf16; a recipe with bf16 off must not run under them as is (transformers
    stops: 'ds bf16.enabled=True vs hf bf16|bf16_full_eval=False')."""
    assert launch.mixed_precision(recipe, args.split()) == expected


def test_port_per_slurm_job(monkeypatch):
    """Two array tasks on one node get different ports; every node of one job computes the same port."""
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    assert launch.main_process_port(None) == launch.main_process_port(None, multi_machine=True) == 23456
    monkeypatch.setenv("SLURM_JOB_ID", "123457")
    assert launch.main_process_port(None) == 23457
    assert launch.main_process_port(31000) == 31000
    monkeypatch.delenv("SLURM_JOB_ID")
    assert launch.main_process_port(None, multi_machine=True) == 29500
    port = launch.main_process_port(None)
    with socket.socket() as sock:
        sock.bind(("", port))  # free


def test_gpus_torch_cannot_use_stop_with_one_line(monkeypatch):
    """A driver too old for torch's CUDA: device_count sees the GPUs, is_available is False; every rank would fail."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(GRPOLambdaError, match=r"4 NVIDIA GPU\(s\) but torch .*driver >= 580") as raised:
        launch.usable_gpus()
    assert "\n" not in str(raised.value)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(GRPOLambdaError, match="CPU build: reinstall the GPU stack"):
        launch.usable_gpus()
    with pytest.raises(GRPOLambdaError, match="CPU build"):  # ACCEL=auto must not quietly train on the CPU
        command("--dry-run")
    assert value(command("--accelerate", "cpu"), "--config_file").endswith("cpu.yaml")  # asked for: allowed
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(launch, "_nvidia_smi_gpus", lambda: 0)
    assert launch.usable_gpus() == 0


def test_a_slurm_gpu_job_that_sees_no_gpu_stops_instead_of_training_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(launch, "_nvidia_smi_gpus", lambda: 0)
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "0")  # a CPU job of the tiny sweep: the CPU is what it asked for
    assert launch.usable_gpus() == 0
    monkeypatch.setenv("SLURM_JOB_GPUS", "0,1")
    with pytest.raises(GRPOLambdaError, match=r"SLURM gave this job GPUs \(0,1\) but neither torch nor nvidia-smi"):
        command("--dry-run")
    assert value(command("--accelerate", "cpu"), "--config_file").endswith("cpu.yaml")  # asked for: allowed


def test_a_method_is_selected_by_the_configs_field_names_only():
    for flag, given in (("--method", "grpo-lambda"), ("--lambda", "0.99"), ("--style", "both"), ("--update", "trace")):
        with pytest.raises(SystemExit):  # argparse: unrecognized arguments
            launch.parser().parse_args([flag, given])
    weight = command(
        "--model",
        "Qwen/Qwen2.5-Math-1.5B-Instruct",
        "--dataset",
        "math12k",
        "--loss_variant",
        "eps_weight",
        "--trace_style",
        "recent",
        "--trace_lambda",
        "0.98",
    )
    assert value(weight, "--config").endswith("config_math12k_eps_weight-recent-0.98.yaml")


def test_choices_and_defaults_are_the_configs():
    """The launcher plans runs from methods.py's values and defaults (no TRL import); the config uses the same."""
    from typing import get_args, get_type_hints

    from grpo_lambda.configs import GRPOLambdaConfig
    from grpo_lambda.methods import CONFIG_DEFAULTS, LOSS_VARIANTS, TRACE_STYLES

    hints = get_type_hints(GRPOLambdaConfig)
    assert get_args(hints["loss_variant"]) == LOSS_VARIANTS and get_args(hints["trace_style"]) == TRACE_STYLES
    defaults = {f.name: f.default for f in dataclasses.fields(GRPOLambdaConfig) if f.name in CONFIG_DEFAULTS}
    assert defaults == CONFIG_DEFAULTS
    with pytest.raises(SystemExit):  # argparse's own choice check
        launch.parser().parse_args(["--loss_variant", "eps_magic"])
    with pytest.raises(GRPOLambdaError, match="not to grpo"):
        command("--loss_variant", "grpo", "--trace_lambda", "0.9")


def test_make_passes_the_config_field_variables():
    """`make train` spells a method with the config's field names; no Python runs (-n), nothing is installed (-o)."""
    result = subprocess.run(
        [
            "make",
            "-n",
            "-o",
            "install",
            f"VENV={Path(sys.executable).parents[1]}",
            "train",
            "MODEL=m",
            "DATASET=d",
            "LOSS_VARIANT=eps_weight",
            "TRACE_STYLE=recent",
            "TRACE_LAMBDA=0.98",
            "ACCEL=ddp",
            "NPROC=2",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    line = " ".join(result.stdout.split())
    assert "--loss_variant eps_weight --trace_style recent --trace_lambda 0.98" in line
    assert "--accelerate ddp --num-processes 2" in line and "--method" not in line


def test_planning_a_run_does_not_import_trl():
    """`make train` / `make sweep` plan from methods.py's values: no TRL (and vLLM) import, ~15 s on a login node."""
    code = (
        "import sys; from pathlib import Path; from grpo_lambda.jobs import launch, sweep; launch.parser(); "
        "launch.recipe_method({'loss_variant': 'grpo'}); sweep.load_sweep('tiny-cpu', Path('.').resolve()); "
        "print('trl' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert result.stdout.strip() == "False", result.stdout + result.stderr
