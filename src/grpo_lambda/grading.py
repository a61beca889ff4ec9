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
from multiprocessing.pool import Pool


def _start_worker(warm_up: Callable[[], None] | None) -> None:
    """Warm up before any item is timed: import math-verify and sympy and run a check once, then the caller's
    `warm_up` (a cold first parse takes seconds, enough to trip the paper grade's 1-second bounds), and silence
    math-verify's warning that signal-based timeouts are off (the pool bounds the time instead)."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    grade_one("\\frac{1}{2}", ["0.5"])
    if warm_up is not None:
        warm_up()


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
        self._pool: Pool | None = None
        self.timeouts = 0

    def _worker(self) -> Pool:
        if self._pool is None:
            self._pool = _context().Pool(processes=1, initializer=_start_worker, initargs=(self.warm_up,))
            self._pool.apply(len, ((),))  # wait for the worker to start: start-up is not grading time
            atexit.register(self._restart)  # stop the worker before the interpreter tears its modules down
        return self._pool

    def _restart(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __call__(
        self,
        items: list[tuple[str, list[str]]],
        check: Callable[[str, list[str]], bool] = grade_one,
        timeout_s: float | None = None,
    ) -> list[bool | None]:
        results: list[bool | None] = []
        for predicted, golds in items:
            pending = self._worker().apply_async(check, (predicted, golds))
            try:
                results.append(bool(pending.get(timeout=timeout_s or self.timeout_s)))
            except multiprocessing.TimeoutError:
                self.timeouts += 1
                results.append(None)
                self._restart()
            except Exception:  # a grader failing on an odd string is a wrong answer, not a crashed run
                results.append(False)
        return results

    def close(self) -> None:
        self._restart()
