"""The benchmark suite: which benchmarks exist, where their problems and gold answers come from (the copy shipped in
the package, a folder of JSONL or save_to_disk data, or a Hub dataset), read into one list of problems."""

from __future__ import annotations

from pathlib import Path

from grpo_lambda.answers import gold_answers
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.layout import local_path
from grpo_lambda.records import read_jsonl

BENCHMARKS: tuple[str, ...] = ("aime", "amc", "math", "minerva", "olympiad_bench")
# Built in, needs no suite: the held-out split of the arithmetic task (seed 0, one-step problems).
BUILTIN_BENCHMARKS: tuple[str, ...] = ("arithmetic",)
# understand-r1-zero's datasets/evaluation_suite, shipped with the package (its README.md says where it comes from).
DEFAULT_SUITE = Path(__file__).with_name("evaluation_suite")
_PROBLEM = "a problem (a JSON object with problem and answer)"


def load_suite(suite: str | None, benchmarks: list[str], limit: int | None = None) -> list[dict]:
    """Problems of each benchmark: {benchmark, index, problem, golds, paper_golds, level}.

    `suite` (default DEFAULT_SUITE) is a folder of `<benchmark>.jsonl` files (as shipped), a `save_to_disk` folder
    (a DatasetDict with one split per benchmark, or one sub-folder per benchmark) or a Hub dataset id with one
    configuration per benchmark (split `test`). Gold answers may be a string, a number (AMC's 142.0) or a list of
    acceptable strings, OR-ed: `golds` are them as stripped strings ("142"), `paper_golds` as understand-r1-zero's
    grader receives them ("142.0", trailing newlines kept). `limit`: the first `limit` problems of each benchmark (a
    positive integer), or all of them (None)."""
    from grpo_lambda.evaluation.paper_grade import reference_golds

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise GRPOLambdaError(f"limit={limit!r}: give a positive number of problems per benchmark, or none for all.")
    suite = str(suite or DEFAULT_SUITE)
    local = Path(suite).expanduser()
    if not local.exists() and local_path(suite) and any(b not in BUILTIN_BENCHMARKS for b in benchmarks):
        raise GRPOLambdaError(f"the suite {suite} does not exist (omit --suite for the shipped one).")
    items = []
    for benchmark in benchmarks:
        rows = _benchmark_rows(suite, local, benchmark)
        where = local / f"{benchmark}.jsonl" if (local / f"{benchmark}.jsonl").is_file() else f"{suite} ({benchmark})"
        if not rows:
            raise GRPOLambdaError(f"{where} holds no problems: fill it, or leave {benchmark} out (BENCHMARKS=...).")
        levels = _levels(rows)
        if limit is not None:
            rows = rows[:limit]
        for index, row in enumerate(rows):
            if not _is_problem(row):
                raise GRPOLambdaError(f"{where}: problem {index} is not {_PROBLEM}: repair the suite.")
            golds = gold_answers(row["answer"])
            if not golds:  # graded against nothing, every sample of it would count as wrong
                raise GRPOLambdaError(
                    f"{where}: problem {index} has no gold answer (answer {row['answer']!r}), so every sample of it "
                    "would be graded wrong: give it its answer or remove it from the suite."
                )
            items.append(
                {
                    "benchmark": benchmark,
                    "index": index,
                    "problem": row["problem"],
                    "golds": golds,
                    "paper_golds": reference_golds(row["answer"]),
                    "level": levels[index] if levels else None,
                }
            )
    return items


def _levels(rows: list[dict]) -> list[int] | None:
    """Each problem's difficulty level where the benchmark has levels 1–5 on every problem (a `level`, or MATH500's
    `difficulty`: MATH's levels); None where it has none or finer ratings (AIME's and AMC's `difficulty`: 2.375)."""
    values = [row.get("level", row.get("difficulty")) for row in rows]
    whole = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v in (1, 2, 3, 4, 5) for v in values)
    return [int(v) for v in values] if whole and values else None


def _is_problem(row: dict) -> bool:
    return "problem" in row and "answer" in row


def _read_problems(path: Path) -> list[dict]:
    """The rows of a suite's `<benchmark>.jsonl`, each a JSON object with `problem` and `answer`. Read with the run
    state's reader (grpo_lambda.records.read_jsonl), which refuses a bad line with the file and the line; unlike run
    state, a suite file is never being appended to, so a bad last line is no torn write but corruption too."""
    rows = read_jsonl(path, _is_problem, _PROBLEM)
    lines = [number for number, line in enumerate(path.read_bytes().split(b"\n"), start=1) if line.strip()]
    if len(rows) != len(lines):  # read_jsonl skipped a last line that holds no problem
        raise GRPOLambdaError(
            f"{path}, line {lines[-1]}: not {_PROBLEM}, so the suite file is corrupt; repair that line."
        )
    return rows


def _benchmark_rows(suite: str, local: Path, benchmark: str) -> list[dict]:
    if benchmark == "arithmetic":
        from grpo_lambda.data import arithmetic_dataset

        return arithmetic_dataset(200, seed=0, split="test").to_list()
    if (local / f"{benchmark}.jsonl").is_file():
        return _read_problems(local / f"{benchmark}.jsonl")
    from datasets import DatasetDict, load_dataset, load_from_disk

    if (local / "dataset_dict.json").is_file():
        whole = load_from_disk(str(local))
        if isinstance(whole, DatasetDict) and benchmark in whole:
            return whole[benchmark].to_list()
    if (local / benchmark).is_dir():
        return load_from_disk(str(local / benchmark)).to_list()
    if local.exists():
        raise GRPOLambdaError(f"the suite {suite} has no benchmark {benchmark!r}.")
    try:
        return load_dataset(suite, benchmark, split="test").to_list()
    except Exception as error:  # noqa: BLE001 - a missing dataset or config is a typo: say so in one line
        raise GRPOLambdaError(
            f"the suite {suite!r} is neither a folder here nor a Hub dataset with a {benchmark!r} "
            f"configuration ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})."
        ) from None
