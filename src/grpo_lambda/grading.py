"""Answer checking with math-verify, bounded in time per item and safe to call from any thread: the training reward's
check (rewards.AccuracyReward), and the worker in which the evaluation's grades run (evaluation.grades).

math-verify bounds its own time with SIGALRM, which only works in the main thread (and not at all under some
launchers). We grade in a worker process instead: each item must finish within `timeout_s`, otherwise it scores 0,
is counted, and the worker is replaced, so a pathological output can never hang a run.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
from collections.abc import Callable


def _start_worker(warm_up: Callable[[], None] | None) -> None:
    """Warm up before any item is timed: import math-verify and sympy and run a check once, then the caller's
    `warm_up` (a cold first parse takes seconds, enough to trip the paper grade's 1-second bounds), and silence
    math-verify's warning that signal-based timeouts are off (the caller bounds the time instead)."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    grade_one("\\frac{1}{2}", ["0.5"])
    if warm_up is not None:
        warm_up()


def _serve(connection, warm_up: Callable[[], None] | None) -> None:
    """The worker: (check, args) in, (ok, verdict) out, until the grader closes its end. SIGTERM is ignored: a
    scheduler's SIGTERM reaches every process of a job, and the rank grading the step that it checkpoints on that
    signal still needs its answers; the Grader ends the worker with SIGKILL or by closing the pipe."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _start_worker(warm_up)
    connection.send((True, None))
    while True:
        try:
            check, args = connection.recv()
        except EOFError:
            return
        try:
            connection.send((True, check(*args)))
        except Exception as error:  # noqa: BLE001 - a grader failing on an odd string is a wrong answer
            connection.send((False, repr(error)))


def _context():
    """A forkserver with nothing preloaded: workers fork from a bare interpreter, so they neither re-import the
    training script (`spawn` imports `__main__`, i.e. TRL, torch and vLLM: tens of seconds and a GB) nor inherit
    the trainer's threads and CUDA state (`fork`)."""
    try:
        context = multiprocessing.get_context("forkserver")
    except ValueError:  # platforms without forkserver
        return multiprocessing.get_context("spawn")
    context.set_forkserver_preload([])
    return context


def parse_answer(text: str):
    """`text` as math-verify reads it: as LaTeX math (`$text$`), else as it stands."""
    from math_verify import parse

    parsed = parse(f"${text}$", parsing_timeout=None)
    return parsed if parsed else parse(text, parsing_timeout=None)


@functools.lru_cache(maxsize=65536)
def parse_gold(text: str):
    """Gold answers repeat across a group and across epochs: each is parsed once per worker."""
    return parse_answer(text)


def grade_one(predicted: str, golds: list[str]) -> bool:
    """True if `predicted` equals any gold answer under math-verify (no timeouts here: the caller bounds time).
    The training reward's check (rewards.AccuracyReward)."""
    from math_verify import verify

    prediction = parse_answer(predicted)
    if not prediction:
        return False
    return any(verify(parse_gold(gold), prediction, timeout_seconds=None) for gold in golds)


class Grader:
    """Grades (prediction, gold answers) pairs in a worker process with a per-item time bound.

    Returns True / False per item, or None for an item that timed out (it counts as wrong). `check` names the
    verdict function: math-verify (`grade_one`, the default), or a grade's `is_correct`; `timeout_s` overrides the
    grader's bound for these items. `warm_up` runs once in each new worker before anything is timed: the evaluation
    passes its grades' (evaluation.grades.warm_up); it must be a module-level function (the worker imports it).
    """

    def __init__(self, timeout_s: float = 5.0, warm_up: Callable[[], None] | None = None):
        self.timeout_s = timeout_s
        self.warm_up = warm_up
        self._worker: tuple | None = None  # (process, connection)
        self.timeouts = 0

    def _started(self) -> tuple:
        """A process and its end of a pipe: no lock shared with it, so killing it at any moment leaves nothing held
        (a multiprocessing.Pool whose worker died while waiting for work left its queue lock held for ever)."""
        if self._worker is None:
            mine, theirs = _context().Pipe()
            process = _context().Process(target=_serve, args=(theirs, self.warm_up), daemon=True)
            process.start()
            theirs.close()
            mine.recv()  # started and warmed up: start-up is not grading time
            self._worker = (process, mine)
            atexit.register(self._restart)  # stop the worker before the interpreter tears its modules down
        return self._worker

    def _restart(self, at_once: bool = False) -> None:
        if self._worker is not None:
            process, connection = self._worker
            self._worker = None
            connection.close()  # an idle worker ends on it
            process.join(0 if at_once else 1.0)
            if process.is_alive():
                process.kill()
                process.join()

    def __call__(
        self,
        items: list[tuple[str, list[str]]],
        check: Callable[[str, list[str]], bool] = grade_one,
        timeout_s: float | None = None,
    ) -> list[bool | None]:
        results: list[bool | None] = []
        for predicted, golds in items:
            try:
                process, connection = self._started()
                connection.send((check, (predicted, golds)))
                if connection.poll(timeout_s or self.timeout_s):
                    ok, verdict = connection.recv()
                    results.append(bool(verdict) if ok else False)
                    continue
            except (EOFError, OSError):  # the worker died (a SIGKILL): a timeout for this item, a new worker
                pass
            self.timeouts += 1
            results.append(None)
            self._restart(at_once=True)
        return results

    def close(self) -> None:
        self._restart()
