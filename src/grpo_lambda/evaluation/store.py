"""The samples store of an evaluation, `<output_dir>/samples.jsonl`: one graded sample per line, appended as each
finishes, so that an interrupted evaluation resumes where it stopped; rewritten whole only through a rename."""

from __future__ import annotations

import json
from pathlib import Path


def read_lines(path: Path) -> list[dict]:
    """The samples of a samples.jsonl, in order; a torn last line (an interrupted write) is ignored."""
    samples = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                samples.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return samples


def read_samples(path: Path) -> dict[tuple[str, int], dict]:
    """Samples already written by an earlier (possibly interrupted) run, by (benchmark, index)."""
    return {(sample["benchmark"], sample["index"]): sample for sample in read_lines(path)}


def rewrite(path: Path, samples: list[dict]) -> None:
    """Replace `path` whole (written beside it, then renamed): an interruption leaves the old file intact."""
    staging = path.with_name(path.name + ".partial")
    staging.write_text("".join(json.dumps(s) + "\n" for s in samples))
    staging.replace(path)
