"""The samples store of an evaluation, `<output_dir>/samples.jsonl`: one graded sample per line, appended as each
finishes, so that an interrupted evaluation resumes where it stopped (grpo_lambda.records: a torn last line is
skipped and cut off before the next append, a corrupt line elsewhere is refused with its file and line); rewritten
whole only through a rename."""

from __future__ import annotations

from pathlib import Path

from grpo_lambda.records import append_jsonl, read_jsonl, replace_jsonl

_WHAT = "a sample (a JSON object with benchmark and index)"


def _is_sample(record: dict) -> bool:
    return "benchmark" in record and "index" in record


def read_lines(path: Path) -> list[dict]:
    """The samples of a samples.jsonl, in order ([] if there is none yet)."""
    return read_jsonl(path, _is_sample, _WHAT)


def read_samples(path: Path) -> dict[tuple[str, int], dict]:
    """Samples already written by an earlier (possibly interrupted) run, by (benchmark, index)."""
    return {(sample["benchmark"], sample["index"]): sample for sample in read_lines(path)}


def append(path: Path, sample: dict) -> None:
    """One finished sample, appended and flushed."""
    append_jsonl(path, sample, _is_sample)


def rewrite(path: Path, samples: list[dict]) -> None:
    """Replace `path` whole (written beside it, then renamed): an interruption leaves the old file intact."""
    replace_jsonl(path, samples)
