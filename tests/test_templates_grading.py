"""Prompt templates, the rewards on rendered and real solutions, and grading that is bounded in time and thread-safe.
(Reading the answer per template: tests/test_answers.py.)"""

import threading

import pytest

from grpo_lambda.answers import has_format
from grpo_lambda.grading import Grader
from grpo_lambda.rewards import AccuracyReward, FormatReward, get_reward_funcs
from grpo_lambda.templates import render_completion, render_prompt


@pytest.mark.parametrize("template", ["qwen_math", "r1", "no"])
def test_rendered_solutions_are_graded_correct_and_well_formatted(template):
    completion = render_completion("2 + 3 = 5.", "5", template)
    assert has_format(completion, template)
    assert AccuracyReward(template)([completion], answer=["5"]) == [1.0]
    assert FormatReward(template)([completion]) == [1.0]
    prompt = render_prompt("What is 2 + 3?", template)
    assert "What is 2 + 3?" in (prompt if isinstance(prompt, str) else prompt[-1]["content"])


def test_real_gold_answers_verify(shared_data):
    from datasets import load_from_disk

    rows = load_from_disk(str(shared_data / "math500_solutions")).select(range(40))
    reward = AccuracyReward("qwen_math")
    scores = reward(rows["output"], answer=rows["gt_answer"])
    assert sum(scores) >= 36, scores  # the reference solutions end in the right \boxed{} answer
    wrong = reward(rows["output"], answer=list(reversed(rows["gt_answer"])))
    assert sum(wrong) <= 4


def test_pathological_answers_time_out_score_zero_and_are_counted():
    grader = Grader(timeout_s=1.0)
    results = grader([("9^{9^{9^{9^{9}}}}", ["1"]), ("14", ["14"]), ("(x+1)^{100000}", ["2"])])
    assert results == [None, True, None] and grader.timeouts == 2
    logged = {}
    reward = AccuracyReward("qwen_math", timeout_s=1.0)
    scores = reward(
        ["\\boxed{9^{9^{9^{9^{9}}}}}", "\\boxed{3}"],
        answer=["1", "3"],
        log_metric=lambda k, v: logged.setdefault(k, v),
    )
    assert scores == [0.0, 1.0] and logged["reward/grading_timeouts"] == 1.0


def test_grading_works_from_a_thread():
    out = {}
    reward = get_reward_funcs(["accuracy"], "qwen_math")[0]
    thread = threading.Thread(target=lambda: out.setdefault("scores", reward(["\\boxed{0.5}"], answer=["\\frac12"])))
    thread.start()
    thread.join(timeout=60)
    assert out["scores"] == [1.0]
    assert reward.__name__ == "accuracy_reward"
