"""Verifiable rewards (§2: r_T = 1 for a correct final answer, 0 otherwise) and the format reward (weight 0.0 in
the paper's runs, Table 2), registered by name as in open-r1.

Each reward follows TRL's signature `(completions, **dataset_columns) -> list[float]`; the gold answers come in the
dataset's `answer` column (several acceptable answers one per line). Where the answer is read depends on the
prompt template (answers.reward_answer: as the evaluation's corrected grade reads it).
"""

from __future__ import annotations

from collections.abc import Callable

from grpo_lambda.errors import GRPOLambdaError

from .answers import ANSWER_SEPARATOR, has_format, reward_answer
from .grading import Grader
from .templates import PromptTemplate, check_template


def completion_text(completion) -> str:
    """TRL passes a string (plain-text prompts) or a list of messages (conversational prompts)."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion if message.get("role", "assistant") == "assistant")


class AccuracyReward:
    """1.0 if the completion's final answer equals a gold answer under math-verify, else 0.0. Each item is graded
    within `timeout_s` in a worker process; an item that times out scores 0 and is counted in
    `reward/grading_timeouts`."""

    __name__ = "accuracy_reward"

    def __init__(self, template: PromptTemplate = "no", timeout_s: float = 5.0):
        check_template(template)
        self.template = template
        self.grader = Grader(timeout_s)

    def __call__(self, completions: list, answer: list[str], log_metric=None, **kwargs) -> list[float]:
        predictions = [reward_answer(completion_text(c), self.template) for c in completions]
        items = [(p, str(gold).split(ANSWER_SEPARATOR)) for p, gold in zip(predictions, answer, strict=True) if p]
        before = self.grader.timeouts
        graded = iter(self.grader(items))
        rewards = [float(bool(next(graded))) if p else 0.0 for p in predictions]
        if log_metric is not None:
            log_metric("reward/grading_timeouts", float(self.grader.timeouts - before))
            log_metric("reward/answer_found", sum(p is not None for p in predictions) / max(len(predictions), 1))
        return rewards


class FormatReward:
    """1.0 if the completion carries the answer marker its template asks for (\\boxed{}, or </think> <answer>…)."""

    __name__ = "format_reward"

    def __init__(self, template: PromptTemplate = "no"):
        check_template(template)
        self.template = template

    def __call__(self, completions: list, **kwargs) -> list[float]:
        return [float(has_format(completion_text(c), self.template)) for c in completions]


def exact_match(completion: str, answer: str) -> bool:
    """The completion equals the answer up to whitespace: a wrong or missing token, or trailing text, fails."""
    return completion.split() == answer.split()


class ExactMatchReward:
    """1.0 if the whole completion equals a gold answer up to whitespace, else 0.0: the exact verifier of tasks whose
    answer is one string, such as the built-in `credit_echo`. No template, no answer extraction."""

    __name__ = "exact_match_reward"

    def __init__(self, template: PromptTemplate = "no"):
        check_template(template)

    def __call__(self, completions: list, answer: list[str], **kwargs) -> list[float]:
        return [
            float(any(exact_match(completion_text(c), gold) for gold in str(golds).split(ANSWER_SEPARATOR)))
            for c, golds in zip(completions, answer, strict=True)
        ]


REWARD_FUNCS: dict[str, Callable[..., Callable]] = {
    "accuracy": AccuracyReward,
    "format": FormatReward,
    "exact": ExactMatchReward,
}


def get_reward_funcs(names: list[str], template: PromptTemplate = "no", timeout_s: float = 5.0) -> list[Callable]:
    unknown = [name for name in names if name not in REWARD_FUNCS]
    if unknown:
        raise GRPOLambdaError(f"unknown reward function(s) {unknown}; choose from {sorted(REWARD_FUNCS)}.")
    return [
        AccuracyReward(template, timeout_s) if name == "accuracy" else REWARD_FUNCS[name](template) for name in names
    ]
