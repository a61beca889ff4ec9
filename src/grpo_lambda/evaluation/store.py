"""The samples store of an evaluation, `<output_dir>/samples.jsonl`: one graded sample per line, keyed by
(benchmark, index, sample) (`sample`: 0..k-1 of the problem's k samples; a line written before sampling existed has
none and is sample 0), appended as each finishes, so that an interrupted evaluation resumes where it stopped (grpo_lambda.records: a torn last line is
skipped and cut off before the next append, a corrupt line elsewhere is refused with its file and line); rewritten
whole only through a rename. Its summary, `<output_dir>/results.json`, is written whole (records.replace_file) and
read back through `read_results`, which refuses a damaged one with its file name. Data-parallel engines
(evaluate.py, --data_parallel_size) each append to a file of their own, `samples.shard-<r>.jsonl` (two writers on one
JSONL file could cut each other's lines), which `merge_shards` folds into samples.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.records import append_jsonl, has_torn_last_line, read_jsonl, replace_file, replace_jsonl

_WHAT = "a sample (a JSON object with benchmark and index)"


def _is_sample(record: dict) -> bool:
    return "benchmark" in record and "index" in record


def read_lines(path: Path) -> list[dict]:
    """The samples of a samples.jsonl, in order ([] if there is none yet)."""
    return read_jsonl(path, _is_sample, _WHAT)


def torn_last_line(path: Path) -> bool:
    """Whether samples.jsonl ends in a torn line (an evaluation killed mid-write), which readers skip."""
    return has_torn_last_line(path, _is_sample)


def sample_key(sample: dict) -> tuple[str, int, int]:
    """(benchmark, index, sample) of a sample record; one without `sample` (written before sampling existed, or a
    greedy run's) is sample 0."""
    return sample["benchmark"], sample["index"], sample.get("sample", 0)


def read_samples(path: Path) -> dict[tuple[str, int, int], dict]:
    """Samples already written by an earlier (possibly interrupted) run, by (benchmark, index, sample)."""
    return {sample_key(sample): sample for sample in read_lines(path)}


def append(path: Path, sample: dict) -> None:
    """One finished sample, appended and flushed."""
    append_jsonl(path, sample, _is_sample)


def shard_path(folder: Path, rank: int) -> Path:
    """The samples file of data-parallel engine `rank` while it runs."""
    return Path(folder) / f"samples.shard-{rank}.jsonl"


def merge_shards(folder: Path) -> int:
    """Appends to `<folder>/samples.jsonl` the samples of the engines' shard files that it lacks (each (benchmark,
    index, sample) once; a torn last line, an engine killed mid-write, dropped), then removes the shard files: a kill
    at any moment loses no finished sample and doubles none (the next merge skips what was appended). Returns how
    many samples it added."""
    shards = sorted(Path(folder).glob("samples.shard-*.jsonl"))
    samples_path = Path(folder) / "samples.jsonl"
    seen = set(read_samples(samples_path))
    added = 0
    for shard in shards:
        for sample in read_lines(shard):
            if sample_key(sample) not in seen:
                append(samples_path, sample)
                seen.add(sample_key(sample))
                added += 1
    for shard in shards:
        shard.unlink()
    return added


def rewrite(path: Path, samples: list[dict]) -> None:
    """Replace `path` whole (written beside it, then renamed): an interruption leaves the old file intact."""
    replace_jsonl(path, samples)


def read_results(path: Path) -> dict:
    """A results.json written by grpo_lambda.evaluation.evaluate: a JSON object with `benchmarks`. Anything else
    (a file cut short or edited by hand) raises GRPOLambdaError naming the file."""
    path = Path(path)
    try:
        results = json.loads(path.read_bytes())
    except ValueError as error:  # JSONDecodeError, or UnicodeDecodeError
        raise GRPOLambdaError(
            f"{path} is not valid JSON ({str(error).splitlines()[0]}); delete it and regrade its folder "
            f"(make regrade RESULTS={path.parent}) or evaluate again."
        ) from None
    if not isinstance(results, dict) or not isinstance(results.get("benchmarks"), dict):
        raise GRPOLambdaError(
            f"{path} is not an evaluation's results.json (no `benchmarks`); delete it and regrade its folder "
            f"(make regrade RESULTS={path.parent}) or evaluate again."
        )
    return results


IDENTITY = "evaluation.json"  # <output_dir>/: what the folder evaluates (grpo_lambda.evaluation.identity)


def read_identity(folder: Path) -> dict | None:
    """The identity an evaluation folder recorded when its evaluation started, or None (none yet, or a folder written
    before identities were recorded); a damaged one is refused with its name."""
    path = Path(folder) / IDENTITY
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_bytes())
    except ValueError:
        recorded = None
    if not isinstance(recorded, dict):
        raise GRPOLambdaError(f"{path} is not an evaluation's identity (JSON object): restore it, or evaluate anew.")
    return recorded


def write_identity(folder: Path, identity: dict) -> None:
    replace_file(Path(folder) / IDENTITY, json.dumps(identity, indent=2) + "\n")
