"""The launcher's process tree: nothing started by `make train` / `make sft` outlives it, and a stop request saves
what a training has done.

1. The launcher ends with its parent: `make` forwards SIGTERM but nothing forwards a SIGKILL, so the launcher asks
   Linux for SIGTERM when its parent dies (PR_SET_PDEATHSIG) and handles it as below. It is also the subreaper of
   everything below it (PR_SET_CHILD_SUBREAPER): a process whose parent died is re-parented to the launcher, not
   to init, so it can still be found and stopped.
2. The training (accelerate, its ranks, their grading workers) runs in a process group of its own. The first
   SIGTERM, SIGINT or SIGHUP (a scheduler, Ctrl-C, a closed terminal) becomes a stop request where the training
   has one (GRPO: <output_dir>/STOP_REQUESTED, grpo_lambda.callbacks.PreemptionCallback): the ranks save a
   checkpoint at the end of the current step and exit with 75, and the same command resumes. The launcher waits
   for that at most STEP_GRACE_S, 10 minutes (a step of a 7B model with 3 000-token completions, then its
   checkpoint, take minutes; a scheduler that will not wait that long sends SIGKILL to every process anyway), then sends
   SIGTERM to the whole group; a second signal skips the wait. Without a stop request (SFT), SIGTERM goes to the
   group at once.
3. A group still alive KILL_GRACE_S after its SIGTERM gets SIGKILL (30 s: SLURM's default KillWait). Whatever is
   left below the launcher once the training has exited (a worker that outlived its parent) is stopped the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from grpo_lambda.errors import GRPOLambdaError

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STEP_GRACE_S = 600.0  # a step of a 7B model and its checkpoint take minutes
KILL_GRACE_S = 30.0
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_POLL_S = 0.5


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(option, value, 0, 0, 0) == 0


def guard_process_tree() -> None:
    """Point 1 of the module docstring: SIGTERM when the parent dies, and the subreaper of the tree below."""
    parent = os.getppid()
    if _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before the request took effect
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _process_table() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, state letter) of every process (Linux /proc; empty elsewhere)."""
    table = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            state, parent = stat.rsplit(")", 1)[1].split()[:2]
            table[int(entry)] = (int(parent), state)
    return table


def descendants(pid: int) -> list[int]:
    """The live processes below `pid` (zombies, already dead, left out)."""
    children: dict[int, list[int]] = {}
    table = _process_table()
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += [p for p in below if table[p][1] != "Z"]
        todo += below
    return found


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def reap_orphans(known: tuple[int, ...] = ()) -> None:
    """Collect the exit status of the dead processes re-parented to the launcher (it is their subreaper), leaving
    those of `known` (subprocess.Popen's own children, which it reaps) alone."""
    me = os.getpid()
    for pid, (parent, state) in _process_table().items():
        if parent == me and state == "Z" and pid not in known:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


def stop_descendants(grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM to every process below the launcher, SIGKILL to those alive `grace_s` later; their statuses reaped."""
    left = descendants(os.getpid())
    _signal_all(left, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        reap_orphans()
        left = descendants(os.getpid())
    _signal_all(left, signal.SIGKILL)
    time.sleep(0.1)
    reap_orphans()


class Stopped(GRPOLambdaError):
    """A stop signal that arrived while no training was running (the vLLM server starting): nothing to save."""


class TrainingProcess:
    """Runs the training command in its own process group and turns the signals of point 2 into a stop request,
    then SIGTERM, then SIGKILL (module docstring). Use as a context manager around everything that starts
    processes, so that a signal before the training starts stops the launcher cleanly too."""

    def __init__(self, stop_file: Path | None, step_grace_s: float = STEP_GRACE_S, kill_grace_s: float = KILL_GRACE_S):
        self.stop_file = stop_file
        self.step_grace_s = step_grace_s
        self.kill_grace_s = kill_grace_s
        self.received: list[int] = []
        self.child: subprocess.Popen | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self):
        self._previous = {signum: signal.signal(signum, self._on_signal) for signum in FORWARDED}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        stop_descendants(self.kill_grace_s)
        return False

    def _on_signal(self, signum, frame) -> None:
        self.received.append(signum)
        if self.child is None:
            raise Stopped(f"stopped by {signal.Signals(signum).name} before the training started; nothing to save.")

    def _say(self, text: str) -> None:
        with contextlib.suppress(OSError):  # a closed terminal (SIGHUP) cannot be written to
            print(f"grpo_lambda: {text}", file=sys.stderr, flush=True)

    def run(self, command: list[str], cwd: Path, env: dict[str, str]) -> int:
        """The training's exit status, once it and every process of its group have ended."""
        self.child = subprocess.Popen(command, cwd=cwd, env=env, process_group=0)
        group, phase, deadline, handled = self.child.pid, "running", None, 0
        try:
            while True:
                try:
                    return self.child.wait(timeout=_POLL_S)
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                fresh, handled = self.received[handled:], len(self.received)
                if fresh and phase == "running" and self.stop_file is not None:
                    name = signal.Signals(fresh[0]).name
                    self._say(
                        f"{name}: the training saves a checkpoint at the end of its current step and stops (at most "
                        f"{self.step_grace_s:.0f} s; the same command resumes; send {name} again to stop at once)."
                    )
                    phase, deadline, fresh = "checkpoint", now + self.step_grace_s, fresh[1:]
                if phase == "checkpoint":
                    # written again if the ranks removed it: a run that had not begun training clears old requests
                    self.stop_file.parent.mkdir(parents=True, exist_ok=True)
                    self.stop_file.touch()
                if (fresh and phase in ("running", "checkpoint")) or (phase == "checkpoint" and now > deadline):
                    self._say(f"stopping the training (SIGTERM; SIGKILL after {self.kill_grace_s:.0f} s).")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(group, signal.SIGTERM)
                    phase, deadline = "terminating", now + self.kill_grace_s
                elif phase == "terminating" and now > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(group, signal.SIGKILL)
                    phase = "killed"
        finally:
            self._end_group(group)
            self.child = None

    def _end_group(self, group: int) -> None:
        """Nothing of the training's group outlives it (a grading worker whose rank was killed, say)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            reap_orphans()
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
