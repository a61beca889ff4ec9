"""Trainer callbacks shared by the SFT and GRPO entry points: the metrics log, and checkpoints on a stop request and
by wall time."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from . import metrics_log
from .preemption import EXIT_PREEMPTED, STOP_FILE

__all__ = ["EXIT_PREEMPTED", "STOP_FILE", "JsonlMetricsCallback", "PreemptionCallback"]

logger = logging.getLogger(__name__)


class JsonlMetricsCallback(TrainerCallback):
    """Appends every log record (reward, kl, trace/…, completion lengths) to `<output_dir>/metrics.jsonl`
    (grpo_lambda.metrics_log, which also reads it).

    A resumed run first drops the records past its checkpoint's step (written after the last checkpoint by the
    attempt that crashed or was preempted), so the log holds each step once."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            dropped = metrics_log.drop_after(self.path, state.global_step)
            if dropped:
                logger.info("metrics.jsonl: dropped %d records past step %d", dropped, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            metrics_log.append(self.path, {"step": state.global_step, **logs})


class PreemptionCallback(TrainerCallback):
    """Checkpoints on request and by wall time, so that any stop of a run costs a bounded amount of training.

    1. A stop request: `stop_file` appears (the SLURM runner creates it on the warning signal before the time limit,
       the launcher on a signal it gets), or the process gets SIGTERM or SIGUSR1 while it trains (a preemption or a
       time limit sends SIGTERM to every process of the job at once). The rank finishes its current step, saves a
       checkpoint and stops; `preempted` then tells the entry point to exit with EXIT_PREEMPTED. What such a stop
       loses is nothing when the scheduler waits for the step under way and the save (SLURM: GraceTime, KillWait),
       else what point 2 bounds.
    2. `save_minutes`: a checkpoint also once that many minutes have passed since the last one (or the start of
       training), so that a kill nobody can answer (SIGKILL, a node failure, a grace too short) loses at most
       that much training, plus the step under way and the save.

    The signals: before the training loop (loading, a resumed run's restore) nothing is saved, so a signal ends the
    process as it would have; once a stop is under way, further copies of the signal (from the scheduler, from
    accelerate's launcher or torch's elastic agent forwarding it) are ignored, so that they cannot interrupt the
    save; after a training that ended normally (the final save) they end the process again.

    The file reaches the ranks on every node through the shared output folder and spares the helper processes (the
    grading pool) that a signal to the ranks' group would reach. Ranks may see a request, or the clock, at different
    steps, so they agree (a max all-reduce of both flags per step) and all save at the same step."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, stop_file: Path, save_minutes: float | None = None):
        self.stop_file = stop_file
        self.save_minutes = save_minutes
        self.signalled = False
        self.preempted = False
        self.phase = "before"  # → training → stopping (a stop agreed) or after (training ended)
        self.last_save = time.monotonic()
        for signum in self.SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame):
        if self.phase in ("training", "stopping"):
            self.signalled = True
            return
        signal.signal(signum, signal.SIG_DFL)  # nothing to save: end as the signal would have ended the process
        os.kill(os.getpid(), signum)

    def _agreed(self) -> tuple[bool, bool]:
        """(stop, save now) as every rank sees it: requested or due on any rank."""
        requested = self.signalled or self.stop_file.exists()
        due = self.save_minutes is not None and time.monotonic() - self.last_save >= 60 * self.save_minutes
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return requested, due
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        flags = torch.tensor([float(requested), float(due)], device=device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        return bool(flags[0].item()), bool(flags[1].item())

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # a request left by the attempt that stopped: this one runs on
            self.stop_file.unlink(missing_ok=True)
        self.last_save = time.monotonic()
        self.phase = "training"

    def on_step_end(self, args, state, control, **kwargs):
        stop, due = self._agreed()
        if stop:
            logger.warning("stop requested: saving a checkpoint at step %d and stopping", state.global_step)
            self.preempted = True
            self.phase = "stopping"
            control.should_save = True
            control.should_training_stop = True
        elif due and not control.should_save:
            logger.info(
                "%g minutes since the last checkpoint: saving one at step %d", self.save_minutes, state.global_step
            )
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last_save = time.monotonic()

    def on_train_end(self, args, state, control, **kwargs):
        if self.phase == "training":
            self.phase = "after"
