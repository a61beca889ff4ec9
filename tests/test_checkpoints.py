"""A checkpoint is complete or absent: a save interrupted (a kill, a full disk) leaves the previous checkpoints intact,
and a resume takes the newest complete one, removing what the interrupted save left."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
from trl import SFTConfig

from conftest import REPO_ROOT
from grpo_lambda import metrics_log
from grpo_lambda.callbacks import JsonlMetricsCallback
from grpo_lambda.checkpoints import checkpoint_to_resume
from grpo_lambda.configs import GRPOLambdaConfig
from grpo_lambda.data import arithmetic_dataset, solution_dataset, to_prompts
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.sft import FormatSFTTrainer
from grpo_lambda.trainer import GRPOLambdaTrainer, check_trl_seam
from test_end_to_end import digit_share_reward

# What transformers writes into a checkpoint of a one-process run (model, optimizer, scheduler, RNG, trainer state):
# the test's own notion of complete, independent of the one under test.
CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")


def fully_written(folder) -> bool:
    return all((folder / name).is_file() for name in CHECKPOINT_FILES)


def write_checkpoint(folder, step: int | None) -> None:
    """A checkpoint folder as a save leaves it: with its trainer state (complete), or interrupted before it."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"weight": torch.ones(64)}, str(folder / "model.safetensors"))
    (folder / "optimizer.pt").write_bytes(b"optimizer state")
    if step is not None:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_a_checkpoint_is_complete_by_its_files(tmp_path, caplog):
    """Issue 34: a checkpoint whose model file was truncated, or whose optimizer state was gone, was resumed from (a
    traceback, or silently a fresh optimizer). Its files are now checked, not only trainer_state.json."""
    write_checkpoint(tmp_path / "checkpoint-2", step=2)
    write_checkpoint(tmp_path / "checkpoint-4", step=4)
    write_checkpoint(tmp_path / "checkpoint-6", step=6)
    weights = tmp_path / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # cut mid-write
    (tmp_path / "checkpoint-4" / "optimizer.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="grpo_lambda.checkpoints"):
        assert checkpoint_to_resume(resume_args(tmp_path)) == str(tmp_path / "checkpoint-2")
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "checkpoint-6 is incomplete (model.safetensors cut short)" in warned
    assert "checkpoint-4 is incomplete (no optimizer state)" in warned


def resume_args(output_dir, resume_from_checkpoint=None, should_save: bool = True) -> SimpleNamespace:
    """The training arguments checkpoint_to_resume reads (`should_save`: the process that saves, one per run)."""
    return SimpleNamespace(
        output_dir=str(output_dir), resume_from_checkpoint=resume_from_checkpoint, should_save=should_save
    )


def test_resume_takes_the_newest_complete_checkpoint_and_removes_interrupted_saves(tmp_path, caplog):
    """Before, transformers' get_last_checkpoint picked the newest folder (here checkpoint-10, empty), and the run
    stopped on its missing trainer_state.json."""
    write_checkpoint(tmp_path / "checkpoint-2", step=2)
    write_checkpoint(tmp_path / "checkpoint-4", step=None)  # killed mid-save, before its trainer state
    write_checkpoint(tmp_path / ".checkpoint-6.partial" / "checkpoint-6", step=6)  # killed before the rename
    (tmp_path / "checkpoint-10").mkdir()  # killed as it began
    with caplog.at_level(logging.WARNING, logger="grpo_lambda.checkpoints"):
        assert checkpoint_to_resume(resume_args(tmp_path)) == str(tmp_path / "checkpoint-2")
    warned = [record.getMessage() for record in caplog.records]
    for name in ("checkpoint-10", "checkpoint-4", ".checkpoint-6.partial"):
        assert sum(name in line for line in warned) == 1, warned
    assert all("\n" not in line for line in warned)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]  # rotation and later saves never see them

    # another process (not the one that saves) picks the same checkpoint and removes nothing
    write_checkpoint(tmp_path / "checkpoint-4", step=None)
    assert checkpoint_to_resume(resume_args(tmp_path, should_save=False)) == str(tmp_path / "checkpoint-2")
    assert (tmp_path / "checkpoint-4").is_dir()


def test_nothing_complete_starts_from_scratch(tmp_path):
    write_checkpoint(tmp_path / "checkpoint-1", step=None)
    assert checkpoint_to_resume(resume_args(tmp_path)) is None
    assert not (tmp_path / "checkpoint-1").exists()
    assert checkpoint_to_resume(resume_args(tmp_path / "absent")) is None


def test_an_incomplete_checkpoint_named_explicitly_is_refused(tmp_path):
    write_checkpoint(tmp_path / "checkpoint-4", step=None)
    with pytest.raises(GRPOLambdaError, match="checkpoint-4 is not a complete checkpoint") as raised:
        checkpoint_to_resume(resume_args(tmp_path, resume_from_checkpoint=str(tmp_path / "checkpoint-4")))
    assert "\n" not in str(raised.value)
    write_checkpoint(tmp_path / "checkpoint-2", step=2)
    chosen = checkpoint_to_resume(resume_args(tmp_path, resume_from_checkpoint=str(tmp_path / "checkpoint-2")))
    assert chosen == str(tmp_path / "checkpoint-2")
    assert (tmp_path / "checkpoint-4").is_dir()  # an explicit choice removes nothing


def test_a_torn_trainer_state_is_an_incomplete_checkpoint(tmp_path):
    """A trainer state torn by a kill mid-write (transformers writes it in place) is an incomplete checkpoint: before,
    reading it raised a JSONDecodeError."""
    write_checkpoint(tmp_path / "checkpoint-4", step=4)
    assert checkpoint_to_resume(resume_args(tmp_path)) == str(tmp_path / "checkpoint-4")
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4, "log_hi')
    assert checkpoint_to_resume(resume_args(tmp_path)) is None


def test_the_transformers_seam_is_checked_at_start_up(monkeypatch):
    """The mixin redirects the folder transformers' save writes to through `Trainer._get_output_dir`; if that hook
    changed, checkpoints would silently be written in place again."""
    check_trl_seam()
    monkeypatch.setattr(Trainer, "_get_output_dir", lambda self: "elsewhere")
    with pytest.raises(ImportError, match=r"Trainer._get_output_dir is not _get_output_dir\(self, trial, …\)"):
        check_trl_seam()


def grpo_trainer(model_dir, output_dir, max_steps: int) -> GRPOLambdaTrainer:
    args = GRPOLambdaConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=max_steps,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=1,
        save_total_limit=1,
        use_cpu=True,
        bf16=False,
        report_to="none",
        seed=0,
    )
    return GRPOLambdaTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        reward_funcs=digit_share_reward,
        args=args,
        train_dataset=to_prompts(arithmetic_dataset(16, 0), "no"),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        callbacks=[JsonlMetricsCallback(output_dir / "metrics.jsonl")],
    )


def sft_trainer(model_dir, output_dir, max_steps: int) -> FormatSFTTrainer:
    args = SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        max_length=64,
        max_steps=max_steps,
        logging_steps=1,
        save_steps=1,
        save_total_limit=1,
        use_cpu=True,
        bf16=False,
        report_to="none",
        seed=0,
    )
    return FormatSFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=args,
        train_dataset=solution_dataset("arithmetic", "no", train_size=8, test_size=0, seed=0, level="one_step"),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        callbacks=[JsonlMetricsCallback(output_dir / "metrics.jsonl")],
    )


@pytest.mark.parametrize("make_trainer", [grpo_trainer, sft_trainer], ids=["grpo", "sft"])
def test_a_save_failing_midway_leaves_the_previous_checkpoint(tiny_model_dir, tmp_path, monkeypatch, make_trainer):
    """A full disk at step 2's save, after the model and optimizer are written: before, a checkpoint-2 without its
    trainer state was left where the next run resumed from. Then the run resumes from checkpoint-1 and finishes."""
    output_dir = tmp_path / "run"
    save_rng_state = Trainer._save_rng_state

    def disk_full_at_step_2(self, folder):
        if self.state.global_step == 2:
            raise OSError(errno.ENOSPC, "No space left on device", folder)
        save_rng_state(self, folder)

    monkeypatch.setattr(Trainer, "_save_rng_state", disk_full_at_step_2)
    with pytest.raises(OSError, match="No space left"):
        make_trainer(tiny_model_dir, output_dir, max_steps=3).train()
    assert fully_written(output_dir / "checkpoint-1")
    assert not (output_dir / "checkpoint-2").exists()
    resume = checkpoint_to_resume(resume_args(output_dir))
    assert resume == str(output_dir / "checkpoint-1")
    assert not (output_dir / ".checkpoint-2.partial").exists()

    monkeypatch.undo()
    make_trainer(tiny_model_dir, output_dir, max_steps=3).train(resume_from_checkpoint=resume)
    checkpoints = sorted(p.name for p in output_dir.iterdir() if "checkpoint" in p.name)
    assert checkpoints == ["checkpoint-3"] and fully_written(output_dir / "checkpoint-3")  # save_total_limit=1
    steps = [record["step"] for record in metrics_log.read(output_dir / "metrics.jsonl") if "loss" in record]
    assert steps == [1, 2, 3]  # step 2, logged before its save failed, once


# --- a real run killed (SIGKILL) at seeded-random moments of its checkpoint saves, then rerun to the end ---

# Run in the child: the test bench's GRPO entry point, each checkpoint save announced on stdout and slowed by PAUSE
# before each of its parts (model, optimizer and scheduler, RNG state; the trainer state comes last), so that a kill
# drawn in [0, 4 * PAUSE) after an announcement lands inside that save, at one of its parts, or just after it.
SLOW_SAVES = """
import sys, time
from transformers import Trainer
from grpo_lambda.testbench.train import main

PAUSE = float(sys.argv[1])
save_checkpoint = Trainer._save_checkpoint

def announced(self, model, trial):
    print(f"saving {self.state.global_step}", flush=True)
    return save_checkpoint(self, model, trial)

def slowed(method):
    def run(self, *args, **kwargs):
        time.sleep(PAUSE)
        return method(self, *args, **kwargs)
    return run

Trainer._save_checkpoint = announced
for name in ("save_model", "_save_optimizer_and_scheduler", "_save_rng_state"):
    setattr(Trainer, name, slowed(getattr(Trainer, name)))
sys.exit(main(sys.argv[2:]))
"""
PAUSE_S = 0.4
KILLS = 3
MAX_STEPS = 2 * KILLS + 2  # an attempt killed at its 1st or 2nd save gains at most 2 steps: the last one trains on


def newest_fully_written(output_dir):
    complete = [p for p in output_dir.glob("checkpoint-*") if fully_written(p)]
    return max(complete, key=lambda p: int(p.name.split("-")[1]), default=None)


def interrupted_saves(output_dir) -> list:
    """What interrupted saves left: checkpoint folders not fully written, staging folders."""
    return [p for p in output_dir.glob("*checkpoint-*") if not fully_written(p)] if output_dir.is_dir() else []


def train_command(model_dir, output_dir) -> list[str]:
    recipe = REPO_ROOT / "recipes/default/grpo/config_arithmetic_eps_trace-both-0.99.yaml"
    return [
        *("grpo", "--config", str(recipe), "--model_name_or_path", str(model_dir), "--output_dir", str(output_dir)),
        *("--max_steps", str(MAX_STEPS), "--save_steps", "1", "--save_total_limit", "2", "--use_cpu", "true"),
        *("--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "8"),
        *("--learning_rate", "1e-2", "--reward_funcs", "format", "--reward_weights", "1.0"),
    ]


def run_attempt(command, env, cwd, log, kill_at_save: int | None, delay_s: float) -> int:
    """Runs the training command; with `kill_at_save`, SIGKILLs its process group (as a scheduler does) `delay_s`
    after its `kill_at_save`-th save began. Returns the exit status."""
    with log.open("w") as stderr:
        child = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
        )
        try:
            if kill_at_save is not None:
                saves = 0
                while saves < kill_at_save:
                    line = child.stdout.readline()
                    assert line, f"the run ended before its save {kill_at_save}: {log.read_text()[-3000:]}"
                    saves += line.startswith("saving ")
                time.sleep(delay_s)
                os.killpg(child.pid, signal.SIGKILL)
            child.stdout.read()
            return child.wait(timeout=600)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


@pytest.mark.slow
def test_kills_during_checkpoint_saves_lose_no_step(tiny_model_dir, tmp_path):
    """A GRPO run (save_steps=1, save_total_limit=2) is killed 3 times, each at a seeded-random moment of its 1st or
    2nd checkpoint save, then run to max_steps. Each attempt resumes from the newest fully written checkpoint (never
    from what a kill left); the run ends at max_steps with every step logged once. Before, the attempt after a kill
    mid-save resumed from the half-written checkpoint and stopped on its missing trainer_state.json."""
    output_dir = tmp_path / "run"
    log = tmp_path / "stderr.log"
    command = [sys.executable, "-c", SLOW_SAVES, str(PAUSE_S), *train_command(tiny_model_dir, output_dir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    draw = random.Random(0)
    resumed_past_a_kill = 0
    for attempt in range(KILLS + 1):
        expected = newest_fully_written(output_dir) if output_dir.is_dir() else None
        resumed_past_a_kill += expected is not None and bool(interrupted_saves(output_dir))
        killed = attempt < KILLS
        kill_at_save, delay_s = (draw.choice([1, 2]), draw.uniform(0, 4 * PAUSE_S)) if killed else (None, 0.0)
        returncode = run_attempt(command, env, tmp_path, log, kill_at_save, delay_s)
        stderr_text = log.read_text()
        assert returncode == (-signal.SIGKILL if killed else 0), stderr_text[-3000:]
        resumed = [line.split("resuming from ", 1)[1] for line in stderr_text.splitlines() if "resuming from " in line]
        assert resumed == ([] if expected is None else [str(expected)]), stderr_text[-3000:]
    assert resumed_past_a_kill >= 1, "no attempt resumed past an interrupted save: the test tested nothing"
    assert not interrupted_saves(output_dir)
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == MAX_STEPS
    steps = [record["step"] for record in metrics_log.read(output_dir / "metrics.jsonl") if "loss" in record]
    assert steps == list(range(1, MAX_STEPS + 1))
