"""Answer checking with math-verify, bounded in time per item and safe to call from any thread; the evaluation's
`corrected` grade.

math-verify bounds its own time with SIGALRM, which only works in the main thread (and not at all under some
launchers). We grade in a worker process instead: each item must finish within `timeout_s`, otherwise it scores 0,
is counted, and the worker is replaced, so a pathological output can never hang a run.

Every evaluated sample gets two grades (docs/evaluation.md):
- `paper`: understand-r1-zero's evaluation rule for rule (grpo_lambda.paper_grader), to compare with the paper;
- `corrected`: the best grading we can justify. It reads the answer as the paper's grade does, except:
  1. r1: any whitespace (or none) may separate `</think>` and `<answer>` (`</think>\\n<answer>`), and the answer is
     the last complete `<answer>…</answer>` after `</think>`;
  2. a box may have spaces before its brace (`\\boxed {5}`, as TeX reads it);
  and compares with math-verify (`grade_one`) after these rules:
  3. gold answers are stripped (Minerva's trailing newlines) and unboxed;
  4. e-notation is scientific notation, in answers and in golds: `1.45e-5` is 1.45 × 10⁻⁵ (not 1.45·e − 5);
  5. a trailing period is punctuation: `\\frac{1}{2}.` is ½;
  6. a percent sign may be left off: `-2\\%` for −2 (math-verify already accepts `2\\%` for 2 and 0.02);
  7. two numbers smaller than 1 in size must also agree to a relative 10⁻⁴: math-verify rounds to 6 decimals and
     chops below ~10⁻¹⁵, which would accept 1 × 10⁻³⁰ for 4.6 × 10⁻²⁴;
  8. answers equal up to spacing are equal (`\\text{No solution}` and `\\text{No  solution}`), and words are compared
     without case (`ELLIPSE` and `\\text{ellipse}`);
  and, unlike the paper's grade, it never accepts a hedge (`96 \\text{ or } 97` for 96).
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import re
from collections.abc import Callable
from multiprocessing.pool import Pool

GRADES: tuple[str, ...] = ("paper", "corrected")


def _start_worker() -> None:
    """Warm up before any item is timed: import math-verify, sympy and pylatexenc and run each check once (a cold
    first parse takes seconds, enough to trip the paper grade's 1-second bounds), and silence math-verify's warning
    that signal-based timeouts are off (the pool bounds the time instead)."""
    import logging

    from grpo_lambda import paper_grader

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    grade_one("\\frac{1}{2}", ["0.5"])
    paper_grader.is_correct("\\frac{1}{2}", ["(0.5, \\sqrt{2})"])


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


def _parse_answer(text: str):
    from math_verify import parse

    parsed = parse(f"${text}$", parsing_timeout=None)
    return parsed if parsed else parse(text, parsing_timeout=None)


@functools.lru_cache(maxsize=65536)
def _parse_gold(text: str):
    """Gold answers repeat across a group and across epochs: each is parsed once per worker."""
    return _parse_answer(text)


def grade_one(predicted: str, golds: list[str]) -> bool:
    """True if `predicted` equals any gold answer under math-verify (no timeouts here: the caller bounds time).
    The training reward's check (rewards.AccuracyReward)."""
    from math_verify import verify

    prediction = _parse_answer(predicted)
    if not prediction:
        return False
    return any(verify(_parse_gold(gold), prediction, timeout_seconds=None) for gold in golds)


# ---------------------------------------------------------------------------------------------------------------
# The corrected grade

_R1_ANSWER = re.compile(r"</think>\s*<answer>", re.DOTALL)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_E_NOTATION = re.compile(r"(?<![\w.\\])(\d+(?:\.\d*)?|\.\d+)[eE]([+-]?\d+)(?![\w.])")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_CONTROL_WORD_SPACE = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])")
_SPACING = re.compile(r"\s+|\\[ ,;:!]|\\quad|\\qquad|~")
_PERCENT = re.compile(r"\s*\\?%\s*$")
_SMALL = 1.0  # rule 7 applies to numbers below this size
_RELATIVE_TOLERANCE = 1e-4


def final_box(text: str) -> str | None:
    """The content of the last `\\boxed`, written `\\boxed{…}` or `\\boxed {…}` with balanced braces; None if that
    box has no braces or is unclosed (`\\boxed 210`), or if there is no box."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    begin = start + len("\\boxed")
    while begin < len(text) and text[begin].isspace():
        begin += 1
    if begin == len(text) or text[begin] != "{":
        return None
    depth = 0
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[begin + 1 : index]
    return None


def read_answer(completion: str, template: str) -> tuple[bool, str | None]:
    """(formatted, answer) under the corrected grade's rules 1–2. r1: formatted when `</think>`, whitespace,
    `<answer>` and a later `</answer>` appear; the answer is the last tag's text, or the box inside it. qwen_math
    and no: formatted when the last box is readable (a bare problem, `no`, states no other answer marker)."""
    if template == "r1":
        opening = _R1_ANSWER.search(completion)
        tags = _ANSWER_TAG.findall(completion, opening.start()) if opening else []
        if not tags:
            return False, None
        answer = tags[-1]
        return True, (final_box(answer) if "\\boxed" in answer else answer.strip())
    answer = final_box(completion)
    return answer is not None, answer


def corrected_gold(gold: str) -> str:
    """Rule 3 and 4 on a gold answer: stripped, unboxed, e-notation written as a power of ten."""
    gold = gold.strip()
    if "\\boxed" in gold:
        gold = final_box(gold) or gold
    return _scientific(gold.strip())


def _scientific(text: str) -> str:
    return _E_NOTATION.sub(lambda m: f"{m[1]}\\times10^{{{int(m[2])}}}", text)


def _answer_forms(answer: str) -> list[str]:
    """The answer as read (rules 4 and 5), and without its trailing percent sign (rule 6)."""
    answer = _scientific(answer.strip())
    answer = re.sub(r"(?:\s|\\[ ,;!])*\.$", "", answer).strip()
    forms = [answer]
    without_percent = _PERCENT.sub("", answer)
    if without_percent != answer and without_percent:
        forms.append(without_percent)
    return forms


def _squeezed(text: str) -> str:
    """Rule 8: the text without spacing and `$`, `\\text{…}`-style wrappers unwrapped; words (2+ letters) in lower
    case."""
    while True:
        unwrapped = _TEXT_WRAPPER.sub(r"\1", text)
        if unwrapped == text:
            break
        text = unwrapped
    text = _CONTROL_WORD_SPACE.sub(r"\1{}", text)  # "\pi c" is not "\pic": the space ends the control word
    text = _SPACING.sub("", text).replace("$", "")  # math-mode delimiters carry nothing
    return text.lower() if len(text) >= 2 and text.isalpha() else text


def _small_numbers_disagree(gold, prediction) -> bool:
    """Rule 7: both are numbers, the larger below 1 in size, and they differ by more than the relative tolerance."""
    from sympy import Expr

    if not (isinstance(gold, Expr) and isinstance(prediction, Expr)):
        return False
    if gold.free_symbols or prediction.free_symbols:
        return False
    try:
        a, b = complex(gold.evalf(30)), complex(prediction.evalf(30))
    except (TypeError, ValueError):
        return False
    scale = max(abs(a), abs(b))
    return 0 < scale < _SMALL and abs(a - b) > _RELATIVE_TOLERANCE * scale


def _same_value(answer: str, gold: str) -> bool:
    from math_verify import verify

    prediction = _parse_answer(answer)
    expected = _parse_gold(gold)
    if not prediction or not expected:
        return False
    if not verify(expected, prediction, timeout_seconds=None):
        return False
    return not _small_numbers_disagree(expected[0], prediction[0])


def is_correct(answer: str, golds: list[str]) -> bool:
    """The corrected grade's verdict on an answer read by `read_answer` (golds as stored; rules 3–8)."""
    forms = _answer_forms(answer)
    for gold in map(corrected_gold, golds):
        for form in forms:
            if form and (_squeezed(form) == _squeezed(gold) or _same_value(form, gold)):
                return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# The worker


class Grader:
    """Grades (prediction, gold answers) pairs in a worker process with a per-item time bound.

    Returns True / False per item, or None for an item that timed out (it counts as wrong). `check` names the
    verdict function: math-verify (`grade_one`, the default), or a grade's `is_correct`; `timeout_s` overrides the
    grader's bound for these items.
    """

    def __init__(self, timeout_s: float = 5.0):
        self.timeout_s = timeout_s
        self._pool: Pool | None = None
        self.timeouts = 0

    def _worker(self) -> Pool:
        if self._pool is None:
            self._pool = _context().Pool(processes=1, initializer=_start_worker)
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


def grade_sample(grader: Grader, completion: str, template: str, golds: list[str], paper_golds: list[str]) -> dict:
    """Both grades of one completion: {grade: {"formatted", "answer", "correct", "timeout"}}. `golds` are the
    suite's answers as strings, `paper_golds` as the reference passes them (paper_grader.reference_golds). Each gold
    answer gets the grader's time bound (the paper's grade may spend a few 1-second bounds on each)."""
    from grpo_lambda import paper_grader

    verdicts = {}
    for grade, reader, check, expected in (
        ("paper", paper_grader.read_answer, paper_grader.is_correct, paper_golds),
        ("corrected", read_answer, is_correct, golds),
    ):
        formatted, answer = reader(completion, template)
        bound = grader.timeout_s * max(len(expected), 1)
        correct = grader([(answer, expected)], check, bound)[0] if answer is not None else False
        verdicts[grade] = {
            "formatted": formatted,
            "answer": answer,
            "correct": bool(correct),
            "timeout": correct is None,
        }
    return verdicts
