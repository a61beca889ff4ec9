"""Prompt templates of the understand-r1-zero evaluation protocol, shared by SFT, RL and evaluation.

- `qwen_math` (Qwen instruct models): a chat whose system message asks for the final answer in \\boxed{}; the
  model's own chat template renders it, which for Qwen2.5 is exactly understand-r1-zero's qwen_math string.
- `r1` (R1-distilled models): the R1-Zero plain-text prompt; the completion continues after "<think>" and ends
  with "</think> <answer> … </answer>".
- `no`: the bare problem. The evaluation sends it with no chat template, as understand-r1-zero does; training
  passes it as the user turn (TRL then applies the model's chat template).

Each template also fixes where the answer is read (the `\\boxed{}` or the `<answer>` tag): grpo_lambda.answers.
"""

from __future__ import annotations

from typing import Literal

PromptTemplate = Literal["qwen_math", "r1", "no"]
TEMPLATES: tuple[str, ...] = ("qwen_math", "r1", "no")

QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
R1_PROMPT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. The "
    "Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. "
    "The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.\n"
    "User: {problem}\nAssistant: <think>"
)
R1_STOP = "</answer>"


def check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"prompt_template={template!r} is not one of {', '.join(TEMPLATES)}.")


def render_prompt(problem: str, template: PromptTemplate) -> str | list[dict]:
    """The prompt in TRL's format: a list of messages (conversational) or a string (plain text, r1)."""
    check_template(template)
    if template == "qwen_math":
        return [{"role": "system", "content": QWEN_MATH_SYSTEM}, {"role": "user", "content": problem}]
    if template == "r1":
        return R1_PROMPT.format(problem=problem)
    return [{"role": "user", "content": problem}]


def render_completion(reasoning: str, answer: str, template: PromptTemplate) -> str:
    """A worked solution in the shape the template asks for (the SFT targets)."""
    check_template(template)
    if template == "r1":
        return f" {reasoning.strip()} </think> <answer> {answer} </answer>"
    return f"{reasoning.strip()}\nThe final answer is \\boxed{{{answer}}}."
