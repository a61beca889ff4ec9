"""`credit_echo`: a synthetic task with exact answers whose correctness hinges on a few early tokens.

A prompt gives a shift s and a few letters of a ten-letter alphabet; the completion is the letters shifted by s
(mod 10), followed by `repeats − 1` echoes of the same answer:

    prompt:      "+3 : e b h ="
    completion:  " h e a ; h e a ; h e a ; h e a ; h e a ; h e a ; h e a ; h e a"

With the toy tokenizer every " letter" and every " ;" is one token, so the default completion is 31 tokens plus EOS.
The only hard decisions are the first `num_letters` tokens (modular addition); the echoes copy them, which a model
learns long before it learns the addition table. The reward (1 for an exact match, 0 otherwise) therefore arrives
~30 tokens after the decisions it depends on: the credit-assignment setting GRPO-λ's traces are meant for.
The verifier is the library's `exact` reward (rewards.exact_match). docs/toy_benchmark.md explains the design;
`reproduce_toy.py` runs the comparison.
"""

from __future__ import annotations

import random

from datasets import Dataset

from grpo_lambda.data import register_task

TASK_NAME = "credit_echo"
ECHO_SEPARATOR = ";"
ALPHABET = "abcdefghij"  # letters, not digits: Qwen2's pre-tokenizer splits " 7" into two tokens but keeps " h" whole


def credit_echo_problem(
    rng: random.Random, num_letters: int = 3, repeats: int = 8, max_shift: int = 2
) -> tuple[str, str]:
    """One (prompt, answer) pair: answer = the letters shifted by s ∈ [1, max_shift] (mod 10), written `repeats`
    times."""
    shift = rng.randint(1, max_shift)
    letters = [rng.randrange(10) for _ in range(num_letters)]
    shifted = " ".join(ALPHABET[(i + shift) % 10] for i in letters)
    problem = f"+{shift} : {' '.join(ALPHABET[i] for i in letters)} ="
    return problem, f" {ECHO_SEPARATOR} ".join([shifted] * repeats)


def credit_echo_dataset(
    size: int, seed: int, split: str = "train", num_letters: int = 3, repeats: int = 8, max_shift: int = 2
) -> Dataset:
    """`size` seeded problems; `split="test"` draws from a disjoint seed stream. Columns: problem, answer."""
    rng = random.Random(f"grpo-lambda-{TASK_NAME}/{split}/{seed}/{num_letters}/{repeats}/{max_shift}")
    rows = [credit_echo_problem(rng, num_letters, repeats, max_shift) for _ in range(size)]
    return Dataset.from_dict({"problem": [r[0] for r in rows], "answer": [r[1] for r in rows]})


def tokenizer_corpus(seed: int = 0, size: int = 500) -> list[str]:
    """Text the toy tokenizer is trained on: prompts and answers of the task."""
    return [f"{row['problem']} {row['answer']}" for row in credit_echo_dataset(size, seed, "tokenizer")]


def _generate(size: int, seed: int, split: str, level: str) -> Dataset:
    return credit_echo_dataset(size, seed, split)


register_task(TASK_NAME, _generate)  # `dataset_name: credit_echo` in any process that imported this module
