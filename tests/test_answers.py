"""The one reader of answers and gold answers (grpo_lambda.answers): the training reward and both grades read with it,
and the paper grade departs from it in exactly the documented rules, which together reproduce the reference's reading.
"""

import itertools

import pytest

from grpo_lambda.answers import gold_answers, has_format, last_box, read_answer, reward_answer
from grpo_lambda.data import gold_answer
from grpo_lambda.evaluation import grades, paper_grade
from grpo_lambda.grading import Grader
from grpo_lambda.rewards import AccuracyReward


def test_last_box_balances_braces():
    assert last_box("\\boxed{1} then \\boxed{\\frac{a}{b}} end") == "\\frac{a}{b}"
    assert last_box("no box") is None
    assert last_box("\\boxed{unclosed") is None
    assert last_box("\\boxed {5} and \\boxed\n{6}") == "6"  # TeX skips spaces, newlines included, before the brace
    assert last_box("\\boxed{4}, i.e. \\boxed 2") is None  # the last box decides, and it has no brace


@pytest.mark.parametrize(
    "template,text,expected",
    [
        ("qwen_math", "so \\boxed{42}.", "42"),
        ("qwen_math", "so \\boxed {42}.", "42"),
        ("qwen_math", "the answer is 42", None),  # qwen_math requires \boxed{}
        ("qwen_math", "\\boxed{4}, i.e. \\boxed 2", None),  # as both grades: the last box decides
        ("r1", " think </think> <answer> 7 </answer>", "7"),
        ("r1", " think </think>\n<answer>7</answer>", "7"),
        ("r1", " </think> <answer> \\boxed{7} </answer>", "7"),
        ("r1", " </think> <answer> \\boxed 7 </answer>", None),  # an unreadable box in the tag is no answer
        ("r1", " the answer is \\boxed{7}", None),  # r1 requires <answer>
        ("r1", " so <answer> 7 </answer>", None),  # … after </think>
        ("no", "the answer is 42", "the answer is 42"),  # math-verify then takes the last expression
        ("no", "\\boxed{5} and 6", "5"),
    ],
)
def test_reward_answer_follows_the_template(template, text, expected):
    assert reward_answer(text, template) == expected


@pytest.mark.parametrize(
    "template,text,formatted",
    [
        ("qwen_math", "\\boxed {5}", True),
        ("no", "5", False),
        ("r1", " </think> <answer> 5 </answer>", True),
        ("r1", " </think><answer>5</answer>", True),
        ("r1", " </think> <answer> 5", False),
        ("r1", " <answer> 5 </answer>", False),
    ],
)
def test_has_format_is_the_readers_format_flag(template, text, formatted):
    assert has_format(text, template) is formatted is read_answer(text, template)[0]


def test_gold_answers_as_stripped_strings():
    assert gold_answers("204") == ["204"]
    assert gold_answers(142.0) == ["142"] and gold_answers(12.5) == ["12.5"] and gold_answers(3) == ["3"]
    assert gold_answers(["9.6\n", " ", None, "\\frac{1}{2}"]) == ["9.6", "\\frac{1}{2}"]
    assert gold_answers(None) == [] and gold_answers([]) == []
    # the training set's `answer` column: the same golds, one per line
    assert gold_answer(["3", " 4 ", 5.0]) == "3\n4\n5" and gold_answer(142.0) == "142"
    assert gold_answer([" "]) is None and gold_answer(None) is None


def test_the_reward_and_both_grades_read_the_same_answer():
    """The acceptance test of one reader: the training reward (qwen_math, gold "5") and the corrected grade credit
    `\\boxed {5}`, `\\boxed{5}` and `\\boxed{\\text{5}}`. The paper grade credits the last two and, on `\\boxed {5}`,
    follows understand-r1-zero's grader: its `remove_boxed` needs `\\boxed{` verbatim, so a space before the brace
    is no answer (unformatted, 0; the `strict_braces` departure)."""
    completions = ["So \\boxed {5}.", "So \\boxed{5}.", "So \\boxed{\\text{5}}."]
    assert AccuracyReward("qwen_math")(completions, answer=["5"] * 3) == [1.0, 1.0, 1.0]
    grader = Grader(warm_up=grades.warm_up)
    verdicts = [
        grades.grade_sample(grader, c, "qwen_math", gold_answers("5"), paper_grade.reference_golds("5"))
        for c in completions
    ]
    grader.close()
    assert [v["corrected"]["correct"] for v in verdicts] == [True, True, True]
    assert [v["paper"]["correct"] for v in verdicts] == [False, True, True]
    assert [v["paper"]["formatted"] for v in verdicts] == [False, True, True]


# ---------------------------------------------------------------------------------------------------------------
# The paper grade's reading: the one reader with the reference's departures, and nothing else


def _last_boxed_only_string(string):
    idx = string.rfind("\\boxed")
    if idx < 0:
        idx = string.rfind("\\fbox")
        if idx < 0:
            return None
    i = idx
    right_brace_idx = None
    num_left_braces_open = 0
    while i < len(string):
        if string[i] == "{":
            num_left_braces_open += 1
        if string[i] == "}":
            num_left_braces_open -= 1
            if num_left_braces_open == 0:
                right_brace_idx = i
                break
        i += 1
    return None if right_brace_idx is None else string[idx : right_brace_idx + 1]


def _remove_boxed(s):
    left = "\\boxed{"
    try:
        assert s[: len(left)] == left
        assert s[-1] == "}"
        return s[len(left) : -1]
    except Exception:
        return None


def _reference_extract(passage):
    if "\\boxed" in passage:
        return _remove_boxed(_last_boxed_only_string(passage))
    return None


def reference_reading(completion: str, template: str) -> tuple[bool, str | None]:
    """understand-r1-zero's reading, transcribed line for line from `math_grader.py` (commit dfca49d): what
    `boxed_reward_fn` (qwen_math, no) and `answer_tag_reward_fn` (r1) extract before they compare."""
    if template == "r1":
        if "</think> <answer>" in completion and "</answer>" in completion:
            model_answer = completion.split("<answer>")[-1].replace("</answer>", "")
            if "\\boxed" in model_answer:
                model_answer = _reference_extract(model_answer)
                if model_answer is None:
                    return True, None
            return True, model_answer
        return False, None
    model_answer = _reference_extract(completion)
    return model_answer is not None, model_answer


_ANSWERS = ["5", " 5 ", "\\frac{1}{2}", "{a}{b}", "", "\\boxed{5}", "\\boxed {5}", "\\boxed 5", "\\boxed{5", "5}"]
_FORMS = [  # "@" stands for the answer
    "So \\boxed{@}.",
    "\\boxed {@}",
    "\\boxed\n{@}",
    "\\boxed{@} and \\boxed 3",
    "\\boxed 5} {@}",
    "\\boxed{1} \\boxed{@",
    "no box @",
    "@",
    " ok </think> <answer> @ </answer>",
    " ok </think>\n<answer>@</answer>",
    " ok </think><answer>@</answer>",
    " ok </think> <answer> @ </answer> trailing",
    " ok </think> <answer> @",
    " ok </answer> </think> <answer> @",
    " </think> <answer> 1 </answer> <answer> @ </answer>",
    " </think> <answer> @ </answer> <answer> 2",
    " </think> <answer></answer> <answer> @ </answer>",
    "<answer>@</answer>",
    " </think> <answer> \\boxed @ </answer>",
]
CORPUS = [
    (template, form.replace("@", answer))
    for template, form, answer in itertools.product(("qwen_math", "no", "r1"), _FORMS, _ANSWERS)
]

# Each departure: a completion on which it alone separates the one reader from the reference's reading.
DEPARTURES = [
    ("strict_braces", "qwen_math", "So \\boxed {5}.", (True, "5"), (False, None)),
    ("exact_r1_mark", "r1", " ok </think>\n<answer> 5 </answer>", (True, "5"), (False, None)),
    ("split_tags", "r1", " </think> <answer> 5 </answer> <answer> 6", (True, "5"), (True, " 6")),
]


def test_the_paper_reading_is_the_one_reader_with_the_documented_departures():
    assert set(paper_grade.REFERENCE_READING) == {name for name, *_ in DEPARTURES}
    assert all(paper_grade.REFERENCE_READING.values())
    differ = 0
    for template, completion in CORPUS:
        reference = reference_reading(completion, template)
        assert paper_grade.read_answer(completion, template) == reference, (template, completion)
        differ += read_answer(completion, template) != reference
    assert len(CORPUS) == 570 and differ > 100  # the corpus does exercise the departures


@pytest.mark.parametrize("name,template,completion,one_reader,reference", DEPARTURES, ids=[d[0] for d in DEPARTURES])
def test_each_departure_is_needed(name, template, completion, one_reader, reference):
    assert read_answer(completion, template) == one_reader
    assert reference_reading(completion, template) == reference == paper_grade.read_answer(completion, template)
    others = {key: True for key in paper_grade.REFERENCE_READING if key != name}
    assert read_answer(completion, template, **others) != reference  # without it, the reading is not the reference's
    assert read_answer(completion, template, **{name: True}) == reference


def test_the_paper_grade_takes_golds_verbatim():
    """The reference compares with the stored gold as it is: a number as `str(number)` (AMC's 142.0 stays "142.0"),
    a string unstripped (Minerva's trailing newline kept); the one reader strips and writes whole floats as integers.
    """
    for stored, one_reader, reference in [
        (142.0, ["142"], ["142.0"]),
        (["9.6\n"], ["9.6"], ["9.6\n"]),
        ("\\text{ellipse}", ["\\text{ellipse}"], ["\\text{ellipse}"]),
        (
            ["1.45 \\times 10^{-5}\n", "1.45 \\times 10^{-5}"],
            ["1.45 \\times 10^{-5}"] * 2,
            ["1.45 \\times 10^{-5}\n", "1.45 \\times 10^{-5}"],
        ),
    ]:
        assert gold_answers(stored) == one_reader
        assert paper_grade.reference_golds(stored) == reference == gold_answers(stored, verbatim=True)
