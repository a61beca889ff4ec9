"""Trainer callbacks shared by the SFT and GRPO entry points: the metrics log and the stop request of a runner."""

from __future__ import annotations

import logging
import signal
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
    """When `stop_file` appears (the SLURM runner creates it on the warning signal before the time limit) or the
    process gets `signum`, finish the current step, save a checkpoint and stop; `preempted` then tells the entry
    point to exit with EXIT_PREEMPTED.

    A file rather than a signal to every process: it reaches the ranks on every node through the shared output
    folder, and it spares the helper processes (grading pool, data workers) that a signal would kill. Ranks may see
    it at different steps, so they agree (a max all-reduce of one flag per step) and all save at the same step."""

    def __init__(self, stop_file: Path, signum: int = signal.SIGUSR1):
        self.stop_file = stop_file
        self.signalled = False
        self.preempted = False
        signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame):
        self.signalled = True

    def _agreed(self) -> bool:
        requested = self.signalled or self.stop_file.exists()
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return requested
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        flag = torch.tensor([float(requested)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # a request left by the attempt that stopped: this one runs on
            self.stop_file.unlink(missing_ok=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed():
            logger.warning("stop requested: saving a checkpoint at step %d and stopping", state.global_step)
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True
        return control
