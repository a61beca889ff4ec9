"""The two grades every evaluated sample gets (docs/evaluation.md, "The two grades"), side by side:

- `paper`: understand-r1-zero's evaluation rule for rule (paper_grade), to compare with the paper;
- `corrected`: the best grading we can justify (corrected_grade).

Both read the answer with the one reader (grpo_lambda.answers; the paper grade with the reference's departures) and
run their checks in the time-bounded grading worker (grpo_lambda.grading.Grader).
"""

from __future__ import annotations

from grpo_lambda.answers import read_answer
from grpo_lambda.grading import Grader

from . import corrected_grade, paper_grade

GRADES: tuple[str, ...] = ("paper", "corrected")


def warm_up() -> None:
    """Each grade's check once, in the grading worker before anything is timed (Grader(warm_up=warm_up)): a cold
    first parse with pylatexenc and sympy takes seconds, enough to trip the paper grade's 1-second bounds."""
    paper_grade.is_correct("\\frac{1}{2}", ["(0.5, \\sqrt{2})"])
    corrected_grade.is_correct("\\frac{1}{2}", ["0.5"])


def grade_sample(grader: Grader, completion: str, template: str, golds: list[str], paper_golds: list[str]) -> dict:
    """Both grades of one completion: {grade: {"formatted", "answer", "correct", "timeout"}}. `golds` are the
    suite's answers as strings (answers.gold_answers), `paper_golds` as the reference passes them
    (paper_grade.reference_golds). Each gold answer gets the grader's time bound (the paper's grade may spend a few
    1-second bounds on each)."""
    verdicts = {}
    for grade, reader, check, expected in (
        ("paper", paper_grade.read_answer, paper_grade.is_correct, paper_golds),
        ("corrected", read_answer, corrected_grade.is_correct, golds),
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
