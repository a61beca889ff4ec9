"""The evaluation's `corrected` grade: the best grading we can justify (docs/evaluation.md, "The two grades").

It reads the answer with the one reader (grpo_lambda.answers.read_answer), which departs from the `paper` grade's
reading (evaluation.paper_grade) in:
  1. r1: any whitespace (or none) may separate `</think>` and `<answer>` (`</think>\\n<answer>`), and the answer is
     the last complete `<answer>…</answer>` after `</think>`;
  2. a box may have spaces before its brace (`\\boxed {5}`, as TeX reads it);
and compares with math-verify (grading.parse_answer, the training reward's reading of LaTeX) after these rules:
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

import re

from grpo_lambda.answers import last_box
from grpo_lambda.grading import parse_answer, parse_gold

_E_NOTATION = re.compile(r"(?<![\w.\\])(\d+(?:\.\d*)?|\.\d+)[eE]([+-]?\d+)(?![\w.])")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")
_CONTROL_WORD_SPACE = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])")
_SPACING = re.compile(r"\s+|\\[ ,;:!]|\\quad|\\qquad|~")
_PERCENT = re.compile(r"\s*\\?%\s*$")
_SMALL = 1.0  # rule 7 applies to numbers below this size
_RELATIVE_TOLERANCE = 1e-4


def corrected_gold(gold: str) -> str:
    """Rule 3 and 4 on a gold answer: stripped, unboxed, e-notation written as a power of ten."""
    gold = gold.strip()
    if "\\boxed" in gold:
        gold = last_box(gold) or gold
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

    prediction = parse_answer(answer)
    expected = parse_gold(gold)
    if not prediction or not expected:
        return False
    if not verify(expected, prediction, timeout_seconds=None):
        return False
    return not _small_numbers_disagree(expected[0], prediction[0])


def is_correct(answer: str, golds: list[str]) -> bool:
    """The corrected grade's verdict on an answer read by `answers.read_answer` (golds as stored; rules 3–8)."""
    forms = _answer_forms(answer)
    for gold in map(corrected_gold, golds):
        for form in forms:
            if form and (_squeezed(form) == _squeezed(gold) or _same_value(form, gold)):
                return True
    return False
