"""The one supervisor of every process tree (grpo_lambda.processes.Supervisor), as the launcher (trainers and a
vLLM server), the sweep runner (a training, then an evaluation, on SLURM's SIGUSR1) and a server start use it: a
signal asks a training to checkpoint through its stop file, stops anything else at once, and leaves no process of any
tree behind — a child that ignores SIGTERM included. A driver script stands for the command; its trees are shells."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT

# The command under test: a Supervisor with short graces, a helper tree (a "server") and a main tree, whose exit
# status it prints. MAIN: a shell that starts a grandchild ignoring SIGTERM and, if it sees the stop file, exits 75
# as a training's ranks do after their checkpoint (unless told to ignore it).
DRIVER = textwrap.dedent(
    """
    import signal, sys
    from pathlib import Path
    from grpo_lambda.processes import Supervisor, Stopped
    stop_file = Path(sys.argv[1]) if sys.argv[1] != "-" else None
    extra = (signal.SIGUSR1,) if sys.argv[2] == "usr1" else ()
    obeys = sys.argv[3] == "obeys"
    main = ["bash", "-c", "trap '' TERM; sleep 600 & " + (
        f"while [ ! -e {stop_file} ]; do sleep 0.1; done; exit 75" if stop_file and obeys else "wait")]
    with Supervisor(signals=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, *extra), step_grace_s=3, kill_grace_s=1) as s:
        s.start(["bash", "-c", "sleep 600 & sleep 600"])
        if sys.argv[4] == "before":
            print("started", flush=True)
            try:
                signal.pause()
            except Stopped as stopped:
                print(stopped, flush=True)
                sys.exit(1)
        print("started", flush=True)
        print("status", s.run(main, stop_file=stop_file), flush=True)
    """
)


def _tree(pid: int) -> set[int]:
    from grpo_lambda.processes import descendants

    return set(descendants(pid))


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _supervise(
    tmp_path, signum: int, stop_file: bool, usr1: bool = False, obeys: bool = True, when: str = "running", twice=False
):
    stop = tmp_path / "STOP_REQUESTED"
    argv = [str(stop) if stop_file else "-", "usr1" if usr1 else "-", "obeys" if obeys else "-", when]
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, *argv],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert driver.stdout.readline().strip() == "started", driver.stderr.read()
        deadline = time.monotonic() + 30
        while len(_tree(driver.pid)) < (2 if when == "before" else 4) and time.monotonic() < deadline:
            time.sleep(0.1)
        tree = _tree(driver.pid)
        started = time.monotonic()
        os.kill(driver.pid, signum)
        if twice:  # as `kill -TERM -<make's group>` does: make forwards it to the command that got it already
            time.sleep(0.3)
            os.kill(driver.pid, signum)
        out, err = driver.communicate(timeout=60)
        return driver.returncode, out, err, tree, time.monotonic() - started, stop
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_training_tree_checkpoints_on_a_signal_and_leaves_nothing(tmp_path, signum):
    """The launcher's case: the stop file appears, the ranks exit 75 after their checkpoint, the helper (a vLLM server)
    and the grandchild that ignores SIGTERM are gone."""
    code, out, err, tree, _, stop = _supervise(tmp_path, signum, stop_file=True)
    assert code == 0 and "status 75" in out, out + err
    assert stop.exists() and "saves a checkpoint at the end of its current step" in err
    assert len(tree) >= 4 and not _alive(tree), tree  # helper shell + sleep, main shell + sleep


def test_the_warning_signal_of_a_sweep_task_asks_the_same(tmp_path):
    code, out, _, tree, _, stop = _supervise(tmp_path, signal.SIGUSR1, stop_file=True, usr1=True)
    assert "status 75" in out and stop.exists() and not _alive(tree)


def test_a_training_that_does_not_stop_in_the_grace_is_terminated_then_killed(tmp_path):
    code, out, err, tree, seconds, stop = _supervise(tmp_path, signal.SIGTERM, stop_file=True, obeys=False)
    assert stop.exists() and "stopping the training (SIGTERM; SIGKILL after 1 s)" in err
    assert 3 <= seconds < 30 and not _alive(tree), (seconds, tree)


def test_an_evaluation_tree_is_stopped_at_once(tmp_path):
    """No stop file (an evaluation, SFT): SIGTERM to the group at once, SIGKILL for what ignores it."""
    code, out, err, tree, seconds, stop = _supervise(tmp_path, signal.SIGTERM, stop_file=False)
    assert not stop.exists() and seconds < 3 + 10 and not _alive(tree), (seconds, err)
    assert "status -9" in out, out  # its shell ignores SIGTERM: killed


def test_a_signal_before_any_tree_runs_stops_the_helpers(tmp_path):
    """A signal while the server starts (the launcher waiting for it): nothing to save, the server stopped."""
    code, out, _, tree, _, _ = _supervise(tmp_path, signal.SIGTERM, stop_file=True, when="before")
    assert code == 1 and "before the training started; nothing to save" in out
    assert len(tree) >= 2 and not _alive(tree)


def test_a_signal_repeated_at_once_is_one_request(tmp_path):
    """Issue 34: SIGTERM to make's process group reached the launcher directly and again from make, and the second
    copy skipped the promised checkpoint. A repeat within 3 s is the same request; a later one stops at once."""
    code, out, err, tree, _, stop = _supervise(tmp_path, signal.SIGTERM, stop_file=True, obeys=True, twice=True)
    assert "status 75" in out and stop.exists() and "stopping the training" not in err, out + err
    assert not _alive(tree)


def test_a_supervisor_leaves_the_processes_it_did_not_start_and_grading_still_works():
    """Before: leaving the `with` stopped and reaped every process below the command, among them the forkserver of a
    grading worker started earlier in the same process (the evaluation's entry point called from a script or a
    test), after which every item scored 0 (multiprocessing could not fork another worker)."""
    from grpo_lambda.grading import Grader
    from grpo_lambda.processes import Supervisor

    grader = Grader(timeout_s=30.0)
    assert grader([("\\frac{1}{2}", ["0.5"])]) == [True]
    earlier = subprocess.Popen(["sleep", "60"])
    with Supervisor() as supervisor:
        assert supervisor.run(["bash", "-c", "sleep 60 & exit 3"]) == 3
    assert earlier.poll() is None
    earlier.kill()
    earlier.wait()
    grader.close()  # a new worker, forked by the same forkserver
    assert grader([("2", ["2"]), ("3", ["2"])]) == [True, False]
    grader.close()


def test_several_trees_run_at_once_and_the_first_failure_stops_the_others(tmp_path):
    """Data-parallel engines (Supervisor.run_all): 0 once every tree has exited 0; as soon as one fails, its status,
    the others' groups stopped at once rather than left to run (an evaluation waiting on a dead engine's problems)."""
    from grpo_lambda.processes import Supervisor, descendants

    marker = tmp_path / "second"
    quick = [sys.executable, "-c", "pass"]
    before = set(descendants(os.getpid()))  # an earlier test's grading worker, not the supervisor's
    with Supervisor(kill_grace_s=1) as supervisor:
        assert supervisor.run_all([(quick, None), (quick, None)]) == 0
        started = time.monotonic()
        failing = [sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(3)"]
        waiting = ["bash", "-c", f"sleep 60 & touch {marker}; wait"]
        assert supervisor.run_all([(waiting, None), (failing, None)]) == 3
        assert time.monotonic() - started < 10 and marker.exists()
        assert set(descendants(os.getpid())) <= before
