"""The one supervisor of every process tree a command starts: the trainers (`make train`), a vLLM server, an
evaluation, a sweep task's stages. Nothing it starts outlives it, and a stop request saves what a training has done.

1. The command ends with its parent: `make` forwards SIGTERM but nothing forwards a SIGKILL, so the command asks
   Linux for SIGTERM when its parent dies (PR_SET_PDEATHSIG) and handles it as below. It is also the subreaper of
   everything below it (PR_SET_CHILD_SUBREAPER): a process whose parent died is re-parented to it, not to init, so
   it can still be found and stopped.
2. Each tree runs in a process group of its own. The first SIGTERM, SIGINT or SIGHUP (a scheduler, Ctrl-C, a closed
   terminal; a sweep task adds SLURM's SIGUSR1 warning) becomes a stop request where the running tree is a training
   that has one (GRPO: <output_dir>/STOP_REQUESTED, grpo_lambda.callbacks.PreemptionCallback): the ranks save a
   checkpoint at the end of the current step and exit with 75, and the same command resumes. The supervisor waits
   for that at most STEP_GRACE_S, 10 minutes (a step of a 7B model with 3 000-token completions, then its
   checkpoint, take minutes; a scheduler that will not wait that long sends SIGKILL to every process anyway), then
   sends SIGTERM to the whole group; a second signal, REPEAT_S (3 s) or more after the first, skips the wait (a
   SIGTERM to a process group reaches the command twice, directly and from a parent such as make). A tree without a stop request (SFT, an
   evaluation, whose samples are on disk) gets SIGTERM at once. A signal while no tree runs (a server starting)
   stops the command (`Stopped`).
3. A group still alive KILL_GRACE_S after its SIGTERM gets SIGKILL (30 s: SLURM's default KillWait). Helper trees
   (a vLLM server, `start`) are stopped the same way when the supervisor exits, and so is whatever is left below the
   command (a worker that outlived its parent).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from grpo_lambda.errors import GRPOLambdaError

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STEP_GRACE_S = 600.0  # a step of a 7B model and its checkpoint take minutes
KILL_GRACE_S = 30.0
REPEAT_S = 3.0  # a signal this soon after the first is the same request (point 2)
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


def _end_with_parent() -> None:
    """In a child before it runs: SIGTERM when its parent dies, so that a tree whose command was SIGKILLed stops
    (a training checkpoints on it) instead of running on unobserved, re-parented to init."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _children(pid: int, recursive: bool = True) -> list:
    try:
        return psutil.Process(pid).children(recursive=recursive)
    except psutil.NoSuchProcess:
        return []


def _live(process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def descendants(pid: int) -> list[int]:
    """The live processes below `pid` (zombies, already dead, left out)."""
    return [child.pid for child in _children(pid) if _live(child)]


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def reap_orphans(known: tuple[int, ...] = ()) -> None:
    """Collect the exit status of the dead processes re-parented to this one (it is their subreaper), leaving those
    of `known` (subprocess.Popen's own children, which it reaps) alone."""
    for child in _children(os.getpid(), recursive=False):
        if child.pid not in known and not _live(child):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(child.pid, os.WNOHANG)


def stop_descendants(grace_s: float = KILL_GRACE_S, spare: frozenset[int] = frozenset()) -> None:
    """SIGTERM to every process below the launcher but those of `spare` (alive before it started anything: a grading
    worker's forkserver), SIGKILL to those alive `grace_s` later; their statuses reaped."""
    left = [pid for pid in descendants(os.getpid()) if pid not in spare]
    _signal_all(left, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        reap_orphans(tuple(spare))
        left = [pid for pid in descendants(os.getpid()) if pid not in spare]
    _signal_all(left, signal.SIGKILL)
    time.sleep(0.1)
    reap_orphans(tuple(spare))


class Stopped(GRPOLambdaError):
    """A stop signal that arrived while no tree was running (a vLLM server starting): nothing to save."""


class Supervisor:
    """Runs process trees in process groups of their own and turns the signals of point 2 into a stop request, then
    SIGTERM, then SIGKILL (module docstring). Use as a context manager around everything that starts processes, so
    that a signal before or between them stops the command cleanly too, and nothing outlives the `with`."""

    def __init__(
        self,
        signals: tuple[int, ...] = FORWARDED,
        step_grace_s: float = STEP_GRACE_S,
        kill_grace_s: float = KILL_GRACE_S,
    ):
        self.signals = signals
        self.step_grace_s = step_grace_s
        self.kill_grace_s = kill_grace_s
        self.received: list[int] = []
        self._arrived: list[float] = []  # when each of `received` arrived (time.monotonic)
        self.child: subprocess.Popen | None = None
        self.helpers: list[subprocess.Popen] = []
        self._previous: dict[int, object] = {}
        self._before: frozenset[int] = frozenset()
        self._starting = False

    def __enter__(self):
        self._previous = {signum: signal.signal(signum, self._on_signal) for signum in self.signals}
        self._before = frozenset(descendants(os.getpid()))  # not this supervisor's to stop
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        for helper in self.helpers:
            self._end_group(helper.pid, helper)
        stop_descendants(self.kill_grace_s, self._before)
        return False

    def _on_signal(self, signum, frame) -> None:
        self.received.append(signum)
        self._arrived.append(time.monotonic())
        if self.child is None and not self._starting:
            raise Stopped(f"stopped by {signal.Signals(signum).name} before the training started; nothing to save.")

    def _say(self, text: str) -> None:
        with contextlib.suppress(OSError):  # a closed terminal (SIGHUP) cannot be written to
            print(f"grpo_lambda: {text}", file=sys.stderr, flush=True)

    def start(self, command: list[str], cwd: Path | None = None, env: dict | None = None, log: Path | None = None):
        """A helper tree (a vLLM server) in its own process group, its output appended to `log`; stopped when the
        supervisor exits."""
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") if log is not None else contextlib.nullcontext() as stream:
            helper = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdout=stream,
                stderr=subprocess.STDOUT if stream else None,
                process_group=0,
                preexec_fn=_end_with_parent,
            )
        self.helpers.append(helper)
        return helper

    def run(
        self,
        command: list[str],
        cwd: Path | None = None,
        env: dict | None = None,
        stop_file: Path | None = None,
        pass_fds: tuple[int, ...] = (),
    ):
        """The exit status of `command`'s tree once it and every process of its group have ended; a signal meanwhile
        asks it to stop through `stop_file` (a training's), else stops it at once (point 2). `pass_fds`: descriptors
        the tree keeps (an output folder's lock, records.hold_folder: held while any of the tree lives)."""
        handled, self._starting = len(self.received), True  # a signal while the tree starts is handled below
        try:
            self.child = subprocess.Popen(
                command, cwd=cwd, env=env, process_group=0, pass_fds=pass_fds, preexec_fn=_end_with_parent
            )
        finally:
            self._starting = False
        group, phase, deadline = self.child.pid, "running", None
        try:
            while True:
                try:
                    return self.child.wait(timeout=_POLL_S)
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                fresh, handled = self._fresh(handled), len(self.received)
                if fresh and phase == "running" and stop_file is not None:
                    name = signal.Signals(fresh[0]).name
                    self._say(
                        f"{name}: the training saves a checkpoint at the end of its current step and stops (at most "
                        f"{self.step_grace_s:.0f} s; the same command resumes; send {name} again to stop at once)."
                    )
                    phase, deadline, fresh = "checkpoint", now + self.step_grace_s, fresh[1:]
                if phase == "checkpoint":
                    # written again if the ranks removed it: a run that had not begun training clears old requests
                    stop_file.parent.mkdir(parents=True, exist_ok=True)
                    stop_file.touch()
                if (fresh and phase in ("running", "checkpoint")) or (phase == "checkpoint" and now > deadline):
                    what = "the training" if stop_file is not None else shlex.join(command[:3])
                    self._say(f"stopping {what} (SIGTERM; SIGKILL after {self.kill_grace_s:.0f} s).")
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

    def run_all(self, trees: list[tuple[list[str], dict]], pass_fds: tuple[int, ...] = ()) -> int:
        """Several trees at once, each (command, env) in a process group of its own (an evaluation's data-parallel
        engines): 0 once every one has exited 0; as soon as one fails, the exit status of that one, the others
        stopped (SIGTERM, SIGKILL after kill_grace_s), and likewise at a signal (point 2; no stop request)."""
        handled, self._starting = len(self.received), True
        children: list[subprocess.Popen] = []
        try:
            for command, env in trees:
                children.append(
                    subprocess.Popen(command, env=env, process_group=0, pass_fds=pass_fds, preexec_fn=_end_with_parent)
                )
                self.child = children[0]
        finally:
            self._starting = False
        try:
            while True:
                statuses = [child.poll() for child in children]
                failed = next((status for status in statuses if status not in (None, 0)), None)
                if failed is not None:
                    return failed
                if all(status == 0 for status in statuses):
                    return 0
                if self._fresh(handled):
                    self._say(
                        f"stopping {len(children)} processes (SIGTERM; SIGKILL after {self.kill_grace_s:.0f} s)."
                    )
                    return -signal.SIGTERM
                time.sleep(_POLL_S / 5)
        finally:
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGTERM)
            for child in children:
                self._end_group(child.pid, child)
            self.child = None

    def _fresh(self, handled: int) -> list[int]:
        """The signals received since `handled`, less repeats within REPEAT_S of the first signal: a SIGTERM to a
        whole process group reaches the command twice (directly, and forwarded by `make` or a parent that dies on
        it), which must not count as the second signal that skips the checkpoint."""
        first = self._arrived[0] if self._arrived else 0.0
        return [
            signum
            for signum, at in zip(self.received[handled:], self._arrived[handled:], strict=True)
            if at == first or at - first >= REPEAT_S
        ]

    def _end_group(self, group: int, leader: subprocess.Popen | None = None) -> None:
        """Nothing of a tree's group outlives it (a grading worker whose rank was killed, a server's engine);
        `leader`: the group's first process where it has not been waited for (a helper), reaped here."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace_s
        while time.monotonic() < deadline:
            if leader is not None:
                leader.poll()
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            reap_orphans(tuple(helper.pid for helper in self.helpers))
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        if leader is not None:
            leader.wait()
