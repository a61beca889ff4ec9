"""Checkpoints on a stop request and by wall time (grpo_lambda.callbacks.PreemptionCallback), on real tiny trainings:
a SIGTERM while training saves the current step and stops, copies of it during the save are ignored, a SIGTERM before
training ends the process, and `save_minutes` saves at least that often."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from conftest import REPO_ROOT
from grpo_lambda import metrics_log
from grpo_lambda.callbacks import EXIT_PREEMPTED, STOP_FILE, PreemptionCallback
from grpo_lambda.checkpoints import checkpoint_state
from grpo_lambda.configs import GRPOLambdaConfig
from grpo_lambda.data import arithmetic_dataset, to_prompts
from grpo_lambda.processes import KILL_GRACE_S, STEP_GRACE_S, descendants
from grpo_lambda.trainer import GRPOLambdaTrainer


def length_reward(completions, **kwargs):
    return [float(len(str(completion))) for completion in completions]


def tiny_run(model_dir, output_dir, callbacks, max_steps: int, save_total_limit: int | None = None):
    args = GRPOLambdaConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=4,
        max_steps=max_steps,
        logging_steps=1,
        save_steps=10_000,  # only the callback saves
        save_total_limit=save_total_limit,
        use_cpu=True,
        bf16=False,
        report_to="none",
        seed=0,
    )
    return GRPOLambdaTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        reward_funcs=length_reward,
        args=args,
        train_dataset=to_prompts(arithmetic_dataset(16, 0), "no"),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        callbacks=callbacks,
    )


@pytest.fixture
def own_signal_handlers():
    """The callback installs process-wide handlers: the test process gets its own back."""
    previous = {signum: signal.getsignal(signum) for signum in PreemptionCallback.SIGNALS}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


class Timeline(TrainerCallback):
    """When training began, each step ended (after `pause_s`, a slower step) and each checkpoint was saved."""

    def __init__(self, pause_s: float = 0.0):
        self.pause_s = pause_s
        self.begin, self.step_ends, self.saves = 0.0, [], []

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.pause_s)
        self.step_ends.append(time.monotonic())

    def on_save(self, args, state, control, **kwargs):
        self.saves.append((state.global_step, time.monotonic()))


@pytest.mark.parametrize("save_minutes", [1 / 60, None], ids=["every-second", "off"])
def test_save_minutes_saves_at_least_that_often_and_no_more(
    tiny_model_dir, tmp_path, own_signal_handlers, save_minutes
):
    """save_minutes = 1 s, steps of ~0.4 s, save_steps out of reach: a checkpoint once a second has passed since the
    last one (or the start), never sooner, and no gap longer than a second plus the step that ends it. They are
    rotated like any other checkpoint (save_total_limit), so they add no disk."""
    timeline = Timeline(pause_s=0.4)
    callback = PreemptionCallback(tmp_path / STOP_FILE, save_minutes)
    trainer = tiny_run(tiny_model_dir, tmp_path / "run", [timeline, callback], max_steps=8, save_total_limit=2)
    trainer.train()
    saves = [(step, moment) for step, moment in timeline.saves if step < 8]  # transformers saves the last step
    if save_minutes is None:
        assert saves == []
        return
    period = 60 * save_minutes
    steps = [step for step, _ in saves]
    assert len(steps) >= 2 and steps == sorted(set(steps)), timeline.saves
    kept = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "run").glob("checkpoint-*"))
    assert kept == [steps[-1], 8], (kept, timeline.saves)
    step_s = max(b - a for a, b in zip([timeline.begin, *timeline.step_ends], timeline.step_ends))
    moments = [timeline.begin] + [moment for _, moment in saves]
    gaps = [b - a for a, b in zip(moments, moments[1:])]
    assert all(period <= gap <= period + step_s + 1.0 for gap in gaps), (gaps, step_s)  # + 1 s: the save itself
    assert timeline.step_ends[-2] - moments[-1] < period + step_s  # nor before the last step


class SignalAt(TrainerCallback):
    """Sends this process `signum` as step `step` begins, and again from inside the checkpoint save that follows
    (as accelerate's launcher or torch's elastic agent forward the scheduler's signal to the ranks)."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum, self.sent_during_save = step, signum, False

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), self.signum)

    def on_save(self, args, state, control, **kwargs):
        os.kill(os.getpid(), self.signum)
        self.sent_during_save = True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_while_training_saves_the_current_step_and_stops(
    tiny_model_dir, tmp_path, own_signal_handlers, signum
):
    """Before, SIGTERM killed the rank: the run resumed from its last periodic checkpoint (save_steps)."""
    callback = PreemptionCallback(tmp_path / STOP_FILE)
    sender = SignalAt(step=3, signum=signum)
    trainer = tiny_run(tiny_model_dir, tmp_path / "run", [sender, callback], max_steps=10)
    trainer.train()
    assert callback.preempted and sender.sent_during_save  # alive after the copy sent during the save
    assert trainer.state.global_step == 3
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-3"]
    assert checkpoint_state(tmp_path / "run" / "checkpoint-3")["global_step"] == 3


def test_a_signal_before_training_ends_the_process(tmp_path):
    """Nothing to save yet (loading a model, waiting for a vLLM server): the process ends as the signal would end
    it, instead of loading on for minutes to save a step it has not trained."""
    script = (
        "import os, signal, sys, time\n"
        "from pathlib import Path\n"
        "from grpo_lambda.callbacks import PreemptionCallback\n"
        "PreemptionCallback(Path(sys.argv[1]))\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(30)\n"
        "sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / STOP_FILE)], timeout=60)
    assert result.returncode == -signal.SIGTERM


# --- a preemption of a running `make train` / `make sft`: SIGTERM to every process at once, then the same command ---

# On the ranks' PYTHONPATH: each checkpoint save slowed by SLOW_SAVE_S (a 1.5B model's checkpoint takes tens of seconds),
# longer than accelerate's launcher (5 s) or torch's elastic agent (30 s) wait for the ranks after a SIGTERM before
# they SIGKILL them.
SLOW_SAVES = """
import functools, os, sys, time
if "grpo_lambda.testbench.train" in sys.orig_argv:
    from transformers import Trainer
    save_checkpoint = Trainer._save_checkpoint

    @functools.wraps(save_checkpoint)
    def slowed(self, *args, **kwargs):
        time.sleep(float(os.environ["SLOW_SAVE_S"]))
        return save_checkpoint(self, *args, **kwargs)

    Trainer._save_checkpoint = slowed
    training_step = Trainer.training_step  # SFT's steps take milliseconds: all 12 ended before the signal arrived

    @functools.wraps(training_step)
    def slow_step(self, *args, **kwargs):
        time.sleep(0.5)
        return training_step(self, *args, **kwargs)

    Trainer.training_step = slow_step
"""
SLOW_SAVE_S = 35
MAX_STEPS = 12
STARTUP_S = 600  # accelerate, the trainer's imports and the first steps on a loaded 2-core machine


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _logged_steps(output_dir: Path) -> list[int]:
    path = output_dir / "metrics.jsonl"
    return [record["step"] for record in metrics_log.read(path) if "loss" in record] if path.is_file() else []


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "accelerate"), [("train", "ddp"), ("sft", "cpu")])
def test_sigterm_to_every_process_checkpoints_the_current_step_and_the_rerun_resumes(
    tiny_model_dir, tmp_path, stage, accelerate
):
    """As a scheduler's preemption: SIGTERM to the launcher, accelerate (its simple launcher for one CPU process,
    torch's elastic agent for `ddp` with 2 processes), the ranks and their grading workers at once, with saves slower
    than the launchers' own grace. The ranks save the step under way and the launcher exits with EXIT_PREEMPTED; the
    same command then resumes from that checkpoint and ends with every step logged once. Before, the ranks died on
    the signal (or were SIGKILLed mid-save by accelerate, torch's agent, or a grading pool that never returned) and
    the rerun started from the last periodic checkpoint."""
    output_dir, site = tmp_path / "run", tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_SAVES)
    flags = f"--max_steps {MAX_STEPS} --save_steps 10000 --logging_steps 1 --report_to none --output_dir {output_dir}"
    flags += " --per_device_train_batch_size 2"
    if stage == "train":
        flags += " --num_generations 2 --max_completion_length 8"
    command = [sys.executable, "-m", "grpo_lambda.jobs.launch", "--stage", stage, "--model", str(tiny_model_dir)]
    command += ["--dataset", "arithmetic", "--accelerate", accelerate, "--args", flags]
    if accelerate != "cpu":
        command += ["--num-processes", "2"]
    pythonpath = os.pathsep.join([str(site), str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath, "SLOW_SAVE_S": str(SLOW_SAVE_S)}

    log = tmp_path / "first.log"
    with log.open("w") as stream:
        top = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT)
    tree = []
    try:
        deadline = time.monotonic() + STARTUP_S
        while len(_logged_steps(output_dir)) < 2:
            assert top.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        tree = [top.pid, *descendants(top.pid)]
        under_way = _logged_steps(output_dir)[-1] + 1
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):  # a short-lived helper may have ended meanwhile
                os.kill(pid, signal.SIGTERM)
        status = top.wait(timeout=STEP_GRACE_S + 2 * KILL_GRACE_S)
    finally:
        for pid in tree:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    assert not [pid for pid in tree if _alive(pid)], text[-3000:]
    steps = _logged_steps(output_dir)
    assert steps == list(range(1, steps[-1] + 1)) and under_way - 1 <= steps[-1] <= under_way + 1, (steps, under_way)
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == [f"checkpoint-{steps[-1]}"], text[-3000:]
    assert status == EXIT_PREEMPTED and "the same command resumes" in text.splitlines()[-1], text[-3000:]

    rerun = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=STARTUP_S)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert f"resuming from {output_dir / f'checkpoint-{steps[-1]}'}" in rerun.stdout + rerun.stderr
    assert _logged_steps(output_dir) == list(range(1, MAX_STEPS + 1))
