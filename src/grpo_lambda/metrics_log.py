"""The metrics log, `<output_dir>/metrics.jsonl`: its one writer, its one reader, and the statistics of its series.

One JSON object per logged step, with its `step` (docs/metrics.md). `callbacks.JsonlMetricsCallback` writes it
through `append` and `drop_after`; the plots, the demo and the toy studies read it through `read` / `read_steps`.
The file is an append-only JSONL store (grpo_lambda.records): a torn last line is skipped on reading and cut off
before appending; a bad line anywhere else is refused with its file and line number. No torch or transformers here: the plots and the experiments read logs
without loading the training stack.
"""

from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path

from .errors import GRPOLambdaError
from .records import append_jsonl, read_jsonl, replace_jsonl

__all__ = ["append", "drop_after", "logged_mean", "logged_std", "read", "read_steps", "trailing_mean"]

logger = logging.getLogger(__name__)


def _is_metrics(record: dict) -> bool:
    return "step" in record


_WHAT = "a metrics record (a JSON object with its step)"


def append(path: Path, record: dict) -> None:
    """Appends `record` as one line, flushed, after cutting off a torn last line (left by a kill mid-write)."""
    append_jsonl(path, record, _is_metrics)


def read(path: Path) -> list[dict]:
    """Every record of the log, in file order. A torn last line is skipped; a bad line before it raises
    GRPOLambdaError naming the file and the line."""
    if not Path(path).is_file():
        raise GRPOLambdaError(f"no metrics log at {path}: is it a run folder (it holds metrics.jsonl)?")
    return read_jsonl(path, _is_metrics, _WHAT)


def read_steps(path: Path) -> list[dict]:
    """The records of training steps, in step order: those with the Trainer's `loss` (GRPO and SFT log their step
    metrics in the same record), which leaves out the run's final summary. A step logged twice keeps its last
    record."""
    by_step = {record["step"]: record for record in read(path) if "loss" in record}
    return [by_step[step] for step in sorted(by_step)]


def drop_after(path: Path, step: int) -> int:
    """Drops the records past `step` (a resumed run's checkpoint: the attempt that stopped logged them after it),
    rewriting the log under a temporary name and renaming it over the old one. Returns how many were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    records = read(path)
    kept = [record for record in records if record["step"] <= step]
    if len(kept) < len(records):
        replace_jsonl(path, kept)
    return len(records) - len(kept)


def _logged(values: list[float | None]) -> list[float]:
    """The values a run logged: a metric absent from a step is None, a failed one NaN."""
    return [v for v in values if v is not None and not math.isnan(v)]


def logged_mean(values: list[float | None]) -> float:
    """The mean of the logged values (None and NaN left out); NaN if there are none."""
    values = _logged(values)
    return statistics.fmean(values) if values else float("nan")


def logged_std(values: list[float | None]) -> float:
    """The sample standard deviation of the logged values (None and NaN left out); 0 with fewer than two."""
    values = _logged(values)
    return statistics.stdev(values) if len(values) >= 2 else 0.0


def trailing_mean(values: list[float | None], window: int) -> list[float]:
    """Smoothing of a logged series: at each position, the `logged_mean` of that value and the `window` − 1 before
    it (fewer at the start). The paper smooths its training curves over the last 20 iterations."""
    return [logged_mean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]
