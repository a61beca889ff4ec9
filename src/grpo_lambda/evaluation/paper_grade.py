"""The `paper` grade: understand-r1-zero's evaluation, the one the paper's numbers come from, rule for rule.

Re-implemented from the reference (sail-sg/understand-r1-zero: `evaluate_model.py` and
`understand_r1_zero/math_grader.py`) so that accuracies compare with the paper's like for like, its quirks included.
docs/evaluation.md lists every rule with an example and how the `corrected` grade (evaluation.corrected_grade)
differs.

Reading the answer (`read_answer`) is the one reader's (grpo_lambda.answers.read_answer) with the reference's three
departures switched on (REFERENCE_READING), and the golds are read `verbatim` (`reference_golds`):
1. qwen_math and no: the last `\\boxed` of the completion must be written `\\boxed{…}` with balanced braces; its
   content is the answer. Any other last box (`\\boxed 5`, `\\boxed {5}`, unclosed) is no answer: unformatted, 0
   (`strict_braces`).
2. r1: the completion must contain `</think> <answer>` (one space; `exact_r1_mark`) and `</answer>`; the answer is
   everything after the last `<answer>` with every `</answer>` removed (`split_tags`), or, when it contains
   `\\boxed`, that box read as in 1 (an unreadable box there scores 0, though the completion counts as formatted).

Comparing an answer with one gold answer (`matches`; a list of golds is OR-ed): golds arrive as the suite stores
them (a number as `str(number)`, e.g. `142.0`; strings unstripped, Minerva's trailing newlines included); a boxed
gold is unboxed. The answer is correct if any of three checks says so:
3. Hendrycks' MATH normalisation (`_mathd_normalize`) makes the two strings equal;
4. the PRM800K normalisation (`_sympy_normalize`) makes them equal, or sympy finds their difference zero, element
   by element for tuples (fractions must match as written; an integer gold needs an integer answer); our one
   addition: sympy never gets an answer it could not evaluate in bounded time (`9**9**9`), which is "not equal"
   (`_within_bounds`);
5. math-verify, on the two strings put in `$…$`, with the reference's parse settings and 1-second time bounds, after
   a repetition filter for strings over 128 characters.
"""

from __future__ import annotations

import functools
import math
import re
import signal
import threading
from contextlib import contextmanager
from typing import NamedTuple

from grpo_lambda import answers
from grpo_lambda.errors import GRPOLambdaError

# The reference's reading, where it departs from the one reader (each with its test in tests/test_answers.py).
REFERENCE_READING = {"strict_braces": True, "exact_r1_mark": True, "split_tags": True}


def check_dependencies() -> None:
    """The reference reads LaTeX with pylatexenc 2.10 (check 4); without it that check would silently differ."""
    try:
        import pylatexenc.latex2text  # noqa: F401
    except ImportError:
        raise GRPOLambdaError(
            "the paper grade needs pylatexenc (the reference pins 2.10): pip install pylatexenc==2.10 "
            "(make install does)."
        ) from None


# ---------------------------------------------------------------------------------------------------------------
# Reading the answer


def read_answer(completion: str, template: str) -> tuple[bool, str | None]:
    """(formatted, answer) of a completion under the reference's rules 1–2."""
    return answers.read_answer(completion, template, **REFERENCE_READING)


def reference_golds(value) -> list[str]:
    """The gold answers the reference compares with: a list's items, or the one value; numbers as `str(number)`,
    strings as stored."""
    return answers.gold_answers(value, verbatim=True)


def is_correct(answer: str, golds: list[str]) -> bool:
    """Whether `answer` matches any of the gold answers (rules 3–5). No time bound here: the caller sets one."""
    return any([matches(answer, gold) for gold in golds])  # the reference grades every gold


def matches(answer: str, gold: str) -> bool:
    if "\\boxed" in gold:
        gold = answers.last_box(gold, strict_braces=True)
        if gold is None:
            return False
    return _mathd_equal(answer, gold) or _sympy_equal(answer, gold) or _math_verify_equal(answer, gold)


# ---------------------------------------------------------------------------------------------------------------
# Check 3: Hendrycks' MATH normalisation

_ENCLOSING_TEXT = re.compile(r"^\\text\{(?P<text>.+?)\}$")

# Unit words removed as whole words (MathQA's list, in the reference's order, duplicates included: every item is a
# regular expression, so "q ." matches "q" followed by a space and any character). The plural of each follows.
_UNIT_WORDS_SINGULAR = (
    "east",
    "degree",
    "mph",
    "kmph",
    "ft",
    "m sqaure",
    " m east",
    "sq m",
    "deg",
    "mile",
    "q .",
    "monkey",
    "prime",
    "ratio",
    "profit of rs",
    "rd",
    "o",
    "gm",
    "p . m",
    "lb",
    "tile",
    "per",
    "dm",
    "lt",
    "gain",
    "ab",
    "way",
    "west",
    "a .",
    "b .",
    "c .",
    "d .",
    "e .",
    "f .",
    "g .",
    "h .",
    "t",
    "a",
    "h",
    "no change",
    "men",
    "soldier",
    "pie",
    "bc",
    "excess",
    "st",
    "inches",
    "noon",
    "percent",
    "by",
    "gal",
    "kmh",
    "c",
    "acre",
    "rise",
    "a . m",
    "th",
    "π r 2",
    "sq",
    "mark",
    "l",
    "toy",
    "coin",
    "sq . m",
    "gallon",
    "° f",
    "profit",
    "minw",
    "yr",
    "women",
    "feet",
    "am",
    "pm",
    "hr",
    "cu cm",
    "square",
    "v â € ™",
    "are",
    "rupee",
    "rounds",
    "cubic",
    "cc",
    "mtr",
    "s",
    "ohm",
    "number",
    "kmph",
    "day",
    "hour",
    "minute",
    "min",
    "second",
    "man",
    "woman",
    "sec",
    "cube",
    "mt",
    "sq inch",
    "mp",
    "∏ cm ³",
    "hectare",
    "more",
    "sec",
    "unit",
    "cu . m",
    "cm 2",
    "rs .",
    "rs",
    "kg",
    "g",
    "month",
    "km",
    "m",
    "cm",
    "mm",
    "apple",
    "liter",
    "loss",
    "yard",
    "pure",
    "year",
    "increase",
    "decrease",
    "d",
    "less",
    "Surface",
    "litre",
    "pi sq m",
    "s .",
    "metre",
    "meter",
    "inch",
)
_UNIT_WORD_PATTERNS = tuple(
    re.compile(r"(^|\W)" + word + r"($|\W)")
    for word in (*_UNIT_WORDS_SINGULAR, *(w + "s" for w in _UNIT_WORDS_SINGULAR))
)


def _mathd_normalize(answer: str) -> str:
    """Strip, unwrap an enclosing `\\text{…}`, then `_hendrycks_strip`; if that fails, the unwrapped string."""
    answer = answer.strip()
    try:
        enclosed = _ENCLOSING_TEXT.search(answer)
        if enclosed:
            answer = enclosed["text"].strip()
        return _hendrycks_strip(answer)
    except Exception:  # noqa: BLE001 - the reference falls back on any failure (e.g. a second "\text{ ")
        return answer


def _mathd_equal(answer: str, gold: str) -> bool:
    return _mathd_normalize(gold) == _mathd_normalize(answer)


def _hendrycks_strip(text: str) -> str:
    """The MATH benchmark's answer normalisation as the reference extends it, step by step in its order."""
    text = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", text)
    text = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", text).replace("bmatrix", "pmatrix")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    text = text.replace("\\left", "").replace("\\right", "")
    # A trailing "\text{…}" goes (from the first "\text{" whose match reaches the end), unless nothing would remain.
    shorter = re.sub(r"\\text{.*?}$", "", text).strip()
    if shorter and shorter != text:
        text = shorter
    for _ in range(2):
        for pattern in _UNIT_WORD_PATTERNS:
            shorter = pattern.sub(r"\1\2", text)
            if shorter:
                text = shorter
    text = text.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in text:  # everything from "\text{ " on is taken for a unit ("96 \text{ or } 97" → "96 ")
        before, *after = text.split("\\text{ ")
        if len(after) != 1:
            raise ValueError("more than one '\\text{ '")
        text = before
    text = text.replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "k = 5" → " 5"
        text = sides[1]
    text = _brace_sqrt_arguments(text).replace(" ", "")
    text = _brace_frac_arguments(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _slash_to_frac(text)


def _brace_sqrt_arguments(text: str) -> str:
    """`\\sqrt3` → `\\sqrt{3}` (one character); an empty argument raises, as in the reference."""
    head, *pieces = text.split("\\sqrt")
    for piece in pieces:
        head += "\\sqrt" + (piece if piece[0] == "{" else "{" + piece[0] + "}" + piece[1:])
    return head


def _brace_frac_arguments(text: str) -> str:
    """`\\frac12` → `\\frac{1}{2}`, `\\frac1{72}` → `\\frac{1}{72}`; a one-character tail leaves `text` as it was."""
    head, *pieces = text.split("\\frac")
    for piece in pieces:
        head += "\\frac"
        if piece[0] == "{":
            head += piece
        elif len(piece) < 2:
            return text
        elif piece[1] != "{":
            head += "{" + piece[0] + "}{" + piece[1] + "}" + piece[2:]
        else:
            head += "{" + piece[0] + "}" + piece[1:]
    return head


def _slash_to_frac(text: str) -> str:
    """`3/4` → `\\frac{3}{4}` when both sides are integers written plainly."""
    parts = text.split("/")
    if len(parts) != 2:
        return text
    try:
        numerator, denominator = int(parts[0]), int(parts[1])
    except ValueError:
        return text
    if text != f"{numerator}/{denominator}":
        return text
    return "\\frac{" + str(numerator) + "}{" + str(denominator) + "}"


# ---------------------------------------------------------------------------------------------------------------
# Check 4: the PRM800K normalisation and sympy

_PLAIN_UNITS = (
    "degree",
    "cm",
    "centimeter",
    "meter",
    "mile",
    "second",
    "minute",
    "hour",
    "day",
    "week",
    "month",
    "year",
    "foot",
    "feet",
    "inch",
    "yard",
)
_PLAIN_UNIT_PATTERNS = tuple(re.compile(unit + r"(es)?(s)? *(\^[0-9]+)?") for unit in _PLAIN_UNITS)
_THOUSANDS_COMMA = re.compile(r"(\d)(,)(\d\d\d)($|\D)")
_BRACKETS = "()[]"


def _sympy_normalize(expr: str) -> str:
    enclosed = _ENCLOSING_TEXT.search(expr)
    if enclosed:
        expr = enclosed["text"]
    expr = expr.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
    expr = expr.replace(" or ", " , ").replace(" and ", " , ")  # hedges become tuples
    expr = expr.replace("million", "*10^6").replace("billion", "*10^9").replace("trillion", "*10^12")
    for pattern in _PLAIN_UNIT_PATTERNS:  # anywhere, not only as whole words
        expr = pattern.sub("", expr)
    expr = re.sub(r"\^ *\\circ", "", expr)
    if expr and expr[0] == "{" and expr[-1] == "}":
        expr = expr[1:-1]
    expr = re.sub(r",\\! *", "", expr)
    if _is_float(expr) and _is_near_integer(float(expr)):
        expr = str(int(round(float(expr))))
    if "\\" in expr:
        try:
            expr = _latex_to_text(expr)
        except Exception:  # noqa: BLE001 - the reference keeps the LaTeX when pylatexenc fails
            pass
    expr = re.sub("- *", "-", expr)
    expr = re.sub("([0-9]) +([0-9])", r"\1+\2", expr)  # a mixed number "7 3/4" → "7+3/4"
    expr = expr.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _str_is_int(expr):
        expr = str(int(float(expr.replace(",", ""))))  # truncates: "0.99999999" → "0"
    return expr


def _latex_to_text(expr: str) -> str:
    from pylatexenc.latex2text import LatexNodes2Text

    expr = expr.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    expr = LatexNodes2Text().latex_to_text(expr)
    for symbol, word in (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*")):
        expr = expr.replace(symbol, word)
    return expr.strip()


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_near_integer(value: float) -> bool:
    try:
        return abs(value - int(round(value))) <= 1e-7
    except (OverflowError, ValueError):  # inf, nan
        return False


def _strip_thousands_commas(expr: str) -> str:
    while True:
        shorter = _THOUSANDS_COMMA.sub(r"\1\3\4", expr)
        if shorter == expr:
            return expr
        expr = shorter


def _str_is_int(text: str) -> bool:
    try:
        return _is_near_integer(float(_strip_thousands_commas(text)))
    except ValueError:
        return False


def _split_tuple(expr: str) -> list[str]:
    expr = _strip_thousands_commas(expr)
    if not expr:
        return []
    inner = expr[1:-1]
    if len(expr) > 2 and expr[0] in _BRACKETS and expr[-1] in _BRACKETS and not any(c in _BRACKETS for c in inner):
        return [element.strip() for element in inner.split(",")]
    return [expr]


def _is_fraction(expr: str) -> bool:
    return re.search(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$", expr) is not None


def _sympy_equal(answer: str, gold: str) -> bool:
    gold_normalized, answer_normalized = _sympy_normalize(gold), _sympy_normalize(answer)
    if gold_normalized == answer_normalized:
        return True
    if not answer_normalized:
        return False
    gold_elements, answer_elements = _split_tuple(gold_normalized), _split_tuple(answer_normalized)
    if len(gold_elements) > 1 and (
        gold_normalized[0] != answer_normalized[0] or gold_normalized[-1] != answer_normalized[-1]
    ):
        return False  # a tuple's brackets must match: (a, b] is not (a, b)
    if len(gold_elements) != len(answer_elements):
        return False
    for gold_element, answer_element in zip(gold_elements, answer_elements):
        if _is_fraction(gold_element) and _is_fraction(answer_element):
            same = gold_element == answer_element  # unreduced fractions are not equal
        elif _str_is_int(gold_element) != _str_is_int(answer_element):
            same = False
        else:
            same = _difference_is_zero(gold_element, answer_element)
        if not same:
            return False
    return True


def _difference_is_zero(gold: str, answer: str) -> bool:
    """sympy.simplify((gold) - (answer)) == 0, tried only where it cannot hang. The reference's filter: at most two
    distinct letters, no `^{`, `^(` or exponents of two digits or more; ours, after it: `_within_bounds`."""
    from sympy import simplify
    from sympy.parsing import sympy_parser

    expr = f"({gold})-({answer})"
    letters = {c for c in expr.replace("sqrt", "").replace("frac", "") if c.isalpha()}
    if len(letters) > 2 or "^{" in expr or "^(" in expr or re.search(r"\^[0-9]+\^|\^[0-9][0-9]+", expr):
        return False
    transformations = sympy_parser.standard_transformations + (sympy_parser.implicit_multiplication_application,)
    if not _within_bounds(expr.replace("^", "**"), transformations):
        return False
    try:
        return bool(simplify(sympy_parser.parse_expr(expr.replace("^", "**"), transformations=transformations)) == 0)
    except Exception:  # noqa: BLE001 - anything sympy cannot read is "not equal"
        return False


# What sympy may build from an answer in check 4 (our addition; the reference has none, see `_within_bounds`).
_MAX_POWER = 100  # an exponent's size, and a factorial's n
_MAX_DIGITS = 10_000  # the decimal digits of an exact number
_MAX_TERMS = 500  # the monomials a polynomial of the expression's degree and generators may have
_NUMBERS = frozenset({"Integer", "Float", "Rational", "Number"})  # sympy's auto_number writes these
_FUNCTIONS = frozenset({"sqrt", "frac", "ln", "re", "im"})  # functions of one argument, values of its size
_FACTORIALS = frozenset({"factorial", "factorial2"})  # sympy's factorial_notation writes these for `n!`, `n!!`


class _Unbounded(Exception):
    pass


def _within_bounds(code: str, transformations: tuple) -> bool:
    """Whether sympy can parse and simplify `code` (an answer past the reference's filter) in bounded time.

    The reference's filter looks at `^` only, so `9**9**9`, `2^-9^9` (a tower behind a minus sign) or `99999999!`
    reach `parse_expr`, which evaluates them exactly, for hours, in C code that no alarm interrupts; and
    `simplify` expands: `(x**99-1)*(y**99-1)/((x-1)*(y-1))` has 9 801 terms. The reference runs under its
    trainer's worker timeouts; we grade outside any worker too (tests, scripts, a user's own code). We read the
    expression as sympy will (its own transformations, into a Python syntax tree; nothing is evaluated) and bound,
    from the literals alone: every exponent and factorial argument by _MAX_POWER (a symbol counting as 1), every
    exact number by _MAX_DIGITS digits, and the monomials of a polynomial of the expression's degree in its
    generators (symbols, constants such as pi, radicals, function values) by _MAX_TERMS: what cancelling or
    expanding can produce. Only numbers, names, + - * / **, tuples, undefined functions and the functions of
    _FUNCTIONS and _FACTORIALS may appear. Past a bound the answer is "not equal", unevaluated, as the reference's
    own filter does. We chose a check of the string over a time bound (a worker
    process per sympy call): it is deterministic and takes microseconds, where a time bound makes verdicts depend
    on the machine's load; it changes none of the reference's verdicts on scripts/check_paper_grade.py's corpus
    (largest exponent there: 19, in `8.224*10**-19`), and the evaluation still grades in a time-bounded worker."""
    import ast

    from sympy.parsing import sympy_parser

    try:
        tree = ast.parse(sympy_parser.stringify_expr(code, {}, _parse_globals(), transformations), mode="eval")
        _size(tree.body)
    except (_Unbounded, SyntaxError, ValueError, TypeError):  # parse_expr fails on the last three too: "not equal"
        return False
    return True


@functools.lru_cache(maxsize=1)
def _parse_globals() -> dict:
    """The names `sympy_parser.parse_expr` evaluates with by default (sympy's namespace and Python's builtin
    functions), so that `_within_bounds` reads a name as a function exactly where parse_expr will."""
    import builtins
    import types

    from sympy import Max, Min

    names: dict = {}
    exec("from sympy import *", names)  # noqa: S102 - what parse_expr itself runs
    names.update({k: v for k, v in vars(builtins).items() if isinstance(v, types.BuiltinFunctionType)})
    return {**names, "max": Max, "min": Min}


def _literal_digits(value) -> float:
    """log10(1 + |value|) of a literal (an int, a float, or a number written as a string, e.g. "1.5e-3")."""
    from decimal import Decimal, InvalidOperation

    if isinstance(value, str):
        try:
            number = Decimal(value)
        except InvalidOperation:
            return 1.0  # a symbol's name
        return max(number.adjusted() + 1, 1) if number.is_finite() and number else 1.0
    if isinstance(value, int):
        bits = abs(value).bit_length()
        return math.log10(1 + abs(value)) if bits < 1000 else bits * math.log10(2)
    if isinstance(value, float):
        return math.log10(1 + abs(value))
    raise _Unbounded


def _value_bound(digits: float) -> int:
    """The largest |value| of `digits` (log10(1 + |value|)), refused past _MAX_POWER."""
    if digits > math.log10(1 + _MAX_POWER):
        raise _Unbounded
    return math.ceil(10**digits - 1)


def _integer_literal(node) -> int | None:
    """n for `Integer(n)` or `-Integer(n)` as sympy writes an integer, else None."""
    import ast

    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign, node = (-1 if isinstance(node.op, ast.USub) else 1), node.operand
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Integer"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, int)
    ):
        return sign * node.args[0].value
    return None


class _Size(NamedTuple):
    """What `_within_bounds` knows of a part of the expression: `digits` bounds log10(1 + |value|) of the numbers it
    builds; `degree` is its total degree and `degrees` its degree in each generator (by its syntax)."""

    digits: float
    degree: int = 0
    degrees: dict[str, int] = {}

    def monomials(self) -> int:
        """The most monomials a polynomial of these degrees can have (both bounds hold; the smaller is kept)."""
        total = math.comb(self.degree + len(self.degrees), len(self.degrees))
        return min(total, math.prod(d + 1 for d in self.degrees.values()))


def _combined(left: _Size, right: _Size, digits: float, add: bool) -> _Size:
    """A sum (`add`) or a product or quotient of two parts."""
    keys = left.degrees.keys() | right.degrees.keys()
    if add:
        degrees = {k: max(left.degrees.get(k, 0), right.degrees.get(k, 0)) for k in keys}
        return _Size(digits, max(left.degree, right.degree), degrees)
    degrees = {k: left.degrees.get(k, 0) + right.degrees.get(k, 0) for k in keys}
    return _Size(digits, left.degree + right.degree, degrees)


def _generator(node, digits: float) -> _Size:
    """A symbol, a constant such as pi, a radical or a function's value: degree 1 in itself."""
    import ast

    return _Size(digits, 1, {ast.dump(node): 1})


def _size(node) -> _Size:
    """The _Size of a node of the expression's syntax tree; raises _Unbounded past a bound or on anything
    `_within_bounds` does not list."""
    import ast

    if isinstance(node, ast.Constant):
        size = _Size(_literal_digits(node.value))
    elif isinstance(node, ast.Name):
        size = _generator(node, 0.0)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        size = _size(node.operand)
    elif isinstance(node, ast.Tuple | ast.List):
        size = _Size(0.0)
        for element in map(_size, node.elts):
            size = _combined(size, element, max(size.digits, element.digits), add=True)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
        left, right = _size(node.left), _size(node.right)
        if isinstance(node.op, ast.Add | ast.Sub):
            size = _combined(left, right, max(left.digits, right.digits) + math.log10(2), add=True)
        else:
            size = _combined(left, right, left.digits + right.digits, add=False)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exponent = _size(node.left), _size(node.right)
        power = max(_value_bound(exponent.digits), 1)
        degrees = {k: d * power for k, d in base.degrees.items()}
        size = _Size(base.digits * power, base.degree * power, degrees)
        if _integer_literal(node.right) is None:  # a radical or a symbolic power: also a generator of its own
            size = _combined(size, _generator(node, size.digits), size.digits, add=False)
    elif isinstance(node, ast.Call) and not node.keywords:
        size = _call_size(node)
    else:
        raise _Unbounded
    if size.digits > _MAX_DIGITS or size.monomials() > _MAX_TERMS:
        raise _Unbounded
    return size


def _call_size(node) -> _Size:
    import ast

    function = node.func
    literals = all(isinstance(argument, ast.Constant) for argument in node.args)
    if isinstance(function, ast.Call) and isinstance(function.func, ast.Name) and function.func.id == "Function":
        digits = max([0.0, *(_size(argument).digits for argument in node.args)])  # f(x): an undefined function
        return _generator(node, digits)
    if not isinstance(function, ast.Name):
        raise _Unbounded
    if function.id in _NUMBERS and literals:
        return _Size(sum(_literal_digits(argument.value) for argument in node.args))
    if function.id in ("Symbol", "Function") and literals:
        return _generator(node, 0.0)
    if len(node.args) != 1:
        raise _Unbounded
    argument = _size(node.args[0])
    if function.id in _FUNCTIONS:
        return _generator(node, argument.digits)
    if function.id in _FACTORIALS:
        n = max(_value_bound(argument.digits), 1)
        digits = n * math.log10(n + 1)
        return _Size(digits) if not argument.degrees else _generator(node, digits)
    raise _Unbounded


# ---------------------------------------------------------------------------------------------------------------
# Check 5: math-verify with the reference's settings


@contextmanager
def _seconds_bound(seconds: int):
    """SIGALRM after `seconds`, raising TimeoutError (the reference's bound). math-verify's own bounds inside reset
    the alarm, exactly as they do in the reference. Only the main thread can take signals: elsewhere, no bound."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TimeoutError

    signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)


def _math_verify_equal(answer: str, gold: str) -> bool:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # extraction_mode is a list in the reference; math-verify compares it with "first_match", so it acts as its
    # default, any_match. Kept as the reference passes it.
    settings = dict(
        extraction_config=(LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()),
        fallback_mode="no_fallback",
        extraction_mode=["first_match"],
        parsing_timeout=1,
    )
    try:
        with _seconds_bound(1):
            try:
                if (len(answer) > 128 and _is_repetitive(answer)) or (len(gold) > 128 and _is_repetitive(gold)):
                    return False
                if _sympy_normalize(gold) == _sympy_normalize(answer):
                    return True
                answer = answer if "$" in answer else f"${answer}$"
                gold = gold if "$" in gold else f"${gold}$"
                return verify(parse(gold, **settings), parse(answer, **settings), timeout_seconds=1)
            except Exception:  # noqa: BLE001 - as the reference: any failure is "not equal"
                return False
    except TimeoutError:
        return False


def _is_repetitive(text: str) -> bool:
    """Whether the suffixes of `text` share, on average, long prefixes with their neighbours in sorted order:
    2·Σ LCP / (n(n+1)) > 0.2 (the reference's filter of degenerate, looping outputs).

    The suffix order comes from prefix doubling stopped once the compared prefixes reach n − 1 characters, as in the
    reference (ties it leaves are resolved the same way: the later suffix takes the slot)."""
    codes = [ord(c) for c in text]
    n = len(codes)
    if n <= 1:
        return False
    rank = _dense_ranks(codes)
    step = 1
    while step < n - 1:
        rank = _dense_ranks([(rank[i], rank[i + step] if i + step < n else -1) for i in range(n)])
        step *= 2
    order = [0] * n
    for position, r in enumerate(rank):
        order[r] = position
    shared, common = [0] * n, 0  # shared[r]: common prefix of the suffix ranked r and the next one
    for i in range(n):  # Kasai's sweep
        if rank[i] == n - 1:
            common = 0
            continue
        j = order[rank[i] + 1]
        while i + common < n and j + common < n and codes[i + common] == codes[j + common]:
            common += 1
        shared[rank[i]] = common
        common = max(common - 1, 0)
    return sum(shared) * 2 / (n * (n + 1)) > 0.2


def _dense_ranks(keys: list) -> list[int]:
    table = {key: index for index, key in enumerate(sorted(set(keys)))}
    return [table[key] for key in keys]
