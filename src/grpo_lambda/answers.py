"""Reading answers and gold answers: the one reader behind the training reward and both of the evaluation's grades.

- The answer of a completion (`read_answer`): for `qwen_math` and `no`, the content of the last `\\boxed`, braces
  balanced, with TeX's optional spaces before the brace (`\\boxed {5}` is 5); for `r1`, the last complete
  `<answer>…</answer>` after `</think>` (any whitespace, or none, between `</think>` and `<answer>`), or the box
  inside it. `has_format` is whether that answer marker is there.
- The training reward reads the same answer (`reward_answer`), except that for `no` a completion without a box is
  graded whole (math-verify takes its last expression), so a model that does not box yet still gets a signal.
- Gold answers (`gold_answers`): a stored gold (a string, a number such as AMC's 142.0, or a list of acceptable
  answers, OR-ed) as stripped strings, a whole float as an integer ("142"). Training sets keep several golds in one
  string column, joined by `ANSWER_SEPARATOR`.

The `paper` grade reads as understand-r1-zero's grader does (evaluation.paper_grade), which departs from this reader
in exactly the rules its keyword arguments name: `strict_braces`, `exact_r1_mark`, `split_tags`, and golds read
`verbatim` (docs/evaluation.md, "Reading the answer").
"""

from __future__ import annotations

import re

ANSWER_SEPARATOR = "\n"  # between acceptable gold answers in a training set's `answer` column
R1_MARK = "</think> <answer>"  # the r1 template's marker, as the prompt spells it out

_R1_OPENING = re.compile(r"</think>\s*<answer>")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def last_box(text: str, *, strict_braces: bool = False) -> str | None:
    """The content of the last `\\boxed{…}`, braces balanced; None if there is no box, or if the last one has no
    brace (`\\boxed 210`) or is unclosed.

    Args:
        strict_braces: the brace must follow `\\boxed` at once, as understand-r1-zero's `remove_boxed` requires
            (`\\boxed {5}` is then no answer); by default spaces may come first, as TeX reads them.
    """
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    begin = start + len("\\boxed")
    if not strict_braces:
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


def read_answer(
    completion: str,
    template: str,
    *,
    strict_braces: bool = False,
    exact_r1_mark: bool = False,
    split_tags: bool = False,
) -> tuple[bool, str | None]:
    """(formatted, answer) of a completion: whether it carries its template's answer marker, and the answer (None
    when there is none, or when the box that should hold it is unreadable).

    qwen_math and no: formatted when the last box is readable (`last_box`); a bare problem (`no`) states no other
    marker. r1: formatted when `</think>`, whitespace, `<answer>` and a later `</answer>` appear; the answer is the
    last complete tag's text, stripped, or the box inside it when it holds `\\boxed` (an unreadable box: formatted,
    no answer).

    Args:
        strict_braces: see `last_box` (for the box inside an r1 tag too).
        exact_r1_mark: r1 needs `</think> <answer>` with exactly one space (R1_MARK), as the reference does.
        split_tags: r1 as the reference splits it: formatted when the mark and a `</answer>` appear anywhere; the
            answer is all text after the last `<answer>` with every `</answer>` removed, not stripped.
    """
    if template != "r1":
        answer = last_box(completion, strict_braces=strict_braces)
        return answer is not None, answer
    if exact_r1_mark:
        opening = completion.find(R1_MARK)
    else:
        found = _R1_OPENING.search(completion)
        opening = found.start() if found else -1
    if opening < 0:
        return False, None
    if split_tags:
        if "</answer>" not in completion:
            return False, None
        answer = completion.split("<answer>")[-1].replace("</answer>", "")
    else:
        tags = _ANSWER_TAG.findall(completion, opening)
        if not tags:
            return False, None
        answer = tags[-1]
    if "\\boxed" in answer:
        return True, last_box(answer, strict_braces=strict_braces)
    return True, (answer if split_tags else answer.strip())


def has_format(completion: str, template: str) -> bool:
    """Whether the completion carries the answer marker its template asks for (the format reward; the corrected
    grade's format rate)."""
    return read_answer(completion, template)[0]


def reward_answer(completion: str, template: str) -> str | None:
    """The answer the training reward grades: `read_answer`'s, or for `no` without a readable box the whole text
    (math-verify then takes its last expression, so models that do not box yet still get a signal)."""
    formatted, answer = read_answer(completion, template)
    if not formatted and template == "no":
        return completion
    return answer


def gold_answers(value, *, verbatim: bool = False) -> list[str]:
    """A stored gold answer — a string, a number (AMC's 142.0) or a list of acceptable answers — as a list of
    strings: stripped, a whole float as an integer ("142"), None and empty ones left out.

    Args:
        verbatim: as understand-r1-zero's grader receives them: numbers as `str(number)` ("142.0"), everything else
            as stored (Minerva's trailing newlines kept, nothing left out).
    """
    values = value if isinstance(value, list) else [value]
    if verbatim:
        return [str(v) if isinstance(v, (int, float)) else v for v in values]
    golds = []
    for gold in values:
        if isinstance(gold, float) and gold.is_integer():
            gold = int(gold)
        text = "" if gold is None else str(gold).strip()
        if text:
            golds.append(text)
    return golds
