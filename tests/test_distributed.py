"""GRPO-λ across two CPU processes (gloo), one tiny run per accelerate config, each on a different generation path:

- DDP with transformers `generate`: a rank killed mid-step stops the run with torchrun's error naming it, and the
  rerun (a requeue) resumes from the last checkpoint;
- ZeRO-2 with a vLLM server: equal to the single-process run (one generation request, the same completions);
- ZeRO-3 with vLLM colocated: every rank's engine gets the weights after each update.

Each checks what every run must show (run_observed.check_run): identical parameters on both ranks, finite losses,
each step logged once, the saved model and the checkpoint equal to the trained parameters.
"""

import contextlib
import json
import math
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from grpo_lambda.jobs.launch import free_port, vllm_server_command
from grpo_lambda.processes import Supervisor
from grpo_lambda.vllm_server import wait_for_vllm_server
from run_observed import (
    LOGP_DIFFERENCE,
    REPO_ROOT,
    SYNCED_LOGP_DIFFERENCE,
    TINY_RUN,
    check_run,
    max_difference,
    observed_command,
    run,
    step_records,
    sums_dataset,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_run(tiny_model_dir, tmp_path) -> list[str]:
    return [
        *TINY_RUN,
        "--model_name_or_path",
        str(tiny_model_dir),
        "--dataset_name",
        str(sums_dataset(tmp_path, tiny_model_dir)),
    ]


def logged_steps(metrics: Path) -> int:
    """The last step in a metrics.jsonl being written (a line still being appended is not counted)."""
    steps = [0]
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):
            steps.append(json.loads(line)["step"])
    return max(steps)


def rank_process(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.environ().get("RANK") == str(rank) and "run_observed.py" in " ".join(child.cmdline()):
                return child
    raise AssertionError(f"no process of rank {rank} under the launcher")


def test_ddp_rank_killed_mid_step_stops_the_run_and_the_requeued_run_resumes(tiny_model_dir, tmp_path, tiny_run):
    output_dir = tmp_path / "ddp"
    steps = 6
    command = observed_command(
        *tiny_run,
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        str(steps),
        "--save_steps",
        "2",
        "--output_dir",
        str(output_dir),
        accelerate="ddp",
    )
    launcher = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while logged_steps(output_dir / "metrics.jsonl") < 3:
            assert launcher.poll() is None, launcher.stdout.read()[-5000:]
            time.sleep(0.1)
        rank_process(launcher, 1).kill()  # mid-step 4 (or 5): checkpoint-2 is complete
        killed = time.monotonic()
        output, _ = launcher.communicate(timeout=120)
    finally:  # a failed wait leaves no training behind
        if launcher.poll() is None:
            for process in [*psutil.Process(launcher.pid).children(recursive=True), launcher]:
                with contextlib.suppress(psutil.Error, ProcessLookupError):
                    process.kill()
    assert launcher.returncode != 0 and time.monotonic() - killed < 60
    assert "rank      : 1 (local_rank: 1)" in output and "Signal 9 (SIGKILL)" in output  # torchrun's summary
    assert not (output_dir / "model.safetensors").exists()

    result = run(command)  # the requeued job: same command, same output folder
    assert "resuming from" in result.stderr and f"{output_dir}/checkpoint-" in result.stderr
    check_run(output_dir, tiny_model_dir, steps, processes=2)


def test_zero2_with_a_vllm_server_equals_one_process(tiny_model_dir, tmp_path, tiny_run):
    """The whole server path on the CPU as `make train VLLM_MODE=server` runs it (start, /health wait, generation
    over HTTP, weight sync before each step), shared by a 1-process run (batch 8) and a 2-process ZeRO-2 run (batch
    4 per process). The main process sends both the same request (fixed seed: vLLM seeds completion i with seed +
    i), so the runs see the same completions and, as 2 × 4 equal-length sequences average to the mean of 8, take the
    same steps up to float rounding."""
    steps, port = 3, free_port()
    command, env = vllm_server_command(str(tiny_model_dir), "127.0.0.1", port, "float32", 1, 64, 8)
    url, log = f"http://127.0.0.1:{port}", tmp_path / "vllm-server.log"
    server_flags = [
        "--use_vllm",
        "true",
        "--vllm_mode",
        "server",
        "--vllm_server_base_url",
        url,
        "--generation_kwargs",
        '{"seed": 0}',
        "--max_steps",
        str(steps),
        "--save_steps",
        str(steps),
    ]
    with Supervisor() as supervisor:  # the launcher's own: the server stopped, whatever happens
        wait_for_vllm_server(url, 300, supervisor.start(command, REPO_ROOT, {**os.environ, **env}, log), str(log))
        run(
            observed_command(
                *tiny_run, *server_flags, "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "one")
            )
        )
        run(
            observed_command(
                *tiny_run,
                *server_flags,
                "--per_device_train_batch_size",
                "4",
                "--output_dir",
                str(tmp_path / "two"),
                accelerate="zero2",
            )
        )
    one = check_run(tmp_path / "one", tiny_model_dir, steps, processes=1)
    two = check_run(tmp_path / "two", tiny_model_dir, steps, processes=2)
    for a, b in zip(step_records(tmp_path / "one"), step_records(tmp_path / "two")):
        assert a["reward"] == b["reward"] and a["completions/mean_length"] == b["completions/mean_length"]
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4, abs_tol=1e-6)
        assert a[LOGP_DIFFERENCE] < SYNCED_LOGP_DIFFERENCE and b[LOGP_DIFFERENCE] < SYNCED_LOGP_DIFFERENCE
    assert max_difference(one, two) < 1e-4
    assert log.read_text().count("POST /collective_rpc") >= 2 * steps  # weights reached the server each step


def test_zero3_with_vllm_colocated_syncs_every_rank_after_each_update(tiny_model_dir, tmp_path, tiny_run):
    """Each rank's engine gets the gathered ZeRO-3 weights before each generation; the sync skipped at step 1
    shows that the logp-difference bound detects a missed one."""
    output_dir, steps = tmp_path / "zero3", 3
    run(
        observed_command(
            *tiny_run,
            "--use_vllm",
            "true",
            "--vllm_mode",
            "colocate",
            "--vllm_max_model_length",
            "64",
            "--per_device_train_batch_size",
            "4",
            "--max_steps",
            str(steps),
            "--save_steps",
            str(steps),
            "--output_dir",
            str(output_dir),
            "--skip_vllm_sync_at_step",
            "1",
            accelerate="zero3",
        )
    )
    check_run(output_dir, tiny_model_dir, steps, processes=2)
    differences = [r[LOGP_DIFFERENCE] for r in step_records(output_dir)]
    assert differences[0] < SYNCED_LOGP_DIFFERENCE and differences[2] < SYNCED_LOGP_DIFFERENCE, differences
    assert differences[1] > 10 * SYNCED_LOGP_DIFFERENCE, differences  # step 2 generated with step 1's weights
