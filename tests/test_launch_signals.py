"""Nothing outlives `make train`: a SIGTERM to the launcher (a scheduler, a closed terminal), or the death of its
parent (make killed), saves a checkpoint at the end of the current step and stops every process it started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from grpo_lambda.preemption import EXIT_PREEMPTED
from grpo_lambda.processes import KILL_GRACE_S, STEP_GRACE_S, descendants

STARTUP_S = 600  # accelerate, the trainer's imports and the first step on a loaded 2-core machine


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (so that a reused pid is not taken for a survivor), None once it is gone
    or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def _command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _training(tiny_model_dir: Path, output_dir: Path) -> list[str]:
    flags = (
        f"--max_steps 100000 --save_steps 100000 --logging_steps 1 --num_generations 2 --per_device_train_batch_size 2 "
        f"--max_completion_length 8 --report_to none --output_dir {output_dir}"
    )
    return [
        sys.executable,
        "-m",
        "grpo_lambda.jobs.launch",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "arithmetic",
        "--accelerate",
        "cpu",
        "--args",
        flags,
    ]


def _wait_for_training(process: subprocess.Popen, output_dir: Path, log: Path) -> None:
    """Until a step has been logged (the ranks, their grading workers and the training loop all running)."""
    deadline = time.monotonic() + STARTUP_S
    metrics = output_dir / "metrics.jsonl"
    while not (metrics.is_file() and any("loss" in json.loads(line) for line in metrics.read_text().splitlines())):
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "parent_killed"])
def test_a_stopped_launcher_checkpoints_and_leaves_no_process(tiny_model_dir, tmp_path, how):
    """Before, SIGTERM ended the launcher alone: accelerate, the trainer and its grading workers trained on.
    `parent_killed`: the launcher's parent (make, here a shell) gets SIGKILL, which it cannot forward."""
    output_dir, log = tmp_path / "run", tmp_path / "launch.log"
    command = _training(tiny_model_dir, output_dir)
    if how == "parent_killed":
        command = ["bash", "-c", '"$@"; true', "make", *command]  # `; true`: bash waits as the parent, as make does
    with log.open("w") as stream:
        top = subprocess.Popen(command, cwd=REPO_ROOT, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)
    tree: dict[int, str | None] = {}
    try:
        _wait_for_training(top, output_dir, log)
        tree = {pid: _start_time(pid) for pid in descendants(top.pid)}
        launcher = top.pid if how == "sigterm" else next(p for p in tree if b"jobs.launch" in _command_line(p))
        assert len(tree) >= 3, tree  # (bash,) launcher, accelerate, the trainer, its grading workers
        os.kill(top.pid, signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        status = top.wait(timeout=STARTUP_S)
        deadline = time.monotonic() + STEP_GRACE_S + 2 * KILL_GRACE_S
        while _start_time(launcher) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        survivors = [pid for pid, started in tree.items() if started is not None and _start_time(pid) == started]
        assert not survivors, (survivors, log.read_text()[-3000:])
        checkpoints = sorted(output_dir.glob("checkpoint-*"))
        assert checkpoints, log.read_text()[-3000:]  # saved at the end of the step under way
        if how == "sigterm":
            assert status == EXIT_PREEMPTED, log.read_text()[-3000:]
            assert "the same command resumes" in log.read_text().splitlines()[-1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(top.pid, signal.SIGKILL)
        for pid, started in tree.items():
            if started is not None and _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _stop_and_check(top: subprocess.Popen, log: Path, signum: int = signal.SIGTERM) -> tuple[int, dict]:
    """Signals `top`, waits for it, and checks that nothing of its tree outlives it."""
    tree = {pid: _start_time(pid) for pid in descendants(top.pid)}
    os.kill(top.pid, signum)
    status = top.wait(timeout=STEP_GRACE_S + 3 * KILL_GRACE_S)
    deadline = time.monotonic() + 2 * KILL_GRACE_S
    survivors = [pid for pid, started in tree.items() if started is not None and _start_time(pid) == started]
    while survivors and time.monotonic() < deadline:
        time.sleep(0.5)
        survivors = [pid for pid, started in tree.items() if started is not None and _start_time(pid) == started]
    assert not survivors, (survivors, log.read_text()[-3000:])
    return status, tree


@pytest.mark.slow
def test_a_sweep_task_stopped_by_sigterm_checkpoints_and_leaves_no_process(tmp_path):
    """The sweep runner's tree (runner → launcher → accelerate → trainer → grading workers), outside SLURM: SIGTERM
    (or SLURM's SIGUSR1) reaches the training through the same supervisor as `make train`."""
    import yaml

    spec = yaml.safe_load((REPO_ROOT / "recipes/sweeps/tiny-cpu.yaml").read_text())
    del spec["runs"]["sft"]  # the RL task alone (tests/test_slurm.py runs the pipeline)
    spec["runs"]["variants"] = {"grpo": {"loss_variant": "grpo"}}
    spec["runs"]["settings"].update(max_steps=100000, save_steps=100000)
    sweep, output, log = tmp_path / "sweep.yaml", tmp_path / "out", tmp_path / "task.log"
    sweep.write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "grpo_lambda.jobs.sweep", "run", str(sweep), "--index", "0"]
    with log.open("w") as stream:
        top = subprocess.Popen(
            [*command, "--output_dir", str(output)],
            cwd=REPO_ROOT,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run_dir = output / "tiny-qwen2/grpo/arithmetic_grpo"
    try:
        _wait_for_training(top, run_dir, log)
        status, tree = _stop_and_check(top, log)
        assert len(tree) >= 4, tree  # launcher, accelerate, the trainer, its grading workers
        assert status == EXIT_PREEMPTED and list(run_dir.glob("checkpoint-*")), log.read_text()[-3000:]
        events = [json.loads(line)["event"] for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
        assert events == ["start", "preempted"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(top.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_launcher_stopped_while_its_vllm_server_starts_leaves_no_process(tiny_model_dir, tmp_path):
    """`make train VLLM_MODE=server`: a SIGTERM while the launcher waits for its server stops the server's tree."""
    output_dir, log = tmp_path / "run", tmp_path / "launch.log"
    command = _training(tiny_model_dir, output_dir) + ["--vllm-mode", "server"]
    with log.open("w") as stream:
        top = subprocess.Popen(command, cwd=REPO_ROOT, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_S
        while "vLLM server: starting" not in log.read_text() or len(descendants(top.pid)) < 1:
            assert top.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        status, tree = _stop_and_check(top, log)
        assert tree and status != 0 and "nothing to save" in log.read_text(), log.read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(top.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_sigkilled_command_leaves_no_trainer_running_on_and_no_second_one_in_its_folder(tiny_model_dir, tmp_path):
    """Issue 34: SIGKILL to make's process group left the trainer (its own group, re-parented to init) training on,
    and an immediate rerun ran a second trainer in the same folder (steps logged twice). Now the training's tree ends
    with its command (parent-death signal: it checkpoints the step under way and stops) and holds the folder's lock
    until it has: a rerun meanwhile stops in one line, a later one resumes with every step logged once. The
    checkpoint is slowed (as a large model's is) so that the rerun comes while the tree still saves."""
    from test_preemption import SLOW_SAVES

    output_dir, log, site = tmp_path / "run", tmp_path / "launch.log", tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_SAVES)
    pythonpath = os.pathsep.join([str(site), str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath, "SLOW_SAVE_S": "60"}
    command = _training(tiny_model_dir, output_dir)
    with log.open("w") as stream:
        top = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for_training(top, output_dir, log)
        tree = {pid: _start_time(pid) for pid in descendants(top.pid)}
        os.killpg(top.pid, signal.SIGKILL)  # make's group: make and the launcher, not the training's own group
        top.wait()
        again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=STARTUP_S)
        assert again.returncode == 1 and "is in use by another training" in again.stderr.splitlines()[-1], again.stderr
        deadline = time.monotonic() + STEP_GRACE_S
        while any(_start_time(p) == s for p, s in tree.items() if s) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [p for p, s in tree.items() if s and _start_time(p) == s], log.read_text()[-3000:]
        assert list(output_dir.glob("checkpoint-*")), log.read_text()[-3000:]  # saved on its parent's death
        records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [record["step"] for record in records if "loss" in record]
        assert steps == list(range(1, len(steps) + 1)), steps  # one trainer wrote
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(top.pid, signal.SIGKILL)
