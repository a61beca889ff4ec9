"""Verifiable rewards (§2: r_T = 1 for a correct final answer, 0 otherwise) and the format reward of Table 2.

Each function follows TRL's reward signature: `(completions, **dataset_columns) -> list[float]`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from math_verify import parse, verify

from .data import ANSWER_SEPARATOR

_BOXED = re.compile(r"\\boxed\{.+\}", re.DOTALL)


def completion_text(completion) -> str:
    """TRL passes a string (standard format) or a list of messages (conversational format)."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion if message.get("role", "assistant") == "assistant")


def parse_gold(answer: str) -> list:
    """Gold answers are bare ("14", "\\frac{1}{2}"); math-verify reads LaTeX inside $…$ and plain expressions."""
    gold = parse(f"${answer}$")
    return gold if gold else parse(answer)


def accuracy_reward(completions: list, answer: list[str], **kwargs) -> list[float]:
    """1.0 if the completion's final answer (its \\boxed{} first, else its last expression) equals a gold one
    under math-verify, else 0.0. Several acceptable gold answers come one per line."""
    rewards = []
    for completion, gold in zip(completions, answer, strict=True):
        predicted = parse(completion_text(completion), extraction_mode="first_match")
        correct = bool(predicted) and any(verify(parse_gold(g), predicted) for g in str(gold).split(ANSWER_SEPARATOR))
        rewards.append(float(correct))
    return rewards


def format_reward(completions: list, **kwargs) -> list[float]:
    """1.0 if the completion puts an answer in \\boxed{} (weight 0.0 in the paper's runs, Table 2)."""
    return [float(bool(_BOXED.search(completion_text(c)))) for c in completions]


REWARD_FUNCS: dict[str, Callable[..., list[float]]] = {"accuracy": accuracy_reward, "format": format_reward}


def get_reward_funcs(names: list[str]) -> list[Callable[..., list[float]]]:
    unknown = [name for name in names if name not in REWARD_FUNCS]
    if unknown:
        raise SystemExit(f"grpo_lambda: unknown reward function(s) {unknown}; choose from {sorted(REWARD_FUNCS)}.")
    return [REWARD_FUNCS[name] for name in names]
