"""Training problems: one adapter per source (gsm8k, math12k, math-rl-16k, orz-57k), local copies, and the
generated tasks (arithmetic built in; others registered with `register_task`, as experiments/toy.py does).

Every source comes out as {problem, answer} (strings), then `to_prompts` adds the `prompt` in the chosen template;
the reward functions receive `answer=`. Rows without a usable problem or answer are dropped and counted in the log;
a set left with none is refused. `check_dataset(..., parse=True)` is the launcher's check of all this, in seconds.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, Features, Value, load_dataset, load_from_disk

from grpo_lambda.errors import GRPOLambdaError

from .answers import ANSWER_SEPARATOR, gold_answers
from .inputs import hub_offline
from .layout import local_path
from .templates import PromptTemplate, check_template, render_completion, render_prompt

logger = logging.getLogger(__name__)

PROBLEM_COLUMNS = ("problem", "question", "prompt", "input")
ANSWER_COLUMNS = ("answer", "gt_answer", "solution", "final_answer")
_SCHEMA = Features({"problem": Value("string"), "answer": Value("string")})

_NAMES = ("Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kira", "Liam")
_ITEMS = ("apples", "marbles", "stickers", "books", "coins", "shells", "pencils", "cards")


def _one_step_problem(rng: random.Random) -> tuple[str, int, str]:
    """One addition, subtraction or small multiplication (SmolLM2-135M solves ~25% of these unprompted)."""
    name = rng.choice(_NAMES)
    item = rng.choice(_ITEMS)
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    kind = rng.randrange(3)
    if kind == 0:
        text = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        return text, a + b, f"{name} has {a} + {b} = {a + b} {item}."
    if kind == 1:
        a, b = max(a, b), min(a, b)
        text = f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?"
        return text, a - b, f"{name} has {a} - {b} = {a - b} {item} left."
    b = rng.randint(2, 5)
    text = f"{name} has {b} bags with {a} {item} in each. How many {item} does {name} have?"
    return text, a * b, f"{b} bags of {a} {item} make {b} × {a} = {a * b} {item}."


def _two_step_problem(rng: random.Random) -> tuple[str, int, str]:
    """Two operations chained (harder: the answer hinges on doing both in order)."""
    name, other = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    start = rng.randint(2, 60)
    kind = rng.randrange(4)
    if kind == 0:
        gain, loss = rng.randint(1, 40), rng.randint(1, start)
        text = f"{name} has {start} {item}. {other} gives {name} {gain} more, then {name} loses {loss}."
        steps = f"{start} + {gain} = {start + gain}, then {start + gain} - {loss} = {start + gain - loss}."
        return f"{text} How many {item} does {name} have now?", start + gain - loss, steps
    if kind == 1:
        boxes, per_box = rng.randint(2, 9), rng.randint(2, 12)
        text = f"{name} has {start} {item} and buys {boxes} boxes with {per_box} {item} in each."
        steps = (
            f"{boxes} × {per_box} = {boxes * per_box}, then {start} + {boxes * per_box} = {start + boxes * per_box}."
        )
        return f"{text} How many {item} does {name} have now?", start + boxes * per_box, steps
    if kind == 2:
        friends, share = rng.randint(2, 6), rng.randint(1, 12)
        text = f"{name} shares {friends * share} {item} equally among {friends} friends. Each friend then finds {start} more."
        steps = f"{friends * share} / {friends} = {share}, then {share} + {start} = {share + start}."
        return f"{text} How many {item} does each friend have?", share + start, steps
    times = rng.randint(2, 5)
    text = f"{name} has {start} {item}. {other} has {times} times as many {item} as {name}."
    steps = f"{times} × {start} = {times * start}, then {start} + {times * start} = {start + times * start}."
    return f"{text} How many {item} do they have together?", start + start * times, steps


ARITHMETIC_LEVELS = {"one_step": _one_step_problem, "two_step": _two_step_problem}


def arithmetic_dataset(size: int, seed: int, split: str = "train", level: str = "one_step") -> Dataset:
    """Seeded arithmetic word problems with exact integer answers; `split="test"` draws from a disjoint seed stream.

    Columns: `problem` (str), `answer` (str of an integer), `solution` (the worked steps, for SFT).
    """
    if level not in ARITHMETIC_LEVELS:
        raise GRPOLambdaError(f"arithmetic level {level!r} is not one of {', '.join(ARITHMETIC_LEVELS)}.")
    rng = random.Random(f"grpo-lambda-arithmetic/{level}/{split}/{seed}")
    rows = [ARITHMETIC_LEVELS[level](rng) for _ in range(size)]
    return Dataset.from_dict(
        {"problem": [r[0] for r in rows], "answer": [str(r[1]) for r in rows], "solution": [r[2] for r in rows]}
    )


# Tasks generated offline from a seed: name → (size, seed, split, level) → rows with problem and answer columns.
# Experiments add theirs with `register_task` (experiments/toy.py: credit_echo).
GENERATED_TASKS: dict[str, Callable[[int, int, str, str], Dataset]] = {"arithmetic": arithmetic_dataset}


def register_task(name: str, generate: Callable[[int, int, str, str], Dataset]) -> None:
    """Make `name` a training set (`dataset_name: <name>`) generated by `generate(size, seed, split, level)`."""
    GENERATED_TASKS[name] = generate


@dataclass(frozen=True)
class Source:
    """Where a training set lives on the Hub and how its rows map to (problem, gold answer)."""

    hub_id: str
    problem: Callable[[dict], Any]
    answer: Callable[[dict], Any]
    config: str | None = None
    split: str = "train"
    hub_file: str | None = None  # a single JSON file in a Hub dataset repo, read as a list of records


def _after_hashes(value):
    """openai/gsm8k's `answer` is a worked solution ending in '#### N' (N may carry thousands commas); local
    copies hold N alone."""
    if not isinstance(value, str) or "####" not in value:
        return value
    return value.split("####")[-1].strip().replace(",", "")


def _orz_problem(row: dict):
    turns = row["conversation"]
    return turns[0].get("value") if turns else None


def _orz_answer(row: dict):
    turns = row["conversation"]
    truth = turns[1].get("ground_truth") if len(turns) > 1 else None
    return truth.get("value") if isinstance(truth, dict) else None


SOURCES: dict[str, Source] = {
    "gsm8k": Source("openai/gsm8k", lambda r: r["question"], lambda r: _after_hashes(r["answer"]), config="main"),
    "math12k": Source("hiyouga/math12k", lambda r: r["problem"], lambda r: r["answer"]),
    "math-rl-16k": Source(
        "riddickz/math-rl-16k", lambda r: r["problem"], lambda r: r.get("solution", r.get("answer"))
    ),
    "orz-57k": Source("Tonic/OpenReasonerZero", _orz_problem, _orz_answer, hub_file="orz_math_57k_collected.json"),
}


def _pick_column(columns: list[str], candidates: tuple[str, ...], what: str, source: str) -> str:
    for name in candidates:
        if name in columns:
            return name
    raise GRPOLambdaError(
        f"dataset {source!r} has no {what} column (looked for {', '.join(candidates)}; it has {', '.join(columns)})."
    )


def gold_answer(value) -> str | None:
    """A stored gold answer (str, a number such as AMC's 142.0, or a list of acceptable strings) as the `answer`
    column holds it: answers.gold_answers joined by ANSWER_SEPARATOR (the accuracy reward ORs them); None when
    nothing usable is left."""
    return ANSWER_SEPARATOR.join(gold_answers(value)) or None


def _read_records(path: Path) -> Dataset | DatasetDict:
    """A local copy: a `save_to_disk` folder, .jsonl, .json (a list of records, or ORZ's list of two-turn lists),
    or .parquet. One without a single record is refused with its path."""
    if path.is_dir():
        loaded = load_from_disk(str(path))
    elif path.suffix == ".parquet":
        loaded = Dataset.from_parquet(str(path))
    else:
        records = read_json_records(path)
        if records and isinstance(records[0], list):  # ORZ: [[{from: human, value}, {from: assistant, ground_truth}]]
            loaded = Dataset.from_dict({"conversation": records})
        else:
            loaded = Dataset.from_list(records)
    if all(len(split) == 0 for split in (loaded.values() if isinstance(loaded, DatasetDict) else [loaded])):
        raise GRPOLambdaError(f"{path.absolute()} holds no records: give a file with one problem per row.")
    return loaded


def read_json_records(path: Path) -> list:
    """The records of a .jsonl file (one JSON object a line) or a .json file (a list); a line that does not parse
    is refused with the file and the line number."""
    if not path.is_file():
        raise GRPOLambdaError(f"no dataset file {path.absolute()}: check DATASET / dataset_path.")
    if path.suffix not in (".jsonl", ".json"):
        raise GRPOLambdaError(f"cannot read {path}: expected a save_to_disk folder, .jsonl, .json or .parquet.")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:  # read with replacement characters, it would train on them
        line = data[: error.start].count(b"\n") + 1
        raise GRPOLambdaError(
            f"{path} line {line} is not UTF-8 (byte 0x{data[error.start]:02x}): convert the file to UTF-8, e.g. "
            f"iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}."
        ) from None
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise GRPOLambdaError(f"{path} line {number} is not JSON ({error.msg}): fix or remove it.") from None
            if not isinstance(record, dict):
                raise GRPOLambdaError(f"{path} line {number} is not a JSON object: each line must hold one record.")
            records.append(record)
        return records
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise GRPOLambdaError(
            f"{path} line {error.lineno} column {error.colno} is not JSON ({error.msg}): fix the file."
        ) from None
    if not isinstance(records, list):
        raise GRPOLambdaError(f"{path} holds a JSON {type(records).__name__}, not a list of records.")
    return records


def check_dataset(name: str, path: str | None = None, config: str | None = None, parse: bool = False) -> None:
    """Refuse what training would ignore or fail on late: a local copy (`dataset_path`) or a Hub config given for
    a generated task, a config other than a named source's, a local copy that is absent. With `parse` (the
    launcher's check, in seconds before anything starts), also what training would fail on or train wrongly from:
    a local copy that does not parse, is not UTF-8, holds no records or no row with both a problem and a gold
    answer; a Hub training set that is neither in the Hugging Face cache nor, online, on the Hub."""
    if name in GENERATED_TASKS and (path or config):
        given = f"dataset_path={path}" if path else f"dataset_config={config}"
        raise GRPOLambdaError(
            f"{given} would be ignored: dataset_name={name} is a built-in generated task. To train on a file, give "
            "the file as the dataset instead (DATASET=<file>, or --dataset_name <file>)."
        )
    source = SOURCES.get(name)
    if source is not None and config and config != source.config and not path:
        raise GRPOLambdaError(
            f"dataset_config={config} would be ignored: {name} always loads {source.hub_id} "
            f"({source.config or 'its only config'}). For another config, name the Hub dataset itself: "
            f"--dataset_name {source.hub_id} --dataset_config {config}."
        )
    local = _local_copy(name, path)
    if local is not None and not local.exists():
        raise GRPOLambdaError(f"no dataset file or folder {local.absolute()}: check DATASET / dataset_path.")
    if not parse or name in GENERATED_TASKS:
        return
    if local is None:
        check_hub_dataset(name, config)
        return
    rows = _read_records(local)
    if isinstance(rows, DatasetDict):
        if "train" not in rows:
            return  # training reads the split dataset_train_split names, and names what is missing
        rows = rows["train"]
    convert = _row_reader(rows, str(local), source)
    if not any(all(convert(row).values()) for row in rows):
        raise _nothing_usable(str(local), len(rows))


def check_hub_dataset(name: str, config: str | None = None) -> None:
    """A training set from the Hub that training can load: offline, in the Hugging Face cache; online, on the Hub.
    Checked with what loading does first, without the data: `datasets.load_dataset_builder` (the dataset card and
    file list, or the cached copy offline), or for a source kept in one file (orz-57k) that file in the cache."""
    import datasets
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    source = SOURCES.get(name)
    hub_id, hub_config = (source.hub_id, source.config) if source else (name, config)
    offline = hub_offline() or datasets.config.HF_HUB_OFFLINE
    download = f"download it first (make download DATASET={name}) or unset HF_HUB_OFFLINE"
    if source is not None and source.hub_file is not None:
        cached = try_to_load_from_cache(hub_id, source.hub_file, repo_type="dataset")
        if offline and not isinstance(cached, str):
            raise GRPOLambdaError(
                f"DATASET={name}: HF_HUB_OFFLINE=1 and {hub_id}'s {source.hub_file} is not in the Hugging Face "
                f"cache: {download}."
            )
        return
    known = ", ".join([*SOURCES, *GENERATED_TASKS])
    what = f"{hub_id} (the Hub dataset of {name})" if source else f"the Hub dataset {hub_id}"
    try:
        validate_repo_id(hub_id)
    except HFValidationError:
        raise GRPOLambdaError(
            f"DATASET={name} is neither a training set ({known}), a file or folder, nor a Hub dataset id (org/name)."
        ) from None
    try:
        datasets.load_dataset_builder(hub_id, hub_config)
    except datasets.exceptions.DatasetNotFoundError:
        raise GRPOLambdaError(
            f"DATASET={name}: no training set of that name ({known}), no such file or folder, and no {what} on the "
            "Hugging Face Hub (a private one needs hf auth login)."
        ) from None
    except ConnectionError as error:
        if offline:
            names = "" if source else f" (training sets by name: {known}; or a file or folder)"
            raise GRPOLambdaError(
                f"DATASET={name}: HF_HUB_OFFLINE=1 and {what} is not in the Hugging Face cache{names}: {download}."
            ) from None
        raise GRPOLambdaError(
            f"DATASET={name}: cannot reach the Hugging Face Hub for {what} ({_first_line(error)}). On a node without "
            f"network, download it first (make download DATASET={name}) and set HF_HUB_OFFLINE=1."
        ) from None
    except Exception as error:  # a config or split the dataset lacks, a gated dataset: the library's own words
        raise GRPOLambdaError(f"DATASET={name}: {what} cannot be loaded: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _local_copy(name: str, path: str | None) -> Path | None:
    """The local copy training reads: `path` (dataset_path), else `name` where it is a path (layout.local_path)."""
    if path:
        return Path(path)
    if name in GENERATED_TASKS:
        return None
    return local_path(name)


def _nothing_usable(label: str, rows: int) -> GRPOLambdaError:
    return GRPOLambdaError(
        f"{label}: none of its {rows} rows has both a problem and a gold answer (empty or null), so training would "
        "have nothing to learn from: check its answer column or choose another training set."
    )


def _row_reader(rows: Dataset, label: str, source: Source | None) -> Callable[[dict], dict]:
    """row → {problem, answer} (strings, empty where unusable) for rows of a named source's layout, or of a local
    copy or unnamed dataset with problem/answer columns (PROBLEM_COLUMNS, ANSWER_COLUMNS)."""
    if source is not None and _accessors_work(rows, source):
        get_problem, get_answer = source.problem, source.answer
    else:  # a local copy already reduced to problem/answer columns, or an unnamed dataset
        problem_column = _pick_column(rows.column_names, PROBLEM_COLUMNS, "problem", label)
        answer_column = _pick_column(rows.column_names, ANSWER_COLUMNS, "answer", label)

        def get_problem(row):
            return row[problem_column]

        def get_answer(row):
            return _after_hashes(row[answer_column])

    def convert(row):
        problem = get_problem(row)
        return {
            "problem": "" if problem is None else str(problem).strip(),
            "answer": gold_answer(get_answer(row)) or "",
        }

    return convert


def _adapt(rows: Dataset, label: str, source: Source | None) -> Dataset:
    """Map rows to the one schema {problem, answer}; rows without a usable problem or answer are dropped and
    counted in the log, and a dataset left with none is refused (`label`: the file, or the dataset's name)."""
    adapted = rows.map(_row_reader(rows, label, source), remove_columns=rows.column_names, features=_SCHEMA)
    usable = adapted.filter(lambda row: bool(row["problem"]) and bool(row["answer"]))
    if len(usable) == 0:
        raise _nothing_usable(label, len(adapted))
    skipped = len(adapted) - len(usable)
    if skipped:
        logger.warning("%s: skipped %d of %d rows without a usable problem or answer", label, skipped, len(adapted))
    return usable


def _accessors_work(rows: Dataset, source: Source) -> bool:
    """Whether a source's own layout fits these rows (a local copy may already be reduced to problem/answer)."""
    if len(rows) == 0:
        return False
    try:
        source.problem(rows[0])
        source.answer(rows[0])
    except (KeyError, TypeError, IndexError, AttributeError):
        return False
    return True


def load_problem_dataset(
    name: str, split: str = "train", config: str | None = None, path: str | None = None, **arithmetic
) -> Dataset:
    """Problems + gold answers from a named source (gsm8k, math12k, math-rl-16k, orz-57k, arithmetic, a registered task), a local
    copy (`path`, or `name` itself when it is a file or folder), or any Hub dataset with problem/answer columns."""
    local = _local_copy(name, path)
    label = str(local) if local is not None else name
    return _adapt(_raw_rows(name, split, config, path, arithmetic), label, SOURCES.get(name))


def _raw_rows(name: str, split: str, config: str | None, path: str | None, arithmetic: dict) -> Dataset:
    """The rows of a source as they are stored: generated, read from a local copy, or loaded from the Hub."""
    check_dataset(name, path, config)
    if name in GENERATED_TASKS:
        size = arithmetic["test_size"] if split == "test" else arithmetic["train_size"]
        split = "test" if split == "test" else "train"
        return GENERATED_TASKS[name](size, arithmetic["seed"], split, arithmetic["level"])
    source = SOURCES.get(name)
    local = _local_copy(name, path)
    if local is not None:
        loaded = _read_records(local)
    elif source is not None and source.hub_file is not None:
        from huggingface_hub import hf_hub_download

        file = hf_hub_download(source.hub_id, source.hub_file, repo_type="dataset")
        loaded = _read_records(Path(file))
    elif source is not None:
        loaded = load_dataset(source.hub_id, source.config)
    else:
        loaded = load_dataset(name, config)
    if isinstance(loaded, DatasetDict):
        if split not in loaded:
            raise GRPOLambdaError(f"dataset {name!r} has no split {split!r} (it has {', '.join(loaded)}).")
        loaded = loaded[split]
    return loaded


def to_prompts(dataset: Dataset, template: PromptTemplate) -> Dataset:
    """Render each problem in the prompt template (templates.render_prompt), keeping `answer` for the rewards."""
    check_template(template)
    return dataset.map(lambda row: {"prompt": render_prompt(row["problem"], template)})


_CALCULATOR = re.compile(r"<<[^>]*>>")
_QWEN_USER = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.DOTALL)


def _worked_solution(row: dict) -> tuple[str, str, str] | None:
    """(problem, reasoning, final answer) from the layouts that carry worked solutions, or None:
    the arithmetic task (`solution`), GSM8K (`answer` = steps + '#### N', calculator notes <<…>> removed) and
    understand-r1-zero's math500_solutions (`input` = a qwen_math prompt, `output` = a solution, `gt_answer`)."""
    if "output" in row and "gt_answer" in row:
        match = _QWEN_USER.search(row["input"])
        problem = match.group(1) if match else row["input"]
        return problem.strip(), row["output"], str(row["gt_answer"])
    problem = row.get("question", row.get("problem"))
    if isinstance(row.get("answer"), str) and "####" in row["answer"]:
        steps, final = row["answer"].rsplit("####", 1)
        return problem, _CALCULATOR.sub("", steps).strip(), final.strip().replace(",", "")
    if row.get("solution") and row.get("answer") is not None:
        return problem, row["solution"], str(row["answer"])
    return None


def solution_dataset(
    name: str, template: PromptTemplate, split: str = "train", path: str | None = None, **arithmetic
) -> Dataset:
    """SFT data: worked solutions as TRL prompt-completion pairs in the prompt template of the RL stage.

    The completion ends with the final answer where the template reads it (\\boxed{} or <answer>), so the model
    learns to produce a parseable answer (§4.2, "Mitigate reward hacking"). Rows without a worked solution are
    dropped and counted.
    """
    check_template(template)
    rows = _raw_rows(name, split, None, path, arithmetic)

    def convert(row):
        worked = _worked_solution(row)
        if worked is None:
            return {"prompt": "", "completion": "", "usable": False}
        problem, reasoning, answer = worked
        if template == "qwen_math" and "\\boxed{" in reasoning:
            completion = reasoning.strip()
        else:
            completion = render_completion(reasoning, answer, template)
        prompt = render_prompt(problem, template)
        if isinstance(prompt, list):
            completion = [{"role": "assistant", "content": completion}]
        return {"prompt": prompt, "completion": completion, "usable": True}

    converted = [convert(row) for row in rows]
    usable = [{"prompt": r["prompt"], "completion": r["completion"]} for r in converted if r["usable"]]
    if len(usable) < len(converted):
        logger.warning(
            "%s: skipped %d of %d rows without a worked solution", name, len(converted) - len(usable), len(converted)
        )
    if not usable:
        raise GRPOLambdaError(f"dataset {name!r} has no worked solutions to fine-tune on.")
    return Dataset.from_list(usable)
