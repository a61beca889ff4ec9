"""Prompt datasets: the built-in arithmetic task and any dataset with a problem and a gold answer.

Every dataset comes out with two columns: `prompt` (a chat: optional system message + the problem as the user
turn) and `answer` (the gold final answer as a string), which the reward functions receive as `answer=`.
"""

from __future__ import annotations

import os
import random

from datasets import Dataset, DatasetDict, Features, Value, load_dataset, load_from_disk

PROBLEM_COLUMNS = ("problem", "question", "prompt", "input")
ANSWER_COLUMNS = ("answer", "gt_answer", "solution", "final_answer")
ANSWER_SEPARATOR = "\n"  # between acceptable gold answers (MinervaMath, OlympiadBench give lists)
_SCHEMA = Features({"problem": Value("string"), "answer": Value("string")})

_NAMES = ("Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kira", "Liam")
_ITEMS = ("apples", "marbles", "stickers", "books", "coins", "shells", "pencils", "cards")


def _one_step_problem(rng: random.Random) -> tuple[str, int]:
    """One addition, subtraction or small multiplication (SmolLM2-135M solves ~25% of these unprompted)."""
    name = rng.choice(_NAMES)
    item = rng.choice(_ITEMS)
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    kind = rng.randrange(3)
    if kind == 0:
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b
    if kind == 1:
        a, b = max(a, b), min(a, b)
        return f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?", a - b
    b = rng.randint(2, 5)
    return f"{name} has {b} bags with {a} {item} in each. How many {item} does {name} have?", a * b


def _two_step_problem(rng: random.Random) -> tuple[str, int]:
    """Two operations chained (harder: the answer hinges on doing both in order)."""
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    start = rng.randint(2, 60)
    kind = rng.randrange(4)
    if kind == 0:
        gain, loss = rng.randint(1, 40), rng.randint(1, start)
        text = f"{name} has {start} {item}. {other} gives {name} {gain} more, then {name} loses {loss}."
        return f"{text} How many {item} does {name} have now?", start + gain - loss
    if kind == 1:
        boxes, per_box = rng.randint(2, 9), rng.randint(2, 12)
        text = f"{name} has {start} {item} and buys {boxes} boxes with {per_box} {item} in each."
        return f"{text} How many {item} does {name} have now?", start + boxes * per_box
    if kind == 2:
        friends, share = rng.randint(2, 6), rng.randint(1, 12)
        text = f"{name} shares {friends * share} {item} equally among {friends} friends. Each friend then finds {start} more."
        return f"{text} How many {item} does each friend have?", share + start
    times = rng.randint(2, 5)
    text = f"{name} has {start} {item}. {other} has {times} times as many {item} as {name}."
    return f"{text} How many {item} do they have together?", start + start * times


ARITHMETIC_LEVELS = {"one_step": _one_step_problem, "two_step": _two_step_problem}


def arithmetic_dataset(size: int, seed: int, split: str = "train", level: str = "one_step") -> Dataset:
    """Seeded arithmetic word problems with exact integer answers; `split="test"` draws from a disjoint seed stream.

    Columns: `problem` (str), `answer` (str of an integer).
    """
    if level not in ARITHMETIC_LEVELS:
        raise SystemExit(f"grpo_lambda: arithmetic level {level!r} is not one of {', '.join(ARITHMETIC_LEVELS)}.")
    rng = random.Random(f"grpo-lambda-arithmetic/{level}/{split}/{seed}")
    rows = [ARITHMETIC_LEVELS[level](rng) for _ in range(size)]
    return Dataset.from_dict({"problem": [p for p, _ in rows], "answer": [str(a) for _, a in rows]})


def _pick_column(dataset: Dataset, candidates: tuple[str, ...], what: str, source: str) -> str:
    for name in candidates:
        if name in dataset.column_names:
            return name
    raise SystemExit(
        f"grpo_lambda: dataset {source!r} has no {what} column (looked for {', '.join(candidates)}; "
        f"it has {', '.join(dataset.column_names)})."
    )


def _gold_answer(value) -> str:
    """Gold answers arrive as str, numbers (AMC's 142.0) or lists of acceptable strings (joined by newlines, which
    the accuracy reward ORs); GSM8K's worked answers end in '#### N'."""
    if isinstance(value, list):
        return ANSWER_SEPARATOR.join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value)
    return text.split("####")[-1].strip() if "####" in text else text


def load_problem_dataset(name: str, split: str, config: str | None = None, **arithmetic) -> Dataset:
    """Load problems + gold answers from 'arithmetic', a `save_to_disk` folder, or a Hub dataset id."""
    if name == "arithmetic":
        size = arithmetic["test_size"] if split == "test" else arithmetic["train_size"]
        return arithmetic_dataset(
            size, arithmetic["seed"], "test" if split == "test" else "train", arithmetic["level"]
        )
    if os.path.isdir(name):
        loaded = load_from_disk(name)
    else:
        loaded = load_dataset(name, config)
    if isinstance(loaded, DatasetDict):
        if split not in loaded:
            raise SystemExit(f"grpo_lambda: dataset {name!r} has no split {split!r} (it has {', '.join(loaded)}).")
        loaded = loaded[split]
    problem = _pick_column(loaded, PROBLEM_COLUMNS, "problem", name)
    answer = _pick_column(loaded, ANSWER_COLUMNS, "answer", name)
    return loaded.map(
        lambda row: {"problem": row[problem], "answer": _gold_answer(row[answer])},
        remove_columns=loaded.column_names,
        features=_SCHEMA,
    )


def to_prompts(dataset: Dataset, system_prompt: str | None) -> Dataset:
    """Render each problem as a chat prompt (system message + user turn), keeping `answer` for the rewards."""

    def render(row):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return {"prompt": [*messages, {"role": "user", "content": row["problem"]}]}

    return dataset.map(render)
