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
An answer or gold whose exact value would take more than _MAX_DIGITS digits to write (`10^{10^{10^{10}}}`,
`99999999!`, `1e999999999`) is "not equal", unevaluated: math-verify would compute it for hours, in C code that no
alarm interrupts, so `is_correct` is bounded in time wherever it is called, not only in the grading worker.
"""

from __future__ import annotations

import math
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
_MAX_DIGITS = 100_000  # decimal digits of an exact number that evaluating an answer may build (milliseconds)


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


class _Unbounded(Exception):
    pass


def _within_bounds(parsed: list) -> bool:
    """Whether evaluating math-verify's reading of an answer (sympy objects, left unevaluated by the parse) builds no
    exact number of more than _MAX_DIGITS digits, judged from the expression tree alone in microseconds."""
    from sympy import Basic
    from sympy.matrices import MatrixBase

    try:
        for item in parsed:
            if isinstance(item, Basic | MatrixBase):
                _digits(item, {})
    except (_Unbounded, RecursionError):
        return False
    return True


def _digits(expr, scope: dict) -> float:
    """A bound on log10(1 + |value|) of every exact number evaluating `expr` builds; raises _Unbounded past
    _MAX_DIGITS. Symbols and constants count as 1 digit, a bound variable of a sum or product as its limits."""
    from sympy import Add, Basic, Float, Mul, Pow, Product, Rational, gamma
    from sympy.concrete.expr_with_limits import ExprWithLimits
    from sympy.functions.combinatorial.factorials import CombinatorialFunction
    from sympy.matrices import MatrixBase

    if isinstance(expr, MatrixBase):
        digits = max((_digits(entry, scope) for entry in expr), default=0.0)
    elif not isinstance(expr, Basic):
        digits = 0.0
    elif expr in scope:
        digits = scope[expr]
    elif isinstance(expr, Float):
        sign, mantissa, exponent, bits = expr._mpf_
        digits = max((exponent + bits) * math.log10(2), 0.0) if mantissa else 0.0
    elif isinstance(expr, Rational):
        digits = _integer_digits(expr.p) + (_integer_digits(expr.q) if expr.q != 1 else 0.0)
    elif expr.is_Atom:  # a symbol, pi, E, I, oo
        digits = 1.0
    elif isinstance(expr, Pow):
        base = _digits(expr.base, scope)
        digits = base * _value(_digits(expr.exp, scope)) if base else 0.0
    elif isinstance(expr, CombinatorialFunction | gamma):  # n!, n!!, !n, binom(n, k), (n)_k, Γ(n)
        n = _value(max(_digits(argument, scope) for argument in expr.args))
        digits = n * math.log10(n + 1)
    elif isinstance(expr, ExprWithLimits):  # a sum, product or integral: its variable ranges over its limits
        inner = dict(scope)
        terms = 1.0
        for variable, *limits in expr.limits:
            ends = max((_digits(limit, scope) for limit in limits), default=1.0)
            inner[variable] = ends
            terms *= 2 * _value(ends) + 1
        term = _digits(expr.function, inner)
        digits = term * terms if isinstance(expr, Product) else term + math.log10(terms)
    elif isinstance(expr, Mul):
        digits = sum(_digits(argument, scope) for argument in expr.args)
    elif isinstance(expr, Add):
        digits = max(_digits(argument, scope) for argument in expr.args) + math.log10(len(expr.args))
    else:  # functions, relations, sets, intervals, tuples: no larger than their arguments
        digits = max((_digits(argument, scope) for argument in expr.args), default=0.0)
    if not digits <= _MAX_DIGITS:
        raise _Unbounded
    return digits


def _integer_digits(value: int) -> float:
    """log10(1 + |value|), from the bit length where the value is too large for a float."""
    bits = abs(value).bit_length()
    return math.log10(1 + abs(value)) if bits < 1000 else bits * math.log10(2)


def _value(digits: float) -> float:
    """The largest |value| a number of `digits` (log10(1 + |value|)) may have, refused where it could not be an
    exponent or a factorial's argument within _MAX_DIGITS."""
    if digits > math.log10(_MAX_DIGITS) + 1:
        raise _Unbounded
    return 10**digits - 1


def _same_value(answer: str, gold: str) -> bool:
    from math_verify import verify

    prediction = parse_answer(answer)
    expected = parse_gold(gold)
    if not prediction or not expected:
        return False
    if not (_within_bounds(prediction) and _within_bounds(expected)):
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
