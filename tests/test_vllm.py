"""vLLM generation inside training on the CPU (grpo_lambda.testbench.vllm_cpu): colocated engine, a server that is not
up, and the TRL hooks the adaptation relies on. The 2-process and server runs are in test_distributed.py."""

import inspect
import json
import math
import os
import subprocess
import sys

import pytest

from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.jobs.launch import free_port
from run_observed import (
    LOGP_DIFFERENCE,
    REPO_ROOT,
    SYNCED_LOGP_DIFFERENCE,
    TINY_RUN,
    check_run,
    observed_command,
    run,
    step_records,
    sums_dataset,
)


@pytest.mark.slow
def test_colocated_vllm_gets_the_weights_after_each_update(tiny_model_dir, tmp_path):
    """One process, vLLM in it: before each generation the trainer's weights reach the engine (TRL's logp
    difference ~2e-7 in float32); with the sync skipped once (step 1) the next step's generation exceeds the bound."""
    output_dir, steps = tmp_path / "run", 3
    run(
        observed_command(
            *TINY_RUN,
            "--model_name_or_path",
            str(tiny_model_dir),
            "--dataset_name",
            str(sums_dataset(tmp_path, tiny_model_dir)),
            "--use_vllm",
            "true",
            "--vllm_mode",
            "colocate",
            "--vllm_max_model_length",
            "64",
            "--per_device_train_batch_size",
            "8",
            "--max_steps",
            str(steps),
            "--save_steps",
            str(steps),
            "--output_dir",
            str(output_dir),
            "--skip_vllm_sync_at_step",
            "1",
        )
    )
    check_run(output_dir, tiny_model_dir, steps, processes=1)
    differences = [r[LOGP_DIFFERENCE] for r in step_records(output_dir)]
    assert differences[0] < SYNCED_LOGP_DIFFERENCE and differences[2] < SYNCED_LOGP_DIFFERENCE, differences
    assert differences[1] > 10 * SYNCED_LOGP_DIFFERENCE, differences


@pytest.mark.slow
def test_make_train_with_vllm_colocated_on_embedded_smollm2(tmp_path):
    """`make train VLLM_MODE=colocate`, the README's first command with vLLM: GRPO-λ's default recipe on the
    embedded SmolLM2-135M in float32, generating with vLLM in float32 (vLLM's "auto" would be bfloat16: a
    difference of ~0.02 from the first step), and vLLM gets the weights of every update."""
    output_dir = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpo_lambda.jobs.launch",
            "--vllm-mode",
            "colocate",
            "--args",
            f"--vllm_max_model_length 256 --max_steps 2 --save_steps 2 --max_completion_length 32 --learning_rate 1e-4 "
            f"--output_dir {output_dir}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "GRPO_LAMBDA_CACHE": os.environ.get("GRPO_LAMBDA_CACHE", str(tmp_path / "cache"))},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "recipe: recipes/default/grpo/config_arithmetic_eps_trace-both-0.99.yaml" in result.stdout
    assert (output_dir / "checkpoint-2").is_dir()
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    differences = [r[LOGP_DIFFERENCE] for r in records if LOGP_DIFFERENCE in r]
    assert len(differences) == 2 and max(differences) < SYNCED_LOGP_DIFFERENCE, differences
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    assert any("trace/credit_weight_mean" in r for r in records)


@pytest.mark.slow
def test_training_without_its_vllm_server_stops_with_one_line_naming_it(tiny_model_dir, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpo_lambda.grpo",
            *TINY_RUN[:2],
            "--model_name_or_path",
            str(tiny_model_dir),
            "--use_cpu",
            "true",
            "--use_vllm",
            "true",
            "--vllm_mode",
            "server",
            "--vllm_server_base_url",
            url,
            "--vllm_server_timeout",
            "3",
            "--output_dir",
            str(tmp_path / "out"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"grpo_lambda: no vLLM server answered at {url}/health within 3 s"), last
    assert "Traceback" not in result.stderr


def test_the_trl_methods_the_cpu_adaptation_hooks_exist(monkeypatch):
    from trl.generation.vllm_generation import VLLMGeneration

    from grpo_lambda.testbench import vllm_cpu as cpu_test_bench

    cpu_test_bench.check_trl_hooks()  # the installed TRL (1.16.0) has them all
    for (module, owner, method), parameters in cpu_test_bench.TRL_HOOKS.items():
        assert tuple(inspect.signature(getattr(sys.modules[module].__dict__[owner], method)).parameters) == parameters

    def sync_weights(self, model):  # a TRL that changed the signature
        pass

    monkeypatch.setattr(VLLMGeneration, "sync_weights", sync_weights)
    with pytest.raises(
        GRPOLambdaError, match=r"hooks TRL's VLLMGeneration\.sync_weights\(self\), .* install trl==1\.16\.0"
    ):
        cpu_test_bench.check_trl_hooks()


@pytest.mark.slow
def test_make_train_vllm_server_dry_run_shows_the_server_and_the_trainers_pointed_at_it(tiny_model_dir):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpo_lambda.jobs.launch",
            "--model",
            str(tiny_model_dir),
            "--vllm-mode",
            "server",
            "--dry-run",
            "--args",
            "--vllm_max_model_length 64",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    server = next(line for line in result.stdout.splitlines() if line.startswith("vLLM server: "))
    command = next(line for line in result.stdout.splitlines() if line.startswith("command: "))
    port = server.split("--port ")[1].split()[0]
    assert f"--model {tiny_model_dir}" in server and "--dtype float32 " in server  # the recipe's dtype
    assert command.endswith("/recipe.yaml")  # the ranks read the recorded settings, which point them at the server
    assert "use_vllm: true\nvllm_mode: server\n" in result.stdout and f"vllm_server_port: {port}\n" in result.stdout
